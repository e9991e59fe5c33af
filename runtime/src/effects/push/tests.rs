//! The push client against a scripted push service on loopback.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::delivered::{COMPACT_MIN_LINES, KEEP};
use super::*;

/// One answer of the test push service.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    delay: Duration,
}

fn reply(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        delay: Duration::ZERO,
    }
}

impl Reply {
    fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_owned()));
        self
    }

    fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// A request the test push service received.
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

#[derive(Clone)]
struct Service {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    fallback: Reply,
}

/// A push service on 127.0.0.1 answering `script` in order, then
/// `fallback` forever.
struct TestServer {
    base: String,
    service: Service,
}

impl TestServer {
    async fn start(script: Vec<Reply>, fallback: Reply) -> TestServer {
        let service = Service {
            seen: Arc::default(),
            script: Arc::new(Mutex::new(script.into())),
            fallback,
        };
        let app = Router::new().fallback(answer).with_state(service.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        TestServer { base, service }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn requests(&self) -> usize {
        self.service.seen.lock().unwrap().len()
    }
}

async fn answer(
    State(service): State<Service>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    service.seen.lock().unwrap().push(Seen {
        path: uri.path().to_owned(),
        headers,
        body,
        at: Instant::now(),
    });
    let reply = service
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| service.fallback.clone());
    tokio::time::sleep(reply.delay).await;
    let mut response = StatusCode::from_u16(reply.status).unwrap().into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

fn settings() -> PushSettings {
    PushSettings {
        attempts: 3,
        max_retry_after: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        // The scripted push service listens on loopback.
        allow_private: true,
        ..PushSettings::default()
    }
}

fn client(dir: &Path, settings: PushSettings) -> PushClient {
    PushClient::open(dir, settings)
        .unwrap()
        .with_backoff(Duration::from_millis(10))
}

#[tokio::test]
async fn delivers_once_and_remembers_across_reopen() {
    let server = TestServer::start(vec![], reply(201)).await;
    let dir = tempfile::tempdir().unwrap();
    let push = client(dir.path(), settings());
    let endpoint = server.url("/sub/abc");

    let first = push
        .deliver("ev-1", &Message::new(&endpoint, b"hi", 60, Urgency::Normal))
        .await;
    assert_eq!(
        first,
        Ok(Delivered::Now {
            status: 201,
            attempts: 1
        })
    );
    assert_eq!(push.remembered(), 1);
    let again = push
        .deliver("ev-1", &Message::new(&endpoint, b"hi", 60, Urgency::Normal))
        .await;
    assert_eq!(again, Ok(Delivered::Before));
    assert_eq!(server.requests(), 1);
    drop(push);

    let reopened = client(dir.path(), settings());
    assert_eq!(reopened.remembered(), 1);
    let after = reopened
        .deliver("ev-1", &Message::new(&endpoint, b"hi", 60, Urgency::Normal))
        .await;
    assert_eq!(after, Ok(Delivered::Before));
    assert_eq!(server.requests(), 1);
    // A different id is delivered, and appended on its own line.
    let other = reopened
        .deliver("ev-2", &Message::new(&endpoint, b"hi", 60, Urgency::Normal))
        .await;
    assert_eq!(
        other,
        Ok(Delivered::Now {
            status: 201,
            attempts: 1
        })
    );
    assert_eq!(server.requests(), 2);
    let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
    let ids: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
    assert_eq!(ids, ["ev-1", "ev-2"]);
}

#[tokio::test]
async fn sends_web_push_headers_and_no_body_without_keys() {
    let server = TestServer::start(vec![], reply(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let push = client(dir.path(), settings());
    let payload = [0u8, 1, 2, 255, 254, b'x'];

    let cases = [
        (Urgency::VeryLow, "very-low"),
        (Urgency::Low, "low"),
        (Urgency::Normal, "normal"),
        (Urgency::High, "high"),
    ];
    for (i, (urgency, _)) in cases.iter().enumerate() {
        let id = format!("ev-{i}");
        let endpoint = server.url("/sub/xyz");
        let message = Message::new(&endpoint, &payload, 3600 + i as u32, *urgency);
        let got = push.deliver(&id, &message).await;
        assert_eq!(
            got,
            Ok(Delivered::Now {
                status: 200,
                attempts: 1
            })
        );
    }
    let seen = server.service.seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    for (i, (request, (_, name))) in seen.iter().zip(cases).enumerate() {
        assert_eq!(request.path, "/sub/xyz");
        assert_eq!(request.headers["ttl"], (3600 + i).to_string().as_str());
        assert_eq!(request.headers["urgency"], name);
        assert!(request.headers.get("content-encoding").is_none());
        assert!(request.headers.get("topic").is_none());
        assert_eq!(request.headers["content-length"], "0");
        assert!(request.body.is_empty(), "a payload without keys was sent");
        let auth = request.headers["authorization"].to_str().unwrap();
        assert!(auth.starts_with("vapid t="), "{auth}");
        assert!(
            auth.ends_with(&format!(", k={}", push.vapid_public_key())),
            "{auth}"
        );
    }
}

/// A subscription's keys whose private half the test keeps.
fn subscriber() -> (p256::SecretKey, PushKeys) {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let key = p256::SecretKey::random(&mut rand_core::OsRng);
    let keys = PushKeys {
        p256dh: ece::b64url(key.public_key().to_encoded_point(false).as_bytes()),
        auth: ece::b64url(&[9; 16]),
    };
    (key, keys)
}

#[tokio::test]
async fn encrypts_for_the_keys_and_sends_the_topic() {
    let server = TestServer::start(vec![], reply(201)).await;
    let dir = tempfile::tempdir().unwrap();
    let push = client(dir.path(), settings());
    let (_, keys) = subscriber();
    let endpoint = server.url("/sub/k");
    let message = Message {
        keys: Some(&keys),
        topic: Some("new-mail_1"),
        ..Message::new(
            &endpoint,
            b"{\"type\":\"StateChange\"}",
            60,
            Urgency::Normal,
        )
    };
    push.deliver("ev", &message).await.unwrap();
    let seen = server.service.seen.lock().unwrap();
    let request = &seen[0];
    assert_eq!(request.headers["content-encoding"], "aes128gcm");
    assert_eq!(request.headers["content-type"], "application/octet-stream");
    assert_eq!(request.headers["topic"], "new-mail_1");
    // salt, rs = 4096, idlen = 65, a P-256 point, then 22 + 1 + 16 bytes.
    assert_eq!(request.body.len(), 86 + 22 + 1 + 16);
    assert_eq!(&request.body[16..22], &[0, 0, 0x10, 0, 65, 4]);
    assert!(!request.body.windows(9).any(|w| w == b"StateChan"));
}

#[tokio::test]
async fn bad_keys_topics_and_payloads_are_invalid_without_a_request() {
    let server = TestServer::start(vec![], reply(201)).await;
    let dir = tempfile::tempdir().unwrap();
    let push = client(dir.path(), settings());
    let (_, good) = subscriber();
    let endpoint = server.url("/sub/bad");
    let big = vec![b'x'; ece::MAX_PAYLOAD + 1];
    let mut point = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        &good.p256dh,
    )
    .unwrap();
    point[64] ^= 1;
    let bad_point = PushKeys {
        p256dh: ece::b64url(&point),
        ..good.clone()
    };
    let cases: Vec<(Message, &str)> = vec![
        (
            Message {
                keys: Some(&bad_point),
                ..Message::new(&endpoint, b"p", 60, Urgency::Normal)
            },
            "field `keys.p256dh`",
        ),
        (
            Message {
                keys: Some(&good),
                ..Message::new(&endpoint, &big, 60, Urgency::Normal)
            },
            "field `payload`: 3994 bytes",
        ),
        (
            Message {
                topic: Some("has space"),
                ..Message::new(&endpoint, b"", 60, Urgency::Normal)
            },
            "field `topic`",
        ),
        (
            Message {
                topic: Some("a-topic-of-thirty-three-characters"),
                ..Message::new(&endpoint, b"", 60, Urgency::Normal)
            },
            "field `topic`",
        ),
    ];
    for (message, want) in cases {
        let got = push.deliver("ev", &message).await;
        let Err(EffectError::Invalid(why)) = got else {
            panic!("expected invalid ({want}), got {got:?}");
        };
        assert!(why.contains(want), "{why}");
    }
    assert_eq!(server.requests(), 0);
    assert_eq!(push.remembered(), 0);
}

#[test]
fn a_bad_vapid_key_file_stops_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("vapid.key");
    std::fs::write(&key, "not a key").unwrap();
    let err = PushClient::open(dir.path(), settings()).err().unwrap();
    assert!(err.to_string().contains("VAPID key file"), "{err:#}");
    // The file the settings name, not the state directory's.
    let named = dir.path().join("named.key");
    let push = PushClient::open(
        dir.path(),
        PushSettings {
            vapid_key_file: Some(named.clone()),
            ..settings()
        },
    )
    .unwrap();
    let again = Vapid::load(&named, None).unwrap();
    assert_eq!(push.vapid_public_key(), again.public_key());
}

#[tokio::test]
async fn retries_a_5xx() {
    let server = TestServer::start(vec![reply(503)], reply(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let push = client(dir.path(), settings());
    let got = push
        .deliver(
            "ev",
            &Message::new(&server.url("/s"), b"p", 60, Urgency::High),
        )
        .await;
    assert_eq!(
        got,
        Ok(Delivered::Now {
            status: 200,
            attempts: 2
        })
    );
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn waits_what_retry_after_asks() {
    let server = TestServer::start(vec![reply(429).header("retry-after", "1")], reply(202)).await;
    let dir = tempfile::tempdir().unwrap();
    let push = client(dir.path(), settings());
    let started = Instant::now();
    let got = push
        .deliver(
            "ev",
            &Message::new(&server.url("/s"), b"p", 60, Urgency::Low),
        )
        .await;
    assert_eq!(
        got,
        Ok(Delivered::Now {
            status: 202,
            attempts: 2
        })
    );
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    let seen = server.service.seen.lock().unwrap();
    assert!(seen[1].at - seen[0].at >= Duration::from_millis(950));
}

#[tokio::test]
async fn does_not_wait_for_a_long_retry_after() {
    let server = TestServer::start(vec![], reply(503).header("retry-after", "3600")).await;
    let dir = tempfile::tempdir().unwrap();
    let push = client(dir.path(), settings());
    let started = Instant::now();
    let got = push
        .deliver(
            "ev",
            &Message::new(&server.url("/s"), b"p", 60, Urgency::Normal),
        )
        .await;
    let Err(EffectError::Transient(why)) = got else {
        panic!("expected transient, got {got:?}");
    };
    assert!(why.contains("503") && why.contains("3600"), "{why}");
    // Far below the hour it was asked to wait: a guard, not a timing.
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(server.requests(), 1);
    assert_eq!(push.remembered(), 0);
}

#[tokio::test]
async fn gives_up_after_the_last_attempt() {
    let server = TestServer::start(vec![], reply(500)).await;
    let dir = tempfile::tempdir().unwrap();
    let push = client(dir.path(), settings());
    let got = push
        .deliver(
            "ev",
            &Message::new(&server.url("/s"), b"p", 60, Urgency::Normal),
        )
        .await;
    let Err(EffectError::Transient(why)) = got else {
        panic!("expected transient, got {got:?}");
    };
    assert!(why.contains("500") && why.contains("3 attempts"), "{why}");
    assert_eq!(server.requests(), 3);
    assert_eq!(push.remembered(), 0);
}

#[tokio::test]
async fn gone_is_not_retried_nor_recorded() {
    let server = TestServer::start(vec![reply(410)], reply(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let push = client(dir.path(), settings());
    let got = push
        .deliver(
            "ev",
            &Message::new(&server.url("/s"), b"p", 60, Urgency::Normal),
        )
        .await;
    let Err(EffectError::Gone(why)) = got else {
        panic!("expected gone, got {got:?}");
    };
    assert!(why.contains("410"), "{why}");
    assert_eq!(server.requests(), 1);
    assert_eq!(push.remembered(), 0);
    // Not recorded: a later call tries again.
    let later = push
        .deliver(
            "ev",
            &Message::new(&server.url("/s"), b"p", 60, Urgency::Normal),
        )
        .await;
    assert_eq!(
        later,
        Ok(Delivered::Now {
            status: 200,
            attempts: 1
        })
    );
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn not_found_is_gone() {
    let server = TestServer::start(vec![], reply(404)).await;
    let dir = tempfile::tempdir().unwrap();
    let push = client(dir.path(), settings());
    let got = push
        .deliver(
            "ev",
            &Message::new(&server.url("/s"), b"p", 60, Urgency::Normal),
        )
        .await;
    assert!(matches!(got, Err(EffectError::Gone(_))), "{got:?}");
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn other_4xx_is_invalid() {
    for status in [400, 401, 403, 413] {
        let server = TestServer::start(vec![], reply(status)).await;
        let dir = tempfile::tempdir().unwrap();
        let push = client(dir.path(), settings());
        let got = push
            .deliver(
                "ev",
                &Message::new(&server.url("/s"), b"p", 60, Urgency::Normal),
            )
            .await;
        let Err(EffectError::Invalid(why)) = got else {
            panic!("expected invalid for {status}, got {got:?}");
        };
        assert!(why.contains(&status.to_string()), "{why}");
        assert_eq!(server.requests(), 1);
        assert_eq!(push.remembered(), 0);
    }
}

#[tokio::test]
async fn redirects_are_invalid_and_not_followed() {
    let server = TestServer::start(vec![], reply(200)).await;
    server
        .service
        .script
        .lock()
        .unwrap()
        .push_back(reply(302).header("location", &server.url("/elsewhere")));
    let dir = tempfile::tempdir().unwrap();
    let push = client(dir.path(), settings());
    let got = push
        .deliver(
            "ev",
            &Message::new(&server.url("/s"), b"p", 60, Urgency::Normal),
        )
        .await;
    let Err(EffectError::Invalid(why)) = got else {
        panic!("expected invalid, got {got:?}");
    };
    assert!(why.contains("302") && why.contains("/elsewhere"), "{why}");
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn refuses_bad_endpoints_without_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let push = client(
        dir.path(),
        PushSettings {
            allow_private: false,
            ..settings()
        },
    );
    for endpoint in [
        "http://203.0.113.1/x",
        "https://127.0.0.1/x",
        "https://10.0.0.1/x",
        "https://[::1]/x",
        "https://localhost/x",
        "http://push.example/x",
        "ftp://push.example/x",
        "not a url",
        "file:///etc/passwd",
        "mailto:someone@push.example",
    ] {
        let started = Instant::now();
        let got = push
            .deliver("ev", &Message::new(endpoint, b"p", 60, Urgency::Normal))
            .await;
        let Err(EffectError::Invalid(why)) = got else {
            panic!("expected invalid for {endpoint}, got {got:?}");
        };
        assert!(why.contains(endpoint), "{why}");
        // Refused before any connection (the unroutable 203.0.113.1
        // would hang until the 5 s request timeout): a guard, not a timing.
        assert!(started.elapsed() < Duration::from_secs(4));
    }
    assert_eq!(push.remembered(), 0);
}

#[test]
fn endpoint_rules() {
    for ok in [
        "https://push.example/sub/1",
        "https://203.0.113.1/x",
        "https://[2001:db8::1]/x",
    ] {
        assert!(check_endpoint(ok, false).is_ok(), "{ok}");
    }
    for private in [
        "https://127.0.0.1:8080/x",
        "https://10.0.0.1/x",
        "https://[::1]:9/x",
        "https://[fd00::1]/x",
        "https://[::ffff:192.168.0.1]/x",
        "https://169.254.169.254/latest/meta-data",
        "https://localhost/x",
        "https://LOCALHOST:1/x",
        "http://203.0.113.1/x",
    ] {
        assert!(check_endpoint(private, false).is_err(), "{private}");
        assert!(
            check_endpoint(private, true).is_ok(),
            "{private} with allowPrivate"
        );
    }
    assert!(check_endpoint("ws://push.example/x", true).is_err());
}

#[tokio::test]
async fn the_resolver_refuses_names_that_lead_to_private_addresses() {
    use reqwest::dns::Resolve;
    use std::str::FromStr;
    // The name passes no literal check; its addresses are what count.
    let name = reqwest::dns::Name::from_str("localhost").unwrap();
    let err = match super::guard::Guarded.resolve(name).await {
        Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
        Err(e) => e,
    };
    let refused = super::guard::refusal(err.as_ref()).expect("a refusal");
    assert!(refused.ip.is_loopback(), "{refused}");
    assert!(refused.to_string().contains("must be public"), "{refused}");
}

#[test]
fn retry_after_values() {
    let parse = |v: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, v.parse().unwrap());
        retry_after(&headers)
    };
    assert_eq!(parse("1"), Some(Duration::from_secs(1)));
    assert_eq!(parse(" 120 "), Some(Duration::from_secs(120)));
    assert_eq!(
        parse("99999999999999999999999"),
        Some(Duration::from_secs(u64::MAX))
    );
    assert_eq!(parse("Wed, 21 Oct 2015 07:28:00 GMT"), Some(HTTP_DATE_WAIT));
    assert_eq!(retry_after(&HeaderMap::new()), None);
}

#[tokio::test]
async fn network_errors_are_retried_then_transient() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}/s", listener.local_addr().unwrap());
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let push = client(dir.path(), settings());
    let got = push
        .deliver("ev", &Message::new(&endpoint, b"p", 60, Urgency::Normal))
        .await;
    let Err(EffectError::Transient(why)) = got else {
        panic!("expected transient, got {got:?}");
    };
    assert!(why.contains("3 attempts"), "{why}");
    assert_eq!(push.remembered(), 0);
}

#[tokio::test]
async fn timeouts_are_retried_then_transient() {
    let slow = reply(200).delay(Duration::from_secs(2));
    let server = TestServer::start(vec![], slow).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = PushSettings {
        attempts: 2,
        request_timeout: Duration::from_millis(150),
        ..settings()
    };
    let push = client(dir.path(), settings);
    let got = push
        .deliver(
            "ev",
            &Message::new(&server.url("/s"), b"p", 60, Urgency::Normal),
        )
        .await;
    let Err(EffectError::Transient(why)) = got else {
        panic!("expected transient, got {got:?}");
    };
    assert!(
        why.contains("timed out") && why.contains("2 attempts"),
        "{why}"
    );
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn concurrent_calls_for_one_id_post_once() {
    let server = TestServer::start(vec![], reply(201).delay(Duration::from_millis(300))).await;
    let dir = tempfile::tempdir().unwrap();
    let push = client(dir.path(), settings());
    let endpoint = server.url("/s");
    let message = Message::new(&endpoint, b"p", 60, Urgency::Normal);
    let (a, b, c) = tokio::join!(
        push.deliver("ev", &message),
        push.deliver("ev", &message),
        push.deliver("ev", &message),
    );
    let mut results = [a.unwrap(), b.unwrap(), c.unwrap()];
    results.sort_by_key(|r| matches!(r, Delivered::Before));
    assert_eq!(
        results,
        [
            Delivered::Now {
                status: 201,
                attempts: 1
            },
            Delivered::Before,
            Delivered::Before
        ]
    );
    assert_eq!(server.requests(), 1);
    assert!(push.in_flight.lock().unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_calls_on_a_multithreaded_runtime() {
    let server = TestServer::start(vec![], reply(201).delay(Duration::from_millis(50))).await;
    let dir = tempfile::tempdir().unwrap();
    let push = Arc::new(client(dir.path(), settings()));
    let endpoint = server.url("/s");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let push2 = push.clone();
    let results = tokio::task::spawn_blocking(move || {
        runtime.block_on(async move {
            let tasks: Vec<_> = (0..16)
                .map(|i| {
                    let push = push2.clone();
                    let endpoint = endpoint.clone();
                    tokio::spawn(async move {
                        let id = format!("ev-{}", i % 4);
                        push.deliver(&id, &Message::new(&endpoint, b"p", 60, Urgency::Normal))
                            .await
                    })
                })
                .collect();
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await.unwrap().unwrap());
            }
            results
        })
    })
    .await
    .unwrap();
    let now = results
        .iter()
        .filter(|r| matches!(r, Delivered::Now { .. }))
        .count();
    assert_eq!(now, 4);
    assert_eq!(server.requests(), 4);
    assert_eq!(push.remembered(), 4);
    assert!(push.in_flight.lock().unwrap().is_empty());
}

#[tokio::test]
async fn rejects_ids_that_cannot_be_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let push = client(dir.path(), settings());
    for id in ["", "a\nb", "a\r"] {
        let got = push
            .deliver(
                id,
                &Message::new("https://push.example/s", b"p", 60, Urgency::Normal),
            )
            .await;
        assert!(matches!(got, Err(EffectError::Invalid(_))), "{got:?}");
    }
}

#[test]
fn open_ignores_a_torn_line_and_drops_expired_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let now = now_ms();
    let old = now - KEEP.as_millis() as u64 - 1000;
    let mut text = String::new();
    for i in 0..5 {
        text.push_str(&format!("{old} old-{i}\n"));
    }
    text.push_str(&format!(
        "{now} fresh-1\n{now} fresh with spaces\n{now} torn"
    ));
    std::fs::write(&path, text).unwrap();

    let push = PushClient::open(dir.path(), settings()).unwrap();
    assert_eq!(push.remembered(), 2);
    {
        let log = lock(&push.log);
        assert!(log.contains("fresh-1") && log.contains("fresh with spaces"));
        assert!(!log.contains("torn") && !log.contains("old-0"));
    }
    // More than half the lines were expired: the file was rewritten.
    let rewritten = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        rewritten,
        format!("{now} fresh-1\n{now} fresh with spaces\n")
    );
    drop(push);

    // A torn line alone is cut, so the next append starts a new line.
    std::fs::write(&path, format!("{now} a\n{now} b\n{now} to")).unwrap();
    let push = PushClient::open(dir.path(), settings()).unwrap();
    assert_eq!(push.remembered(), 2);
    lock(&push.log).record("c", now + 1).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, format!("{now} a\n{now} b\n{} c\n", now + 1));
    drop(push);
    assert_eq!(
        PushClient::open(dir.path(), settings())
            .unwrap()
            .remembered(),
        3
    );
}

#[test]
fn record_forgets_old_ids_and_compacts() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), 1_000).unwrap();
    for i in 0..COMPACT_MIN_LINES {
        log.record(&format!("old-{i}"), 1_000).unwrap();
    }
    assert_eq!(log.delivered.len(), COMPACT_MIN_LINES);
    // A week later, the next record forgets them all and compacts.
    let later = 1_000 + KEEP.as_millis() as u64 + 1;
    log.record("new", later).unwrap();
    assert_eq!(log.delivered.len(), 1);
    assert!(log.contains("new") && !log.contains("old-0"));
    let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
    assert_eq!(text, format!("{later} new\n"));
    log.record("newer", later + 1).unwrap();
    let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
    assert_eq!(text.lines().count(), 2);
}

