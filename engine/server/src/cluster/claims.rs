//! Claims through the claims topic (`docs/cluster.md`, "Claims").
//!
//! The replica that takes a Claim checks what only it can (benefit,
//! audience, window, holdout: [`vitrine_core::prepare_claim`]) and writes a
//! [`ClaimRecord`] carrying everything the ledger needs. Every replica reads
//! the topic in partition order and applies each record with
//! [`ClaimLedger::claim`] on its own in-memory ledger: cap, budget and the
//! first answer of a `claim_id` are decided in log order, the same way
//! everywhere. The taker answers with what applying its own record decided.
//!
//! A record is JSON, keyed `shop/benefit` (one benefit's claims share a
//! partition, so their order is the same on every replica):
//!
//! ```json
//! {"v":1,"shop":"demo-beauty","benefit":"early-access","visitor":"v-1",
//!  "now_ms":1795132800000,"claim_id":"c-9","cap":[1,10368000000],
//!  "budget":300,"denied":null}
//! ```
//!
//! Any producer can write to the topic, so every field is bounded before
//! use; a record this version cannot read (unknown `v`, bad JSON, a field
//! out of bounds, a key that is not its `shop/benefit`) is skipped and
//! counted, identically on every replica. Records of shops outside
//! `--shops` are skipped by their key before the JSON is read.
//!
//! The ledger and the topic's next offsets are written together to
//! `data/claims-topic.state` ([`crate::storage::claims_topic`]) at every
//! snapshot and at shutdown; the apply function and the writer share one
//! mutex, so the file always sits between two records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::metrics::Counter;
use anyhow::Context as _;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use vitrine_core::event::{MAX_ID_BYTES, MAX_TS};
use vitrine_core::time::MAX_WINDOW_HOURS;
use vitrine_core::{ClaimLedger, ClaimOutcome, LedgerClaim, LedgerError, LedgerImage, MemoryLedger};

use super::log::{LogReader, Record, Start};
use super::producer::{call, replica_id, LogProducer, Pending, Unavailable};
use super::shops::Shops;
use crate::config::KafkaConfig;
use crate::metrics::{self, ClusterTopic, RecordResult};
use crate::storage::claims_topic::{self, TopicState};

/// The record format this version writes and reads.
pub const RECORD_VERSION: u32 = 1;
/// The largest record read: four ids of [`MAX_ID_BYTES`], each at worst
/// six JSON bytes per byte (`\u0001`), and the rest.
pub const MAX_RECORD_BYTES: usize = 16 << 10;
/// The partitions of a claims topic created at start.
pub const PARTITIONS: i32 = 6;
/// The longest cap window a record may carry (the rule language's bound).
const MAX_WINDOW_MS: i64 = MAX_WINDOW_HOURS as i64 * 3_600_000;
/// The outcomes a record may carry as `denied`: what the taker decides.
const DENIALS: [ClaimOutcome; 3] = [
    ClaimOutcome::NotEligible,
    ClaimOutcome::HeldOut,
    ClaimOutcome::OutsideWindow,
];

/// What applying a claim record answers the taker: the ledger's outcome,
/// or why it gave none (`ClaimIdInUse`; `Failed` for a record of this
/// replica that could not be applied).
pub type ClaimAnswer = Result<ClaimOutcome, LedgerError>;

/// One claim as the topic carries it (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// [`RECORD_VERSION`].
    pub v: u32,
    /// Storefront.
    pub shop: String,
    /// Benefit id.
    pub benefit: String,
    /// Visitor id.
    pub visitor: String,
    /// The claim's instant (ms).
    pub now_ms: i64,
    /// Makes retries idempotent.
    pub claim_id: Option<String>,
    /// (per visitor, window in ms), if capped.
    pub cap: Option<(u32, i64)>,
    /// Total grants allowed, if budgeted.
    pub budget: Option<u64>,
    /// The taker's denial (`NOT_ELIGIBLE`, `HELD_OUT`, `OUTSIDE_WINDOW`).
    pub denied: Option<String>,
}

