//! From the file as written ([`super::raw`]) to a checked [`Config`]: every
//! rule, every default, and an error that names the field.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail};

use super::raw::*;
use super::*;
use crate::manifest::field_error;

pub(super) fn parse(text: &str) -> anyhow::Result<Config> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| anyhow!("not valid JSON: {e}"))?;
    if !value.is_object() {
        bail!("the configuration must be a JSON object");
    }
    let raw: Raw = serde_path_to_error::deserialize(value).map_err(field_error)?;

    if let Some(kind) = &raw.kind
        && kind != COORDINATOR_TYPE
    {
        bail!(
            "field `@type`: `{kind}` is not supported; herald only supports the \"{COORDINATOR_TYPE}\" coordinator"
        );
    }

    let brokers = brokers(raw.brokers.map(|b| b.0).unwrap_or_default())?;

    let group_id = match raw.group_id {
        None => bail!(
            "field `groupId`: missing; set it to the cluster's Kafka consumer group, e.g. \"stalwart-cluster\""
        ),
        Some(g) => g,
    };
    kafka_name("groupId", &group_id)?;

    let timeout_session = timeout(
        "timeoutSession",
        raw.timeout_session,
        MAX_SESSION_TIMEOUT,
        "session.timeout.ms",
    )?;
    let timeout_message = timeout(
        "timeoutMessage",
        raw.timeout_message,
        MAX_MESSAGE_TIMEOUT,
        "message.timeout.ms",
    )?;

    let node_id = match raw.node_id {
        Some(n) => {
            kafka_name("nodeId", &n)?;
            n
        }
        None => {
            let Some(h) = hostname() else {
                bail!(
                    "field `nodeId`: not set, and the machine's hostname could not be read; set `nodeId`"
                );
            };
            kafka_name("nodeId", &h)
                .map_err(|e| anyhow!("{e:#} (`nodeId` defaults to the hostname); set `nodeId`"))?;
            h
        }
    };
    let group_prefix = match raw.group_prefix {
        None => format!("{group_id}{DEFAULT_GROUP_SUFFIX}"),
        Some(p) => {
            kafka_name("groupPrefix", &p)?;
            p
        }
    };
    // herald is a guest on the mail server's bus: joining the mail server's
    // own group would take its partitions away and rebalance it on every
    // herald start, stop and crash.
    if group_prefix == group_id {
        bail!(
            "field `groupPrefix`: `{group_prefix}` is the mail server's own consumer group \
             (`groupId`); herald must never join it (leave `groupPrefix` unset for \
             `{group_id}{DEFAULT_GROUP_SUFFIX}`)"
        );
    }
    let broadcast = format!("{group_prefix}.{node_id}");
    if broadcast == group_id {
        bail!(
            "field `nodeId`: the broadcast consumer group `{broadcast}` would be the mail \
             server's own consumer group (`groupId`); choose another `nodeId` or `groupPrefix`"
        );
    }
    if broadcast.len() > MAX_KAFKA_NAME {
        bail!(
            "field `nodeId`: the broadcast consumer group `{broadcast}` (`<groupPrefix>.<nodeId>`) is longer than {MAX_KAFKA_NAME} characters"
        );
    }

    let handlers = path("handlers", raw.handlers, DEFAULT_HANDLERS)?;
    let state_dir = path("stateDir", raw.state_dir, DEFAULT_STATE_DIR)?;

    let topics = topics(raw.topics.unwrap_or_default())?;
    let batch = batch(raw.batch.unwrap_or_default())?;
    let retry = retry(raw.retry.unwrap_or_default())?;

    let commit_interval = raw.commit_interval.map_or(DEFAULT_COMMIT_INTERVAL, |d| d.0);
    if commit_interval.is_zero() {
        bail!("field `commitInterval`: must be more than 0");
    }
    let probe_interval = raw.probe_interval.map_or(DEFAULT_PROBE_INTERVAL, |d| d.0);
    if !probe_interval.is_zero() && probe_interval < std::time::Duration::from_secs(1) {
        bail!("field `probeInterval`: at least 1s (or 0: never probe)");
    }

    let api = api(raw.api.unwrap_or_default())?;
    let stalwart = stalwart(raw.stalwart.unwrap_or_default(), &topics)?;
    let blocklist = blocklist(raw.blocklist.unwrap_or_default())?;
    let publish_max_hops = raw
        .publish
        .and_then(|p| p.max_hops)
        .unwrap_or(crate::dispatch::DEFAULT_MAX_HOPS);
    if publish_max_hops > 64 {
        bail!("field `publish.maxHops`: {publish_max_hops} is more than 64");
    }
    let raw_push = raw.push.unwrap_or_default();
    let push_allow_private = raw_push.allow_private.unwrap_or(false);
    let push_vapid = push_vapid(raw_push.vapid.unwrap_or_default())?;
    let kafka = kafka(
        raw.kafka.unwrap_or_default(),
        &raw.kafka_unsafe.unwrap_or_default(),
    )?;
    let signing_key = match raw.signing_key {
        Some(p) => Some(path("signingKey", Some(p), "")?),
        None => None,
    };
    let trust = raw
        .trust
        .map(|t| super::trust::trust(t, stalwart.enabled))
        .transpose()?;
    let certificates = super::trust::certificates(raw.certificates.unwrap_or_default())?;
    let firewall = firewall(raw.firewall.unwrap_or_default())?;

    Ok(Config {
        brokers,
        group_id,
        group_prefix,
        timeout_session,
        timeout_message,
        node_id,
        handlers,
        state_dir,
        topics,
        batch,
        retry,
        commit_interval,
        probe_interval,
        api,
        stalwart,
        blocklist,
        push_allow_private,
        push_vapid,
        publish_max_hops,
        signing_key,
        trust,
        certificates,
        kafka,
        firewall,
    })
}

