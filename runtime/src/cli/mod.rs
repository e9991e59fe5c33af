//! The `herald` command line: one module per command group.

pub mod config;
pub mod demo;
pub mod firewall;
pub mod handler;
pub mod keys;
pub mod node;
pub mod push;
pub mod stalwart;
pub mod state;
pub mod status;
