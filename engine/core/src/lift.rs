//! PLACEHOLDER for the report branch only: the lift computation lands with the exposures change.
#![allow(missing_docs, dead_code)]
use crate::eval::decide::Slot;
use crate::index::ShopIndex;
use crate::rules::RuleSet;
use crate::time::Window;

#[derive(Debug, Clone, Copy)]
pub struct LiftQuery<'a> {
    pub id: Option<&'a str>,
    pub window: Window,
    pub from_ms: i64,
    pub to_ms: i64,
}

#[derive(Debug, Clone)]
pub struct LiftRow {
    pub slot: Slot,
    pub id: String,
    pub treated: u64,
    pub control: u64,
    pub treated_converted: u64,
    pub control_converted: u64,
    pub treated_rate: f64,
    pub control_rate: f64,
    pub lift: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub treated_spend: f64,
    pub control_spend: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum LiftError {
    #[error("no entry `{0}`")]
    UnknownId(String),
}

pub fn lift(_rules: &RuleSet, _shop: Option<&ShopIndex>, _q: &LiftQuery<'_>) -> Result<Vec<LiftRow>, LiftError> {
    Ok(Vec::new())
}