fn brokers(list: Vec<String>) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for entry in list {
        let b = entry.trim();
        if !is_broker(b) {
            bail!(
                "field `brokers`: `{entry}` is not a broker address like \"kafka1:9092\" (host:port, IPv6 as \"[::1]:9092\")"
            );
        }
        if !out.iter().any(|o| o == b) {
            out.push(b.to_string());
        }
    }
    if out.is_empty() {
        bail!("field `brokers`: at least one broker is required");
    }
    Ok(out)
}

/// `host:port`, the port a number; an IPv6 host in brackets.
fn is_broker(b: &str) -> bool {
    let Some((host, port)) = b.rsplit_once(':') else {
        return false;
    };
    if port.is_empty() || !port.bytes().all(|c| c.is_ascii_digit()) {
        return false;
    }
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return false;
    }
    if let Some(inner) = host.strip_prefix('[') {
        return inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
}

/// A consumer group id or topic name: non-empty, at most 249 characters of
/// `[A-Za-z0-9._-]`.
fn kafka_name(field: &str, name: &str) -> anyhow::Result<()> {
    if name.is_empty() {
        bail!("field `{field}`: must not be empty");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        let what = if c.is_whitespace() {
            "whitespace".to_string()
        } else {
            format!("{c:?}")
        };
        bail!(
            "field `{field}`: `{name}` contains {what}; only letters, digits, '.', '_' and '-' are allowed"
        );
    }
    if name.len() > MAX_KAFKA_NAME {
        bail!("field `{field}`: longer than {MAX_KAFKA_NAME} characters");
    }
    Ok(())
}

fn topic_name(field: &str, name: &str) -> anyhow::Result<()> {
    kafka_name(field, name)?;
    if name == "." || name == ".." {
        bail!("field `{field}`: `{name}` is not a valid topic name");
    }
    Ok(())
}

