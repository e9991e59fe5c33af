//! Web Push that push services accept: a real `herald run` on the test
//! broker delivers `push` events to a push service on 127.0.0.1 that checks
//! every request the way a browser's push service would, with its own code:
//! `ring` here, where the runtime uses RustCrypto.
//!
//! The service verifies the VAPID `Authorization` (RFC 8292: an ES256 JWT
//! whose signature checks against `k`, `k` the key `herald push vapid-key`
//! printed, `aud` its own origin, `exp` in the next 24 hours, `sub` the
//! configured subject), requires `TTL`, decrypts `aes128gcm` bodies
//! (RFC 8188/8291) with the subscription's private key, and refuses
//! anything else with 400, 401 or 403.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use herald_tests::cluster::{Install, TestCluster, wait_until};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{aead, agreement, hkdf, signature};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);
const SUBJECT: &str = "mailto:postmaster@mail.example";

/// What the push service accepted.
#[derive(Clone, Debug)]
struct Accepted {
    /// The decrypted payload, or none for a message without body.
    payload: Option<Vec<u8>>,
    ttl: String,
    urgency: Option<String>,
    topic: Option<String>,
    authorization: String,
}

/// A subscription, as a browser holds it: the private half of `p256dh`
/// (ring's ECDH keys are single-use: one message per subscription) and the
/// auth secret.
struct Subscription {
    key: Option<agreement::EphemeralPrivateKey>,
    auth: [u8; 16],
}

#[derive(Clone, Default)]
struct PushService {
    /// `http://127.0.0.1:port`: the `aud` every token must name.
    origin: Arc<Mutex<String>>,
    /// The VAPID public key `herald push vapid-key` printed.
    vapid_key: Arc<Mutex<String>>,
    subscriptions: Arc<Mutex<HashMap<String, Subscription>>>,
    accepted: Arc<Mutex<Vec<(String, Accepted)>>>,
    refused: Arc<Mutex<Vec<(String, u16, String)>>>,
}

impl PushService {
    async fn start(&self) -> String {
        let app = axum::Router::new()
            .route("/sub/{id}", axum::routing::post(receive))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        *self.origin.lock().unwrap() = origin.clone();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        origin
    }

    /// A new subscription `id`: its keys as `subscription.toJSON().keys`.
    fn subscribe(&self, id: &str) -> Value {
        let rng = SystemRandom::new();
        let key = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng).unwrap();
        let public = key.compute_public_key().unwrap();
        let mut auth = [0u8; 16];
        rng.fill(&mut auth).unwrap();
        let keys = json!({"p256dh": B64.encode(public.as_ref()), "auth": B64.encode(auth)});
        self.subscriptions.lock().unwrap().insert(
            id.to_owned(),
            Subscription {
                key: Some(key),
                auth,
            },
        );
        keys
    }

    fn accepted(&self, id: &str) -> Option<Accepted> {
        let accepted = self.accepted.lock().unwrap();
        accepted
            .iter()
            .find(|(s, _)| s == id)
            .map(|(_, a)| a.clone())
    }

    fn requests_for(&self, id: &str) -> usize {
        let accepted = self
            .accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s == id)
            .count();
        let refused = self
            .refused
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _, _)| s == id)
            .count();
        accepted + refused
    }
}

async fn receive(
    State(service): State<PushService>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    match check(&service, &id, &headers, &body) {
        Ok(accepted) => {
            service.accepted.lock().unwrap().push((id, accepted));
            (StatusCode::CREATED, String::new())
        }
        Err((status, why)) => {
            service
                .refused
                .lock()
                .unwrap()
                .push((id, status.as_u16(), why.clone()));
            (status, why)
        }
    }
}

type Refusal = (StatusCode, String);

