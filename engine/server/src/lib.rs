//! The `vitrine` service around the engine core: gRPC services, the rule
//! store with hot swap, metrics and probes, configuration and the CLI.
//!
//! The folders draw the data flow (`docs/architecture.md` has the picture):
//!
//! * [`api`]: the request path. Connections are accepted and bounded
//!   ([`api::connections`]), admitted or shed ([`api::transport`]), and
//!   answered by the gRPC services ([`api::grpc`]) and the HTTP probes
//!   ([`api::http`]).
//! * [`ingest`]: the Kafka behavior stream applied to the index.
//! * [`decisions`]: `decision_id` and the decision log: every Decide queued
//!   off the request path, published to Kafka or applied in-process, and
//!   applied on every replica as exposures.
//! * [`state`]: the one handle every door shares: index, rule store, claim
//!   ledger, event log.
//! * [`rules_store`]: rule sets per shop, revisions, hot swap, the rules
//!   directory.
//! * [`storage`]: what survives a restart: the write-ahead log under the
//!   event log and the claims journal, snapshot files, and the restore at start.
//! * [`commands`]: one module per CLI command (`serve`, `demo`, `rules
//!   validate`, `rules push`, `kafka produce`).
//! * [`cli`], [`config`], [`clock`], [`metrics`]: flags, their validated form,
//!   the wall clock, and every metric the process exports.
//! * [`huge_pages`]: the heap on transparent huge pages (`serve` restarts
//!   itself once with glibc's tunable).
//! * [`zones`]: shop time zones: which zone a new index counts hours in, and
//!   rule changes that would move an existing one.
//!
//! The key design choice: the request path touches no lock that a writer
//! holds for long. A Decide is one `DashMap` lookup and one `ArcSwap::load`
//! for the shop's rule set, one shard read lock for the visitor's profile,
//! and cached metric handles; pushes compile off that path and swap once.

pub mod api;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod decisions;
pub mod huge_pages;
pub mod ingest;
pub mod kafka_options;
pub mod metrics;
pub mod rules_store;
pub mod state;
pub mod storage;
pub mod zones;
