//! The configuration file as written: serde shapes that accept what
//! Stalwart's settings store exports (brokers as a set, durations as
//! milliseconds) and refuse unknown keys at every depth.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};

use crate::manifest::parse_duration;

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a JSON object"
)]
pub(super) struct Raw {
    #[serde(rename = "@type", default)]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) brokers: Option<Brokers>,
    #[serde(default)]
    pub(super) group_id: Option<String>,
    #[serde(default)]
    pub(super) group_prefix: Option<String>,
    #[serde(default)]
    pub(super) timeout_session: Option<DurationValue>,
    #[serde(default)]
    pub(super) timeout_message: Option<DurationValue>,
    #[serde(default)]
    pub(super) node_id: Option<String>,
    #[serde(default)]
    pub(super) handlers: Option<PathBuf>,
    #[serde(default)]
    pub(super) state_dir: Option<PathBuf>,
    #[serde(default)]
    pub(super) topics: Option<RawTopics>,
    #[serde(default)]
    pub(super) batch: Option<RawBatch>,
    #[serde(default)]
    pub(super) retry: Option<RawRetry>,
    #[serde(default)]
    pub(super) commit_interval: Option<DurationValue>,
    #[serde(default)]
    pub(super) probe_interval: Option<DurationValue>,
    #[serde(default)]
    pub(super) api: Option<RawApi>,
    #[serde(default)]
    pub(super) stalwart: Option<RawStalwart>,
    #[serde(default)]
    pub(super) blocklist: Option<RawBlocklist>,
    #[serde(default)]
    pub(super) push: Option<RawPush>,
    #[serde(default)]
    pub(super) publish: Option<RawPublish>,
    #[serde(default)]
    pub(super) signing_key: Option<PathBuf>,
    #[serde(default)]
    pub(super) trust: Option<super::trust::RawTrust>,
    #[serde(default)]
    pub(super) certificates: Option<super::trust::RawCertificates>,
    #[serde(default)]
    pub(super) kafka: Option<BTreeMap<String, PropertyValue>>,
    /// Names in `kafka` the operator accepts although they are unsafe.
    #[serde(default)]
    pub(super) kafka_unsafe: Option<Vec<String>>,
    #[serde(default)]
    pub(super) firewall: Option<RawFirewall>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object of topic settings"
)]
pub(super) struct RawTopics {
    #[serde(default)]
    pub(super) events: Option<String>,
    #[serde(default)]
    pub(super) state: Option<String>,
    #[serde(default)]
    pub(super) dead_letter_suffix: Option<String>,
    #[serde(default)]
    pub(super) create: Option<RawTopicCreate>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object with `partitions` and `replicationFactor`"
)]
pub(super) struct RawTopicCreate {
    pub(super) partitions: i32,
    pub(super) replication_factor: i32,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object with `size` and `linger`"
)]
pub(super) struct RawBatch {
    #[serde(default)]
    pub(super) size: Option<usize>,
    #[serde(default)]
    pub(super) linger: Option<DurationValue>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object with `attempts`, `backoff` and `maxBackoff`"
)]
pub(super) struct RawRetry {
    #[serde(default)]
    pub(super) attempts: Option<u32>,
    #[serde(default)]
    pub(super) backoff: Option<DurationValue>,
    #[serde(default)]
    pub(super) max_backoff: Option<DurationValue>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object of API settings"
)]
pub(super) struct RawApi {
    #[serde(default)]
    pub(super) listen: Option<String>,
    #[serde(default)]
    pub(super) unix_socket: Option<PathBuf>,
    #[serde(default)]
    pub(super) token: Option<String>,
    #[serde(default)]
    pub(super) token_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) allow_non_loopback: Option<bool>,
    #[serde(default)]
    pub(super) max_connections: Option<usize>,
    #[serde(default)]
    pub(super) max_connections_per_client: Option<usize>,
    #[serde(default)]
    pub(super) max_streams: Option<usize>,
    #[serde(default)]
    pub(super) header_timeout: Option<DurationValue>,
    #[serde(default)]
    pub(super) tokens: Option<Vec<RawToken>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object with `name`, `token` or `tokenFile`, and `scopes`"
)]
pub(super) struct RawToken {
    pub(super) name: String,
    #[serde(default)]
    pub(super) token: Option<String>,
    #[serde(default)]
    pub(super) token_file: Option<PathBuf>,
    pub(super) scopes: Vec<super::Scope>,
    #[serde(default)]
    pub(super) publish_kinds: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object with `enabled`, `nodeId` and `topic`"
)]
pub(super) struct RawStalwart {
    #[serde(default)]
    pub(super) enabled: Option<bool>,
    #[serde(default)]
    pub(super) node_id: Option<u16>,
    #[serde(default)]
    pub(super) topic: Option<String>,
    #[serde(default)]
    pub(super) max_events_per_record: Option<usize>,
    #[serde(default)]
    pub(super) management: Option<RawManagement>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawManagement {
    pub(super) url: String,
    #[serde(default)]
    pub(super) api_key_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) username: Option<String>,
    #[serde(default)]
    pub(super) password_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) timeout: Option<DurationValue>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPublish {
    #[serde(default)]
    pub(super) max_hops: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPush {
    #[serde(default)]
    pub(super) allow_private: Option<bool>,
    #[serde(default)]
    pub(super) vapid: Option<RawVapid>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawVapid {
    #[serde(default)]
    pub(super) key_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) subject: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawBlocklist {
    #[serde(default)]
    pub(super) min_prefix_v4: Option<u8>,
    #[serde(default)]
    pub(super) min_prefix_v6: Option<u8>,
    #[serde(default)]
    pub(super) protect: Option<Vec<String>>,
    #[serde(default)]
    pub(super) max_entries: Option<usize>,
    #[serde(default)]
    pub(super) max_reason_bytes: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object with `nftables`"
)]
pub(super) struct RawFirewall {
    #[serde(default)]
    pub(super) nftables: Option<RawNftables>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object with `table`, `family`, `hook` and `priority`"
)]
pub(super) struct RawNftables {
    #[serde(default)]
    pub(super) table: Option<String>,
    #[serde(default)]
    pub(super) family: Option<String>,
    #[serde(default)]
    pub(super) hook: Option<String>,
    #[serde(default)]
    pub(super) priority: Option<i32>,
}

