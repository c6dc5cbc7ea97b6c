//! The durable state's life: the restore at start (the newest valid
//! snapshot, then the events journal after its position and the claims
//! journal), and the [`Snapshotter`] that writes snapshots periodically and
//! at shutdown, so that the next start replays little. The restore is two
//! halves a start runs apart: [`load_snapshot`] (most of a restart) begins
//! right after the data directory's lock, beside the metrics recorder's
//! installation and the rule files' reading, and [`restore_from`] replays
//! the journals once both are done.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::sync::watch;
use vitrine_core::Index;

use crate::clock::now_ms;
use crate::metrics;
use crate::state::{Engine, StorageHealth};
use crate::storage::claims_journal::{DurableLedger, LedgerOptions};
use crate::storage::event_log::EventLog;
use crate::storage::snapshots::{Damaged, KafkaPosition, Loaded, Position, SnapshotDir, Written};

/// Takes `data-dir/vitrine.lock`, so that a second server on the same data
/// directory stops before it reads (or sets aside) anything. Held until the
/// returned file is dropped.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("vitrine.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow::anyhow!(
            "{} is locked: another vitrine server uses --data-dir {}",
            path.display(),
            data_dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// The events journal's segment size.
const EVENTS_SEGMENT_BYTES: u64 = 64 << 20;

/// The durable state a start restores, and where it came from.
pub struct Restored {
    pub index: Index,
    pub ledger: Arc<DurableLedger>,
    pub events: EventLog,
    pub position: Position,
}

/// The newest valid snapshot in `snapshots` (damaged ones set aside), the
/// restore's first half: it records no metric and needs no rules, so a
/// start runs it while it installs the metrics recorder and reads the
/// rules directory (`commands/serve.rs`), then hands it to [`restore_from`].
/// Blocking.
pub fn load_snapshot(snapshots: &SnapshotDir) -> anyhow::Result<SnapshotLoad> {
    let started = Instant::now();
    let (loaded, damaged) = snapshots
        .load_newest()
        .with_context(|| format!("reading snapshots in {}", snapshots.dir().display()))?;
    Ok(SnapshotLoad {
        loaded,
        damaged,
        started,
    })
}

/// What [`load_snapshot`] found.
pub struct SnapshotLoad {
    loaded: Option<Loaded>,
    damaged: Vec<Damaged>,
    /// When the load began (the restore's duration counts from there).
    started: Instant,
}

/// The restore's second half: logs what [`load_snapshot`] found, then
/// replays the events journal after the snapshot's position and opens the
/// claims journal, restoring the state `--data-dir` holds. A shop whose
/// index the journal creates counts hours on `zones[shop]` (UTC when
/// absent). Blocking; fails on damage that would lose acknowledged claims
/// or events (the error says which file and where).
pub fn restore_from(
    snapshot: SnapshotLoad,
    data_dir: &Path,
    claims_segment_bytes: u64,
    storage: &StorageHealth,
    zones: &std::collections::HashMap<String, vitrine_core::time::Zone>,
) -> anyhow::Result<Restored> {
    let SnapshotLoad {
        loaded,
        damaged,
        started,
    } = snapshot;
    for d in &damaged {
        tracing::error!(path = %d.path.display(), reason = %d.reason, "snapshot is damaged: set aside as *.damaged, never loaded");
    }
    let (index, position) = match loaded {
        Some(l) => {
            tracing::info!(
                path = %l.path.display(),
                bytes = l.bytes,
                seconds = l.took.as_secs_f64(),
                events_lsn = l.position.events_lsn,
                kafka_topic = l.position.kafka.as_ref().map(|k| k.topic.as_str()),
                kafka_offsets = l.position.kafka.as_ref().map(|k| offsets_field(&k.offsets)),
                shops = l.position.revisions.len(),
                "snapshot loaded"
            );
            (l.index, l.position)
        }
        None if damaged.is_empty() => {
            tracing::info!("no snapshot: starting from the journals (and the topic) alone");
            (Index::new(), Position::default())
        }
        None => {
            tracing::warn!("no valid snapshot: replaying everything the journals (and the topic) still hold");
            (Index::new(), Position::default())
        }
    };
    let replay_started = Instant::now();
    let (events, recovery) = EventLog::open_with(
        &data_dir.join("events"),
        position.events_lsn,
        EVENTS_SEGMENT_BYTES,
        Some(storage.wal_hook()),
        |_, event| {
            // A shop new to the snapshot gets its rules' zone (`crate::zones`).
            let zone = || zones.get(&*event.shop).cloned().unwrap_or_default();
            index.apply_in(&event, zone)
        },
    )
    .context("opening the events journal")?;
    tracing::info!(
        segments = recovery.segments,
        segments_read = recovery.segments_read,
        batches = recovery.batches,
        records = recovery.records,
        first_lsn = recovery.first_lsn,
        last_lsn = recovery.last_lsn,
        truncated_bytes = recovery.truncated_bytes,
        dropped_records = recovery.dropped_records,
        restarted_at = recovery.restarted_at,
        seconds = replay_started.elapsed().as_secs_f64(),
        "events journal replayed"
    );
    let ledger_options = LedgerOptions {
        segment_bytes: claims_segment_bytes,
        on_failure: Some(storage.wal_hook()),
    };
    let ledger =
        DurableLedger::open_with(&data_dir.join("claims"), ledger_options).context("opening the claims journal")?;
    let claims = ledger.recovery();
    tracing::info!(
        batches = claims.batches,
        records = claims.records,
        grants = claims.grants,
        truncated_bytes = claims.truncated_bytes,
        dropped_records = claims.dropped_records,
        state_lsn = claims.state_lsn,
        "claims journal replayed"
    );
    let seconds = started.elapsed().as_secs_f64();
    metrics::restored(damaged.len(), seconds);
    tracing::info!(seconds, "state restored");
    Ok(Restored {
        index,
        ledger: Arc::new(ledger),
        events,
        position,
    })
}