impl ClaimRecord {
    /// The record of a prepared claim.
    pub fn of(claim: &LedgerClaim<'_>) -> ClaimRecord {
        ClaimRecord {
            v: RECORD_VERSION,
            shop: claim.shop.to_string(),
            benefit: claim.benefit.to_string(),
            visitor: claim.visitor.to_string(),
            now_ms: claim.now_ms,
            claim_id: claim.claim_id.map(str::to_string),
            cap: claim.cap,
            budget: claim.budget,
            denied: claim.denied.map(|d| d.as_str().to_string()),
        }
    }

    /// The record's key: `shop/benefit`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.shop, self.benefit)
    }

    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads and checks a record; why it cannot be applied otherwise.
    pub fn decode(key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<ClaimRecord, &'static str> {
        let payload = payload.ok_or("no payload")?;
        if payload.len() > MAX_RECORD_BYTES {
            return Err("larger than a claim record can be");
        }
        let record: ClaimRecord = serde_json::from_slice(payload).map_err(|_| "not a claim record (JSON)")?;
        if record.v != RECORD_VERSION {
            return Err("an unknown record version");
        }
        record.check()?;
        let key = key.ok_or("no key")?;
        let (shop, benefit) = (record.shop.as_bytes(), record.benefit.as_bytes());
        if key.len() != shop.len() + 1 + benefit.len()
            || !key.starts_with(shop)
            || key[shop.len()] != b'/'
            || !key.ends_with(benefit)
        {
            return Err("the key is not the record's shop/benefit");
        }
        Ok(record)
    }

    /// Every field within the bounds the API and the rule language set.
    fn check(&self) -> Result<(), &'static str> {
        let id = |s: &str| !s.is_empty() && s.len() <= MAX_ID_BYTES;
        if !id(&self.shop) || !id(&self.benefit) || !id(&self.visitor) {
            return Err("an empty or too long shop, benefit or visitor");
        }
        if self.claim_id.as_deref().is_some_and(|c| !id(c)) {
            return Err("an empty or too long claim_id");
        }
        if !(0..=MAX_TS).contains(&self.now_ms) {
            return Err("now_ms out of range");
        }
        if self
            .cap
            .is_some_and(|(n, window)| n == 0 || !(1..=MAX_WINDOW_MS).contains(&window))
        {
            return Err("a cap out of range");
        }
        self.denial()?;
        Ok(())
    }

    fn denial(&self) -> Result<Option<ClaimOutcome>, &'static str> {
        match &self.denied {
            None => Ok(None),
            Some(name) => DENIALS
                .into_iter()
                .find(|d| d.as_str() == name)
                .map(Some)
                .ok_or("an unknown denial"),
        }
    }

    /// The ledger call the record asks for (the record was checked).
    fn as_claim(&self) -> LedgerClaim<'_> {
        LedgerClaim {
            shop: &self.shop,
            benefit: &self.benefit,
            visitor: &self.visitor,
            now_ms: self.now_ms,
            claim_id: self.claim_id.as_deref(),
            cap: self.cap,
            budget: self.budget,
            denied: self.denial().ok().flatten(),
        }
    }
}

/// Whether a record keyed `key` may belong to a shop of `shops`: some
/// split of the key at a `/` names a served shop (shop names may hold `/`).
fn key_may_be_served(shops: &Shops, key: &[u8]) -> bool {
    shops.is_all()
        || key
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'/')
            .any(|(i, _)| std::str::from_utf8(&key[..i]).is_ok_and(|shop| shops.serves(shop)))
}

/// Records seen by this replica's reader, by result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClaimsStats {
    /// Applied to the ledger.
    pub applied: u64,
    /// Skipped: this version cannot read them.
    pub unreadable: u64,
    /// Skipped: a shop outside `--shops`.
    pub other_shop: u64,
}

/// The state the reader's thread applies to.
struct Applier {
    ledger: Arc<MemoryLedger>,
    shops: Shops,
    pending: Arc<Pending<ClaimAnswer>>,
    /// Next offset per partition; held while a record is applied and while
    /// the state is copied, so the state file sits between two records.
    offsets: Mutex<BTreeMap<i32, i64>>,
    counters: [Counter; 6],
    counts: [AtomicU64; 6],
}

