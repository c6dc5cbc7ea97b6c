//! Rule changes through the rules topic (`docs/cluster.md`, "Rules").
//!
//! A record is one JSON object, keyed by shop:
//!
//! ```json
//! {"v":1,"op":"push","shop":"demo-apparel","content":"shop: ...","expected":0,
//!  "if_absent":false,"origin":"push","at_ms":1767225600000}
//! {"v":1,"op":"rollback","shop":"demo-apparel","to":3,"expected":4,
//!  "origin":"rollback","at_ms":1767225600000}
//! ```
//!
//! Every replica applies every record with [`RuleStore::apply_change`], so
//! revision numbers, creation times and origins are the same everywhere.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::error::KafkaError;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::log::{LogReader, Record, Start};
use super::producer::{call, LogProducer, Pending, Unavailable};
use crate::config::KafkaConfig;
use crate::metrics::{self, ClusterTopic, RecordResult};
use crate::rules_store::{check_shop_name, Applied, Change, ChangeKind, Origin, Proposal, RuleStore, StoreError};
use crate::state::Engine;

/// The record format this version writes and reads.
pub const VERSION: u32 = 1;

/// One rule change as it travels on the topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRecord {
    /// Format version ([`VERSION`]).
    pub v: u32,
    /// What to do.
    #[serde(flatten)]
    pub op: Op,
    /// The shop (also the key).
    pub shop: String,
    /// 0: any; else the revision the shop must serve for the change to apply.
    #[serde(default)]
    pub expected: u64,
    /// Only if the shop has no rules (a seed from `--rules-dir`).
    #[serde(default)]
    pub if_absent: bool,
    /// `push`, `rollback` or `file`.
    pub origin: String,
    /// When the taking replica accepted it (ms): the revision's creation time.
    pub at_ms: i64,
}

/// A push or a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// This rule file.
    Push {
        /// The YAML text.
        content: String,
    },
    /// This earlier revision, as a new one.
    Rollback {
        /// The revision.
        to: u64,
    },
}

/// Why a change applied in log order did not change the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `expected` did not match the serving revision (ABORTED).
    #[error("shop `{shop}` serves revision {serving}, not the expected revision {expected}: nothing changed; read the current rules and push again")]
    Mismatch {
        /// The shop.
        shop: String,
        /// What the caller expected.
        expected: u64,
        /// What served when the change applied.
        serving: u64,
    },
    /// The change cannot apply here: no such revision or shop (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// Invalid where it applied (INVALID_ARGUMENT): a file valid at the
    /// taker, invalid here, means replicas run different limits or versions.
    #[error("{0}")]
    Invalid(String),
    /// The store failed where it applied (INTERNAL). Not from the disk: a
    /// revision that cannot be mirrored to disk is applied all the same, so
    /// that a replica's disk never changes what the topic decides.
    #[error("{0}")]
    Failed(String),
}

/// What the taking replica's call gets back.
pub type Outcome = Result<Applied, Refusal>;

/// The rules topic of one replica: its writer, its reader, its waiting calls.
pub struct RulesLog {
    topic: String,
    producer: LogProducer,
    pending: Arc<Pending<Outcome>>,
    reader: Mutex<Option<LogReader>>,
    caught_up: watch::Receiver<bool>,
    timeout: Duration,
}

