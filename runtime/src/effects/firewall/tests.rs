//! The generated nft transactions, and (where nft and network namespaces
//! are available) what the kernel makes of them.

use super::*;
use crate::config::NftHook;

const NOW: u64 = 1_800_000_000_000;

fn cfg() -> Nftables {
    Nftables::default()
}

/// A blocklist with IPv4 and IPv6 addresses and prefixes, nested entries,
/// an IPv4-mapped one, expiring ones (one far off, one already expired).
fn sample(dir: &Path) -> Blocklist {
    let b = Blocklist::open(dir).unwrap();
    b.block("203.0.113.7", "permanent", None).unwrap();
    b.block(
        "198.51.100.0/24",
        "an hour and a half second",
        Some(NOW + 3_600_500),
    )
    .unwrap();
    b.block("198.51.100.9", "inside the /24", None).unwrap();
    b.block("::ffff:192.0.2.1", "IPv4-mapped", None).unwrap();
    b.block("2001:db8::/48", "permanent prefix", None).unwrap();
    b.block("2001:db8::1", "inside the /48", Some(NOW + 10_000))
        .unwrap();
    b.block("2001:db8:1::5", "expiring", Some(NOW + 90_001))
        .unwrap();
    b.block(
        "2001:db8:2::/64",
        "two years",
        Some(NOW + 2 * 365 * 86_400_000),
    )
    .unwrap();
    b.block("203.0.113.8", "expired already", Some(NOW - 1))
        .unwrap();
    b
}

fn elements(b: &Blocklist, family: NftFamily) -> Elements {
    Elements::of(&b.in_force(NOW).1, family)
}

#[test]
fn the_rebuild_batch_for_v4_v6_prefixes_and_expiring_entries() {
    let dir = tempfile::tempdir().unwrap();
    let b = sample(dir.path());
    let batch = rebuild_batch(&cfg(), &elements(&b, NftFamily::Inet), NOW);
    let expected = json!({"nftables": [
        {"add": {"table": {"family": "inet", "name": "herald"}}},
        {"delete": {"table": {"family": "inet", "name": "herald"}}},
        {"add": {"table": {"family": "inet", "name": "herald"}}},
        {"add": {"set": {"family": "inet", "table": "herald", "name": "blocked_v4",
            "type": "ipv4_addr", "flags": ["interval", "timeout"]}}},
        {"add": {"set": {"family": "inet", "table": "herald", "name": "blocked_v6",
            "type": "ipv6_addr", "flags": ["interval", "timeout"]}}},
        {"add": {"chain": {"family": "inet", "table": "herald", "name": "blocklist",
            "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}}},
        {"add": {"rule": {"family": "inet", "table": "herald", "chain": "blocklist", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": "@blocked_v4"}},
            {"counter": null}, {"drop": null}]}}},
        {"add": {"rule": {"family": "inet", "table": "herald", "chain": "blocklist", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                       "right": "@blocked_v6"}},
            {"counter": null}, {"drop": null}]}}},
        // In address order; the /24 covers .9; the mapped address is IPv4;
        // the expired .8 is not there; 3600.5 s left is 3601 s.
        {"add": {"element": {"family": "inet", "table": "herald", "name": "blocked_v4", "elem": [
            "192.0.2.1",
            {"elem": {"val": {"prefix": {"addr": "198.51.100.0", "len": 24}}, "timeout": 3601}},
            "203.0.113.7",
        ]}}},
        // The /48 covers ::1; two years is longer than a kernel timeout.
        {"add": {"element": {"family": "inet", "table": "herald", "name": "blocked_v6", "elem": [
            {"prefix": {"addr": "2001:db8::", "len": 48}},
            {"elem": {"val": "2001:db8:1::5", "timeout": 91}},
            {"prefix": {"addr": "2001:db8:2::", "len": 64}},
        ]}}},
    ]});
    assert_eq!(batch, expected, "{batch:#}");
}

