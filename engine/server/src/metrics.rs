//! Every metric Vitrine exports: names, descriptions (the SRE question each
//! answers) and handles created once, so the hot path records through a
//! cached handle (a few ns) instead of a per-call name and label lookup.
//!
//! Labels are bounded: slots, outcomes, reasons, actions, results, origins
//! and methods are fixed sets; `shop` is bounded by the rule files an
//! operator deploys. Visitor and item ids never become labels.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use vitrine_core::{Action, ClaimOutcome, RejectReason};

use crate::rules_store::Origin;

pub mod decisions;
pub mod labels;
pub mod studio;

/// `vitrine_decide_duration_seconds`
pub const DECIDE_DURATION: &str = "vitrine_decide_duration_seconds";
/// `vitrine_decisions_total{slot, outcome}`
pub const DECISIONS: &str = "vitrine_decisions_total";
/// `vitrine_requests_shed_total{method, reason}`
pub const SHED: &str = "vitrine_requests_shed_total";
/// `vitrine_rules_pushes_total{origin, result}`
pub const RULE_PUSHES: &str = "vitrine_rules_pushes_total";
/// `vitrine_rules_revision{shop}`
pub const RULE_REVISION: &str = "vitrine_rules_revision";
/// Counter: behavior events of shops outside `--shops`, skipped.
pub const INGEST_SKIPPED: &str = "vitrine_ingest_skipped_total";
/// Counter: cluster-topic records applied, by topic and result.
pub const CLUSTER_RECORDS: &str = "vitrine_cluster_records_total";
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
/// `vitrine_ingest_lag_messages{partition}`
pub const INGEST_LAG: &str = "vitrine_ingest_lag_messages";
/// `vitrine_ingest_event_age_seconds`
pub const INGEST_EVENT_AGE: &str = "vitrine_ingest_event_age_seconds";
/// `vitrine_ingest_dead_lettered_total`
pub const INGEST_DEAD_LETTERED: &str = "vitrine_ingest_dead_lettered_total";
/// `vitrine_kafka_up`
pub const KAFKA_UP: &str = "vitrine_kafka_up";
/// `vitrine_kafka_errors_total{kind}`
pub const KAFKA_ERRORS: &str = "vitrine_kafka_errors_total";
/// `vitrine_snapshot_writes_total{result}`
pub const SNAPSHOT_WRITES: &str = "vitrine_snapshot_writes_total";
/// `vitrine_snapshot_last_duration_seconds`
pub const SNAPSHOT_DURATION: &str = "vitrine_snapshot_last_duration_seconds";
/// `vitrine_snapshot_last_bytes`
pub const SNAPSHOT_BYTES: &str = "vitrine_snapshot_last_bytes";
/// `vitrine_snapshot_last_success_timestamp_seconds`
pub const SNAPSHOT_LAST_SUCCESS: &str = "vitrine_snapshot_last_success_timestamp_seconds";
/// `vitrine_snapshot_load_failures_total`
pub const SNAPSHOT_LOAD_FAILURES: &str = "vitrine_snapshot_load_failures_total";
/// `vitrine_restore_duration_seconds`
pub const RESTORE_DURATION: &str = "vitrine_restore_duration_seconds";
/// `vitrine_journal_failures_total{journal}`
pub const JOURNAL_FAILURES: &str = "vitrine_journal_failures_total";
/// `vitrine_connections_open{port}`
pub const CONNECTIONS_OPEN: &str = "vitrine_connections_open";
/// `vitrine_connections_closed_total{port, reason}`
pub const CONNECTIONS_CLOSED: &str = "vitrine_connections_closed_total";
/// Counter: certificate reloads by result.
pub const TLS_RELOADS: &str = "vitrine_tls_reloads_total";
/// `vitrine_storage_fault`
pub const STORAGE_FAULT: &str = "vitrine_storage_fault";
/// Gauge: 1 while the replica reports ready (`/readyz` 200, health SERVING).
pub const READY: &str = "vitrine_ready";
/// `vitrine_claims_compactions_total{result}`
pub const CLAIMS_COMPACTIONS: &str = "vitrine_claims_compactions_total";
/// `vitrine_claims_compacted_bytes_total`
pub const CLAIMS_COMPACTED_BYTES: &str = "vitrine_claims_compacted_bytes_total";
/// `vitrine_claims_state_bytes`
pub const CLAIMS_STATE_BYTES: &str = "vitrine_claims_state_bytes";
/// `vitrine_rules_zone_conflicts_total`
pub const RULES_ZONE_CONFLICTS: &str = "vitrine_rules_zone_conflicts_total";

