//! The engine as the service sees it: the audience index, the rule store and
//! the claim ledger behind one handle, with the operations every surface
//! (gRPC, the demo seeder, Kafka) shares, so that an event applies the same
//! way whichever door it came through.
//!
//! A durable engine also holds the events journal: `Ingest/Track` writes
//! the accepted events to it, and waits for them to be on disk, before it
//! applies them and answers. The journal position that a snapshot records
//! must cover only applied events, which the track gate ensures: a Track
//! holds it shared from journaling to applying, and [`Engine::events_position`]
//! takes it exclusively for an instant.
//!
//! # Storage faults
//!
//! When a journal write or `fdatasync` fails, or the data directory is
//! removed or replaced under the running server, the engine records a
//! [`StorageHealth`] fault. From then on Track and Claim are refused with
//! UNAVAILABLE and the server reports NOT_SERVING (gRPC health) and 503
//! (`/readyz`, with the reason) until it is restarted (hardening #11, #17).
//! The fault is never cleared in-process: after a failed `fsync` what reached
//! the disk is unknown, so, as PostgreSQL does, the replica does not retry
//! and trust the page cache; a restart replays what the disk really holds.
//! We chose NOT_SERVING over a crash-only exit: reads (Decide, Size) keep
//! answering for the clients already connected while the load balancer
//! drains the replica, and the operator can read the reason at `/readyz`
//! and in the metrics before restarting it.

use std::sync::Arc;

use parking_lot::RwLock;
use vitrine_core::event::Fields;
use vitrine_core::{ClaimLedger, Event, EventError, Index, MemoryLedger};

use crate::metrics::{self, Metrics};
use crate::rules_store::RuleStore;
use crate::storage::event_log::EventLog;

/// The first storage fault of the process, if any (see the module docs).
/// Cloning shares it.
#[derive(Debug, Clone)]
pub struct StorageHealth {
    fault: Arc<tokio::sync::watch::Sender<Option<Arc<str>>>>,
}

impl Default for StorageHealth {
    fn default() -> StorageHealth {
        StorageHealth {
            fault: Arc::new(tokio::sync::watch::Sender::new(None)),
        }
    }
}

impl StorageHealth {
    /// Records a fault; the first one stands, later ones are only logged.
    pub fn trip(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let first = self.fault.send_if_modified(|fault| {
            if fault.is_some() {
                return false;
            }
            *fault = Some(reason.as_str().into());
            true
        });
        if first {
            metrics::storage_fault();
            tracing::error!(%reason, "storage fault: refusing writes and reporting NOT_SERVING until restarted");
        } else {
            tracing::error!(%reason, "another storage fault");
        }
    }

    /// The first fault's reason; `None` while storage is healthy.
    pub fn fault(&self) -> Option<Arc<str>> {
        self.fault.borrow().clone()
    }

    /// A receiver that sees the fault when it happens.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Arc<str>>> {
        self.fault.subscribe()
    }

    /// A hook for [`crate::storage::wal::Options::on_failure`] that trips this.
    pub fn wal_hook(&self) -> crate::storage::wal::FailureHook {
        let health = self.clone();
        Arc::new(move |log, error| {
            health.trip(format!("{log} write failed: {error}"));
        })
    }
}

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
    /// Set when writes can no longer be trusted to reach the disk.
    pub storage: StorageHealth,
    /// The shops this replica serves, and (with Kafka) the cluster topics.
    pub cluster: crate::cluster::Cluster,
    /// Where Track journals events before applying them (`None`: in memory only).
    events: Option<EventLog>,
    /// Shared by Track from journaling to applying; see the module docs.
    track_gate: RwLock<()>,
    /// Shops whose serving rules set another zone than their index's, reported.
    zone_conflicts: crate::zones::Conflicts,
    /// Decision ids and the decision log (`crate::decisions`).
    pub decisions: Arc<crate::decisions::Decisions>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("rules", &self.rules)
            .field("durable", &self.events.is_some())
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

/// A Track whose events could not be journaled: none of them was applied.
#[derive(Debug, thiserror::Error)]
#[error("the events journal failed; no event of the call was accepted: {0}")]
pub struct TrackError(String);

impl Engine {
    /// An engine with an empty index and an in-memory claim ledger, nothing
    /// durable (tools, demos and tests).
    pub fn new(rules: RuleStore, metrics: Metrics) -> Engine {
        Engine::with_parts(Index::new(), rules, Arc::new(MemoryLedger::new()), None, metrics)
    }

    /// An engine over restored state: `index` (from a snapshot and the
    /// journal), `ledger`, and `events`, the journal Track writes to.
    pub fn with_parts(
        index: Index,
        rules: RuleStore,
        ledger: Arc<dyn ClaimLedger>,
        events: Option<EventLog>,
        metrics: Metrics,
    ) -> Engine {
        Engine {
            index,
            rules,
            ledger,
            metrics,
            storage: StorageHealth::default(),
            cluster: crate::cluster::Cluster::default(),
            events,
            track_gate: RwLock::new(()),
            zone_conflicts: crate::zones::Conflicts::default(),
            decisions: Arc::default(),
        }
    }