/// `brokers`: `["host:port", ...]` or Stalwart's set shape
/// `{"host:port": true, ...}` (false entries ignored).
pub(super) struct Brokers(pub(super) Vec<String>);

impl<'de> Deserialize<'de> for Brokers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Brokers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an array of \"host:port\" strings or an object like {\"host:port\": true}",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Brokers, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<String>()? {
                    out.push(b);
                }
                Ok(Brokers(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Brokers, A::Error> {
                let mut out = Vec::new();
                while let Some((b, on)) = map.next_entry::<String, bool>()? {
                    if on {
                        out.push(b);
                    }
                }
                Ok(Brokers(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration: a string like "500ms", "5s", "1m", or a whole number of
/// milliseconds (as Stalwart's settings store writes them).
pub(super) struct DurationValue(pub(super) Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration like \"500ms\", \"5s\" or \"1m\", or a number of milliseconds",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DurationValue, E> {
                parse_duration(s)
                    .map(DurationValue)
                    .map_err(|e| E::custom(format!("{e:#}")))
            }
            fn visit_u64<E: de::Error>(self, ms: u64) -> Result<DurationValue, E> {
                Ok(DurationValue(Duration::from_millis(ms)))
            }
            fn visit_i64<E: de::Error>(self, ms: i64) -> Result<DurationValue, E> {
                match u64::try_from(ms) {
                    Ok(ms) => self.visit_u64(ms),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(ms), &self)),
                }
            }
            fn visit_f64<E: de::Error>(self, ms: f64) -> Result<DurationValue, E> {
                if ms.is_finite() && ms >= 0.0 && ms.fract() == 0.0 && ms < u64::MAX as f64 {
                    self.visit_u64(ms as u64)
                } else {
                    Err(E::invalid_value(Unexpected::Float(ms), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A librdkafka property value: a string, or a number or boolean turned into
/// its string form.
pub(super) struct PropertyValue(pub(super) String);

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PropertyValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PropertyValue, E> {
                Ok(PropertyValue(s.to_string()))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<PropertyValue, E> {
                Ok(PropertyValue(b.to_string()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(n.to_string()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(n.to_string()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(n.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}
