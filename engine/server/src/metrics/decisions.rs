//! Metrics of the decision log (`crate::decisions`): what was logged,
//! dropped and rejected, how full the queue is, and exposures applied.

use metrics::{describe_counter, describe_gauge, Counter, Gauge};

use super::ByLabel;

/// `vitrine_decision_log_logged_total`
pub const LOGGED: &str = "vitrine_decision_log_logged_total";
/// `vitrine_decision_log_dropped_total{reason}`
pub const DROPPED: &str = "vitrine_decision_log_dropped_total";
/// `vitrine_decision_log_queue_depth`
pub const QUEUE_DEPTH: &str = "vitrine_decision_log_queue_depth";
/// `vitrine_decision_log_rejected_total{reason}`
pub const REJECTED: &str = "vitrine_decision_log_rejected_total";
/// `vitrine_exposures_applied_total`
pub const EXPOSURES_APPLIED: &str = "vitrine_exposures_applied_total";

/// Why a decision record did not reach the log: the `reason` label of
/// `vitrine_decision_log_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The queue was full (`--decision-log-queue`): the drainer falls behind.
    QueueFull,
    /// The Kafka producer refused it or could not deliver it.
    Kafka,
    /// Writing `--decision-log` failed (the record was still applied).
    File,
}

impl Dropped {
    /// Every reason, for pre-registering metrics.
    pub const ALL: [Dropped; 3] = [Dropped::QueueFull, Dropped::Kafka, Dropped::File];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::QueueFull => "queue_full",
            Dropped::Kafka => "kafka",
            Dropped::File => "file",
        }
    }
}

/// Why a record read back from the decisions topic was skipped: the
/// `reason` label of `vitrine_decision_log_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordRejected {
    /// Over the size cap.
    Oversized,
    /// No payload (a tombstone).
    Tombstone,
    /// Not JSON of the record's shape.
    Malformed,
    /// An id over 512 bytes, or an empty shop or decision id.
    BadId,
    /// More items or hold-outs than a decision can have.
    TooMany,
    /// A held-out slot other than `banner` or `benefit`.
    BadSlot,
    /// A timestamp outside 0..=9999-12-31.
    BadTs,
    /// A shop no rule set on this replica serves.
    UnknownShop,
    /// A banner or benefit id past the shop's bound on distinct ids
    /// (`vitrine_core::exposure::MAX_ENTRIES`): the index keeps no more.
    TooManyEntries,
}

impl RecordRejected {
    /// Every reason, for pre-registering metrics.
    pub const ALL: [RecordRejected; 9] = [
        RecordRejected::Oversized,
        RecordRejected::Tombstone,
        RecordRejected::Malformed,
        RecordRejected::BadId,
        RecordRejected::TooMany,
        RecordRejected::BadSlot,
        RecordRejected::BadTs,
        RecordRejected::UnknownShop,
        RecordRejected::TooManyEntries,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordRejected::Oversized => "oversized",
            RecordRejected::Tombstone => "tombstone",
            RecordRejected::Malformed => "malformed",
            RecordRejected::BadId => "bad_id",
            RecordRejected::TooMany => "too_many",
            RecordRejected::BadSlot => "bad_slot",
            RecordRejected::BadTs => "bad_ts",
            RecordRejected::UnknownShop => "unknown_shop",
            RecordRejected::TooManyEntries => "too_many_entries",
        }
    }
}

/// Describes the family (once, at start-up) and registers every series at zero.
pub(super) fn describe() {
    describe_counter!(
        LOGGED,
        "Is every decision measured? Decide answers whose record entered the decision log's queue."
    );
    describe_counter!(
        DROPPED,
        "Are decisions missing from the measurement? Records lost, by reason: queue_full (the drainer fell behind: raise --decision-log-queue or check Kafka), kafka (the producer refused or could not deliver), file (--decision-log could not be written; the record was still applied)."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "How far behind is the decision log? Records queued and not yet published or applied, against --decision-log-queue."
    );
    describe_counter!(
        REJECTED,
        "Is someone writing garbage to the decisions topic? Records read back and skipped, by reason."
    );
    describe_counter!(
        EXPOSURES_APPLIED,
        "Do offered(...) and the lift report see the decisions? Decision records applied to this replica's index as exposures (every replica's, with Kafka)."
    );
    let _ = DecisionMetrics::new();
}

/// Handles of the decision-log metrics.
#[derive(Debug, Clone)]
pub struct DecisionMetrics {
    /// Records queued.
    pub logged: Counter,
    /// Records lost, by reason.
    pub dropped: ByLabel<Dropped, 3>,
    /// Records queued and not yet drained.
    pub queue_depth: Gauge,
    /// Records read back and skipped, by reason.
    pub rejected: ByLabel<RecordRejected, 9>,
    /// Records applied as exposures.
    pub exposures_applied: Counter,
}

impl DecisionMetrics {
    /// Creates (and registers at zero) the handles.
    pub fn new() -> DecisionMetrics {
        DecisionMetrics {
            logged: metrics::counter!(LOGGED),
            dropped: ByLabel::new(DROPPED, "reason", Dropped::ALL, Dropped::as_str),
            queue_depth: metrics::gauge!(QUEUE_DEPTH),
            rejected: ByLabel::new(REJECTED, "reason", RecordRejected::ALL, RecordRejected::as_str),
            exposures_applied: metrics::counter!(EXPOSURES_APPLIED),
        }
    }
}

impl Default for DecisionMetrics {
    fn default() -> Self {
        DecisionMetrics::new()
    }
}
