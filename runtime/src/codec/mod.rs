//! Decoding and encoding of what travels on the topics.
//!
//! herald's own events travel as the JSON envelope of [`crate::event`]; the
//! mail server's own cluster traffic travels in Stalwart's binary batches,
//! read and written by [`stalwart`] so that herald can sit on a cluster's
//! `stwt.agora` topic beside Stalwart v0.16 nodes.

pub mod stalwart;
