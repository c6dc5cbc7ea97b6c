//! Every metric Vitrine exports: names, descriptions (the SRE question each
//! answers) and handles created once, so the hot path records through a
//! cached handle (a few ns) instead of a per-call name and label lookup.
//!
//! Labels are bounded: slots, outcomes, reasons, actions, results, origins
//! and methods are fixed sets; `shop` is bounded by the rule files an
//! operator deploys. Visitor and item ids never become labels.

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use vitrine_core::{ClaimOutcome, RejectReason};

/// `vitrine_decide_duration_seconds`
pub const DECIDE_DURATION: &str = "vitrine_decide_duration_seconds";
/// `vitrine_decisions_total{slot, outcome}`
pub const DECISIONS: &str = "vitrine_decisions_total";
/// `vitrine_requests_shed_total{method}`
pub const SHED: &str = "vitrine_requests_shed_total";
/// `vitrine_rules_pushes_total{origin, result}`
pub const RULE_PUSHES: &str = "vitrine_rules_pushes_total";
/// `vitrine_rules_revision{shop}`
pub const RULE_REVISION: &str = "vitrine_rules_revision";
/// `vitrine_ingest_events_applied_total{action}`
pub const EVENTS_APPLIED: &str = "vitrine_ingest_events_applied_total";
/// `vitrine_ingest_rejected_total{reason}`
pub const EVENTS_REJECTED: &str = "vitrine_ingest_rejected_total";
/// `vitrine_index_visitors{shop}`
pub const INDEX_VISITORS: &str = "vitrine_index_visitors";
/// `vitrine_index_bitmap_bytes{shop}`
pub const INDEX_BITMAP_BYTES: &str = "vitrine_index_bitmap_bytes";
/// `vitrine_index_entries{shop}`
pub const INDEX_ENTRIES: &str = "vitrine_index_entries";
/// `vitrine_claims_total{result}`
pub const CLAIMS: &str = "vitrine_claims_total";

/// Decide latency buckets, in seconds: fine below 1 ms, where the promise is.
const DECIDE_BUCKETS: [f64; 14] = [
    0.000_005, 0.000_01, 0.000_02, 0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 1.0,
];

/// Installs the Prometheus recorder (global, once per process) and describes
/// every metric. Histograms use fixed buckets, so memory and scrape time stay
/// flat under load whatever the upkeep interval.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(DECIDE_DURATION.to_string()), &DECIDE_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_histogram!(
        DECIDE_DURATION,
        Unit::Seconds,
        "How long does Vitrine take to decide, from decoded request to ready response (server side)?"
    );
    describe_counter!(
        DECISIONS,
        "What do visitors get? Decisions by slot (banner, items, benefit) and outcome (shown, none)."
    );
    describe_counter!(
        SHED,
        "Is the server overloaded? Requests refused with RESOURCE_EXHAUSTED at the concurrency limit, by method."
    );
    describe_counter!(
        RULE_PUSHES,
        "Are rule changes landing? Rule files by origin (push, rollback, file) and result (accepted, rejected, dry_run, failed)."
    );
    describe_gauge!(RULE_REVISION, "Which rule revision is each shop serving right now?");
    describe_counter!(
        EVENTS_APPLIED,
        "Is behavior flowing in? Events applied to the audience index, by action."
    );
    describe_counter!(
        EVENTS_REJECTED,
        "Are producers sending bad events? Events rejected and never applied, by reason."
    );
    describe_gauge!(INDEX_VISITORS, "How many visitors does each shop's index know?");
    describe_gauge!(
        INDEX_BITMAP_BYTES,
        Unit::Bytes,
        "How much memory do each shop's audience bitmaps take (serialized size)?"
    );
    describe_gauge!(
        INDEX_ENTRIES,
        "How many (visitor, hour, action, item) behavior entries does each shop's index hold?"
    );
    describe_counter!(
        CLAIMS,
        "Are benefits being granted or refused? Claims by result (GRANTED, CAP_REACHED, ...)."
    );
}

