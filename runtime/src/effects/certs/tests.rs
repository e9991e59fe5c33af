//! The certificate store on a scratch directory.

use super::*;

fn chain(n: u32) -> String {
    format!("-----BEGIN CERTIFICATE-----\nMIIleaf{n}\n-----END CERTIFICATE-----\n")
}

fn key(n: u32) -> String {
    format!("-----BEGIN PRIVATE KEY-----\nMIIkey{n}\n-----END PRIVATE KEY-----\n")
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The version directories of the domain stored as `dir`, sorted.
fn versions_of(certs: &Path, dir: &str) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(certs.join(VERSIONS))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|v| version_owner(v) == Some(dir))
        .collect();
    out.sort();
    out
}

/// Every path under `dir` with what it is: link target, file contents
/// and mode, or directory.
fn tree(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {:o}", meta.permissions().mode())
            } else {
                format!(
                    "file {:o} {}",
                    meta.permissions().mode(),
                    fs::read_to_string(&path).unwrap()
                )
            };
            out.push((path, what));
        }
    }
    out.sort();
    out
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn installs_and_gets_exact_and_wildcard() {
    let state = tempfile::tempdir().unwrap();
    let store = CertStore::open(state.path()).unwrap();
    let certs = state.path().join("certs");
    let before = now_ms();
    store
        .install(
            &names(&["mail.example.com", "*.example.com"]),
            &chain(1),
            &key(1),
            1_900_000_000_000,
        )
        .unwrap();

    let exact = store.get("mail.example.com").unwrap();
    assert_eq!(exact.domain, "mail.example.com");
    assert_eq!(exact.domains, names(&["mail.example.com", "*.example.com"]));
    assert_eq!(exact.not_after, 1_900_000_000_000);
    assert!(exact.installed_at >= before && exact.installed_at <= now_ms());
    assert_eq!(exact.chain_pem, chain(1));
    assert_eq!(exact.private_key_pem, key(1));
    assert_eq!(
        exact.chain_path,
        certs.join("mail.example.com/fullchain.pem")
    );
    assert_eq!(exact.key_path, certs.join("mail.example.com/privkey.pem"));

    let wild = store.get("imap.example.com").unwrap();
    assert_eq!(wild.domain, "*.example.com");
    assert_eq!(wild.chain_pem, chain(1));
    assert_eq!(wild.private_key_pem, key(1));
    assert_eq!(
        wild.chain_path,
        certs.join("_wildcard.example.com/fullchain.pem")
    );
    assert_eq!(store.get("*.example.com"), Some(wild.clone()));
    assert_eq!(store.get("a.b.example.com"), None, "one label only");
    assert_eq!(store.get("example.com"), None);
    assert_eq!(store.get("other.org"), None);

    // The files, through the links.
    for dir in ["mail.example.com", "_wildcard.example.com"] {
        let link = certs.join(dir);
        assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(
            fs::read_to_string(link.join("fullchain.pem")).unwrap(),
            chain(1)
        );
        assert_eq!(
            fs::read_to_string(link.join("privkey.pem")).unwrap(),
            key(1)
        );
        assert_eq!(mode(&link.join("privkey.pem")), 0o600);
        assert_eq!(mode(&link), 0o700, "the version directory");
        let meta: Meta =
            serde_json::from_slice(&fs::read(link.join("meta.json")).unwrap()).unwrap();
        assert_eq!(
            meta,
            Meta {
                domains: names(&["mail.example.com", "*.example.com"]),
                not_after: 1_900_000_000_000,
                installed_at: exact.installed_at,
                version: None,
            }
        );
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(link.join("meta.json")).unwrap()).unwrap();
        assert_eq!(json["notAfter"], 1_900_000_000_000u64);
        assert_eq!(json["installedAt"], exact.installed_at);
    }
    assert!(
        tree(&certs)
            .iter()
            .all(|(p, _)| !p.to_string_lossy().contains('*')),
        "no `*` in any path"
    );

    assert_eq!(
        store.list(),
        vec![
            ("*.example.com".to_string(), 1_900_000_000_000),
            ("mail.example.com".to_string(), 1_900_000_000_000),
        ]
    );

    let debug = format!("{exact:?}");
    assert!(!debug.contains("MIIkey1"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
    let api = serde_json::to_value(&exact).unwrap();
    assert_eq!(api["privateKeyPem"], key(1));
    assert_eq!(api["notAfter"], 1_900_000_000_000u64);
}

#[test]
fn a_new_install_replaces_the_pair_and_keeps_two_versions() {
    let state = tempfile::tempdir().unwrap();
    let store = CertStore::open(state.path()).unwrap();
    let certs = state.path().join("certs");
    let d = names(&["mail.example.com"]);
    // A domain whose name extends the other's with a hyphen keeps its
    // own versions.
    let lookalike = names(&["mail.example.com-0123456789abcdef"]);
    store.install(&lookalike, &chain(9), &key(9), 9).unwrap();

    store.install(&d, &chain(1), &key(1), 1).unwrap();
    let first = versions_of(&certs, "mail.example.com");
    assert_eq!(first.len(), 1);

    store.install(&d, &chain(2), &key(2), 2).unwrap();
    let got = store.get("mail.example.com").unwrap();
    assert_eq!(
        (
            got.chain_pem.as_str(),
            got.private_key_pem.as_str(),
            got.not_after
        ),
        (chain(2).as_str(), key(2).as_str(), 2)
    );
    assert_eq!(
        fs::read_to_string(&got.chain_path).unwrap(),
        chain(2),
        "the path follows the switch"
    );
    assert_eq!(fs::read_to_string(&got.key_path).unwrap(), key(2));
    let second = versions_of(&certs, "mail.example.com");
    assert_eq!(second.len(), 2, "the previous version is kept");
    assert!(second.contains(&first[0]));

    store.install(&d, &chain(3), &key(3), 3).unwrap();
    let third = versions_of(&certs, "mail.example.com");
    assert_eq!(third.len(), 2, "{third:?}");
    assert!(!third.contains(&first[0]), "the oldest version is gone");
    let current = fs::read_link(certs.join("mail.example.com")).unwrap();
    let current = current.file_name().unwrap().to_str().unwrap();
    assert!(third.iter().any(|v| v == current));
    let previous = third.iter().find(|v| *v != current).unwrap();
    assert_eq!(
        fs::read_to_string(certs.join(VERSIONS).join(previous).join(CHAIN)).unwrap(),
        chain(2),
        "the one kept is the previous one"
    );
    assert_eq!(store.get("mail.example.com").unwrap().chain_pem, chain(3));

    assert_eq!(
        versions_of(&certs, "mail.example.com-0123456789abcdef").len(),
        1
    );
    assert_eq!(
        store
            .get("mail.example.com-0123456789abcdef")
            .unwrap()
            .chain_pem,
        chain(9)
    );
    let leftovers: Vec<_> = fs::read_dir(&certs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn installing_the_same_certificate_again_changes_nothing() {
    let state = tempfile::tempdir().unwrap();
    let store = CertStore::open(state.path()).unwrap();
    let certs = state.path().join("certs");
    let d = names(&["mail.example.com", "smtp.example.com"]);
    store.install(&d, &chain(1), &key(1), 1).unwrap();
    let before = tree(&certs);
    let installed = store.get("smtp.example.com").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    store.install(&d, &chain(1), &key(1), 1).unwrap();
    assert_eq!(tree(&certs), before);
    assert_eq!(store.get("smtp.example.com"), Some(installed));

    // The same chain for other names or another notAfter is a change.
    store.install(&d, &chain(1), &key(1), 2).unwrap();
    assert_eq!(store.get("smtp.example.com").unwrap().not_after, 2);
    assert_eq!(versions_of(&certs, "smtp.example.com").len(), 2);
}

#[test]
fn invalid_names_are_refused_before_anything_is_written() {
    let state = tempfile::tempdir().unwrap();
    let store = CertStore::open(state.path()).unwrap();
    let certs = state.path().join("certs");
    let fresh = tree(&certs);
    let long = format!("{}com", "a.".repeat(125));
    assert_eq!(long.len(), 253);
    assert!(normalise(&long).is_ok());
    let too_long = format!("a{long}");
    let long_label = format!("{}.com", "a".repeat(64));
    let bad = [
        "",
        ".",
        "*",
        "*.",
        "*.*.example.com",
        "a.*.example.com",
        "*example.com",
        "a..example.com",
        ".example.com",
        "example.com..",
        "..",
        "../etc",
        "a/b.example.com",
        "/etc",
        "ex ample.com",
        "ex_ample.com",
        "_wildcard.example.com",
        "-a.example.com",
        "a-.example.com",
        "bücher.example.com",
        "a\0.example.com",
        too_long.as_str(),
        long_label.as_str(),
    ];
    for b in bad {
        let err = store
            .install(&names(&["ok.example.com", b]), &chain(1), &key(1), 1)
            .unwrap_err();
        assert!(matches!(err, CertError::InvalidName(_)), "{b:?}: {err}");
        assert!(!err.is_transient());
        assert!(err.to_string().contains(&format!("{b:?}")), "{b:?}: {err}");
        assert_eq!(store.get(b), None, "{b:?}");
    }
    assert!(store.install(&[], &chain(1), &key(1), 1).is_err());
    let err = store
        .install(&names(&["ok.example.com"]), "", &key(1), 1)
        .unwrap_err();
    assert!(err.to_string().contains("ok.example.com"), "{err}");
    let err = store
        .install(&names(&["ok.example.com"]), &chain(1), " \n", 1)
        .unwrap_err();
    assert!(err.to_string().contains("ok.example.com"), "{err}");
    assert_eq!(tree(&certs), fresh, "nothing written");

    store
        .install(&names(&["ok.example.com"]), &chain(1), &key(1), 1)
        .unwrap();
    let installed = tree(&certs);
    for b in bad {
        assert!(
            store
                .install(&names(&[b, "ok.example.com"]), &chain(2), &key(2), 2)
                .is_err()
        );
    }
    assert_eq!(tree(&certs), installed, "nothing changed");
    assert_eq!(store.get("ok.example.com").unwrap().chain_pem, chain(1));
}

#[test]
fn a_reopened_store_sees_the_certificates() {
    let state = tempfile::tempdir().unwrap();
    let installed = {
        let store = CertStore::open(state.path()).unwrap();
        store
            .install(&names(&["*.example.org"]), &chain(1), &key(1), 10)
            .unwrap();
        store
            .install(&names(&["mx.example.net"]), &chain(2), &key(2), 20)
            .unwrap();
        store.get("mail.example.org").unwrap()
    };
    let before = tree(&state.path().join("certs"));
    let store = CertStore::open(state.path()).unwrap();
    assert_eq!(
        tree(&state.path().join("certs")),
        before,
        "opening changes nothing"
    );
    assert_eq!(store.get("mail.example.org"), Some(installed));
    assert_eq!(store.get("mx.example.net").unwrap().private_key_pem, key(2));
    assert_eq!(
        store.list(),
        vec![
            ("*.example.org".to_string(), 10),
            ("mx.example.net".to_string(), 20)
        ]
    );
}

#[test]
fn names_are_case_insensitive_and_a_trailing_dot_is_ignored() {
    let state = tempfile::tempdir().unwrap();
    let store = CertStore::open(state.path()).unwrap();
    store
        .install(
            &names(&["Mail.Example.COM.", "*.Example.com", "mail.example.com"]),
            &chain(1),
            &key(1),
            1,
        )
        .unwrap();
    let got = store.get("MAIL.example.com.").unwrap();
    assert_eq!(got.domain, "mail.example.com");
    assert_eq!(
        got.domains,
        names(&["mail.example.com", "*.example.com"]),
        "normalised and without duplicates"
    );
    assert_eq!(
        store.get("IMAP.EXAMPLE.COM").unwrap().domain,
        "*.example.com"
    );
    assert_eq!(
        store.get("mail.example.com.").unwrap().domain,
        "mail.example.com"
    );
    assert!(state.path().join("certs/mail.example.com").exists());
    assert!(!state.path().join("certs/Mail.Example.COM.").exists());
}

#[test]
fn a_link_left_by_a_crash_does_not_block_an_install() {
    let state = tempfile::tempdir().unwrap();
    let store = CertStore::open(state.path()).unwrap();
    let certs = state.path().join("certs");
    std::os::unix::fs::symlink(".versions/gone", certs.join(".mail.example.com.tmp")).unwrap();
    store
        .install(&names(&["mail.example.com"]), &chain(1), &key(1), 1)
        .unwrap();
    assert_eq!(store.get("mail.example.com").unwrap().chain_pem, chain(1));
    assert!(!certs.join(".mail.example.com.tmp").exists());
    assert!(
        fs::symlink_metadata(certs.join(".mail.example.com.tmp")).is_err(),
        "no link left"
    );
}

#[test]
fn readers_always_see_a_matching_pair() {
    let state = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(CertStore::open(state.path()).unwrap());
    let d = names(&["mail.example.com"]);
    store.install(&d, &chain(0), &key(0), 0).unwrap();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for n in 1..40 {
                store.install(&d, &chain(n), &key(n), n as u64).unwrap();
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() || reads == 0 {
        let got = store.get("mail.example.com").expect("always installed");
        let n = got.not_after as u32;
        assert_eq!((got.chain_pem, got.private_key_pem), (chain(n), key(n)));
        reads += 1;
    }
    writer.join().unwrap();
    assert_eq!(store.get("mail.example.com").unwrap().not_after, 39);
}

#[test]
fn the_newest_version_wins_even_when_it_ends_earlier() {
    let dir = tempfile::tempdir().unwrap();
    let store = CertStore::open(dir.path()).unwrap();
    let v = |ts, id: &str| EventVersion::new(ts, id);
    let d = names(&["mail.example.com"]);
    // A long-lived certificate, then a newer one that ends earlier: a
    // rotation. The older one replayed is stale, whatever its notAfter.
    let long = store
        .install_at(
            &d,
            &chain(1),
            &key(1),
            4_000_000_000_000,
            Some(&v(1, "a")),
            false,
        )
        .unwrap();
    assert_eq!(long.changed, d);
    let rotated = store
        .install_at(
            &d,
            &chain(2),
            &key(2),
            1_900_000_000_000,
            Some(&v(2, "b")),
            false,
        )
        .unwrap();
    assert_eq!(rotated.changed, d);
    let replay = store
        .install_at(
            &d,
            &chain(1),
            &key(1),
            4_000_000_000_000,
            Some(&v(1, "a")),
            false,
        )
        .unwrap();
    assert_eq!((replay.changed.len(), replay.stale), (0, d.clone()));
    let now = store.get("mail.example.com").unwrap();
    assert_eq!((now.chain_pem, now.version), (chain(2), Some(v(2, "b"))));
    // The same install again changes nothing (no hooks would run).
    let again = store
        .install_at(
            &d,
            &chain(2),
            &key(2),
            1_900_000_000_000,
            Some(&v(2, "b")),
            false,
        )
        .unwrap();
    assert_eq!(again, Installs::default());
    // Without a version, the no-rollback rule by notAfter decides ...
    let unversioned = dir.path().join("plain");
    let plain = CertStore::open(&unversioned).unwrap();
    plain.install(&d, &chain(1), &key(1), 2_000).unwrap();
    let err = plain.install(&d, &chain(2), &key(2), 1_000).unwrap_err();
    assert!(matches!(err, CertError::Rollback { .. }), "{err}");
    // ... and the operator's force goes past both rules (with a version of
    // its own, so that a replay older than it stays stale).
    let forced = store
        .install_at(&d, &chain(3), &key(3), 1_000, Some(&v(1, "force")), true)
        .unwrap();
    assert_eq!(forced.changed, d);
    assert_eq!(store.get("mail.example.com").unwrap().chain_pem, chain(3));
}
