//! What Vitrine's tests share, in one place rather than in copies.
//!
//! - [`mutation`]: the proptest kit the decoders' `fuzz_*` tests use to
//!   damage valid encodings (flip, cut, extend, plant a huge length).
//!
//! Temporary directories come from the `tempfile` crate and random streams
//! from `vitrine_core::hash::SplitMix64`; events are built with
//! `vitrine_core::Event::new`. This crate depends on no Vitrine crate, so the
//! core's unit tests can use it as well as every other test.

pub mod mutation;

pub use mutation::{apply, config, mutation, mutations, Mutation};