/// Decide latency buckets, in seconds: fine below 1 ms, where the promise is.
pub const DECIDE_BUCKETS: [f64; 14] = [
    0.000_005, 0.000_01, 0.000_02, 0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 1.0,
];

/// Event age buckets, in seconds: fine where freshness is promised (tens of
/// ms), coarse out to a day for a replica replaying the retained log.
const EVENT_AGE_BUCKETS: [f64; 18] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
];

/// Installs the Prometheus recorder (global, once per process) and describes
/// every metric. Histograms use fixed buckets, so memory and scrape time stay
/// flat under load whatever the upkeep interval.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(INGEST_EVENT_AGE.to_string()), &EVENT_AGE_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    labels::describe();
    decisions::describe();
    studio::describe();
    describe_gauge!(
        CONNECTIONS_OPEN,
        "How many TCP connections does each port (grpc, http) hold open, against --max-connections / --max-http-connections?"
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Why are connections closed? By port and reason: peer (the client closed), idle, handshake (no first request in time), limit (refused at the connection limit), evicted (silent, closed to make room), shutdown, tls (the TLS handshake failed: a plaintext client, an untrusted or missing client certificate)."
    );
    for port in Port::ALL {
        metrics::gauge!(CONNECTIONS_OPEN, "port" => port.as_str()).set(0.0);
        for reason in ConnectionClose::ALL {
            metrics::counter!(CONNECTIONS_CLOSED, "port" => port.as_str(), "reason" => reason.as_str()).absolute(0);
        }
    }
    describe_counter!(
        TLS_RELOADS,
        "Did the new certificate take? Reloads of --tls-cert/--tls-key/--tls-client-ca after the files changed, by result: applied, rejected (did not parse or match: the old pair keeps serving)."
    );
    for result in ["applied", "rejected"] {
        metrics::counter!(TLS_RELOADS, "result" => result).absolute(0);
    }
    describe_counter!(
        DECISIONS,
        "What do visitors get? Decisions by slot (banner, items, benefit) and outcome (shown, none)."
    );
    describe_counter!(
        SHED,
        "Is the server overloaded? Calls refused before their handler ran, by method and reason: in_flight (RESOURCE_EXHAUSTED at --max-in-flight), queue_wait (RESOURCE_EXHAUSTED after --max-queue-wait), deadline (DEADLINE_EXCEEDED while waiting)."
    );
    describe_counter!(
        RULE_PUSHES,
        "Are rule changes landing? Rule files by origin (push, rollback, file) and result (accepted, rejected, dry_run, failed)."
    );
    describe_gauge!(RULE_REVISION, "Which rule revision is each shop serving right now?");
    describe_counter!(
        INGEST_SKIPPED,
        "How many behavior events from Kafka belong to shops outside --shops (another replica group's), skipped without applying or rejecting them?"
    );
    metrics::counter!(INGEST_SKIPPED, "reason" => "other_shop").absolute(0);
    describe_counter!(
        CLUSTER_RECORDS,
        "Do replicas apply the cluster topics alike? Records of the rules and claims topics by result: applied, unchanged (a seed for a shop that has rules), aborted (expected_revision did not match), refused (valid at the taker, not here: different limits or versions), unreadable (skipped), other_shop (not in --shops). Every replica should count the same."
    );
    for topic in ClusterTopic::ALL {
        for result in RecordResult::ALL {
            metrics::counter!(CLUSTER_RECORDS, "topic" => topic.as_str(), "result" => result.as_str()).absolute(0);
        }
    }
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
    describe_gauge!(
        INGEST_LAG,
        "How far behind the behavior topic is this replica? Messages between each partition's high watermark and the last one applied (librdkafka statistics, every second)."
    );
    describe_histogram!(
        INGEST_EVENT_AGE,
        Unit::Seconds,
        "How fresh is the behavior applied from Kafka? Server clock minus the event's ts, at apply time."
    );
    describe_counter!(
        INGEST_DEAD_LETTERED,
        "How many rejected Kafka messages were forwarded to the dead-letter topic?"
    );
    describe_gauge!(
        KAFKA_UP,
        "Can this replica reach the Kafka cluster? 1 while a broker connection is up, 0 during an outage (decisions keep being served)."
    );
    describe_counter!(
        SNAPSHOT_WRITES,
        "Are snapshots being written? Snapshot writes by result (ok, failed); a restart replays the log since the last ok one."
    );
    describe_gauge!(
        SNAPSHOT_DURATION,
        Unit::Seconds,
        "How long did the last snapshot take (encoding the index, writing, fsync)?"
    );
    describe_gauge!(SNAPSHOT_BYTES, Unit::Bytes, "How big was the last snapshot file?");
    describe_gauge!(
        SNAPSHOT_LAST_SUCCESS,
        Unit::Seconds,
        "When was the last snapshot written (Unix time)? Alert when it falls behind --snapshot-interval."
    );
    describe_counter!(
        SNAPSHOT_LOAD_FAILURES,
        "Were snapshots found damaged at start? Each one was set aside (*.damaged) and an older one, or a full replay, used instead."
    );
    describe_gauge!(
        RESTORE_DURATION,
        Unit::Seconds,
        "How long did the last start take to restore state (snapshot load plus events-journal replay)?"
    );
    describe_counter!(
        JOURNAL_FAILURES,
        "Is durable storage failing? Claims or Track calls refused because their journal (claims, events) could not write; nothing was granted or accepted."
    );
    describe_gauge!(
        STORAGE_FAULT,
        "Has this replica stopped trusting its disk? 1 after a journal write or fsync failed or the data directory was removed or replaced: Track and Claim are refused and health is NOT_SERVING until a restart (see /readyz for the reason)."
    );
    describe_gauge!(
        READY,
        "Should this replica get traffic? 1 while /readyz says 200 and gRPC health SERVING; 0 while it catches up with Kafka (rules, claims and behavior topics), after a storage fault, and while shutting down."
    );
    describe_counter!(
        CLAIMS_COMPACTIONS,
        "Is the claims journal being compacted? Ledger state snapshots written (with the journal segments they cover deleted), by result (ok, failed)."
    );
    describe_counter!(
        CLAIMS_COMPACTED_BYTES,
        Unit::Bytes,
        "How much claims journal has compaction deleted?"
    );
    describe_gauge!(
        CLAIMS_STATE_BYTES,
        Unit::Bytes,
        "How big is the last claims ledger state snapshot (what a restart loads before replaying the rest of the journal)?"
    );
    describe_counter!(
        KAFKA_ERRORS,
        "Is Kafka ingest failing? Errors by kind: client (broker connections, metadata, fetches), commit (offset store or commit), dead_letter (a forward that failed)."
    );
    describe_counter!(
        RULES_ZONE_CONFLICTS,
        "Does a shop serve rules whose timezone differs from the zone its index counts hours in (a rules-topic record or a rule file changed it; windows keep the index's zone until the index is rebuilt)? Counted once per shop and new zone."
    );
    metrics::counter!(RULES_ZONE_CONFLICTS).absolute(0);
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
    /// Decide latency (rendered by [`LatencyHistogram::render`]).
    pub decide_duration: Arc<LatencyHistogram>,
    /// Banner outcomes.
    pub banner: SlotCounters,
    /// Items outcomes.
    pub items: SlotCounters,
    /// Benefit outcomes.
    pub benefit: SlotCounters,
    /// Events applied, by action.
    pub applied: ByLabel<Action, 7>,
    /// Events rejected, by reason: the core's and the Kafka path's.
    pub rejected: ByLabel<Rejected, { Rejected::ALL.len() }>,
    /// Claims, by outcome.
    pub claims: ByLabel<ClaimOutcome, { ClaimOutcome::ALL.len() }>,
    /// Decisions, claims and rejected events by shop and rule entry.
    pub shops: Arc<labels::ShopSeries>,
}