impl std::fmt::Debug for RulesLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesLog")
            .field("topic", &self.topic)
            .field("waiting", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// The largest record payload: the rule file limit, doubled for JSON
/// escapes (a rule file holds no control characters but `\n` and `\t`),
/// plus room for the other fields.
pub fn max_payload(limits: &vitrine_core::rules::Limits) -> usize {
    limits.max_file_bytes.saturating_mul(2).saturating_add(4096)
}

impl RulesLog {
    /// Starts reading the rules topic from its beginning (it holds one
    /// record per change) and applying it to `engine`'s rule store.
    pub fn start(engine: &Arc<Engine>, kafka: &KafkaConfig, replica: u64) -> Result<RulesLog, KafkaError> {
        let pending = Arc::new(Pending::new(replica));
        let max_payload = max_payload(engine.rules.limits());
        let failed = pending.clone();
        let producer = LogProducer::new(
            &kafka.brokers,
            &kafka.options,
            &kafka.rules_topic,
            max_payload,
            kafka.cluster_timeout,
            move |seq, why| failed.fail(seq, why),
        )?;
        let (weak, answers) = (Arc::downgrade(engine), pending.clone());
        let reader = LogReader::start(
            &kafka.brokers,
            &kafka.options,
            &kafka.rules_topic,
            Start::default(),
            move |record| apply_record(&weak, &answers, max_payload, record),
        )?;
        Ok(RulesLog {
            topic: kafka.rules_topic.clone(),
            producer,
            pending,
            caught_up: reader.caught_up(),
            reader: Mutex::new(Some(reader)),
            timeout: kafka.cluster_timeout,
        })
    }

    /// True once the topic was read up to where it stood at start.
    pub fn caught_up(&self) -> watch::Receiver<bool> {
        self.caught_up.clone()
    }

    /// Writes a change and waits until this replica applied it.
    pub async fn change(&self, record: &RuleRecord) -> Result<Outcome, Unavailable> {
        let payload =
            serde_json::to_vec(record).map_err(|e| Unavailable(format!("encoding the rule change failed: {e}")))?;
        call(
            &self.pending,
            &self.producer,
            record.shop.as_bytes(),
            &payload,
            self.timeout,
        )
        .await
    }

    /// Stops reading (shutdown); waiting calls get UNAVAILABLE.
    pub fn stop(&self) {
        if let Some(mut reader) = self.reader.lock().take() {
            reader.stop();
        }
        self.producer.flush(Duration::from_secs(1));
    }
}

/// Sends what `--rules-dir` asks for through the rules topic (cluster
/// mode), one change at a time, and logs each outcome. A proposal that does
/// not go through is forgotten by the store, so the next scan tries again.
pub async fn propose(engine: &Engine, log: &RulesLog, proposals: Vec<Proposal>) {
    for p in proposals {
        let record = RuleRecord {
            v: VERSION,
            op: Op::Push {
                content: p.content.to_string(),
            },
            shop: p.shop.clone(),
            expected: p.expected,
            if_absent: p.if_absent,
            origin: Origin::File.as_str().to_string(),
            at_ms: crate::clock::now_ms(),
        };
        let path = p.path.display();
        match log.change(&record).await {
            Ok(Ok(Applied::Changed(served))) => {
                metrics::rule_push(Origin::File, metrics::PushResult::Accepted);
                tracing::info!(shop = p.shop, revision = served.revision, file = %path, "rule file pushed through the rules topic");
            }
            Ok(Ok(Applied::Unchanged(served))) => tracing::info!(
                shop = p.shop,
                revision = served.revision,
                file = %path,
                "rule file not seeded: the rules topic has this shop already (its revision is written back to the file)"
            ),
            Ok(Err(e)) => {
                metrics::rule_push(Origin::File, metrics::PushResult::Rejected);
                tracing::error!(shop = p.shop, file = %path, "rule file refused by the rules topic: {e}");
            }
            Err(e) => {
                engine.rules.forget_file(&p.path);
                metrics::rule_push(Origin::File, metrics::PushResult::Failed);
                tracing::warn!(shop = p.shop, file = %path, "rule file not pushed yet (tried again at the next scan): {e}");
            }
        }
    }
}

/// Decodes one record; `None` for anything this version cannot read.
pub fn decode(payload: &[u8], max_payload: usize) -> Option<RuleRecord> {
    if payload.len() > max_payload {
        return None;
    }
    let record: RuleRecord = serde_json::from_slice(payload).ok()?;
    let bounded = record.v == VERSION
        && check_shop_name(&record.shop).is_ok()
        && Origin::parse(&record.origin).is_some()
        && vitrine_core::time::check_instant(record.at_ms).is_ok();
    bounded.then_some(record)
}

/// Applies one record of the topic (the reader thread).
fn apply_record(engine: &Weak<Engine>, pending: &Pending<Outcome>, max_payload: usize, record: Record<'_>) {
    let Some(engine) = engine.upgrade() else {
        return;
    };
    // The key must be the shop: records of one shop share a partition, so
    // their order is the same on every replica, whatever the partitions.
    let decoded = record.payload.and_then(|p| decode(p, max_payload));
    let Some(change) = decoded.filter(|c| record.key == Some(c.shop.as_bytes())) else {
        metrics::cluster_record(ClusterTopic::Rules, RecordResult::Unreadable);
        tracing::warn!(
            partition = record.partition,
            offset = record.offset,
            "rules topic: a record this version cannot read was skipped (every replica of this version skips it)"
        );
        // The taker's own unreadable record cannot happen; answer anyway.
        pending.complete(
            &record,
            Err(Refusal::Invalid("the rule change could not be read back".to_string())),
        );
        return;
    };
    if !engine.cluster.shops.serves(&change.shop) {
        metrics::cluster_record(ClusterTopic::Rules, RecordResult::OtherShop);
        return;
    }
    let outcome = apply(&engine.rules, &change);
    let result = match &outcome {
        Ok(Applied::Changed(served)) => {
            metrics::rule_revision(&change.shop, served.revision);
            // A record cannot be refused here: a zone change is reported.
            engine.check_zones();
            tracing::info!(
                shop = change.shop,
                revision = served.revision,
                origin = change.origin,
                "rules topic: revision applied"
            );
            RecordResult::Applied
        }
        Ok(Applied::Unchanged(_)) => RecordResult::Unchanged,
        Err(Refusal::Mismatch { .. }) => RecordResult::Aborted,
        Err(e) => {
            tracing::warn!(shop = change.shop, "rules topic: a change was refused here: {e}");
            RecordResult::Refused
        }
    };
    metrics::cluster_record(ClusterTopic::Rules, result);
    pending.complete(&record, outcome);
}

/// Applies a decoded change to the store, deciding it in log order.
pub fn apply(store: &RuleStore, record: &RuleRecord) -> Outcome {
    let kind = match &record.op {
        Op::Push { content } => ChangeKind::Push(content),
        Op::Rollback { to } => ChangeKind::Rollback(*to),
    };
    let change = Change {
        shop: &record.shop,
        kind,
        expected: record.expected,
        if_absent: record.if_absent,
        origin: Origin::parse(&record.origin).unwrap_or(Origin::Push),
        created_ms: record.at_ms,
    };
    store.apply_change(&change).map_err(|e| match e {
        StoreError::RevisionMismatch {
            shop,
            expected,
            serving,
        } => Refusal::Mismatch {
            shop,
            expected,
            serving,
        },
        e @ (StoreError::UnknownShop(_) | StoreError::UnknownRevision { .. }) => Refusal::NotFound(e.to_string()),
        e @ (StoreError::Invalid(_) | StoreError::InvalidShop(_) | StoreError::NotServed { .. }) => {
            Refusal::Invalid(e.to_string())
        }
        e @ (StoreError::Io(_) | StoreError::History { .. } | StoreError::ZoneChange { .. }) => {
            Refusal::Failed(e.to_string())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(shop: &str, content: &str) -> RuleRecord {
        RuleRecord {
            v: VERSION,
            op: Op::Push {
                content: content.to_string(),
            },
            shop: shop.to_string(),
            expected: 0,
            if_absent: false,
            origin: "push".to_string(),
            at_ms: 1_767_225_600_000,
        }
    }

    #[test]
    fn records_round_trip() {
        let record = push("s", "shop: s\n");
        let bytes = serde_json::to_vec(&record).unwrap();
        assert_eq!(decode(&bytes, 1 << 20), Some(record));
        let rollback = RuleRecord {
            op: Op::Rollback { to: 3 },
            expected: 4,
            origin: "rollback".to_string(),
            ..push("s", "")
        };
        let text = serde_json::to_string(&rollback).unwrap();
        assert!(text.contains(r#""op":"rollback","to":3"#), "{text}");
        assert_eq!(decode(text.as_bytes(), 1 << 20), Some(rollback));
    }

    /// Anything a foreign producer may write is skipped, never a panic.
    #[test]
    fn unreadable_records_are_none() {
        let good = serde_json::to_string(&push("s", "x")).unwrap();
        let cases = [
            String::new(),
            "not json".to_string(),
            good.replace(r#""v":1"#, r#""v":2"#),
            good.replace(r#""op":"push""#, r#""op":"delete""#),
            good.replace(r#""origin":"push""#, r#""origin":"magic""#),
            good.replace(r#""shop":"s""#, r#""shop":"""#),
            good.replace(r#""shop":"s""#, &format!(r#""shop":"{}""#, "x".repeat(81))),
            good.replace("1767225600000", "-1"),
            good.replace("1767225600000", "99999999999999999"),
            "[".repeat(10_000),
        ];
        for case in &cases {
            assert_eq!(decode(case.as_bytes(), 1 << 20), None, "{case:.80}");
        }
        assert_eq!(decode(good.as_bytes(), good.len() - 1), None, "over the size bound");
    }
}
