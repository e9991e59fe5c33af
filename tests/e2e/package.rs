//! The .deb that `just package` builds, read with `dpkg-deb`: what it
//! installs where, which files are conffiles, and that what it installs is
//! the real thing (the unit and the example config as written, a binary that
//! runs, a man page and completions that know the commands).
//!
//! `just test` builds the package first and passes its path in `HERALD_DEB`
//! (absolute, or relative to the workspace); without it, every test here
//! says why and passes without checking.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use herald_tests::root;

const HANDLERS: [&str; 4] = ["mailbox", "push", "blocking", "certificate"];
const UNIT: &str = "/usr/lib/systemd/system/herald.service";
const CONFIG: &str = "/etc/herald/herald.json";

/// `$HERALD_DEB`, or `None` after printing why the test checks nothing.
fn deb() -> Option<PathBuf> {
    let Some(path) = std::env::var_os("HERALD_DEB") else {
        println!("skipped: HERALD_DEB is not set (`just test` builds the .deb and sets it)");
        return None;
    };
    // Relative to the workspace (a test runs in tests/).
    let path = root().join(path);
    assert!(
        path.is_file(),
        "HERALD_DEB: {}: no such file",
        path.display()
    );
    Some(path)
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .expect("dpkg-deb (package dpkg) must be installed");
    assert!(
        out.status.success(),
        "dpkg-deb {args:?} {}: {}",
        deb.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One member of the control archive (`dpkg-deb -I <deb> <member>`).
fn dpkg_deb_member(deb: &Path, member: &str) -> String {
    let out = Command::new("dpkg-deb")
        .arg("-I")
        .arg(deb)
        .arg(member)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dpkg-deb -I {} {member}: {}",
        deb.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `dpkg-deb -c`: every regular file, absolute path to mode (`-rw-r--r--`).
fn files(deb: &Path) -> BTreeMap<String, String> {
    dpkg_deb(&["-c"], deb)
        .lines()
        .filter(|l| l.starts_with('-'))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let path = fields[5].trim_start_matches('.').to_string();
            (path, fields[0].to_string())
        })
        .collect()
}

/// The package's files, unpacked into a temporary folder.
fn unpack(deb: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "dpkg-deb -x {}", deb.display());
    dir
}