fn bad(why: impl Into<String>) -> Refusal {
    (StatusCode::BAD_REQUEST, why.into())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Everything a push service checks, or why it refuses.
fn check(
    service: &PushService,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Accepted, Refusal> {
    let authorization = header(headers, "authorization")
        .ok_or((StatusCode::UNAUTHORIZED, "no Authorization".into()))?;
    verify_vapid(service, authorization)?;
    let ttl = header(headers, "ttl").ok_or_else(|| bad("no TTL"))?;
    ttl.parse::<u32>().map_err(|_| bad("TTL is not a number"))?;
    let topic = header(headers, "topic").map(str::to_owned);
    let payload = match header(headers, "content-encoding") {
        None if body.is_empty() => None,
        None => return Err(bad("a payload without Content-Encoding: aes128gcm")),
        Some("aes128gcm") => {
            let mut subscriptions = service.subscriptions.lock().unwrap();
            let sub = subscriptions
                .get_mut(id)
                .ok_or((StatusCode::NOT_FOUND, "no such subscription".into()))?;
            let key = sub.key.take().ok_or_else(|| bad("subscription key used"))?;
            Some(decrypt(body, key, &sub.auth).map_err(bad)?)
        }
        Some(other) => return Err(bad(format!("Content-Encoding {other}"))),
    };
    Ok(Accepted {
        payload,
        ttl: ttl.to_owned(),
        urgency: header(headers, "urgency").map(str::to_owned),
        topic,
        authorization: authorization.to_owned(),
    })
}

/// RFC 8292 §3: `vapid t=<JWT>, k=<key>`; 401 for a token that does not
/// verify, 403 for a key other than the application server's.
fn verify_vapid(service: &PushService, authorization: &str) -> Result<(), Refusal> {
    let unauthorized = |why: &str| (StatusCode::UNAUTHORIZED, why.to_owned());
    let rest = authorization
        .strip_prefix("vapid ")
        .ok_or_else(|| unauthorized("not the vapid scheme"))?;
    let mut token = None;
    let mut key = None;
    for param in rest.split(',') {
        match param.trim().split_once('=') {
            Some(("t", v)) => token = Some(v),
            Some(("k", v)) => key = Some(v),
            _ => return Err(unauthorized("unknown vapid parameter")),
        }
    }
    let (token, key) = token
        .zip(key)
        .ok_or_else(|| unauthorized("t= or k= missing"))?;
    if key != *service.vapid_key.lock().unwrap() {
        return Err((
            StatusCode::FORBIDDEN,
            "k= is not the subscription's applicationServerKey".into(),
        ));
    }
    let key = B64
        .decode(key)
        .map_err(|_| unauthorized("k= is not base64url"))?;
    let parts: Vec<&str> = token.split('.').collect();
    let [header_b64, claims_b64, signature_b64] = parts[..] else {
        return Err(unauthorized("t= is not a JWS"));
    };
    let decode_json = |part: &str| -> Result<Value, Refusal> {
        let bytes = B64
            .decode(part)
            .map_err(|_| unauthorized("not base64url"))?;
        serde_json::from_slice(&bytes).map_err(|_| unauthorized("not JSON"))
    };
    let jose = decode_json(header_b64)?;
    if jose["alg"] != "ES256" || jose["typ"] != "JWT" {
        return Err(unauthorized("alg is not ES256"));
    }
    let signature = B64
        .decode(signature_b64)
        .map_err(|_| unauthorized("signature not base64url"))?;
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &key)
        .verify(format!("{header_b64}.{claims_b64}").as_bytes(), &signature)
        .map_err(|_| unauthorized("bad signature"))?;
    let claims = decode_json(claims_b64)?;
    if claims["aud"] != *service.origin.lock().unwrap() {
        return Err(unauthorized("aud is not this push service"));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = claims["exp"]
        .as_u64()
        .ok_or_else(|| unauthorized("no exp"))?;
    if exp <= now || exp > now + 24 * 3600 {
        return Err(unauthorized("exp not within the next 24 hours"));
    }
    if claims["sub"] != SUBJECT {
        return Err(unauthorized("sub is not the configured contact"));
    }
    Ok(())
}

/// HKDF output lengths for ring.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) {
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&[info], Len(out.len()))
        .unwrap()
        .fill(out)
        .unwrap();
}