impl Applier {
    fn apply(&self, record: Record<'_>) {
        let mut offsets = self.offsets.lock();
        let (result, answer) = self.decide(&record);
        offsets.insert(record.partition, record.offset + 1);
        drop(offsets);
        let i = RecordResult::ALL.iter().position(|r| *r == result).unwrap_or(0);
        self.counters[i].increment(1);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.pending.complete(&record, answer);
    }

    fn decide(&self, record: &Record<'_>) -> (RecordResult, ClaimAnswer) {
        let skipped = |why: &str| Err(LedgerError::Failed(format!("the claim record was skipped: {why}")));
        if record.key.is_some_and(|key| !key_may_be_served(&self.shops, key)) {
            return (RecordResult::OtherShop, skipped("a shop this replica does not serve"));
        }
        let claim = match ClaimRecord::decode(record.key, record.payload) {
            Ok(claim) => claim,
            Err(why) => {
                tracing::warn!(
                    partition = record.partition,
                    offset = record.offset,
                    "claims topic: skipping a record this version cannot read: {why}"
                );
                return (RecordResult::Unreadable, skipped(why));
            }
        };
        if !self.shops.serves(&claim.shop) {
            return (RecordResult::OtherShop, skipped("a shop this replica does not serve"));
        }
        (RecordResult::Applied, self.ledger.claim(&claim.as_claim()))
    }
}

/// This replica's side of the claims topic: the producer the taker writes
/// with, the reader every replica applies with, and the ledger they fill.
pub struct ClaimsLog {
    topic: String,
    data_dir: PathBuf,
    timeout: Duration,
    applier: Arc<Applier>,
    producer: LogProducer,
    reader: Mutex<Option<LogReader>>,
    caught_up: watch::Receiver<bool>,
}

