//! The node's side, end to end through real `herald run` processes and real
//! HTTP: IDLE streams, push delivery, the blocklist and certificate store,
//! hot reload, the token, and Stalwart's topic.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use herald_tests::api::Stream;
use herald_tests::cluster::{Install, NodeProcess, TOKEN, TestCluster, ip_block, wait_until};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get(node: &mut NodeProcess, path: &str) -> (StatusCode, Value) {
    let r = http()
        .get(format!("{}{path}", node.api()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn post(node: &mut NodeProcess, path: &str, body: &Value) -> (StatusCode, Value) {
    let r = http()
        .post(format!("{}{path}", node.api()))
        .bearer_auth(TOKEN)
        .body(body.to_string())
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn state_change(account: u32, change: u64) -> Value {
    json!({"kind": "state-change", "body": {"accountId": account, "changeId": change, "types": ["Email"]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_subscriber_on_one_node_hears_a_change_published_on_another() {
    let c = TestCluster::new("idle", 3, &[Install::builtin("mailbox")]).await;
    let mut a = c.start("a");
    let mut b = c.start("b");
    a.wait_assigned(&c.broadcast_group("a"));
    b.wait_assigned(&c.broadcast_group("b"));
    let mut five = Stream::open(&mut a, "?account=5").await;
    let mut six = Stream::open(&mut a, "?account=6").await;
    // How fast is a benchmark figure (`just bench latency`), not asserted
    // here: a loaded machine may miss any bound. This checks what arrives.
    for change in 1..7 {
        let (status, _) = post(&mut b, "/v1/events", &state_change(5, change)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let (event, data) = five.next().await;
        assert_eq!(event, "state-change");
        assert_eq!(data["accountId"], 5);
        assert_eq!(data["changeId"], change);
        assert_eq!(data["types"], json!(["Email"]));
    }
    // Account 6's subscriber heard none of account 5's changes.
    post(&mut b, "/v1/events", &state_change(6, 99)).await;
    assert_eq!(six.next().await.1["changeId"], 99);
}

/// A request the test push service received: subscription, body, `TTL`
/// and `Urgency`.
type Received = (String, Vec<u8>, String, String);

/// A Web Push endpoint on loopback that answers from a script and records
/// what it received.
#[derive(Clone, Default)]
struct PushServer {
    script: Arc<Mutex<Vec<u16>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl PushServer {
    async fn start(&self) -> String {
        use axum::extract::{Path, State};
        use axum::http::HeaderMap;
        let app = axum::Router::new()
            .route(
                "/sub/{id}",
                axum::routing::post(
                    |State(s): State<PushServer>,
                     Path(id): Path<String>,
                     h: HeaderMap,
                     body: axum::body::Bytes| async move {
                        let header = |n: &str| {
                            h.get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string()
                        };
                        s.received.lock().unwrap().push((
                            id,
                            body.to_vec(),
                            header("ttl"),
                            header("urgency"),
                        ));
                        let mut script = s.script.lock().unwrap();
                        let status = if script.is_empty() {
                            201
                        } else {
                            script.remove(0)
                        };
                        StatusCode::from_u16(status).unwrap()
                    },
                ),
            )
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    fn requests_for(&self, id: &str) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == id)
            .count()
    }
}

async fn handled(nodes: &mut [NodeProcess], handler: &str) -> u64 {
    let mut total = 0;
    for n in nodes {
        let (_, v) = get(n, "/v1/handlers").await;
        for h in v["handlers"].as_array().unwrap() {
            if h["name"] == handler {
                total += h["counters"]["handled"].as_u64().unwrap();
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn push_is_delivered_once_per_cluster_retried_on_503_and_stopped_by_410() {
    let server = PushServer::default();
    let base = server.start().await;
    let mut c = TestCluster::new("push", 3, &[Install::builtin("push")]).await;
    // The test's push service listens on loopback.
    c.settings = json!({"push": {"allowPrivate": true}});
    let mut nodes: Vec<_> = ["a", "b", "c"].iter().map(|n| c.start(n)).collect();
    for n in &mut nodes {
        n.wait_assigned(&c.shared_group());
    }
    let push = |id: &str, sub: &str| {
        json!({"v":1,"id":id,"kind":"push","origin":"test","ts":1,
            "body":{"accountId":5,"endpoint":format!("{base}/sub/{sub}"),"payload":"hello","ttl":90,"urgency":"high"}})
    };
    c.publish("account:5", &push("p1", "once")).await;
    wait_until("delivered", LONG, || server.requests_for("once") >= 1);
    // Every node has finished with it before counting requests.
    wait_until("handled", LONG, || {
        futures::executor::block_on(handled(&mut nodes, "push")) >= 1
    });
    assert_eq!(server.requests_for("once"), 1, "delivered more than once");
    {
        let r = server.received.lock().unwrap();
        // No subscription keys: the payload is not sent (tests/push.rs
        // covers encrypted messages).
        assert_eq!(
            (r[0].1.as_slice(), r[0].2.as_str(), r[0].3.as_str()),
            (&b""[..], "90", "high")
        );
    }

    // 503 then 200: retried, delivered.
    server.script.lock().unwrap().extend([503]);
    c.publish("account:5", &push("p2", "flaky")).await;
    wait_until("retried and delivered", LONG, || {
        server.requests_for("flaky") == 2
    });

    // 410: no more retries, and the cluster hears that the subscription is gone.
    let gone_reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &c.broker)
        .set("group.id", herald_tests::cluster::unique("gone-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    gone_reader.subscribe(&[&c.topic]).unwrap();
    server.script.lock().unwrap().extend([410]);
    c.publish("account:5", &push("p3", "gone")).await;
    let deadline = Instant::now() + LONG;
    loop {
        assert!(Instant::now() < deadline, "no push-subscription-gone event");
        let m = tokio::time::timeout(LONG, gone_reader.recv())
            .await
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        if v["kind"] == "push-subscription-gone" {
            assert_eq!(v["body"]["accountId"], 5);
            assert_eq!(v["body"]["endpoint"], format!("{base}/sub/gone"));
            break;
        }
    }
    assert_eq!(
        server.requests_for("gone"),
        1,
        "a gone subscription was retried"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_blocklist_survives_a_restart_and_expiries_take_effect() {
    let c = TestCluster::new("blocklist", 2, &[Install::builtin("blocking")]).await;
    let mut node = c.start("a");
    let group = c.broadcast_group("a");
    node.wait_assigned(&group);
    let expires = herald::event::now_ms() + 2_000;
    let mut short = ip_block("short", "198.51.100.2", "block", "brief");
    short["body"]["expiresAt"] = json!(expires);
    c.publish(
        "ip:198.51.100.1",
        &ip_block("long", "198.51.100.1", "block", "abuse"),
    )
    .await;
    c.publish(
        "ip:2001:db8::/48",
        &ip_block("net", "2001:db8::/48", "block", "abuse"),
    )
    .await;
    c.publish("ip:198.51.100.2", &short).await;
    wait_until("all three blocked", LONG, || node.blocklist().len() == 3);
    let (_, v) = get(&mut node, "/v1/blocklist/2001:db8::77").await;
    assert_eq!(v["blocked"], true, "{v}");
    assert_eq!(v["entry"]["network"], "2001:db8::/48");

    assert!(node.terminate().success());
    let mut node = c.start("a");
    node.wait_assigned(&group);
    let (_, v) = get(&mut node, "/v1/blocklist/198.51.100.1").await;
    assert_eq!(v["blocked"], true, "lost in the restart: {v}");
    let (_, v) = get(&mut node, "/v1/blocklist").await;
    let listed: BTreeSet<String> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["network"].as_str().unwrap().to_string())
        .collect();
    assert!(listed.contains("198.51.100.1") && listed.contains("2001:db8::/48"));

    wait_until("the short block expired", Duration::from_secs(10), || {
        let (_, v) = futures::executor::block_on(get(&mut node, "/v1/blocklist/198.51.100.2"));
        v["blocked"] == false
    });
    assert!(herald::event::now_ms() >= expires, "expired early");
    wait_until("the export dropped it too", Duration::from_secs(10), || {
        !node.blocklist().contains("198.51.100.2")
    });
}

use herald_tests::cert_fixture as fixture;

#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_checked_stored_served_and_announced() {
    let c = TestCluster::new("certs", 1, &[Install::builtin("certificate")]).await;
    let mut node = c.start("a");
    node.wait_assigned(&c.broadcast_group("a"));
    let mut all = Stream::open(&mut node, "").await;
    let cert = herald_tests::ec_certificate;
    c.publish("domain:mail.example.com", &cert("bad", "other.key"))
        .await;
    wait_until("the mismatch was rejected", LONG, || {
        let (_, v) = futures::executor::block_on(get(&mut node, "/v1/handlers"));
        v["handlers"][0]["counters"]["rejected"] == 1
    });
    let (status, _) = get(&mut node, "/v1/certificates/mail.example.com").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a mismatched key was installed"
    );
    assert!(!node.state.join("certs/mail.example.com").exists());

    c.publish("domain:mail.example.com", &cert("good", "ec.key"))
        .await;
    let (event, data) = all.next().await;
    assert_eq!(event, "certificate");
    assert_eq!(data["domains"], json!(["mail.example.com"]));
    let (status, v) = get(&mut node, "/v1/certificates/MAIL.example.com").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["chainPem"], fixture("ec.crt"));
    assert_eq!(v["notAfter"], data["notAfter"]);
    use std::os::unix::fs::PermissionsExt;
    let key = node.state.join("certs/mail.example.com/privkey.pem");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", key.display());
    assert_eq!(std::fs::read_to_string(&key).unwrap(), fixture("ec.key"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_replaced_while_events_flow_handles_each_event_exactly_once() {
    let c = TestCluster::new("reload", 2, &[Install::builtin("blocking")]).await;
    let mut node = c.start("a");
    node.wait_assigned(&c.broadcast_group("a"));
    let folder = c.dir.path().join("handlers");
    let (_, before) = get(&mut node, "/v1/handlers").await;
    let old_sha = before["handlers"][0]["sha256"].clone();

    const N: u32 = 3000;
    let ip = |i: u32| format!("10.9.{}.{}", i / 256, i % 256);
    let events: Vec<_> = (0..N)
        .map(|i| (ip(i), ip_block(&format!("r{i}"), &ip(i), "block", "ok")))
        .collect();
    let (first, second) = events.split_at(N as usize / 2);
    c.publish_all(first).await;
    // A new version of `blocking` (another build, same behaviour for these
    // events), dropped in while the node works.
    let new = herald_tests::handler("fixtures/flaky");
    std::fs::copy(&new, folder.join("blocking.wasm.tmp")).unwrap();
    std::fs::rename(
        folder.join("blocking.wasm.tmp"),
        folder.join("blocking.wasm"),
    )
    .unwrap();
    c.publish_all(second).await;
    wait_until("the new version is loaded", LONG, || {
        let (_, v) = futures::executor::block_on(get(&mut node, "/v1/handlers"));
        v["handlers"][0]["sha256"] != old_sha
    });
    wait_until("every event handled", LONG, || {
        node.blocklist().len() == N as usize
    });
    let (_, v) = get(&mut node, "/v1/handlers").await;
    assert_eq!(
        v["handlers"][0]["counters"]["handled"], N,
        "an event was lost or handled twice: {v}"
    );

    // A corrupt replacement leaves the running version in place.
    let new_sha = v["handlers"][0]["sha256"].clone();
    std::fs::write(folder.join("blocking.wasm"), b"\0asm not really").unwrap();
    node.wait_for_log("handler did not load", LONG);
    let (_, v) = get(&mut node, "/v1/handlers").await;
    assert_eq!(v["handlers"][0]["sha256"], new_sha);
    c.publish("k", &ip_block("after", "203.0.113.200", "block", "ok"))
        .await;
    wait_until("still handling", LONG, || {
        node.blocklist().contains("203.0.113.200")
    });
    // A reload by hand (`herald handler reload`) reports the failure too.
    let (status, report) = post(&mut node, "/v1/handlers/reload", &json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{report}");
    assert!(
        report["failed"][0][1]
            .as_str()
            .unwrap()
            .contains("not a valid WebAssembly component")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_wants_the_token_and_stays_on_loopback() {
    let c = TestCluster::new("token", 1, &[Install::builtin("blocking")]).await;
    let mut node = c.start("a");
    let api = node.api();
    for path in ["/v1/blocklist", "/v1/handlers", "/metrics", "/v1/stream"] {
        let r = http().get(format!("{api}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} without a token");
        let r = http()
            .get(format!("{api}{path}"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} with a wrong token");
    }
    let r = http()
        .post(format!("{api}/v1/events"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http().get(format!("{api}/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(api.starts_with("http://127.0.0.1:"));
    node.wait_assigned(&c.broadcast_group("a"));
    let (status, v) = get(&mut node, "/metrics").await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // Asked to listen on every address without allowing it: refused.
    let mut open = c.settings.clone();
    open["api"] = json!({"listen": "0.0.0.0:0"});
    let mut c2 = c;
    c2.settings = open;
    let config = c2.config("wide");
    let out = std::process::Command::new(herald_tests::herald_bin())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api.listen") || err.contains("allowNonLoopback"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalwart_record_wakes_idle_and_herald_speaks_stalwart() {
    let mut c = TestCluster::new("stalwart", 1, &[Install::builtin("mailbox")]).await;
    let stwt = c.enable_stalwart().await;
    let mut node = c.start("a");
    node.wait_assigned(&c.broadcast_group("a"));
    let mut five = Stream::open(&mut node, "?account=5").await;

    // A Stalwart node (id 1) publishes a record of the wire format's worked example.
    c.publish_stalwart(
        &stwt,
        1,
        vec![herald::event::Body::StateChange(
            herald::event::StateChange {
                account_id: 5,
                change_id: 300,
                types: herald::event::DataTypes::from_names(["Email", "Mailbox", "Thread"])
                    .unwrap(),
            },
        )],
    )
    .await;
    let (event, data) = five.next().await;
    assert_eq!(event, "state-change");
    assert_eq!(data["changeId"], 300);
    assert_eq!(data["types"], json!(["Email", "Mailbox", "Thread"]));

    // herald publishes 150 events as Stalwart would: two records, no key.
    let events: Vec<Value> = (0..150)
        .map(|i| json!({"kind":"push-server-update","body":{"accountId": i}}))
        .collect();
    let (status, v) = post(&mut node, "/v1/stalwart/events", &json!(events)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["records"].as_array().unwrap().len(), 2);
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &c.broker)
        .set("group.id", herald_tests::cluster::unique("stwt-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[&stwt]).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = tokio::time::timeout(LONG, reader.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(m.key().is_none(), "Stalwart records have no key");
        let decoded = herald::codec::stalwart::decode(m.payload().unwrap()).unwrap();
        assert!(decoded.error.is_none());
        seen.push((decoded.node_id, decoded.events.len()));
    }
    assert_eq!(seen, vec![(1, 1), (900, 100), (900, 50)]);
}
