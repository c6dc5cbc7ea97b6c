//! Integration tests of the `vitrine` binary.

// Tests may panic on what they did not expect: that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_attack;
mod cluster_claims;
mod cluster_kit;
mod cluster_rules;
mod crash;
mod decisions;
mod decisions_attack;
mod grpc;
mod hostile;
mod huge_pages_attack;
mod huge_pages_kit;
mod huge_pages_restore_attack;
mod kafka;
mod kafka_proto;
mod labels;
mod language;
mod logs;
mod reports;
mod rules_store;
mod studio;
mod support;
mod timezone;
mod tls;
mod validate;
