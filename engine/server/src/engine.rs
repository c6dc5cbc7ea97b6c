//! The engine as the service sees it: the audience index, the rule store and
//! the claim ledger behind one handle, with the operations every surface
//! (gRPC, the demo seeder, later Kafka) shares, so that an event applies the
//! same way whichever door it came through.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use vitrine_core::event::Fields;
use vitrine_core::{ClaimLedger, Event, EventError, Index, MemoryLedger};

use crate::metrics::Metrics;
use crate::store::RuleStore;

/// Shared state of a running engine.
pub struct Engine {
    /// Every shop's audience index.
    pub index: Index,
    /// Every shop's rule sets.
    pub rules: RuleStore,
    /// Caps and budgets.
    pub ledger: Arc<dyn ClaimLedger>,
    /// Metric handles.
    pub metrics: Metrics,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

/// One event that was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Its position in the batch.
    pub index: u32,
    /// Why.
    pub error: EventError,
}

impl Engine {
    /// An engine with an empty index and an in-memory claim ledger.
    pub fn new(rules: RuleStore, metrics: Metrics) -> Engine {
        Engine {
            index: Index::new(),
            rules,
            ledger: Arc::new(MemoryLedger::new()),
            metrics,
        }
    }

    /// Validates and applies a batch of events; returns how many were
    /// applied and each rejected one with its reason. Idempotent per event.
    pub fn track<'a>(&self, events: impl IntoIterator<Item = Fields<'a>>) -> (u32, Vec<Rejected>) {
        let mut accepted = 0;
        let mut rejected = Vec::new();
        for (i, fields) in events.into_iter().enumerate() {
            match Event::validate(fields) {
                Ok(event) => {
                    self.apply(&event);
                    accepted += 1;
                }
                Err(error) => {
                    self.metrics.reject(error.reason);
                    rejected.push(Rejected { index: i as u32, error });
                }
            }
        }
        (accepted, rejected)
    }

    /// Applies one validated event.
    pub fn apply(&self, event: &Event<'_>) {
        self.index.apply(event);
        self.metrics.applied[event.action as usize].increment(1);
    }
}

/// Milliseconds since the Unix epoch by the server clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `requested`, or the server clock when it is 0.
pub fn at(requested: i64) -> i64 {
    if requested == 0 {
        now_ms()
    } else {
        requested
    }
}
