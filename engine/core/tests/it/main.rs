//! Integration tests of vitrine-core: one binary, one module per concern.

// Tests may panic on what they did not expect: that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod attack;
mod attack17;
mod concurrent;
mod decide;
mod fuzz;
mod fuzz_decoders;
mod golden;
mod hardening;
mod lift_model;
mod model;
mod offers;
mod rank_attack;
mod rules;
mod timezone;
