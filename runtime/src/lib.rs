//! herald: the coordination runtime of a clustered mail server.
//!
//! Modules follow the path of an event: bytes from Kafka are decoded
//! ([`event`] for the JSON envelope, [`codec`] for Stalwart's binary batches),
//! handed to sandboxed WebAssembly handlers ([`sandbox`], configured by their
//! [`manifest`]), and what handlers ask of the node goes through [`effects`].
//! Data flows one way: nothing below reaches back up.

pub mod api;
pub mod cli;
pub mod codec;
pub mod config;
pub mod dispatch;
pub mod effects;
pub mod event;
pub mod kafka;
pub mod manifest;
pub mod node;
pub mod registry;
pub mod sandbox;
pub mod watch;
