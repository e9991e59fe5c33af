//! Every end-to-end suite, one module each, in one test binary: the suites
//! share herald's library and wasmtime, and linking them once instead of
//! a dozen times is minutes on a 2-core machine. `cargo test -p herald-tests
//! node_api::` runs one suite.

mod cli;
mod converge;
mod coordination;
mod crash;
mod firewall;
mod hostile;
mod kafka;
mod languages;
mod node_api;
mod operations;
mod package;
mod push;
mod registry;
mod replay;
mod review;
mod sandbox;
mod trust;