/// A push service that accepts connections and never answers; counts them.
async fn tarpit() -> (String, Arc<Mutex<usize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sub/tarpit", listener.local_addr().unwrap());
    let accepted = Arc::new(Mutex::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            *count.lock().unwrap() += 1;
            held.push(socket);
        }
    });
    (url, accepted)
}

fn queued(id: &str, endpoint: &str) -> Queued {
    Queued {
        event_id: id.into(),
        account_id: 5,
        endpoint: endpoint.into(),
        payload: "hi".into(),
        keys: None,
        ttl: 60,
        urgency: Urgency::Normal,
        topic: None,
        queued_ms: now_ms(),
    }
}

/// Poll `cond` (an outcome of background tasks) for at most a minute.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tarpit_endpoint_does_not_hold_another_subscriptions_push() {
    let (stuck, connections) = tarpit().await;
    let good = TestServer::start(vec![], reply(201)).await;
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _gone) = Outbox::open(dir.path(), client(dir.path(), settings())).unwrap();
    assert_eq!(
        outbox.submit(queued("to-tarpit", &stuck)).await,
        Ok(Submitted::Queued)
    );
    assert_eq!(
        outbox.submit(queued("to-good", &good.url("/sub/g"))).await,
        Ok(Submitted::Queued)
    );
    eventually("the other push", || good.requests() == 1).await;
    // Delivered while the tarpit still holds its first request: nothing of
    // its retry schedule came first.
    assert_eq!(*connections.lock().unwrap(), 1);
    eventually("the good push ended", || outbox.waiting() == 1).await;
    // Its origin is forgotten once nothing waits for it; the tarpit's is not.
    eventually("the good origin forgotten", || outbox.origins() == 1).await;
    // The same event again is not queued twice.
    assert_eq!(
        outbox.submit(queued("to-tarpit", &stuck)).await,
        Ok(Submitted::Before)
    );
    assert_eq!(
        outbox.submit(queued("to-good", &good.url("/sub/g"))).await,
        Ok(Submitted::Before)
    );
    // What can never be sent is refused at once.
    assert!(matches!(
        outbox.submit(queued("bad", "ftp://push.example/x")).await,
        Err(EffectError::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_pushes_survive_a_restart_in_an_owner_only_file() {
    let good = TestServer::start(vec![], reply(201)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(outbox::OUTBOX_FILE);
    {
        // What a node that crashed before delivering left behind: one
        // message queued, one queued and ended, and a torn line.
        use std::io::Write;
        let mut file = std::fs::File::create(&path).unwrap();
        for id in ["left", "done"] {
            let line =
                serde_json::to_string(&queued(id, &good.url(&format!("/sub/{id}")))).unwrap();
            writeln!(file, "+ {line}").unwrap();
        }
        write!(file, "- done\n+ {{\"event_id\":\"torn").unwrap();
    }
    let (outbox, _gone) = Outbox::open(dir.path(), client(dir.path(), settings())).unwrap();
    eventually("the resumed push", || good.requests() == 1).await;
    assert_eq!(good.service.seen.lock().unwrap()[0].path, "/sub/left");
    eventually("its end recorded", || outbox.waiting() == 0).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the outbox holds subscribers' payloads");
    drop(outbox);
    let (again, _gone) = Outbox::open(dir.path(), client(dir.path(), settings())).unwrap();
    assert_eq!(again.waiting(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gone_subscription_is_reported_from_the_background() {
    let gone_service = TestServer::start(vec![], reply(410)).await;
    let dir = tempfile::tempdir().unwrap();
    let (outbox, mut gone) = Outbox::open(dir.path(), client(dir.path(), settings())).unwrap();
    let endpoint = gone_service.url("/sub/old");
    assert_eq!(
        outbox.submit(queued("ev-gone", &endpoint)).await,
        Ok(Submitted::Queued)
    );
    let reported = tokio::time::timeout(Duration::from_secs(60), gone.recv())
        .await
        .expect("no gone report")
        .unwrap();
    assert_eq!(
        (
            reported.event_id.as_str(),
            reported.account_id,
            reported.endpoint.as_str()
        ),
        ("ev-gone", 5, endpoint.as_str())
    );
    assert_eq!(
        gone_service.requests(),
        1,
        "a gone subscription was tried again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_push_service_holds_a_bounded_number_of_waiting_messages() {
    let (stuck, _) = tarpit().await;
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _gone) = Outbox::open(dir.path(), client(dir.path(), settings())).unwrap();
    for i in 0..outbox::PER_ORIGIN_WAITING {
        let sent = outbox.submit(queued(&format!("q{i}"), &stuck)).await;
        assert_eq!(sent, Ok(Submitted::Queued));
    }
    match outbox.submit(queued("one-too-many", &stuck)).await {
        Err(EffectError::Invalid(why)) => {
            assert!(why.contains("undelivered messages waiting"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(outbox.waiting(), outbox::PER_ORIGIN_WAITING);
}
