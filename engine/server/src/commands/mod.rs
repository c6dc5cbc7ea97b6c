//! One module per CLI command; `main.rs` maps the parsed command line
//! ([`crate::cli`]) to them.

pub mod demo;
pub mod demo_lift;
pub mod health;
pub mod produce;
pub mod push;
pub mod report;
pub mod serve;
pub mod validate;