fn timeout(
    field: &str,
    value: Option<DurationValue>,
    max: Duration,
    property: &str,
) -> anyhow::Result<Duration> {
    let d = value.map_or(DEFAULT_TIMEOUT, |d| d.0);
    if d.is_zero() {
        bail!("field `{field}`: must be more than 0");
    }
    if d < Duration::from_millis(1) {
        bail!("field `{field}`: must be at least 1ms");
    }
    if d > max {
        bail!(
            "field `{field}`: {} is more than librdkafka accepts for {property} ({})",
            humantime::format_duration(d),
            humantime::format_duration(max)
        );
    }
    Ok(d)
}

fn path(field: &str, value: Option<PathBuf>, default: &str) -> anyhow::Result<PathBuf> {
    let p = value.unwrap_or_else(|| PathBuf::from(default));
    if p.as_os_str().is_empty() {
        bail!("field `{field}`: must not be empty");
    }
    Ok(p)
}

fn push_vapid(raw: RawVapid) -> anyhow::Result<PushVapid> {
    if let Some(file) = &raw.key_file
        && file.as_os_str().is_empty()
    {
        bail!("field `push.vapid.keyFile`: must not be empty");
    }
    if let Some(subject) = &raw.subject {
        crate::effects::push::vapid::check_subject(subject)
            .map_err(|why| anyhow!("field `push.vapid.subject`: {why}"))?;
    }
    Ok(PushVapid {
        key_file: raw.key_file,
        subject: raw.subject,
    })
}

fn topics(raw: RawTopics) -> anyhow::Result<Topics> {
    let d = Topics::default();
    let events = raw.events.unwrap_or(d.events);
    topic_name("topics.events", &events)?;
    let state = raw.state.unwrap_or(d.state);
    topic_name("topics.state", &state)?;
    if state == events {
        bail!(
            "field `topics.state`: `{state}` is also `topics.events`; the state topic is compacted and needs a topic of its own"
        );
    }
    let dead_letter_suffix = raw.dead_letter_suffix.unwrap_or(d.dead_letter_suffix);
    if dead_letter_suffix.is_empty() {
        bail!(
            "field `topics.deadLetterSuffix`: must not be empty (the dead-letter topic would be the topic itself)"
        );
    }
    let topics = Topics {
        dead_letter_suffix,
        create: None,
        events,
        state,
    };
    topic_name(
        "topics.deadLetterSuffix",
        &topics.dead_letter(&topics.events),
    )?;
    let create = match raw.create {
        None => None,
        Some(c) => {
            if c.partitions < 1 {
                bail!("field `topics.create.partitions`: must be at least 1");
            }
            if c.replication_factor < 1 {
                bail!("field `topics.create.replicationFactor`: must be at least 1");
            }
            Some(TopicCreate {
                partitions: c.partitions,
                replication_factor: c.replication_factor,
            })
        }
    };
    Ok(Topics { create, ..topics })
}

fn batch(raw: RawBatch) -> anyhow::Result<Batch> {
    let d = Batch::default();
    let size = raw.size.unwrap_or(d.size);
    if !(1..=MAX_BATCH_SIZE).contains(&size) {
        bail!("field `batch.size`: {size} is not between 1 and {MAX_BATCH_SIZE}");
    }
    Ok(Batch {
        size,
        linger: raw.linger.map_or(d.linger, |l| l.0),
    })
}

fn retry(raw: RawRetry) -> anyhow::Result<Retry> {
    let d = Retry::default();
    let attempts = raw.attempts.unwrap_or(d.attempts);
    if attempts > MAX_RETRY_ATTEMPTS {
        bail!("field `retry.attempts`: {attempts} is more than {MAX_RETRY_ATTEMPTS}");
    }
    let backoff = raw.backoff.map_or(d.backoff, |b| b.0);
    let max_backoff = raw.max_backoff.map_or(d.max_backoff, |b| b.0);
    if max_backoff < backoff {
        bail!(
            "field `retry.maxBackoff`: {} is less than `retry.backoff` ({})",
            humantime::format_duration(max_backoff),
            humantime::format_duration(backoff)
        );
    }
    Ok(Retry {
        attempts,
        backoff,
        max_backoff,
    })
}