/// Per slot: (shown, none).
#[derive(Debug, Clone)]
pub struct SlotCounters {
    /// The slot had an answer.
    pub shown: Counter,
    /// The slot was empty.
    pub none: Counter,
}

impl SlotCounters {
    fn new(slot: &'static str) -> SlotCounters {
        SlotCounters {
            shown: metrics::counter!(DECISIONS, "slot" => slot, "outcome" => "shown"),
            none: metrics::counter!(DECISIONS, "slot" => slot, "outcome" => "none"),
        }
    }

    /// Counts one decision of this slot.
    #[inline]
    pub fn record(&self, shown: bool) {
        if shown {
            self.shown.increment(1);
        } else {
            self.none.increment(1);
        }
    }
}

/// Handles for everything recorded per request or per event.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Decide latency.
    pub decide_duration: Histogram,
    /// Banner outcomes.
    pub banner: SlotCounters,
    /// Items outcomes.
    pub items: SlotCounters,
    /// Benefit outcomes.
    pub benefit: SlotCounters,
    /// Events applied, by action (index = `Action as usize`).
    pub applied: [Counter; 7],
    /// Events rejected, by reason (index = position in `RejectReason::ALL`).
    pub rejected: [Counter; 5],
    /// Claims, by outcome (index = position in `ClaimOutcome::ALL`).
    pub claims: [Counter; 6],
}

impl Metrics {
    /// Creates (and so registers, at zero) every handle. With no recorder
    /// installed, the handles are no-ops.
    pub fn new() -> Metrics {
        use vitrine_core::Action;
        let actions = [
            Action::View,
            Action::Cart,
            Action::Favorite,
            Action::Purchase,
            Action::Tag,
            Action::Untag,
            Action::Member,
        ];
        Metrics {
            decide_duration: metrics::histogram!(DECIDE_DURATION),
            banner: SlotCounters::new("banner"),
            items: SlotCounters::new("items"),
            benefit: SlotCounters::new("benefit"),
            applied: actions.map(|a| metrics::counter!(EVENTS_APPLIED, "action" => a.as_str())),
            rejected: RejectReason::ALL.map(|r| metrics::counter!(EVENTS_REJECTED, "reason" => r.as_str())),
            claims: ClaimOutcome::ALL.map(|c| metrics::counter!(CLAIMS, "result" => c.as_str())),
        }
    }

    /// Counts a rejected event.
    pub fn reject(&self, reason: RejectReason) {
        if let Some(i) = RejectReason::ALL.iter().position(|r| *r == reason) {
            self.rejected[i].increment(1);
        }
    }

    /// Counts a claim.
    pub fn claim(&self, outcome: ClaimOutcome) {
        if let Some(i) = ClaimOutcome::ALL.iter().position(|c| *c == outcome) {
            self.claims[i].increment(1);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Counts a rule file outcome (rare: a per-call lookup is fine).
pub fn rule_push(origin: &'static str, result: &'static str) {
    metrics::counter!(RULE_PUSHES, "origin" => origin, "result" => result).increment(1);
}

/// Records the revision a shop serves.
pub fn rule_revision(shop: &str, revision: u64) {
    metrics::gauge!(RULE_REVISION, "shop" => shop.to_string()).set(revision as f64);
}

/// A load-shed request of `method`.
pub fn shed(method: &'static str) {
    metrics::counter!(SHED, "method" => method).increment(1);
}

/// Index size gauges of one shop.
pub fn index_stats(shop: &str, stats: &vitrine_core::IndexStats) {
    let gauge = |name: &'static str| -> Gauge { metrics::gauge!(name, "shop" => shop.to_string()) };
    gauge(INDEX_VISITORS).set(stats.visitors as f64);
    gauge(INDEX_BITMAP_BYTES).set(stats.bitmap_bytes as f64);
    gauge(INDEX_ENTRIES).set(stats.profile_entries as f64);
}