/// Per-partition offsets as one flat log field, `partition:offset,...`
/// (a log pipeline indexes a string; a Rust `Debug` list it cannot parse).
pub fn offsets_field(offsets: &[(i32, i64)]) -> String {
    offsets
        .iter()
        .map(|(p, o)| format!("{p}:{o}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Takes snapshots: the position first, then the index.
pub struct Snapshotter {
    pub engine: Arc<Engine>,
    /// The claims journal, compacted after snapshots.
    pub ledger: Arc<DurableLedger>,
    pub dir: SnapshotDir,
    /// The topic and a reader of the consumer's applied offsets.
    pub kafka: Option<(String, KafkaPositions)>,
    /// The decisions topic and a reader of its consumer's applied offsets.
    pub decisions: Option<(String, KafkaPositions)>,
}

pub type KafkaPositions = Box<dyn Fn() -> Vec<(i32, i64)> + Send + Sync>;

impl Snapshotter {
    /// Writes one snapshot, then compacts the events journal to what every
    /// kept snapshot covers. Blocking.
    pub fn take(&self) -> std::io::Result<Written> {
        let started = Instant::now();
        // Positions before the index: see the snapshots module docs.
        let position = Position {
            created_ms: now_ms(),
            events_lsn: self.engine.events_position(),
            kafka: self.kafka.as_ref().map(|(topic, offsets)| KafkaPosition {
                topic: topic.clone(),
                offsets: offsets(),
            }),
            revisions: self.engine.rules.shops(),
            decisions: self.decisions.as_ref().map(|(topic, offsets)| KafkaPosition {
                topic: topic.clone(),
                offsets: offsets(),
            }),
        };
        let written = self.dir.write(&self.engine.index, &position);
        match &written {
            Ok(w) => {
                metrics::snapshot_written(Some((started.elapsed().as_secs_f64(), w.bytes)));
                tracing::info!(
                    path = %w.path.display(),
                    bytes = w.bytes,
                    encode_seconds = w.encode.as_secs_f64(),
                    write_seconds = w.write.as_secs_f64(),
                    events_lsn = position.events_lsn,
                    "snapshot written"
                );
                match self.dir.compactable_lsn() {
                    Ok(Some(upto)) => self.engine.compact_events(upto),
                    Ok(None) => {}
                    Err(e) => tracing::warn!("reading kept snapshots' positions failed: {e}"),
                }
            }
            Err(e) => {
                metrics::snapshot_written(None);
                tracing::error!(dir = %self.dir.dir().display(), "writing a snapshot failed: {e}");
            }
        }
        self.compact_claims();
        self.save_claims_topic_state();
        written
    }

    /// In cluster mode, writes the claims ledger with the claims topic's
    /// offsets (`data/claims-topic.state`). A failed write keeps the
    /// previous file, which is consistent too (the next start reads more
    /// of the topic).
    fn save_claims_topic_state(&self) {
        if let Some(claims) = self.engine.cluster.claims.get() {
            match claims.save_state() {
                Ok(bytes) => tracing::debug!(bytes, "claims topic state written"),
                Err(e) => tracing::error!("writing the claims topic state failed (the previous one stands): {e}"),
            }
        }
    }

    /// Compacts the claims journal when it has more than its current
    /// segment (so at most once per `--claims-segment-bytes` of claims),
    /// never after a storage fault.
    fn compact_claims(&self) {
        if self.engine.storage.fault().is_some() || !self.ledger.compaction_due() {
            return;
        }
        match self.ledger.compact() {
            Ok(c) => {
                metrics::claims_compacted(Some((c.state_bytes, c.removed.bytes_removed)));
                tracing::info!(
                    lsn = c.lsn,
                    state_bytes = c.state_bytes,
                    segments_removed = c.removed.segments_removed,
                    bytes_removed = c.removed.bytes_removed,
                    "claims journal compacted"
                );
            }
            Err(e) => {
                metrics::claims_compacted(None);
                tracing::error!("compacting the claims journal failed (the journal is kept whole): {e}");
            }
        }
    }
}

/// Writes a snapshot every `interval` until stopped (the final one is
/// `Server::shutdown`'s in `commands/serve.rs`).
pub async fn snapshot_loop(
    snapshotter: Arc<Snapshotter>,
    interval: std::time::Duration,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        }
        let s = snapshotter.clone();
        // A failed write is logged and counted; the next tick tries again.
        let _ = tokio::task::spawn_blocking(move || s.take()).await?;
    }
}

impl std::fmt::Debug for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotter")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restored")
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SnapshotLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotLoad")
            .field("loaded", &self.loaded.as_ref().map(|l| &l.path))
            .field("damaged", &self.damaged.len())
            .finish_non_exhaustive()
    }
}