fn api(raw: RawApi) -> anyhow::Result<Api> {
    let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_API_LISTEN);
    let listen: SocketAddr = listen_text.trim().parse().map_err(|_| {
        anyhow!(
            "field `api.listen`: `{listen_text}` is not an IP address and port like \"127.0.0.1:8470\" or \"[::1]:8470\""
        )
    })?;
    let allow_non_loopback = raw.allow_non_loopback.unwrap_or(false);
    if !listen.ip().to_canonical().is_loopback() && !allow_non_loopback {
        bail!(
            "field `api.listen`: {listen} is not a loopback address; the API only listens on loopback (127.0.0.1, ::1) unless `api.allowNonLoopback` is true"
        );
    }
    if raw.token.is_some() && raw.token_file.is_some() {
        bail!("field `api.token`: set `api.token` or `api.tokenFile`, not both");
    }
    if raw.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        bail!("field `api.token`: must not be empty");
    }
    if raw
        .token_file
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        bail!("field `api.tokenFile`: must not be empty");
    }
    if raw
        .unix_socket
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        bail!("field `api.unixSocket`: must not be empty");
    }
    let d = ApiLimits::default();
    let limits = ApiLimits {
        connections: raw.max_connections.unwrap_or(d.connections),
        per_client: raw.max_connections_per_client.unwrap_or(d.per_client),
        streams: raw.max_streams.unwrap_or(d.streams),
        header_timeout: raw.header_timeout.map_or(d.header_timeout, |t| t.0),
    };
    for (field, n) in [
        ("maxConnections", limits.connections),
        ("maxConnectionsPerClient", limits.per_client),
        ("maxStreams", limits.streams),
    ] {
        if !(1..=100_000).contains(&n) {
            bail!("field `api.{field}`: {n} is not 1 to 100000");
        }
    }
    if limits.per_client > limits.connections {
        bail!(
            "field `api.maxConnectionsPerClient`: {} is more than `api.maxConnections` ({})",
            limits.per_client,
            limits.connections
        );
    }
    if limits.header_timeout.is_zero() {
        bail!("field `api.headerTimeout`: must be more than 0");
    }
    let mut tokens = Vec::new();
    for (i, t) in raw.tokens.unwrap_or_default().into_iter().enumerate() {
        let field = format!("api.tokens[{i}]");
        if t.name.trim().is_empty() {
            bail!("field `{field}.name`: must not be empty");
        }
        let source = match (t.token, t.token_file) {
            (Some(_), Some(_)) | (None, None) => {
                bail!("field `{field}`: set `token` or `tokenFile`, one of them")
            }
            (Some(secret), None) if secret.trim().is_empty() => {
                bail!("field `{field}.token`: must not be empty")
            }
            (Some(secret), None) => TokenSource::Inline(secret),
            (None, Some(file)) => TokenSource::File(file),
        };
        if t.scopes.is_empty() {
            bail!(
                "field `{field}.scopes`: list what the token may do (read, publish, certificates, \
                 stalwart, admin)"
            );
        }
        let scopes: std::collections::BTreeSet<Scope> = t.scopes.into_iter().collect();
        let publish_kinds = match t.publish_kinds {
            None => None,
            Some(kinds) => {
                if !scopes.contains(&Scope::Publish) {
                    bail!("field `{field}.publishKinds`: the token has no `publish` scope");
                }
                for kind in &kinds {
                    if !crate::event::KINDS.contains(&kind.as_str()) {
                        bail!(
                            "field `{field}.publishKinds`: unknown event kind `{kind}`, expected one of {}",
                            crate::event::KINDS.join(", ")
                        );
                    }
                }
                Some(kinds.into_iter().collect())
            }
        };
        if tokens.iter().any(|o: &ScopedToken| o.name == t.name) {
            bail!("field `{field}.name`: `{}` names another token too", t.name);
        }
        tokens.push(ScopedToken {
            name: t.name,
            source,
            scopes,
            publish_kinds,
        });
    }
    Ok(Api {
        listen,
        unix_socket: raw.unix_socket,
        token: raw.token,
        token_file: raw.token_file,
        allow_non_loopback,
        limits,
        tokens,
    })
}

