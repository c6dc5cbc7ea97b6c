//! The `vitrine` service around the engine core: gRPC services, the rule
//! store with hot swap, metrics and probes, configuration and the CLI.
//!
//! The key design choice: the request path touches no lock that a writer
//! holds for long. A Decide is one `DashMap` lookup and one `ArcSwap::load`
//! for the shop's rule set, one shard read lock for the visitor's profile,
//! and cached metric handles; pushes compile off that path and swap once.

pub mod cli;
pub mod clock;
pub mod config;
pub mod connections;
pub mod demo;
pub mod engine;
pub mod events_log;
pub mod grpc;
pub mod http;
pub mod journal;
pub mod kafka;
pub mod metrics;
pub mod push;
pub mod serve;
pub mod snapshots;
pub mod store;
#[cfg(test)]
mod test_support;
pub mod transport;
pub mod validate;
pub mod wal;
