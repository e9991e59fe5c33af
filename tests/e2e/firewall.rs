//! The blocklist enforced by the kernel (`firewall.nftables`), with real
//! packets, inside network namespaces this test makes for itself.
//!
//! The test's main thread leaves the host's network namespace for a new one
//! (`unshare(CLONE_NEWNET)` on that thread only), so the broker, the node
//! and every `nft` it runs, all started from that thread, live there; a
//! second thread makes a namespace of its own for the peer. A veth pair joins
//! them: the node is 198.18.0.1 and 2001:2::1, the peer 198.18.0.2 and
//! 2001:2::2 (benchmarking ranges). The peer opens TCP connections to a
//! listener on the node's side, every few milliseconds: after a block
//! published on the broker reaches the node, its SYNs are dropped, and after
//! the unblock they flow again. The host's own namespace is never touched,
//! and both namespaces vanish with the threads and processes in them.
//!
//! Needs root, network namespaces, veth and the `nft` binary (`just test`
//! installs the nftables package when it can); without them the test says
//! SKIPPED and why, and passes.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use herald_tests::cluster::{Install, OwnBroker, TestCluster, free_port, ip_block};
use herald_tests::herald_bin;
use serde_json::json;

const NODE_V4: &str = "198.18.0.1";
const PEER_V4: &str = "198.18.0.2";
const NODE_V6: &str = "2001:2::1";
const PEER_V6: &str = "2001:2::2";
const TABLE: &str = "herald_test";
const LONG: Duration = Duration::from_secs(60);

/// Written to the process's stderr itself, so that it shows even where the
/// test harness captures the test's output.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn skipped(why: &str) {
    say(&format!("firewall: SKIPPED: {why}"));
}

/// Run `cmd` (in the calling thread's namespace); its stdout, or why not.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