fn stalwart(raw: RawStalwart, topics: &Topics) -> anyhow::Result<Stalwart> {
    let d = Stalwart::default();
    let enabled = raw.enabled.unwrap_or(d.enabled);
    let topic = raw.topic.unwrap_or(d.topic);
    topic_name("stalwart.topic", &topic)?;
    if enabled {
        if raw.node_id.is_none() {
            bail!(
                "field `stalwart.nodeId`: required when `stalwart.enabled` is true (herald's node id in Stalwart's records, 0-65535)"
            );
        }
        if topic == topics.events || topic == topics.state {
            bail!(
                "field `stalwart.topic`: `{topic}` is also herald's own topic; Stalwart's records need a topic of their own"
            );
        }
    }
    let max_events_per_record = raw.max_events_per_record.unwrap_or(d.max_events_per_record);
    if !(1..=1_000_000).contains(&max_events_per_record) {
        bail!("field `stalwart.maxEventsPerRecord`: must be 1 to 1000000");
    }
    let management = match raw.management {
        Some(m) if enabled => Some(management(m)?),
        Some(_) => bail!(
            "field `stalwart.management`: set, but `stalwart.enabled` is not true: \
             herald reads no registry pointer from Stalwart's topic without it"
        ),
        None => None,
    };
    Ok(Stalwart {
        enabled,
        node_id: raw.node_id,
        topic,
        max_events_per_record,
        management,
    })
}

fn management(raw: RawManagement) -> anyhow::Result<Management> {
    let url = raw.url.trim_end_matches('/').to_string();
    match reqwest::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
        _ => bail!(
            "field `stalwart.management.url`: `{url}` is not an http(s) URL (Stalwart's \
             HTTP listener, e.g. https://mail-1.example.com)"
        ),
    }
    let secret = |field: &str, path: &PathBuf| {
        read_token_file(&format!("field `stalwart.management.{field}`"), path)
    };
    let auth = match (raw.api_key_file, raw.username, raw.password_file) {
        (Some(key), None, None) => ManagementAuth::Bearer(secret("apiKeyFile", &key)?),
        (None, Some(username), Some(password)) => ManagementAuth::Basic {
            username,
            password: secret("passwordFile", &password)?,
        },
        _ => bail!(
            "field `stalwart.management`: give either `apiKeyFile` (an API key, sent as a \
             bearer token) or `username` and `passwordFile` (HTTP Basic)"
        ),
    };
    let timeout = raw.timeout.map_or(Duration::from_secs(5), |d| d.0);
    if timeout.is_zero() || timeout > Duration::from_secs(60) {
        bail!("field `stalwart.management.timeout`: between 1ms and 60s");
    }
    Ok(Management { url, auth, timeout })
}