/// Counters of one metric, one per value of a label enum, found by the value
/// itself (never by a position kept in step elsewhere), so reordering a list
/// or an enum cannot count under another label.
#[derive(Debug, Clone)]
pub struct ByLabel<K, const N: usize> {
    counters: [(K, Counter); N],
}

impl<K: Copy + Eq, const N: usize> ByLabel<K, N> {
    /// Registers (at zero) the counter `name{key=label(v)}` of every value `v`.
    fn new(name: &'static str, key: &'static str, values: [K; N], label: fn(K) -> &'static str) -> Self {
        ByLabel {
            counters: values.map(|v| (v, metrics::counter!(name, key => label(v)))),
        }
    }

    /// The counter of `value` (`None` only for a value left out at creation).
    #[inline]
    pub fn get(&self, value: K) -> Option<&Counter> {
        self.counters.iter().find(|(v, _)| *v == value).map(|(_, c)| c)
    }

    /// Counts one under `value`'s label.
    #[inline]
    pub fn increment(&self, value: K) {
        if let Some(c) = self.get(value) {
            c.increment(1);
        }
    }
}

/// Why an event was not applied: the `reason` label of
/// `vitrine_ingest_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The core's validation said no.
    Event(RejectReason),
    /// A Kafka message over `--kafka-max-message-bytes`.
    Oversized,
    /// A Kafka message with no payload (a tombstone).
    Tombstone,
    /// A Kafka message whose `content-type` header names an encoding
    /// Vitrine does not read.
    UnknownContentType,
}

