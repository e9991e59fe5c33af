//! The `probe` kind: herald's own question "does coordination work?", and
//! the answers to it. No handler sees it (no manifest can subscribe to it);
//! a node's broadcast group takes probes out of the stream before dispatch
//! (see `effects::probe`).
//!
//! A node publishes a probe on each herald topic it reads; every node whose
//! broadcast group reads that topic answers on the same topic with who it
//! is. The asker times the round trip per topic and answering node.

use serde::{Deserialize, Serialize};

/// A probe (no `answer`) or an answer to one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// The probe's id, chosen by the asker; an answer repeats it.
    pub probe: String,
    /// The node that asked.
    pub asker: String,
    /// The topic the probe went out on (and its answers come back on).
    pub topic: String,
    /// Set in an answer: the node that answers, as it describes itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<NodeReport>,
}

/// What an answering node says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub node: String,
    /// herald's version on that node.
    pub version: String,
    /// Its handlers, with their mode and consumer lag.
    #[serde(default)]
    pub handlers: Vec<HandlerReport>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandlerReport {
    pub name: String,
    pub mode: String,
    /// Records behind the end of the topics it reads, summed over
    /// partitions; none when not known yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}
