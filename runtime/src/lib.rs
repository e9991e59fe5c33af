//! herald: the coordination runtime of a clustered mail server.
//!
//! Modules follow the path of an event, and each depends only on those after
//! it:
//!
//! ```text
//! kafka ─► codec ─► dispatch ─► sandbox ─► effects
//! (records)  (events)  (retries,    (wasm      (blocklist, push,
//!                      dead letters) handlers)  certificates, publish)
//! ```
//!
//! [`kafka`] reads records per partition and commits what is done; [`codec`]
//! turns records into [`event`]s (JSON envelope or Stalwart batches);
//! [`dispatch`] hands them to the subscribed handlers, retrying and
//! dead-lettering; [`sandbox`] runs each call in a fresh, bounded WebAssembly
//! instance whose capability calls become [`effects`] on the node.
//! [`node`] wires the parts together and starts the local [`api`], which
//! serves the narrow state it is handed and never sees the node. [`config`]
//! and [`manifest`] read the node's and the handlers' settings; [`durable`]
//! is how every state file is written. `docs/design.md` tells the design.

// The crate documents its private modules too (`just lint`): links to them
// are meant.
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod api;
pub(crate) mod bounded;
pub mod cli;
pub mod codec;
pub mod config;
pub(crate) mod control;
pub(crate) mod dispatch;
pub(crate) mod durable;
pub mod effects;
pub mod event;
pub(crate) mod kafka;
pub(crate) mod management;
pub mod manifest;
pub mod node;
pub(crate) mod perms;
pub(crate) mod registry;
pub mod sandbox;
pub mod trust;
pub(crate) mod watch;

/// The fetch settings herald's group consumers use unless the config's
/// `kafka` section sets them; the end-to-end bench gives its baseline
/// consumers the same.
pub use kafka::consumer::FETCH_DEFAULTS as CONSUMER_FETCH_DEFAULTS;