    /// Validates a batch of events, journals the valid ones (waiting until
    /// they are on disk) and applies them; returns how many were applied
    /// and each rejected one with its reason. Idempotent per event. On a
    /// journal failure nothing is applied.
    pub fn track<'a>(&self, events: impl IntoIterator<Item = Fields<'a>>) -> Result<(u32, Vec<Rejected>), TrackError> {
        let (valid, rejected) = self.validate_batch(events);
        let _gate = self.track_gate.read();
        if let Some(log) = self.events.as_ref().filter(|_| !valid.is_empty()) {
            if let Some(fault) = self.storage.fault() {
                return Err(TrackError(format!("storage fault, restart the server: {fault}")));
            }
            let durable = log.append(&valid).and_then(|lsn| log.wait(lsn));
            if let Err(e) = durable {
                metrics::journal_failed(metrics::Journal::Events);
                return Err(TrackError(e.to_string()));
            }
        }
        for event in &valid {
            self.apply(event);
        }
        Ok((valid.len() as u32, rejected))
    }

    /// Validates and admits a batch of events: the valid ones, and each
    /// rejected one with its index and reason (counted).
    pub fn validate_batch<'a>(&self, events: impl IntoIterator<Item = Fields<'a>>) -> (Vec<Event<'a>>, Vec<Rejected>) {
        let mut valid = Vec::new();
        let mut rejected = Vec::new();
        for (i, fields) in events.into_iter().enumerate() {
            let shop = fields.shop.clone();
            match Event::validate(fields).and_then(|e| self.admit(e)) {
                Ok(event) => valid.push(event),
                Err(error) => {
                    self.metrics.reject(error.reason);
                    (self.metrics.shops).rejected(shop.as_deref(), |s| self.rules.serving(s));
                    rejected.push(Rejected { index: i as u32, error });
                }
            }
        }
        (valid, rejected)
    }

    /// Passes an event whose shop a rule set serves; refuses the others
    /// (`unknown_shop`). The server keeps index state only for shops it
    /// serves, so made-up shops in Track or Kafka cost one lookup, not
    /// memory, restart time or metric series; a new shop is onboarded by
    /// pushing its rules first (README, Limits and protections).
    pub fn admit<'a>(&self, event: Event<'a>) -> Result<Event<'a>, EventError> {
        if self.rules.serves(&event.shop) {
            Ok(event)
        } else {
            Err(EventError::unknown_shop(&event.shop))
        }
    }

    /// Applies one validated event (not journaled: Kafka and the demo
    /// seeder have their own log). A shop's first event creates its index
    /// on the clock of its serving rules' `timezone:` (`crate::zones`).
    pub fn apply(&self, event: &Event<'_>) {
        self.index
            .apply_in(event, || crate::zones::zone_for(&self.rules, &event.shop));
        self.metrics.applied.increment(event.action);
    }

    /// The events-journal LSN up to which every Track event is applied
    /// (0 without a journal): what a snapshot taken now may record. Waits
    /// for Track calls in flight to finish applying.
    pub fn events_position(&self) -> u64 {
        match &self.events {
            Some(log) => {
                let _gate = self.track_gate.write();
                log.durable_lsn()
            }
            None => 0,
        }
    }

    /// Reports shops whose serving rules set another time zone than their
    /// index counts hours in (`crate::zones::Conflicts::check`); returns how
    /// many there are. For start-up, the rules poll and the rules topic.
    pub fn check_zones(&self) -> usize {
        self.zone_conflicts.check(&self.index, &self.rules)
    }

    /// Deletes events-journal segments every record of which has an LSN of
    /// at most `upto` (what every kept snapshot covers).
    pub fn compact_events(&self, upto: u64) {
        if let Some(log) = &self.events {
            match log.compact(upto) {
                Ok(report) => tracing::debug!(?report, upto, "events journal compacted"),
                Err(e) => tracing::warn!(upto, "compacting the events journal failed: {e}"),
            }
        }
    }

    /// [`Engine::apply`] without counting the event: for a caller that
    /// counts a whole batch at once with [`Engine::count_applied`] (Kafka's
    /// apply threads: one counter update per action per batch).
    pub fn apply_uncounted(&self, event: &Event<'_>) {
        self.index
            .apply_in(event, || crate::zones::zone_for(&self.rules, &event.shop));
    }

    /// Counts `n` events of `action` applied by [`Engine::apply_uncounted`].
    pub fn count_applied(&self, action: vitrine_core::Action, n: u64) {
        if let Some(counter) = self.metrics.applied.get(action).filter(|_| n > 0) {
            counter.increment(n);
        }
    }
}