fn blocklist(raw: RawBlocklist) -> anyhow::Result<BlocklistPolicy> {
    let d = BlocklistPolicy::default();
    let min_prefix_v4 = raw.min_prefix_v4.unwrap_or(d.min_prefix_v4);
    if min_prefix_v4 > 32 {
        bail!("field `blocklist.minPrefixV4`: {min_prefix_v4} is not an IPv4 prefix length (0-32)");
    }
    let min_prefix_v6 = raw.min_prefix_v6.unwrap_or(d.min_prefix_v6);
    if min_prefix_v6 > 128 {
        bail!(
            "field `blocklist.minPrefixV6`: {min_prefix_v6} is not an IPv6 prefix length (0-128)"
        );
    }
    let mut protect = Vec::new();
    for (i, text) in raw.protect.unwrap_or_default().into_iter().enumerate() {
        let net = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                anyhow!(
                    "field `blocklist.protect[{i}]`: `{text}` is not an IP address or CIDR network"
                )
            })?;
        protect.push(net.trunc());
    }
    let max_entries = raw.max_entries.unwrap_or(d.max_entries);
    if max_entries == 0 {
        bail!("field `blocklist.maxEntries`: must be at least 1");
    }
    let max_reason = raw.max_reason_bytes.unwrap_or(d.max_reason);
    if !(16..=4096).contains(&max_reason) {
        bail!("field `blocklist.maxReasonBytes`: must be 16 to 4096");
    }
    Ok(BlocklistPolicy {
        min_prefix_v4,
        min_prefix_v6,
        protect,
        max_entries,
        max_reason,
    })
}

fn kafka(
    raw: BTreeMap<String, PropertyValue>,
    accepted: &[String],
) -> anyhow::Result<BTreeMap<String, String>> {
    for (i, name) in accepted.iter().enumerate() {
        if !UNSAFE_KAFKA_PROPERTIES.iter().any(|(n, _)| n == name) {
            bail!(
                "field `kafkaUnsafe[{i}]`: `{name}` is not one of the unsafe properties ({})",
                UNSAFE_KAFKA_PROPERTIES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let mut out = BTreeMap::new();
    for (key, PropertyValue(value)) in raw {
        // librdkafka matches names exactly; herald compares them trimmed and
        // in lower case, so that no spelling slips a property past.
        let name = key.trim().to_ascii_lowercase();
        if let Some((_, why)) = OWNED_KAFKA_PROPERTIES
            .iter()
            .find(|(owned, _)| *owned == name)
        {
            bail!("field `kafka.{key}`: herald sets `{key}` itself; it {why}");
        }
        if let Some((_, why)) = UNSAFE_KAFKA_PROPERTIES.iter().find(|(n, _)| *n == name)
            && !accepted.contains(&name)
        {
            bail!(
                "field `kafka.{key}`: `{key}` {why}; if you mean it, also list it in \
                 `kafkaUnsafe`, e.g. \"kafkaUnsafe\": [\"{name}\"]"
            );
        }
        if name.is_empty() {
            bail!("field `kafka`: a property name must not be empty");
        }
        out.insert(key, value);
    }
    Ok(out)
}

fn firewall(raw: RawFirewall) -> anyhow::Result<Firewall> {
    let Some(n) = raw.nftables else {
        return Ok(Firewall::default());
    };
    let d = Nftables::default();
    let table = n.table.unwrap_or(d.table);
    // Only a checked name ever reaches nft.
    if table.is_empty()
        || table.len() > 64
        || !table.starts_with(|c: char| c.is_ascii_alphabetic())
        || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        bail!(
            "field `firewall.nftables.table`: `{table}` is not a table name; use a letter, then \
             letters, digits and '_' (at most 64), e.g. \"herald\""
        );
    }
    let family = match n.family.as_deref() {
        None | Some("inet") => NftFamily::Inet,
        Some("ip") => NftFamily::Ip,
        Some("ip6") => NftFamily::Ip6,
        Some(other) => bail!(
            "field `firewall.nftables.family`: `{other}` is not one of \"inet\" (IPv4 and IPv6), \
             \"ip\" or \"ip6\""
        ),
    };
    let hook = match n.hook.as_deref() {
        None | Some("input") => NftHook::Input,
        Some("prerouting") => NftHook::Prerouting,
        Some("forward") => NftHook::Forward,
        Some(other) => bail!(
            "field `firewall.nftables.hook`: `{other}` is not one of \"input\", \"prerouting\" \
             or \"forward\""
        ),
    };
    Ok(Firewall {
        nftables: Some(Nftables {
            table,
            family,
            hook,
            priority: n.priority.unwrap_or(d.priority),
        }),
    })
}