impl Rejected {
    /// Every reason, for pre-registering metrics: the core's, then the
    /// Kafka path's (the length fails to compile when a reason is added to
    /// the core and not here).
    pub const ALL: [Rejected; RejectReason::ALL.len() + 3] = [
        Rejected::Event(RejectReason::InvalidJson),
        Rejected::Event(RejectReason::MissingField),
        Rejected::Event(RejectReason::WrongType),
        Rejected::Event(RejectReason::UnknownAction),
        Rejected::Event(RejectReason::InvalidValue),
        Rejected::Event(RejectReason::TooLong),
        Rejected::Event(RejectReason::UnknownShop),
        Rejected::Oversized,
        Rejected::Tombstone,
        Rejected::Event(RejectReason::InvalidProto),
        Rejected::UnknownContentType,
    ];

    /// The label value (also the dead-letter reason header).
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Event(r) => r.as_str(),
            Rejected::Oversized => "oversized",
            Rejected::Tombstone => "tombstone",
            Rejected::UnknownContentType => "unknown_content_type",
        }
    }
}

impl Metrics {
    /// Creates (and so registers, at zero) every handle. With no recorder
    /// installed, the handles are no-ops.
    pub fn new() -> Metrics {
        // Decide's shedding counters exist from the start, so an alert on
        // their rate has a series before the first overload.
        for reason in ShedReason::ALL {
            metrics::counter!(SHED, "method" => "Decide", "reason" => reason.as_str()).absolute(0);
        }
        Metrics {
            decide_duration: Arc::new(LatencyHistogram::new(&DECIDE_BUCKETS)),
            banner: SlotCounters::new("banner"),
            items: SlotCounters::new("items"),
            benefit: SlotCounters::new("benefit"),
            applied: ByLabel::new(EVENTS_APPLIED, "action", Action::ALL, Action::as_str),
            rejected: ByLabel::new(EVENTS_REJECTED, "reason", Rejected::ALL, Rejected::as_str),
            claims: ByLabel::new(CLAIMS, "result", ClaimOutcome::ALL, ClaimOutcome::as_str),
            shops: Arc::default(),
        }
    }

    /// Counts a rejected event.
    pub fn reject(&self, reason: impl Into<Rejected>) {
        self.rejected.increment(reason.into());
    }

    /// Counts a claim.
    pub fn claim(&self, outcome: ClaimOutcome) {
        self.claims.increment(outcome);
    }
}

impl From<RejectReason> for Rejected {
    fn from(reason: RejectReason) -> Rejected {
        Rejected::Event(reason)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Handles of the Kafka consumer, created when Kafka ingest starts (so an
/// embedded server exports no Kafka series).
#[derive(Debug, Clone)]
pub struct KafkaMetrics {
    /// Age of applied events.
    pub event_age: Histogram,
    /// Rejected messages forwarded to the dead-letter topic.
    pub dead_lettered: Counter,
    /// 1 while a broker connection is up.
    pub up: Gauge,
    /// Errors, by kind.
    pub errors: ByLabel<KafkaErrorKind, 3>,
}

/// A Kafka error kind, for [`KafkaMetrics::error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaErrorKind {
    /// The client's own: broker connections, metadata, fetches.
    Client,
    /// A failed offset store or commit.
    Commit,
    /// A failed dead-letter delivery.
    DeadLetter,
}

impl KafkaErrorKind {
    /// Every kind, for pre-registering metrics.
    pub const ALL: [KafkaErrorKind; 3] = [
        KafkaErrorKind::Client,
        KafkaErrorKind::Commit,
        KafkaErrorKind::DeadLetter,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaErrorKind::Client => "client",
            KafkaErrorKind::Commit => "commit",
            KafkaErrorKind::DeadLetter => "dead_letter",
        }
    }
}

impl KafkaMetrics {
    /// Creates (and registers) the handles.
    pub fn new() -> KafkaMetrics {
        KafkaMetrics {
            event_age: metrics::histogram!(INGEST_EVENT_AGE),
            dead_lettered: metrics::counter!(INGEST_DEAD_LETTERED),
            up: metrics::gauge!(KAFKA_UP),
            errors: ByLabel::new(KAFKA_ERRORS, "kind", KafkaErrorKind::ALL, KafkaErrorKind::as_str),
        }
    }