fn read(dir: &Path, path: &str) -> Vec<u8> {
    let file = dir.join(path.trim_start_matches('/'));
    std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn text(dir: &Path, path: &str) -> String {
    String::from_utf8(read(dir, path)).unwrap()
}

fn handler_files(folder: &str) -> Vec<String> {
    HANDLERS
        .iter()
        .flat_map(|h| ["wasm", "toml"].map(|ext| format!("{folder}/{h}.{ext}")))
        .collect()
}

#[test]
fn installs_every_file_where_an_admin_looks_for_it() {
    let Some(deb) = deb() else { return };
    let files = files(&deb);
    let mut expected = vec![
        "/usr/bin/herald".to_string(),
        UNIT.to_string(),
        CONFIG.to_string(),
        "/usr/share/man/man1/herald.1.gz".to_string(),
        "/usr/share/bash-completion/completions/herald".to_string(),
        "/usr/share/zsh/vendor-completions/_herald".to_string(),
        "/usr/share/fish/vendor_completions.d/herald.fish".to_string(),
    ];
    expected.extend(handler_files("/usr/lib/herald/handlers"));
    expected.extend(handler_files("/etc/herald/handlers"));
    for path in &expected {
        assert!(
            files.contains_key(path),
            "{path} is not in the package: {files:#?}"
        );
    }
    assert_eq!(files["/usr/bin/herald"], "-rwxr-xr-x");
    for (path, mode) in &files {
        if path != "/usr/bin/herald" {
            assert_eq!(mode, "-rw-r--r--", "{path}");
        }
    }
    // Only the four built-ins, not the test fixtures.
    let wasm = files.keys().filter(|p| p.ends_with(".wasm")).count();
    assert_eq!(wasm, 2 * HANDLERS.len(), "{files:#?}");
}

#[test]
fn the_config_and_the_active_handlers_are_conffiles() {
    let Some(deb) = deb() else { return };
    // `dpkg-deb -I <deb> conffiles` prints that control member.
    let listed = dpkg_deb_member(&deb, "conffiles");
    let mut got: Vec<&str> = listed.lines().map(str::trim).collect();
    let mut expected = vec![CONFIG.to_string()];
    expected.extend(handler_files("/etc/herald/handlers"));
    got.sort_unstable();
    expected.sort_unstable();
    assert_eq!(got, expected, "conffiles");
}

#[test]
fn control_names_the_package_and_its_libraries() {
    let Some(deb) = deb() else { return };
    let control = dpkg_deb(&["-f"], &deb);
    assert!(control.lines().any(|l| l == "Package: herald"), "{control}");
    let depends = control
        .lines()
        .find(|l| l.starts_with("Depends:"))
        .map(str::to_string)
        .expect("a Depends field");
    assert!(depends.contains("libc6"), "{depends}");
    // The unit is installed and kept up to date, but neither enabled nor
    // started at install: the example config needs the cluster's brokers.
    let postinst = dpkg_deb_member(&deb, "postinst");
    assert!(postinst.contains("herald.service"), "{postinst}");
    assert!(postinst.contains("try-restart"), "{postinst}");
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
    let prerm = dpkg_deb_member(&deb, "prerm");
    assert!(prerm.contains("deb-systemd-invoke stop"), "{prerm}");
}

#[test]
fn installs_the_real_unit_config_handlers_and_binary() {
    let Some(deb) = deb() else { return };
    let dir = unpack(&deb);
    let dir = dir.path();
    let packaging = root().join("runtime").join("packaging");
    assert_eq!(
        text(dir, UNIT),
        std::fs::read_to_string(packaging.join("herald.service")).unwrap()
    );
    assert_eq!(
        text(dir, CONFIG),
        std::fs::read_to_string(packaging.join("herald.json")).unwrap()
    );
    for h in HANDLERS {
        let source = std::fs::read(root().join(format!("handlers/{h}/{h}.toml"))).unwrap();
        for folder in ["/usr/lib/herald/handlers", "/etc/herald/handlers"] {
            assert_eq!(
                read(dir, &format!("{folder}/{h}.toml")),
                source,
                "{folder}/{h}.toml"
            );
        }
        assert_eq!(
            read(dir, &format!("/usr/lib/herald/handlers/{h}.wasm")),
            read(dir, &format!("/etc/herald/handlers/{h}.wasm")),
            "{h}.wasm"
        );
    }
    // The unit runs what the package installs, with the config it installs.
    let unit = text(dir, UNIT);
    assert!(unit.contains(&format!("ExecStart=/usr/bin/herald run --config {CONFIG}")));
    // Bounded, so that a runaway herald cannot starve the mail server.
    for limit in ["MemoryMax=", "MemoryHigh=", "TasksMax=", "LimitNOFILE="] {
        assert!(
            unit.lines().any(|l| l.starts_with(limit)),
            "the unit sets no {limit}"
        );
    }
    let config: serde_json::Value = serde_json::from_str(&text(dir, CONFIG)).unwrap();
    assert_eq!(config["handlers"], "/etc/herald/handlers");
    assert_eq!(config["stateDir"], "/var/lib/herald");

    // The packaged (stripped) binary runs and accepts the example config.
    let herald = dir.join("usr/bin/herald");
    let out = Command::new(&herald)
        .args(["config", "check"])
        .arg(dir.join(CONFIG.trim_start_matches('/')))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "herald config check {CONFIG}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn man_page_and_completions_know_the_commands() {
    let Some(deb) = deb() else { return };
    let dir = unpack(&deb);
    let dir = dir.path();
    let man = Command::new("gzip")
        .arg("-dc")
        .arg(dir.join("usr/share/man/man1/herald.1.gz"))
        .output()
        .unwrap();
    assert!(man.status.success());
    let man = String::from_utf8(man.stdout).unwrap();
    assert!(man.contains(".TH herald 1"), "{man}");
    for command in ["herald run", "herald handler reload", "herald config check"] {
        assert!(man.contains(command), "{command}: {man}");
    }
    for script in [
        "/usr/share/bash-completion/completions/herald",
        "/usr/share/zsh/vendor-completions/_herald",
        "/usr/share/fish/vendor_completions.d/herald.fish",
    ] {
        let script = text(dir, script);
        assert!(
            script.contains("handler") && script.contains("reload"),
            "{script}"
        );
    }
}