impl std::fmt::Debug for ClaimsLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimsLog")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ClaimsLog {
    /// Loads `data_dir/claims-topic.state` (a state of another topic is
    /// ignored: the topic is read from its beginning), then starts reading
    /// the claims topic from the offsets it holds. A damaged state file
    /// refuses the start.
    pub fn open(data_dir: &Path, kafka: &KafkaConfig, shops: Shops) -> anyhow::Result<ClaimsLog> {
        let topic = kafka.claims_topic.clone();
        let loaded = claims_topic::read(data_dir)?;
        let served = shops.describe();
        let state = match loaded {
            Some(state) if state.topic == topic && state.shops.as_deref() != Some(served.as_str()) => {
                // Its offsets are past records of shops it skipped: resuming
                // would leave their grants out for good (over-granting).
                tracing::warn!(
                    state_shops = state.shops.as_deref().unwrap_or("unknown"),
                    shops = %served,
                    "{} was built under another --shops: ignored, the ledger is rebuilt from the topic's beginning",
                    claims_topic::STATE_FILE
                );
                TopicState::default()
            }
            Some(state) if state.topic == topic => {
                tracing::info!(%topic, offsets = crate::storage::restore::offsets_field(&state.offsets), "claims ledger loaded from {}", claims_topic::STATE_FILE);
                state
            }
            Some(state) => {
                tracing::warn!(
                    state_topic = %state.topic,
                    %topic,
                    "{} belongs to another claims topic: ignored, the ledger is rebuilt from the topic's beginning",
                    claims_topic::STATE_FILE
                );
                TopicState::default()
            }
            None => {
                tracing::info!(%topic, "no {}: the claims ledger is built from the topic's beginning", claims_topic::STATE_FILE);
                TopicState::default()
            }
        };
        let ledger = Arc::new(MemoryLedger::from_image(state.ledger));
        let applier = Arc::new(Applier {
            ledger,
            shops,
            pending: Arc::new(Pending::new(replica_id())),
            offsets: Mutex::new(state.offsets.iter().copied().collect()),
            counters: metrics::cluster_records(ClusterTopic::Claims),
            counts: Default::default(),
        });
        let failed = applier.pending.clone();
        let producer = LogProducer::new(
            &kafka.brokers,
            &kafka.options,
            &topic,
            MAX_RECORD_BYTES,
            kafka.cluster_timeout,
            move |seq, why| failed.fail(seq, why),
        )
        .context("creating the claims topic's producer")?;
        let apply = applier.clone();
        let reader = LogReader::start(
            &kafka.brokers,
            &kafka.options,
            &topic,
            Start { resume: state.offsets },
            move |record| apply.apply(record),
        )
        .context("starting the claims topic's reader")?;
        Ok(ClaimsLog {
            topic,
            data_dir: data_dir.to_path_buf(),
            timeout: kafka.cluster_timeout,
            caught_up: reader.caught_up(),
            applier,
            producer,
            reader: Mutex::new(Some(reader)),
        })
    }

    /// The ledger the topic fills: what Decide peeks at.
    pub fn ledger(&self) -> Arc<MemoryLedger> {
        self.applier.ledger.clone()
    }

    /// True once the topic was read up to where it stood at start.
    pub fn caught_up(&self) -> watch::Receiver<bool> {
        self.caught_up.clone()
    }

    /// Writes `record` and waits for what applying it decides, at most
    /// `--cluster-timeout`.
    pub async fn claim(&self, record: &ClaimRecord) -> Result<ClaimAnswer, Unavailable> {
        call(
            &self.applier.pending,
            &self.producer,
            record.key().as_bytes(),
            &record.encode(),
            self.timeout,
        )
        .await
    }

    /// Writes the ledger and the next offsets to `data/claims-topic.state`,
    /// as of one instant between two records. Blocking; returns the size.
    pub fn save_state(&self) -> std::io::Result<u64> {
        let state = {
            let offsets = self.applier.offsets.lock();
            TopicState {
                topic: self.topic.clone(),
                shops: Some(self.applier.shops.describe()),
                offsets: offsets.iter().map(|(p, n)| (*p, *n)).collect(),
                ledger: self.applier.ledger.image(),
            }
        };
        claims_topic::write(&self.data_dir, &state)
    }

    /// The ledger as the state file encodes it: equal ledgers, equal bytes
    /// (tests compare replicas with it).
    pub fn ledger_bytes(&self) -> Vec<u8> {
        let image: LedgerImage = self.applier.ledger.image();
        let mut out = Vec::new();
        crate::storage::claims_journal::encode_state(&image, &mut out);
        out
    }

    /// Records seen so far, by result.
    pub fn stats(&self) -> ClaimsStats {
        let count = |result: RecordResult| {
            let i = RecordResult::ALL.iter().position(|r| *r == result).unwrap_or(0);
            self.applier.counts[i].load(Ordering::Relaxed)
        };
        let [applied, unreadable, other_shop] =
            [RecordResult::Applied, RecordResult::Unreadable, RecordResult::OtherShop].map(count);
        ClaimsStats {
            applied,
            unreadable,
            other_shop,
        }
    }

    /// Stops the reader and flushes the producer (shutdown).
    pub fn stop(&self) {
        if let Some(mut reader) = self.reader.lock().take() {
            reader.stop();
        }
        self.producer.flush(Duration::from_secs(1));
    }
}