    /// Counts an error.
    pub fn error(&self, kind: KafkaErrorKind) {
        self.errors.increment(kind);
    }

    /// The lag gauge of one partition (partitions are few and fixed per topic).
    pub fn lag(partition: i32) -> Gauge {
        metrics::gauge!(INGEST_LAG, "partition" => partition.to_string())
    }
}

impl Default for KafkaMetrics {
    fn default() -> Self {
        KafkaMetrics::new()
    }
}

/// What became of a rule file: the `result` label of `vitrine_rules_pushes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    /// Validated, compiled and served.
    Accepted,
    /// Invalid: the old rule set stays.
    Rejected,
    /// Validated and compiled, not served (`dry_run`).
    DryRun,
    /// Valid, but storing or swapping it failed (or the revision to roll back to is unknown).
    Failed,
}

impl PushResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PushResult::Accepted => "accepted",
            PushResult::Rejected => "rejected",
            PushResult::DryRun => "dry_run",
            PushResult::Failed => "failed",
        }
    }
}

/// Counts a rule file outcome (rare: a per-call lookup is fine).
pub fn rule_push(origin: Origin, result: PushResult) {
    metrics::counter!(RULE_PUSHES, "origin" => origin.as_str(), "result" => result.as_str()).increment(1);
}

/// A cluster topic, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterTopic {
    /// The rules topic.
    Rules,
    /// The claims topic.
    Claims,
}

impl ClusterTopic {
    /// Every topic, for pre-registering series.
    pub const ALL: [ClusterTopic; 2] = [ClusterTopic::Rules, ClusterTopic::Claims];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterTopic::Rules => "rules",
            ClusterTopic::Claims => "claims",
        }
    }
}

/// What applying a cluster-topic record did, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordResult {
    /// Applied: state changed (or a claim was answered).
    Applied,
    /// A seed for a shop that already has rules: nothing changed.
    Unchanged,
    /// `expected_revision` did not match: nothing changed.
    Aborted,
    /// Not valid here (another version or other limits than the taker's).
    Refused,
    /// Not a record this version can read: skipped.
    Unreadable,
    /// A shop outside `--shops`: skipped.
    OtherShop,
}

impl RecordResult {
    /// Every result, for pre-registering series.
    pub const ALL: [RecordResult; 6] = [
        RecordResult::Applied,
        RecordResult::Unchanged,
        RecordResult::Aborted,
        RecordResult::Refused,
        RecordResult::Unreadable,
        RecordResult::OtherShop,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordResult::Applied => "applied",
            RecordResult::Unchanged => "unchanged",
            RecordResult::Aborted => "aborted",
            RecordResult::Refused => "refused",
            RecordResult::Unreadable => "unreadable",
            RecordResult::OtherShop => "other_shop",
        }
    }
}

/// Counts one behavior event of another replica group's shop.
pub fn ingest_skipped_other_shop() {
    metrics::counter!(INGEST_SKIPPED, "reason" => "other_shop").increment(1);
}

/// Counts one applied cluster-topic record.
pub fn cluster_record(topic: ClusterTopic, result: RecordResult) {
    metrics::counter!(CLUSTER_RECORDS, "topic" => topic.as_str(), "result" => result.as_str()).increment(1);
}

/// Records the revision a shop serves.
pub fn rule_revision(shop: &str, revision: u64) {
    metrics::gauge!(RULE_REVISION, "shop" => shop.to_string()).set(revision as f64);
}

