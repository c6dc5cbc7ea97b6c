//! Evaluating a compiled rule set: for one visitor ([`decide`], reading the
//! visitor's profile) or for a whole shop ([`size`], bitmap algebra over the
//! audience index). Both walk the same [`crate::rules::plan::Plan`].

mod addon;
pub mod decide;
pub mod size;