/// Starts this replica's side of the claims topic: creates the topic when
/// missing (6 partitions, kept forever; in the background: the reader
/// waits for the topic, and readiness for the reader), then
/// [`ClaimsLog::open`].
pub async fn start(data_dir: &Path, kafka: &KafkaConfig, shops: Shops) -> anyhow::Result<ClaimsLog> {
    tracing::info!(
        topic = %kafka.claims_topic,
        "cluster mode: claims go through the claims topic; the local claims journal (data/claims) is not used"
    );
    let (dir, kafka, topic) = (data_dir.to_path_buf(), kafka.clone(), kafka.claims_topic.clone());
    tokio::task::spawn_blocking(move || ClaimsLog::open(&dir, &kafka, shops))
        .await
        .with_context(|| format!("starting the claims topic {topic}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ClaimRecord {
        ClaimRecord::of(&LedgerClaim {
            shop: "s/x",
            benefit: "b",
            visitor: "v",
            now_ms: 1_000,
            claim_id: Some("c"),
            cap: Some((1, 3_600_000)),
            budget: Some(5),
            denied: Some(ClaimOutcome::HeldOut),
        })
    }

    #[test]
    fn records_roundtrip_with_their_key() {
        let r = record();
        assert_eq!(r.key(), "s/x/b");
        let back = ClaimRecord::decode(Some(r.key().as_bytes()), Some(&r.encode())).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.as_claim().denied, Some(ClaimOutcome::HeldOut));
        assert_eq!(
            String::from_utf8(r.encode()).unwrap(),
            r#"{"v":1,"shop":"s/x","benefit":"b","visitor":"v","now_ms":1000,"claim_id":"c","cap":[1,3600000],"budget":5,"denied":"HELD_OUT"}"#
        );
    }

    #[test]
    fn unreadable_records_say_why() {
        let r = record();
        let key = r.key();
        let decode =
            |key: Option<&str>, r: &ClaimRecord| ClaimRecord::decode(key.map(str::as_bytes), Some(&r.encode()));
        let with = |f: &dyn Fn(&mut ClaimRecord)| {
            let mut r = record();
            f(&mut r);
            r
        };
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let cases: Vec<(ClaimRecord, &str)> = vec![
            (with(&|r| r.v = 2), "an unknown record version"),
            (
                with(&|r| r.visitor.clear()),
                "an empty or too long shop, benefit or visitor",
            ),
            (
                with(&|r| r.visitor = long.clone()),
                "an empty or too long shop, benefit or visitor",
            ),
            (
                with(&|r| r.claim_id = Some(String::new())),
                "an empty or too long claim_id",
            ),
            (with(&|r| r.now_ms = -1), "now_ms out of range"),
            (with(&|r| r.now_ms = MAX_TS + 1), "now_ms out of range"),
            (with(&|r| r.cap = Some((0, 10))), "a cap out of range"),
            (with(&|r| r.cap = Some((1, 0))), "a cap out of range"),
            (with(&|r| r.cap = Some((1, MAX_WINDOW_MS + 1))), "a cap out of range"),
            (with(&|r| r.denied = Some("GRANTED".into())), "an unknown denial"),
        ];
        for (r, why) in cases {
            assert_eq!(decode(Some(&key), &r), Err(why), "{r:?}");
        }
        assert_eq!(decode(None, &r), Err("no key"));
        assert_eq!(
            decode(Some("s/x/c"), &r),
            Err("the key is not the record's shop/benefit")
        );
        assert_eq!(
            decode(Some("s/xb"), &r),
            Err("the key is not the record's shop/benefit")
        );
        assert_eq!(ClaimRecord::decode(Some(b"s/b"), None), Err("no payload"));
        assert_eq!(
            ClaimRecord::decode(Some(b"s/b"), Some(b"{\"v\":1")),
            Err("not a claim record (JSON)")
        );
        let nested = "[".repeat(MAX_RECORD_BYTES + 1);
        assert_eq!(
            ClaimRecord::decode(Some(b"s/b"), Some(nested.as_bytes())),
            Err("larger than a claim record can be")
        );
        let nested = "[".repeat(1_000);
        assert_eq!(
            ClaimRecord::decode(Some(b"s/b"), Some(nested.as_bytes())),
            Err("not a claim record (JSON)")
        );
    }

    #[test]
    fn other_shops_are_told_by_the_key_alone() {
        let shops = Shops::parse("s/x,fresh-*").unwrap();
        assert!(key_may_be_served(&shops, b"s/x/b"));
        assert!(key_may_be_served(&shops, b"fresh-1/b"));
        assert!(!key_may_be_served(&shops, b"s/y/b"));
        assert!(!key_may_be_served(&shops, b"s"));
        assert!(!key_may_be_served(&shops, b"\xff/b"));
        assert!(key_may_be_served(&Shops::all(), b"anything"));
    }
}