/// A snapshot write that succeeded (`Some((seconds, bytes))`) or failed.
pub fn snapshot_written(result: Option<(f64, u64)>) {
    match result {
        Some((seconds, bytes)) => {
            metrics::counter!(SNAPSHOT_WRITES, "result" => "ok").increment(1);
            metrics::gauge!(SNAPSHOT_DURATION).set(seconds);
            metrics::gauge!(SNAPSHOT_BYTES).set(bytes as f64);
            metrics::gauge!(SNAPSHOT_LAST_SUCCESS).set(crate::clock::now_ms() as f64 / 1000.0);
        }
        None => metrics::counter!(SNAPSHOT_WRITES, "result" => "failed").increment(1),
    }
}

/// What a start restored: snapshots set aside as damaged, and how long it took.
pub fn restored(damaged: usize, seconds: f64) {
    metrics::counter!(SNAPSHOT_LOAD_FAILURES).increment(damaged as u64);
    metrics::gauge!(RESTORE_DURATION).set(seconds);
    // Registered at zero, so that dashboards and alerts see them from the start.
    for result in ["ok", "failed"] {
        metrics::counter!(SNAPSHOT_WRITES, "result" => result).increment(0);
    }
    for journal in [Journal::Claims, Journal::Events] {
        metrics::counter!(JOURNAL_FAILURES, "journal" => journal.as_str()).increment(0);
    }
    metrics::gauge!(STORAGE_FAULT).set(0.0);
    for result in ["ok", "failed"] {
        metrics::counter!(CLAIMS_COMPACTIONS, "result" => result).increment(0);
    }
    metrics::counter!(CLAIMS_COMPACTED_BYTES).increment(0);
}

/// Whether the replica reports ready (`vitrine_ready`).
pub fn ready(ready: bool) {
    metrics::gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

/// The replica stopped trusting its storage (hardening #11, #17).
pub fn storage_fault() {
    metrics::gauge!(STORAGE_FAULT).set(1.0);
}

/// A shop whose serving rules set another zone than its index's (see `crate::zones`).
pub fn zone_conflict() {
    metrics::counter!(RULES_ZONE_CONFLICTS).increment(1);
}

/// A claims-journal compaction that succeeded (`Some((state bytes, journal bytes deleted))`) or failed.
pub fn claims_compacted(result: Option<(u64, u64)>) {
    match result {
        Some((state, deleted)) => {
            metrics::counter!(CLAIMS_COMPACTIONS, "result" => "ok").increment(1);
            metrics::counter!(CLAIMS_COMPACTED_BYTES).increment(deleted);
            metrics::gauge!(CLAIMS_STATE_BYTES).set(state as f64);
        }
        None => metrics::counter!(CLAIMS_COMPACTIONS, "result" => "failed").increment(1),
    }
}

/// A journal whose failures `vitrine_journal_failures_total` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journal {
    /// The claims journal (Claim calls).
    Claims,
    /// The events journal (Track calls).
    Events,
}

impl Journal {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Journal::Claims => "claims",
            Journal::Events => "events",
        }
    }
}

/// A call refused because `journal` could not write.
pub fn journal_failed(journal: Journal) {
    metrics::counter!(JOURNAL_FAILURES, "journal" => journal.as_str()).increment(1);
}

/// A call of `method` refused before its handler ran.
pub fn shed(method: &'static str, reason: ShedReason) {
    metrics::counter!(SHED, "method" => method, "reason" => reason.as_str()).increment(1);
}

/// Index size gauges of one shop.
pub fn index_stats(shop: &str, stats: &vitrine_core::IndexStats) {
    let gauge = |name: &'static str| -> Gauge { metrics::gauge!(name, "shop" => shop.to_string()) };
    gauge(INDEX_VISITORS).set(stats.visitors as f64);
    gauge(INDEX_BITMAP_BYTES).set(stats.bitmap_bytes as f64);
    gauge(INDEX_ENTRIES).set(stats.profile_entries as f64);
}