#[test]
fn a_table_of_one_family_holds_that_versions_entries() {
    let dir = tempfile::tempdir().unwrap();
    let b = sample(dir.path());
    let ip = elements(&b, NftFamily::Ip);
    assert_eq!(ip.v4.len(), 3);
    assert!(ip.v6.is_empty());
    let cfg = Nftables {
        table: "edge_1".into(),
        family: NftFamily::Ip6,
        hook: NftHook::Prerouting,
        priority: -300,
    };
    let batch = rebuild_batch(&cfg, &elements(&b, NftFamily::Ip6), NOW).to_string();
    assert!(
        !batch.contains("blocked_v4") && !batch.contains("\"ip\""),
        "{batch}"
    );
    assert!(
        batch.contains(r#""hook":"prerouting","prio":-300"#)
            && batch.contains(r#"{"family":"ip6","name":"edge_1"}"#),
        "{batch}"
    );
}

#[test]
fn an_update_deletes_and_adds_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let b = sample(dir.path());
    let from = elements(&b, NftFamily::Inet);
    assert_eq!(update_batch(&cfg(), &from, &from, NOW), None);
    // The /24 goes (uncovering .9), 203.0.113.7 gets an expiry, a new
    // IPv6 address comes.
    b.unblock("198.51.100.0/24").unwrap();
    b.block("203.0.113.7", "now expiring", Some(NOW + 60_000))
        .unwrap();
    b.block("2001:db8:5::1", "new", None).unwrap();
    let to = elements(&b, NftFamily::Inet);
    let batch = update_batch(&cfg(), &from, &to, NOW).unwrap();
    let el = |op: &str, set: &str, elem: Value| json!({op: {"element": {"family": "inet", "table": "herald", "name": set, "elem": elem}}});
    let gone = json!([{"prefix": {"addr": "198.51.100.0", "len": 24}}, "203.0.113.7"]);
    let expected = json!({"nftables": [
        // Added first: a delete of an element the kernel timed out fails.
        el("add", "blocked_v4", gone.clone()),
        el("delete", "blocked_v4", gone),
        el("add", "blocked_v4", json!([
            "198.51.100.9",
            {"elem": {"val": "203.0.113.7", "timeout": 60}},
        ])),
        el("add", "blocked_v6", json!(["2001:db8:5::1"])),
    ]});
    assert_eq!(batch, expected, "{batch:#}");
}

#[test]
fn the_flush_batch_deletes_the_table_whether_or_not_it_exists() {
    assert_eq!(
        flush_batch(&cfg()),
        json!({"nftables": [
            {"add": {"table": {"family": "inet", "name": "herald"}}},
            {"delete": {"table": {"family": "inet", "name": "herald"}}},
        ]})
    );
}

#[tokio::test]
async fn without_nft_a_sync_fails_cleanly_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let b = sample(dir.path());
    let fw = Firewall::with_nft(cfg(), dir.path().join("no-such-nft"));
    assert!(!fw.sync(&b).await);
    assert!(!fw.in_sync(&b).await);
    let s = fw.state.lock().await;
    assert_eq!(s.failures, 1);
    let error = s.last_error.clone().unwrap();
    assert!(error.contains("install the nftables package"), "{error}");
}