/// The user agent's side of RFC 8291: one `aes128gcm` record.
fn decrypt(
    body: &[u8],
    key: agreement::EphemeralPrivateKey,
    auth: &[u8; 16],
) -> Result<Vec<u8>, String> {
    if body.len() > 4096 {
        return Err(format!("{} bytes: more than 4096", body.len()));
    }
    if body.len() < 21 {
        return Err("shorter than a header".into());
    }
    let (salt, rest) = body.split_at(16);
    let rs = u32::from_be_bytes(rest[..4].try_into().unwrap());
    let idlen = rest[4] as usize;
    if idlen != 65 || rest.len() < 5 + idlen {
        return Err(format!("keyid of {idlen} bytes, not a P-256 point"));
    }
    let as_public = &rest[5..5 + idlen];
    let ciphertext = &rest[5 + idlen..];
    if rs < 18 || ciphertext.len() > rs as usize {
        return Err("more than one record".into());
    }
    let ua_public = key.compute_public_key().unwrap().as_ref().to_vec();
    let ecdh = agreement::agree_ephemeral(
        key,
        &agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, as_public),
        |secret| secret.to_vec(),
    )
    .map_err(|_| "the sender's key is not on P-256".to_string())?;
    let mut info = b"WebPush: info\0".to_vec();
    info.extend_from_slice(&ua_public);
    info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    hkdf(auth, &ecdh, &info, &mut ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    hkdf(salt, &ikm, b"Content-Encoding: aes128gcm\0", &mut cek);
    hkdf(salt, &ikm, b"Content-Encoding: nonce\0", &mut nonce);
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_128_GCM, &cek).unwrap());
    let mut record = ciphertext.to_vec();
    let plain = key
        .open_in_place(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::empty(),
            &mut record,
        )
        .map_err(|_| "does not decrypt".to_string())?;
    let end = plain.iter().rposition(|&b| b != 0).ok_or("no delimiter")?;
    if plain[end] != 0x02 {
        return Err("not the last record's delimiter".into());
    }
    Ok(plain[..end].to_vec())
}