/// A fixed-bucket histogram for the Decide hot path: recording is a bucket
/// search and two relaxed atomic adds (tens of ns), where the exporter's
/// histogram stores every sample with its own timestamp until upkeep. The
/// `decide_metrics` bench measured the exporter's histogram at about 6% of a
/// decision; this one stays within the 5% budget. Rendered into `/metrics`
/// beside the exporter's output.
#[derive(Debug)]
pub struct LatencyHistogram {
    bounds: Vec<f64>,
    bounds_ns: Vec<u64>,
    /// One count per bound, then the overflow (+Inf) count.
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    /// A histogram with these upper bounds, in seconds, ascending.
    pub fn new(bounds: &[f64]) -> LatencyHistogram {
        LatencyHistogram {
            bounds: bounds.to_vec(),
            bounds_ns: bounds.iter().map(|b| (b * 1e9).round() as u64).collect(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    #[inline]
    pub fn record(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let i = self.bounds_ns.partition_point(|b| *b < ns);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Appends the Prometheus text exposition of the histogram.
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// The help text of [`DECIDE_DURATION`].
pub const DECIDE_DURATION_HELP: &str =
    "How long does Vitrine take to decide, from decoded request to ready response (server side)?";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histogram_renders_cumulative_buckets() {
        let h = LatencyHistogram::new(&[0.000_01, 0.001]);
        h.record(Duration::from_micros(5));
        h.record(Duration::from_micros(10));
        h.record(Duration::from_micros(500));
        h.record(Duration::from_secs(2));
        let mut out = String::new();
        h.render("x_seconds", "How long?", &mut out);
        assert_eq!(
            out,
            "# HELP x_seconds How long?\n# TYPE x_seconds histogram\nx_seconds_bucket{le=\"0.00001\"} 2\nx_seconds_bucket{le=\"0.001\"} 3\nx_seconds_bucket{le=\"+Inf\"} 4\nx_seconds_sum 2.000515\nx_seconds_count 4\n"
        );
    }

    /// Fails to compile when an action is added, as a reminder to list it in [`Action::ALL`]
    /// (the actions of `vitrine_ingest_events_applied_total`).
    fn listed(action: Action) -> bool {
        match action {
            Action::View
            | Action::Cart
            | Action::Favorite
            | Action::Purchase
            | Action::Tag
            | Action::Untag
            | Action::Member => Action::ALL.contains(&action),
        }
    }

    /// The value of one series in `text` (a Prometheus exposition).
    fn series(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map(str::to_string)
    }

    /// Issue 12: labels found by the enum value, not by an array position.
    /// Each value is counted a different number of times (its position + 1),
    /// so a handle filed under another label shows up as a wrong count.
    #[test]
    fn each_label_value_counts_under_its_own_label() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let (m, k) = metrics::with_local_recorder(&recorder, || (Metrics::new(), KafkaMetrics::new()));
        assert!(Action::ALL.iter().all(|a| listed(*a)));
        for (n, a) in Action::ALL.iter().enumerate() {
            (0..=n).for_each(|_| m.applied.increment(*a));
        }
        for (n, r) in Rejected::ALL.iter().enumerate() {
            (0..=n).for_each(|_| m.reject(*r));
        }
        for (n, c) in ClaimOutcome::ALL.iter().enumerate() {
            (0..=n).for_each(|_| m.claim(*c));
        }
        for (n, e) in KafkaErrorKind::ALL.iter().enumerate() {
            (0..=n).for_each(|_| k.error(*e));
        }
        let text = handle.render();
        let get = |s: &str| series(&text, s).unwrap_or_else(|| panic!("{s} missing from\n{text}"));
        let applied: Vec<String> = ["view", "cart", "favorite", "purchase", "tag", "untag", "member"]
            .iter()
            .map(|a| get(&format!("{EVENTS_APPLIED}{{action=\"{a}\"}}")))
            .collect();
        assert_eq!(applied, ["1", "2", "3", "4", "5", "6", "7"]);
        let rejected: Vec<String> = [
            "invalid_json",
            "missing_field",
            "wrong_type",
            "unknown_action",
            "invalid_value",
            "too_long",
            "unknown_shop",
            "oversized",
            "tombstone",
        ]
        .iter()
        .map(|r| get(&format!("{EVENTS_REJECTED}{{reason=\"{r}\"}}")))
        .collect();
        assert_eq!(rejected, ["1", "2", "3", "4", "5", "6", "7", "8", "9"]);
        let claims: Vec<String> = ClaimOutcome::ALL
            .iter()
            .map(|c| get(&format!("{CLAIMS}{{result=\"{}\"}}", c.as_str())))
            .collect();
        assert_eq!(claims, ["1", "2", "3", "4", "5", "6"]);
        let errors: Vec<String> = ["client", "commit", "dead_letter"]
            .iter()
            .map(|e| get(&format!("{KAFKA_ERRORS}{{kind=\"{e}\"}}")))
            .collect();
        assert_eq!(errors, ["1", "2", "3"]);
    }

    #[test]
    fn rule_pushes_and_journal_failures_carry_their_label_values() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            rule_push(Origin::Push, PushResult::DryRun);
            rule_push(Origin::Rollback, PushResult::Failed);
            rule_push(Origin::Rollback, PushResult::Failed);
            rule_push(Origin::File, PushResult::Rejected);
            rule_push(Origin::Push, PushResult::Accepted);
            journal_failed(Journal::Events);
        });
        let text = handle.render();
        let mut lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
        lines.sort_unstable();
        assert_eq!(
            lines,
            [
                "vitrine_journal_failures_total{journal=\"events\"} 1",
                "vitrine_rules_pushes_total{origin=\"file\",result=\"rejected\"} 1",
                "vitrine_rules_pushes_total{origin=\"push\",result=\"accepted\"} 1",
                "vitrine_rules_pushes_total{origin=\"push\",result=\"dry_run\"} 1",
                "vitrine_rules_pushes_total{origin=\"rollback\",result=\"failed\"} 2",
            ]
        );
    }
}

