//! Evaluating a compiled rule set: for one visitor ([`decide`], reading the
//! visitor's profile) or for a whole shop ([`size`], bitmap algebra over the
//! audience index). Both walk the same [`crate::rules::plan::Plan`]. A
//! decision's items slot ranks candidates by [`items`] signals, and starts
//! with the smart add-on's picks ([`addon`]) when the request's cart is short
//! of the file's threshold.

mod addon;
pub mod decide;
pub mod items;
pub mod size;

#[cfg(test)]
mod entries_attack;
#[cfg(test)]
mod signals_attack;