/// An `nft` that runs inside a network namespace of its own (kept by a
/// `sleep` holder), or why there is none.
struct Sandbox {
    holder: std::process::Child,
    /// The namespace, as a path for `nsenter --net=`.
    ns: String,
    wrapper: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Result<Sandbox, String> {
        use std::os::unix::fs::PermissionsExt;
        let nft = find_nft();
        if !nft.is_absolute() {
            return Err("nft is not installed".into());
        }
        let holder = std::process::Command::new("unshare")
            .args(["-n", "sleep", "120"])
            .spawn()
            .map_err(|e| format!("cannot run unshare: {e}"))?;
        let ns = format!("/proc/{}/ns/net", holder.id());
        let mut holder = holder;
        // Wait until the holder is in its own namespace.
        let own = std::fs::read_link("/proc/self/ns/net").ok();
        for _ in 0..200 {
            if let Some(status) = holder.try_wait().ok().flatten() {
                return Err(format!(
                    "unshare -n failed ({status}): no network namespaces"
                ));
            }
            if std::fs::read_link(&ns).ok().is_some_and(|l| Some(l) != own) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let dir = tempfile::tempdir().unwrap();
        let wrapper = dir.path().join("nft");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec nsenter --net={ns} {} \"$@\"\n",
                nft.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let probe = std::process::Command::new(&wrapper)
            .args(["list", "ruleset"])
            .output()
            .map_err(|e| e.to_string())?;
        if !probe.status.success() {
            let _ = holder.kill();
            return Err(format!(
                "nft in a namespace: {}",
                String::from_utf8_lossy(&probe.stderr).trim()
            ));
        }
        Ok(Sandbox {
            holder,
            ns,
            wrapper,
            _dir: dir,
        })
    }

    fn list(&self) -> String {
        let out = std::process::Command::new(&self.wrapper)
            .args(["list", "ruleset"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[tokio::test]
async fn a_sync_without_permission_says_what_is_needed() {
    let sandbox = match Sandbox::new() {
        Ok(s) => s,
        Err(why) => {
            eprintln!("SKIPPED a_sync_without_permission_says_what_is_needed: {why}");
            return;
        }
    };
    if std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED a_sync_without_permission_says_what_is_needed: no setpriv");
        return;
    }
    // nft as nobody, and inside the sandbox's namespace all the same.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let unprivileged = dir.path().join("nft");
    std::fs::write(
        &unprivileged,
        format!(
            "#!/bin/sh\nexec nsenter --net={} setpriv --reuid=65534 --regid=65534 \
             --clear-groups {} \"$@\"\n",
            sandbox.ns,
            find_nft().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&unprivileged, std::fs::Permissions::from_mode(0o755)).unwrap();
    let b = Blocklist::open(dir.path()).unwrap();
    b.block("203.0.113.7", "x", None).unwrap();
    let fw = Firewall::with_nft(cfg(), unprivileged);
    assert!(!fw.sync(&b).await);
    let error = fw.state.lock().await.last_error.clone().unwrap();
    assert!(error.contains("CAP_NET_ADMIN"), "{error}");
    assert_eq!(sandbox.list().trim(), "");
}

#[tokio::test]
async fn the_kernel_takes_the_batches() {
    let sandbox = match Sandbox::new() {
        Ok(s) => s,
        Err(why) => {
            eprintln!("SKIPPED the_kernel_takes_the_batches: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let b = Blocklist::open(dir.path()).unwrap();
    let now = now_ms();
    b.block("203.0.113.7", "x", None).unwrap();
    b.block("198.51.100.0/24", "x", Some(now + 3_600_000))
        .unwrap();
    b.block("198.51.100.9", "x", None).unwrap();
    b.block("2001:db8::/48", "x", None).unwrap();
    b.block("2001:db8:1::5", "x", Some(now + 1_500)).unwrap();
    let fw = Firewall::with_nft(cfg(), sandbox.wrapper.clone());
    assert!(fw.sync(&b).await, "rebuild");
    let listed = sandbox.list();
    for want in [
        "203.0.113.7",
        "198.51.100.0/24 timeout 1h",
        "2001:db8::/48",
        "2001:db8:1::5 timeout 2s",
        "ip saddr @blocked_v4 counter packets 0 bytes 0 drop",
        "hook input priority filter - 10",
    ] {
        assert!(listed.contains(want), "{want}: {listed}");
    }
    // The kernel times 2001:db8:1::5 out before herald unblocks it: the
    // update that deletes it must still go through.
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    assert!(!sandbox.list().contains("2001:db8:1::5"));
    b.unblock("2001:db8:1::5").unwrap();
    b.unblock("198.51.100.0/24").unwrap();
    b.block("203.0.113.7", "x", Some(now_ms() + 60_000))
        .unwrap();
    assert!(fw.sync(&b).await, "update");
    assert_eq!(fw.state.lock().await.failures, 0, "no rebuild was needed");
    let listed = sandbox.list();
    assert!(
        listed.contains("198.51.100.9") && !listed.contains("198.51.100.0/24"),
        "{listed}"
    );
    assert!(listed.contains("203.0.113.7 timeout 1m"), "{listed}");
    // A restart rebuilds whatever the table held.
    let again = Firewall::with_nft(cfg(), sandbox.wrapper.clone());
    assert!(again.sync(&b).await);
    let rebuilt = sandbox.list();
    for want in ["198.51.100.9", "203.0.113.7 timeout 1m", "2001:db8::/48"] {
        assert!(rebuilt.contains(want), "{want}: {rebuilt}");
    }
    assert_eq!(rebuilt.matches("table inet herald").count(), 1, "{rebuilt}");
    // Gone when flushed.
    apply(&sandbox.wrapper, &flush_batch(&cfg())).await.unwrap();
    apply(&sandbox.wrapper, &flush_batch(&cfg())).await.unwrap();
    assert_eq!(sandbox.list().trim(), "");
}