/// A listening port: the `port` label of the connection metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// `--grpc-addr`
    Grpc,
    /// `--metrics-addr` (metrics and probes)
    Http,
}

impl Port {
    /// Every port, for pre-registering metrics.
    pub const ALL: [Port; 2] = [Port::Grpc, Port::Http];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Port::Grpc => "grpc",
            Port::Http => "http",
        }
    }
}

/// Why a connection ended: the `reason` label of `vitrine_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionClose {
    /// The peer closed it (or it failed).
    Peer,
    /// No call open for `--idle-timeout`.
    Idle,
    /// No complete first request within `--handshake-timeout`.
    Handshake,
    /// Refused on arrival: the port held its maximum of connections.
    Limit,
    /// Closed, never having sent a request, to make room for a new one at the limit.
    Evicted,
    /// The server is shutting down.
    Shutdown,
    /// The TLS handshake failed (a plaintext client, no or an untrusted client certificate).
    Tls,
}

impl ConnectionClose {
    /// Every reason, for pre-registering metrics.
    pub const ALL: [ConnectionClose; 7] = [
        ConnectionClose::Peer,
        ConnectionClose::Evicted,
        ConnectionClose::Idle,
        ConnectionClose::Handshake,
        ConnectionClose::Limit,
        ConnectionClose::Shutdown,
        ConnectionClose::Tls,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionClose::Peer => "peer",
            ConnectionClose::Idle => "idle",
            ConnectionClose::Handshake => "handshake",
            ConnectionClose::Limit => "limit",
            ConnectionClose::Evicted => "evicted",
            ConnectionClose::Shutdown => "shutdown",
            ConnectionClose::Tls => "tls",
        }
    }
}

/// A connection was accepted on `port`.
pub fn connection_opened(port: Port) {
    metrics::gauge!(CONNECTIONS_OPEN, "port" => port.as_str()).increment(1.0);
}

/// A connection of `port` ended (or was refused: [`ConnectionClose::Limit`]).
pub fn connection_closed(port: Port, reason: ConnectionClose) {
    if reason != ConnectionClose::Limit {
        metrics::gauge!(CONNECTIONS_OPEN, "port" => port.as_str()).decrement(1.0);
    }
    metrics::counter!(CONNECTIONS_CLOSED, "port" => port.as_str(), "reason" => reason.as_str()).increment(1);
}

/// A certificate reload after its files changed: applied or rejected.
pub fn tls_reloaded(applied: bool) {
    let result = if applied { "applied" } else { "rejected" };
    metrics::counter!(TLS_RELOADS, "result" => result).increment(1);
}

/// Why a call was shed: the `reason` label of `vitrine_requests_shed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// `--max-in-flight` calls were already admitted.
    InFlight,
    /// It waited longer than `--max-queue-wait`.
    QueueWait,
    /// Its deadline passed before its turn came.
    Deadline,
}

impl ShedReason {
    /// Every reason, for pre-registering metrics.
    pub const ALL: [ShedReason; 3] = [ShedReason::InFlight, ShedReason::QueueWait, ShedReason::Deadline];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::InFlight => "in_flight",
            ShedReason::QueueWait => "queue_wait",
            ShedReason::Deadline => "deadline",
        }
    }
}

/// The counters of one cluster topic's records, by result.
pub fn cluster_records(topic: ClusterTopic) -> [Counter; 6] {
    RecordResult::ALL.map(|r| metrics::counter!(CLUSTER_RECORDS, "topic" => topic.as_str(), "result" => r.as_str()))
}