/// Move the calling thread (only it) into a new network namespace.
fn unshare_net() -> Result<(), String> {
    // SAFETY: unshare only changes the calling thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "cannot make a network namespace (unshare: {}); needs root",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The peer: a thread in a namespace of its own that answers, for each
/// request, when a TCP connection to `addr` first did (or did not) get
/// through.
struct Peer {
    tid: i32,
    asks: mpsc::Sender<(SocketAddr, bool, mpsc::Sender<Option<Instant>>)>,
}

impl Peer {
    fn start() -> Result<Peer, String> {
        let (ready_tx, ready) = mpsc::channel();
        let (asks, requests) = mpsc::channel::<(SocketAddr, bool, mpsc::Sender<Option<Instant>>)>();
        std::thread::spawn(move || {
            if let Err(e) = unshare_net() {
                let _ = ready_tx.send(Err(e));
                return;
            }
            // SAFETY: gettid has no preconditions.
            let _ = ready_tx.send(Ok(unsafe { libc::gettid() }));
            for (addr, want, answer) in requests {
                let _ = answer.send(Peer::until(addr, want));
            }
        });
        let tid = ready.recv().map_err(|e| e.to_string())??;
        Ok(Peer { tid, asks })
    }

    /// Connect to `addr` every 5 ms until a connection gets through
    /// (`want`) or not (`!want`, 150 ms without an answer to the SYN);
    /// answers when that attempt started, or none within a minute.
    fn until(addr: SocketAddr, want: bool) -> Option<Instant> {
        let deadline = Instant::now() + LONG;
        while Instant::now() < deadline {
            let started = Instant::now();
            let through = TcpStream::connect_timeout(&addr, Duration::from_millis(150)).is_ok();
            if through == want {
                return Some(started);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// When a connection to `addr` first got through (`want`) or not.
    fn when(&self, addr: SocketAddr, want: bool) -> Instant {
        let (tx, rx) = mpsc::channel();
        self.asks.send((addr, want, tx)).unwrap();
        rx.recv().unwrap().unwrap_or_else(|| {
            panic!(
                "{addr}: connections {} within {LONG:?}",
                if want {
                    "never got through"
                } else {
                    "were never dropped"
                }
            )
        })
    }

    /// Run `args` in the peer's namespace.
    fn ip(&self, args: &[&str]) -> Result<String, String> {
        let ns = format!(
            "--net=/proc/{}/task/{}/ns/net",
            std::process::id(),
            self.tid
        );
        run(Command::new("nsenter").arg(ns).arg("ip").args(args))
    }
}

/// The node's namespace, set up from the calling thread: loopback, the
/// veth pair to the peer, addresses on both ends.
fn wire(peer: &Peer) -> Result<(), String> {
    ip(&["link", "set", "lo", "up"])?;
    ip(&[
        "link",
        "add",
        "hnode",
        "type",
        "veth",
        "peer",
        "name",
        "hpeer",
        "netns",
        &peer.tid.to_string(),
    ])
    .map_err(|e| format!("cannot make a veth pair: {e}"))?;
    ip(&["addr", "add", &format!("{NODE_V4}/24"), "dev", "hnode"])?;
    ip(&[
        "addr",
        "add",
        &format!("{NODE_V6}/64"),
        "dev",
        "hnode",
        "nodad",
    ])?;
    ip(&["link", "set", "hnode", "up"])?;
    peer.ip(&["link", "set", "lo", "up"])?;
    peer.ip(&["addr", "add", &format!("{PEER_V4}/24"), "dev", "hpeer"])?;
    peer.ip(&[
        "addr",
        "add",
        &format!("{PEER_V6}/64"),
        "dev",
        "hpeer",
        "nodad",
    ])?;
    peer.ip(&["link", "set", "hpeer", "up"])?;
    Ok(())
}

fn nft(args: &[&str]) -> String {
    run(Command::new(herald::effects::firewall::find_nft()).args(args)).unwrap_or_default()
}

/// The elements of one of herald's sets, as `nft list set` prints them.
fn set(name: &str) -> String {
    nft(&["list", "set", "inet", TABLE, name])
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[test]
fn blocks_reach_the_kernel_then_unblocks_and_restarts() {
    if !herald::effects::firewall::find_nft().is_absolute() {
        return skipped("the nft command is not installed (apt-get install nftables)");
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return skipped("the ip command is not installed (apt-get install iproute2)");
    }
    if Command::new("nsenter").arg("-V").output().is_err() {
        return skipped("the nsenter command is not installed (util-linux)");
    }
    // This thread, and what it starts, in a namespace of its own; the
    // harness's other threads stay where they are.
    let body = std::thread::spawn(|| -> Result<(), String> {
        unshare_net()?;
        let peer = Peer::start()?;
        wire(&peer)?;
        if let Err(e) =
            run(Command::new(herald::effects::firewall::find_nft()).args(["list", "ruleset"]))
        {
            return Err(format!("nft does not work here: {e}"));
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(scenario(&peer));
        Ok(())
    });
    match body.join() {
        Ok(Ok(())) => {}
        Ok(Err(why)) => skipped(&why),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn scenario(peer: &Peer) {
    let broker = OwnBroker::start(free_port());
    let mut cluster = TestCluster::on_broker(
        broker.address(),
        "firewall",
        1,
        &[Install::builtin("blocking")],
    )
    .await;
    cluster.settings = json!({"firewall": {"nftables": {"table": TABLE, "priority": -10}}});
    let group = cluster.broadcast_group("n1");

    // Something to connect to, on every address of the node.
    let listener = TcpListener::bind("[::]:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in listener.incoming() {});
    let v4: SocketAddr = format!("{NODE_V4}:{port}").parse().unwrap();
    let v6: SocketAddr = format!("[{NODE_V6}]:{port}").parse().unwrap();

    let mut node = cluster.start("n1");
    node.wait_for_log("firewall: table rebuilt", LONG);
    node.wait_assigned(&group);
    peer.when(v4, true);
    peer.when(v6, true);
    assert!(!set("blocked_v4").contains(PEER_V4));

    // A block published on the broker: the peer's packets are dropped.
    let published = Instant::now();
    cluster
        .publish(
            &format!("ip:{PEER_V4}"),
            &ip_block("b1", PEER_V4, "block", "firewall test"),
        )
        .await;
    let dropped = peer.when(v4, false);
    let block_ms = dropped.saturating_duration_since(published);
    say(&format!(
        "firewall: publish -> first dropped packet: {} (IPv4 block, commitInterval 100ms)",
        ms(block_ms)
    ));
    assert!(set("blocked_v4").contains(PEER_V4), "{}", set("blocked_v4"));
    peer.when(v6, true);

    // An expiring IPv6 block: dropped too, with the time it has left as
    // the element's timeout.
    let mut event = ip_block("b2", PEER_V6, "block", "expiring");
    event["body"]["expiresAt"] = json!(herald::event::now_ms() + 3_600_000);
    cluster.publish(&format!("ip:{PEER_V6}"), &event).await;
    peer.when(v6, false);
    // "2001:2::2 timeout 1h expires 59m59s800ms" (or 59m59s, under load).
    let v6_set = set("blocked_v6");
    let element = v6_set.split(PEER_V6).nth(1).unwrap_or_default();
    assert!(
        element.starts_with(" timeout 1h") || element.starts_with(" timeout 59m"),
        "{v6_set}"
    );

    // Unblocked: packets flow again.
    let published = Instant::now();
    cluster
        .publish(
            &format!("ip:{PEER_V4}"),
            &ip_block("u1", PEER_V4, "unblock", ""),
        )
        .await;
    let flowing = peer.when(v4, true);
    say(&format!(
        "firewall: publish -> packets flow again after the unblock: {}",
        ms(flowing.saturating_duration_since(published))
    ));
    assert!(!set("blocked_v4").contains(PEER_V4));
    peer.when(v6, false);

    // A restart rebuilds the table from the blocklist, whatever became of
    // it meanwhile (here: deleted by hand while the node was down).
    assert!(node.terminate().success());
    nft(&["delete", "table", "inet", TABLE]);
    peer.when(v6, true);
    let started = Instant::now();
    let mut node = cluster.start("n1");
    let dropped = peer.when(v6, false);
    say(&format!(
        "firewall: node start -> table rebuilt, first dropped packet: {}",
        ms(dropped.saturating_duration_since(started))
    ));
    node.wait_for_log("firewall: table rebuilt", LONG);
    peer.when(v4, true);

    // A table that vanishes under a running node (a flushed ruleset) comes
    // back within the check interval.
    nft(&["delete", "table", "inet", TABLE]);
    peer.when(v6, true);
    peer.when(v6, false);

    // `herald firewall flush` deletes the table (the node stopped first).
    assert!(node.terminate().success());
    let config = cluster.config("n1");
    let out = run(Command::new(herald_bin())
        .args(["firewall", "flush", "--config"])
        .arg(&config))
    .unwrap();
    assert!(
        out.contains(&format!("nftables table inet {TABLE} deleted")),
        "{out}"
    );
    assert!(!nft(&["list", "tables"]).contains(TABLE));
    peer.when(v6, true);
    // And again: nothing to delete is no error.
    run(Command::new(herald_bin())
        .args(["firewall", "flush", "--config"])
        .arg(&config))
    .unwrap();
}
