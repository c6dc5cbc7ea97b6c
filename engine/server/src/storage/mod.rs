//! What survives a restart, all under `--data-dir` (`docs/storage.md` has the
//! file formats):
//!
//! * [`wal`]: the segmented, checksummed, group-committed write-ahead log.
//! * [`event_log`]: `Ingest/Track` events on the WAL, acknowledged once durable.
//! * [`claims_journal`]: the claims ledger on the WAL, with compaction.
//! * [`claims_topic`]: a cluster replica's ledger and claims-topic offsets.
//! * [`snapshots`]: snapshot files of the index with the position they cover.
//! * [`restore`]: the start (snapshot, then the journals after it) and the
//!   periodic snapshots that keep the next start short.
//! * [`fs`]: the one atomic file write and directory fsync they (and the
//!   rule store) use.

pub mod claims_journal;
pub mod claims_topic;
pub mod event_log;
pub mod fs;
pub mod restore;
pub mod snapshots;
pub mod wal;

#[cfg(test)]
mod golden;