/// `herald push vapid-key --config <config>`: the key, and what it said on
/// standard error.
fn vapid_key(config: &Path) -> (String, String) {
    let out = std::process::Command::new(herald_tests::herald_bin())
        .args(["push", "vapid-key", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    (
        String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        stderr,
    )
}

/// A JWT signed by another key than the node's.
fn foreign_authorization(aud: &str) -> String {
    let rng = SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let input = format!(
        "{}.{}",
        B64.encode(br#"{"typ":"JWT","alg":"ES256"}"#),
        B64.encode(json!({"aud": aud, "exp": exp, "sub": SUBJECT}).to_string())
    );
    let sig = pair.sign(&rng, input.as_bytes()).unwrap();
    use signature::KeyPair;
    format!(
        "vapid t={input}.{}, k={}",
        B64.encode(sig.as_ref()),
        B64.encode(pair.public_key().as_ref())
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn web_push_that_a_strict_push_service_accepts() {
    let service = PushService::default();
    let origin = service.start().await;
    let mut c = TestCluster::new("webpush", 1, &[Install::builtin("push")]).await;
    let key_file = c.dir.path().join("cluster-vapid.key");
    c.settings = json!({"push": {
        "allowPrivate": true,
        "vapid": {"keyFile": key_file, "subject": SUBJECT},
    }});

    // The key every node shares: created by the first call (0600), the
    // same one printed again after.
    let config = c.config("a");
    let (public, said) = vapid_key(&config);
    assert!(said.contains("created"), "{said}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (again, said) = vapid_key(&config);
    assert_eq!(again, public);
    assert!(!said.contains("created"), "{said}");
    let raw = B64.decode(&public).unwrap();
    assert_eq!(
        (raw.len(), raw[0]),
        (65, 4),
        "not an uncompressed P-256 point"
    );
    *service.vapid_key.lock().unwrap() = public.clone();

    let mut node = c.start("a");
    node.wait_assigned(&c.shared_group());

    let push = |id: &str, body: Value| json!({"v":1,"id":id,"kind":"push","origin":"test","ts":1,"body":body});
    // A browser's subscription and a JMAP StateChange for it.
    let keys = service.subscribe("browser");
    let payload = json!({"@type":"StateChange","changed":{"u1":{"Email":"s42"}}}).to_string();
    c.publish(
        "account:5",
        &push(
            "enc",
            json!({"accountId":5,"endpoint":format!("{origin}/sub/browser"),"payload":payload,
                "ttl":90,"urgency":"high","keys":keys,"topic":"mailbox-u1"}),
        ),
    )
    .await;
    // No keys: a message without payload.
    c.publish(
        "account:5",
        &push(
            "tickle",
            json!({"accountId":5,"endpoint":format!("{origin}/sub/plain"),"payload":"not sent"}),
        ),
    )
    .await;
    wait_until("both pushes accepted", LONG, || {
        service.accepted("browser").is_some() && service.accepted("plain").is_some()
    });
    assert_eq!(*service.refused.lock().unwrap(), vec![]);

    let enc = service.accepted("browser").unwrap();
    assert_eq!(
        String::from_utf8(enc.payload.clone().unwrap()).unwrap(),
        payload,
        "the push service did not decrypt the published payload"
    );
    assert_eq!(enc.topic.as_deref(), Some("mailbox-u1"));
    assert_eq!(
        (enc.ttl.as_str(), enc.urgency.as_deref()),
        ("90", Some("high"))
    );
    assert!(enc.authorization.ends_with(&format!(", k={public}")));

    let tickle = service.accepted("plain").unwrap();
    assert_eq!(tickle.payload, None, "a payload went out without keys");
    assert_eq!(tickle.topic, None);
    assert_eq!(tickle.ttl, "60");

    // The service is strict: requests the node did not sign right are
    // refused. A token whose claims were changed after signing…
    let http = reqwest::Client::new();
    let send = |auth: Option<String>, body: &'static [u8]| {
        let mut request = http
            .post(format!("{origin}/sub/direct"))
            .header("TTL", "60");
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        async move { request.body(body).send().await.unwrap().status().as_u16() }
    };
    let tampered = {
        let (token, k) = tickle
            .authorization
            .strip_prefix("vapid t=")
            .unwrap()
            .split_once(", k=")
            .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = "mailto:someone@else.example".into();
        let claims = B64.encode(claims.to_string());
        format!("vapid t={}.{claims}.{}, k={k}", parts[0], parts[2])
    };
    assert_eq!(send(Some(tampered), b"").await, 401);
    // …a token and key of another application server…
    assert_eq!(send(Some(foreign_authorization(&origin)), b"").await, 403);
    // …the node's own token with a payload left unencrypted, or no token.
    assert_eq!(
        send(Some(tickle.authorization.clone()), b"hello").await,
        400
    );
    assert_eq!(send(None, b"").await, 401);
    // And the node's token as it was is accepted.
    assert_eq!(send(Some(tickle.authorization.clone()), b"").await, 201);

    // Keys the node cannot encrypt for, a payload too large for one record
    // and a topic RFC 8030 does not allow are dead-lettered, never sent.
    let mut off_curve = B64.decode(keys["p256dh"].as_str().unwrap()).unwrap();
    off_curve[64] ^= 1;
    let hostile = [
        json!({"p256dh": B64.encode(&off_curve), "auth": keys["auth"]}),
        json!({"p256dh": "not base64url!", "auth": keys["auth"]}),
        json!({"p256dh": keys["p256dh"], "auth": "c2hvcnQ"}),
    ];
    for (i, k) in hostile.iter().enumerate() {
        c.publish(
            "account:5",
            &push(
                &format!("bad-key-{i}"),
                json!({"accountId":5,"endpoint":format!("{origin}/sub/hostile"),"payload":"x","keys":k}),
            ),
        )
        .await;
    }
    let big_keys = service.subscribe("big");
    c.publish(
        "account:5",
        &push(
            "too-big",
            json!({"accountId":5,"endpoint":format!("{origin}/sub/big"),
                "payload":"x".repeat(3994),"keys":big_keys}),
        ),
    )
    .await;
    c.publish(
        "account:5",
        &push(
            "bad-topic",
            json!({"accountId":5,"endpoint":format!("{origin}/sub/hostile"),"topic":"no spaces allowed"}),
        ),
    )
    .await;
    let letters = c.dead_letters(5).await;
    let errors: Vec<&str> = letters.iter().map(|l| l.header("herald-error")).collect();
    for (letter, want) in errors.iter().zip([
        "field `keys.p256dh`: not a point on the P-256 curve",
        "field `keys.p256dh`: not base64url",
        "field `keys.auth`: 5 bytes",
        "field `payload`: 3994 bytes",
        "field `topic`",
    ]) {
        assert!(letter.contains(want), "{want:?} not in {errors:?}");
    }
    assert_eq!(service.requests_for("hostile"), 0);
    assert_eq!(service.requests_for("big"), 0);
    // The node is still up and delivering.
    let later = service.subscribe("later");
    c.publish(
        "account:5",
        &push(
            "later",
            json!({"accountId":5,"endpoint":format!("{origin}/sub/later"),"payload":"still here","keys":later}),
        ),
    )
    .await;
    wait_until("a later push accepted", LONG, || {
        service.accepted("later").is_some()
    });
    assert_eq!(
        service.accepted("later").unwrap().payload.as_deref(),
        Some(&b"still here"[..])
    );
    node.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_another_vapid_key_is_refused_and_the_push_counted() {
    let service = PushService::default();
    let origin = service.start().await;
    let mut c = TestCluster::new("webpush-foreign", 1, &[Install::builtin("push")]).await;
    c.settings = json!({"push": {"allowPrivate": true, "vapid": {"subject": SUBJECT}}});
    // The service expects another application server's key than the one
    // this node creates in its state directory.
    let rng = SystemRandom::new();
    let other = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng).unwrap();
    *service.vapid_key.lock().unwrap() = B64.encode(other.compute_public_key().unwrap().as_ref());
    let mut node = c.start("a");
    node.wait_assigned(&c.shared_group());
    let keys = service.subscribe("s");
    c.publish(
        "account:5",
        &json!({"v":1,"id":"p","kind":"push","origin":"test","ts":1,
            "body":{"accountId":5,"endpoint":format!("{origin}/sub/s"),"payload":"hi","keys":keys}}),
    )
    .await;
    // The push left the partition when it was queued: the service's
    // refusal is the subscription's, logged and counted, not the event's.
    let line = node.wait_for_log("push refused, not tried again", LONG);
    assert!(line.contains("push service answered 403"), "{line}");
    assert!(line.contains(r#"event_id="p""#), "{line}");
    assert!(service.accepted("s").is_none());
    let metrics = herald_tests::api::metrics(&mut node).await;
    assert!(
        metrics.contains(r#"herald_push_deliveries_total{status="invalid"} 1"#),
        "{metrics}"
    );
    // The node made its own key, 0600, in its state directory.
    let made = node.state.join("vapid.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&made).unwrap().permissions().mode() & 0o777,
        0o600
    );
    node.terminate();
}

/// A push service that accepts connections and never answers.
async fn tarpit() -> (String, Arc<Mutex<usize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(Mutex::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            *count.lock().unwrap() += 1;
            held.push(socket);
        }
    });
    (origin, accepted)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tarpit_endpoint_does_not_hold_the_partition() {
    let service = PushService::default();
    let origin = service.start().await;
    let (stuck, connections) = tarpit().await;
    let mut c = TestCluster::new("webpush-tarpit", 1, &[Install::builtin("push")]).await;
    c.settings = json!({"push": {"allowPrivate": true, "vapid": {"subject": SUBJECT}}});
    let config = c.config("a");
    let (public, _) = vapid_key(&config);
    *service.vapid_key.lock().unwrap() = public;
    let mut node = c.start("a");
    node.wait_assigned(&c.shared_group());
    let push = |id: &str, endpoint: String| {
        json!({"v":1,"id":id,"kind":"push","origin":"test","ts":1,
            "body":{"accountId":5,"endpoint":endpoint,"payload":"x"}})
    };
    // Three pushes to the tarpit, then one to a working service, all on the
    // one partition, in that order.
    for i in 0..3 {
        c.publish(
            "account:5",
            &push(&format!("stuck-{i}"), format!("{stuck}/sub/{i}")),
        )
        .await;
    }
    let sent = std::time::Instant::now();
    c.publish("account:5", &push("fine", format!("{origin}/sub/fine")))
        .await;
    wait_until("the other push accepted", LONG, || {
        service.accepted("fine").is_some()
    });
    let took = sent.elapsed();
    // Before the tarpit answered anything (it never does) and before any
    // of its retries: nothing of its retry schedule stood in the way.
    let held = *connections.lock().unwrap();
    assert!(held <= 3, "{held} connections to the tarpit came first");
    eprintln!(
        "tarpit: the other subscription's push delivered {took:?} after it was published, {held} tarpit requests open"
    );
    // The partition moved on: its offset is committed past all four.
    wait_until("the partition committed", LONG, || {
        c.committed(&c.shared_group(), 0) == Some(4)
    });
    node.terminate();
}
