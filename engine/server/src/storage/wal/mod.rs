//! A write-ahead log: records are on disk, checksummed and `fdatasync`'d,
//! before [`Wal::wait`] returns, and every record has a persistent number.
//!
//! The claims journal ([`crate::storage::claims_journal`]) and the event log
//! ([`crate::storage::event_log`]) are built on it; records are opaque bytes here.
//!
//! # Record numbers (LSNs)
//!
//! Every record gets a log sequence number: 1 for the first record the log
//! ever held, then one more per record, across segments and restarts. LSNs
//! are never reused for other records: a snapshot that covers "everything up
//! to LSN n" stays meaningful whatever happens to the log afterwards.
//!
//! # Group commit
//!
//! [`Wal::append`] only queues (under one lock, so LSN order is queue order)
//! and returns the record's LSN; [`Wal::wait`] blocks until it is durable.
//! One writer thread takes everything queued, writes it as one batch with
//! one `write` and one `fdatasync`, then wakes the waiters of that batch.
//! Under concurrency a batch holds every record queued during the previous
//! `fdatasync`. The records of one [`Wal::append_many`] call always land in
//! one batch, so they become durable (or are lost to a crash) together.
//!
//! After an I/O error the log **fails closed**: that batch and everything
//! queued after it fail, and every later append fails until the log is
//! reopened (after a failed `fsync`, what reached the disk is unknown). The
//! writer then tries to cut the failed batch off the file, so that a restart
//! does not replay records that were answered with an error; if that fails
//! too, a restart replays them.
//!
//! # Segments and compaction
//!
//! The log is a directory of segment files, each named by the LSN of its
//! first record, zero-padded so that names sort (`00000000000000000001.wal`).
//! The writer appends to the last one and, at a batch boundary, starts a new
//! one when the next batch would take the current one past
//! [`Options::segment_bytes`] (a segment always takes at least one batch, so
//! a single batch larger than that makes a larger segment). A new segment is
//! created, its header written and `fsync`'d, and the directory `fsync`'d,
//! before any batch goes into it. [`Wal::compact`] deletes the segments all
//! of whose records a snapshot covers, oldest first, never the current one.
//!
//! # Replay
//!
//! [`Wal::open`] checks the segments in order and calls back for every
//! record after [`Options::start_after`] (the LSN a snapshot covers).
//! Segments whose successor starts at or below `start_after + 1` hold only
//! covered records: their header is checked, their body not read. Every batch
//! that is read has its checksum verified, including the covered ones.
//!
//! * A batch whose checksum fails at the end of the last segment is a write
//!   a crash interrupted (none of its records was acknowledged): it is cut
//!   off, however its pages reached the disk, and reported in [`Recovery`].
//!   A last segment shorter than its header is a creation a crash
//!   interrupted: it holds no record and is removed.
//! * A damaged batch anywhere else (followed by a valid batch, or in a
//!   segment followed by another) would lose acknowledged records: open
//!   refuses with [`OpenError::Corrupt`], naming the file and offset.
//! * A segment that does not continue the one before it (a middle segment
//!   was deleted or moved) is [`OpenError::MissingRecords`].
//! * If the log ends before `start_after` (the snapshot covers records the
//!   log lost, e.g. with its directory), open starts a new segment at
//!   `start_after + 1` (its header records the jump) and reports it in
//!   [`Recovery::restarted_at`]. If the log starts after `start_after + 1`
//!   (records the snapshot does not cover were compacted away or never
//!   existed), open fails with [`OpenError::Gap`].
//!
//! A lock file (`wal.lock`) keeps a second process, or a second open in
//! this one, away from the directory while the log is open.
//!
//! # File format
//!
//! Integers little-endian.
//!
//! ```text
//! segment := header batch*
//! header  := "VTRNWALS" | version u32 (1) | kind [4] | first_lsn u64 | prev_lsn u64
//!            | reserved u32 (0) | crc32 u32                                 40 bytes
//!            kind names the record format (b"CLM1": claims, b"EVT1": events);
//!            first_lsn must match the file name; prev_lsn is the LSN of the
//!            log's last record before this segment: first_lsn - 1, or less
//!            where open restarted the log after a snapshot; crc32 covers
//!            version through reserved
//! batch   := "VTRNBTCH" | len u32 | count u32 | seq u64 | crc32 u32 | record{count}
//!            len = bytes of the records; seq = LSN of the batch's first
//!            record - 1; crc32 covers len, count, seq and the records
//! record  := len u32 | bytes
//! ```
//!
//! A batch is the unit of a write and of an `fdatasync`, so it is the unit
//! of validity.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};
use vitrine_core::codec::{self, Put, Reader};

use crate::storage::fs::sync_dir;

/// The segment size at which the writer starts a new segment, by default.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// The first eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"VTRNWALS";
/// The segment format version this build writes and reads.
pub const VERSION: u32 = 1;
/// The length of a segment's header.
pub const SEGMENT_HEADER_LEN: usize = 40;
/// The file name suffix of segments.
pub const SEGMENT_SUFFIX: &str = ".wal";
/// The lock file in the log's directory.
pub const LOCK_FILE: &str = "wal.lock";
/// The most bytes one append (all its records, with their lengths) may take.
pub const MAX_APPEND_BYTES: usize = 4 << 20;
const BATCH_MAGIC: [u8; 8] = *b"VTRNBTCH";
const BATCH_HEADER_LEN: usize = 28;
/// The largest batch accepted on replay. The writer never makes larger ones:
/// appenders wait while [`MAX_QUEUED_BYTES`] are queued and one append takes
/// at most [`MAX_APPEND_BYTES`], so a batch stays below 12 MiB.
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Appenders wait for room when this much is queued.
const MAX_QUEUED_BYTES: usize = 8 << 20;
/// The digits of a segment's name.
const NAME_DIGITS: usize = 20;

/// Called once, from the writer thread, when a write or sync fails and the
/// log fails closed; gets the log's name and the error (the server turns it
/// into NOT_SERVING, hardening #11).
pub type FailureHook = Arc<dyn Fn(&'static str, &str) + Send + Sync>;

/// How to open a log.
#[derive(Clone)]
pub struct Options {
    /// What the log holds, for log messages; also the writer thread's name (keep it under 16 bytes).
    pub name: &'static str,
    /// The record format, in every segment's header: a log of another kind is refused.
    pub kind: [u8; 4],
    /// The writer starts a new segment before a batch that would make the current one larger.
    pub segment_bytes: u64,
    /// The LSN the caller's snapshot covers: replay skips records up to it (0 = none).
    pub start_after: u64,
    /// Told when the log fails closed.
    pub on_failure: Option<FailureHook>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("name", &self.name)
            .field("kind", &kind_text(&self.kind))
            .field("segment_bytes", &self.segment_bytes)
            .field("start_after", &self.start_after)
            .field("on_failure", &self.on_failure.is_some())
            .finish()
    }
}

impl Options {
    /// Options for a log of `kind`, with [`DEFAULT_SEGMENT_BYTES`] and replay from the start.
    pub fn new(name: &'static str, kind: [u8; 4]) -> Options {
        Options {
            name,
            kind,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            start_after: 0,
            on_failure: None,
        }
    }
}

/// Why a log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Reading, writing or locking a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Another log (this process or another) has the directory open.
    #[error("{path}: the log is in use by another process")]
    Locked {
        /// The log's directory.
        path: PathBuf,
    },
    /// A segment file that does not start like one.
    #[error("{path}: not a write-ahead log segment")]
    NotALog {
        /// The segment file.
        path: PathBuf,
    },
    /// Written by another version of the format.
    #[error("{path}: log segment version {found} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion {
        /// The segment file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
    },
    /// A log of other records (claims where events are expected, say).
    #[error("{path}: a log of `{}` records, not `{}`", kind_text(found), kind_text(expected))]
    WrongKind {
        /// The segment file.
        path: PathBuf,
        /// The kind in its header.
        found: [u8; 4],
        /// The kind this log holds.
        expected: [u8; 4],
    },
    /// A damaged batch with acknowledged records after it.
    #[error(
        "{path}: damaged batch at byte {offset} followed by {}; \
         refusing to drop acknowledged records (restore the file or move it aside)",
        followed_by(*next)
    )]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Where the damaged batch starts.
        offset: u64,
        /// Where the next valid batch of the same file starts; `None`: the next segment follows.
        next: Option<u64>,
    },
    /// A header or batch whose checksum holds (or a header that is not
    /// checksummed yet) but whose content breaks the format.
    #[error("{path}: malformed at byte {offset}: {what}")]
    Malformed {
        /// The segment file.
        path: PathBuf,
        /// Where the header (0) or batch starts.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// A record the replay callback refused.
    #[error("{path}: record {lsn} in the batch at byte {offset}: {what}")]
    BadRecord {
        /// The segment file.
        path: PathBuf,
        /// Where its batch starts.
        offset: u64,
        /// The record's LSN.
        lsn: u64,
        /// The callback's reason.
        what: &'static str,
    },
    /// A segment does not continue the one before it.
    #[error("{path}: records {from} to {to} before this segment are missing (a segment was deleted or moved?)")]
    MissingRecords {
        /// The segment after the hole.
        path: PathBuf,
        /// The first missing LSN.
        from: u64,
        /// The last missing LSN.
        to: u64,
    },
    /// Replay needs records the log does not have (compacted away, or
    /// skipped by a restart after a newer snapshot).
    #[error(
        "replay needs records from {needed_from} on, but the log continues only at {first_available} \
         (compacted away, or lost: restore them or rebuild from an older source)"
    )]
    Gap {
        /// The first record replay needs.
        needed_from: u64,
        /// The record the log has after the hole.
        first_available: u64,
    },
}

fn kind_text(kind: &[u8; 4]) -> String {
    String::from_utf8_lossy(kind).into_owned()
}

fn followed_by(next: Option<u64>) -> String {
    match next {
        Some(at) => format!("a valid batch at byte {at}"),
        None => "another segment".into(),
    }
}

/// Why an append or a wait failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalError {
    /// A write or sync failed: the record is not durable, and the log
    /// accepts nothing more until it is reopened.
    #[error("log write failed (the log fails closed until reopened): {0}")]
    Failed(Arc<str>),
    /// One append larger than [`MAX_APPEND_BYTES`].
    #[error("an append of {bytes} bytes is larger than the log's limit of {MAX_APPEND_BYTES}")]
    TooLarge {
        /// The append's size with its record lengths.
        bytes: usize,
    },
    /// A wait for an LSN that no append has returned yet.
    #[error("record {lsn} was never appended to the log")]
    NotAppended {
        /// The LSN.
        lsn: u64,
    },
}

/// What opening the log found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segment files in the log after open.
    pub segments: usize,
    /// Segments read whole (the others hold only records `start_after` covers).
    pub segments_read: usize,
    /// Batches read and verified.
    pub batches: u64,
    /// Records passed to the callback: those after `start_after`.
    pub records: u64,
    /// The first LSN the log holds (the next one if it holds none).
    pub first_lsn: u64,
    /// Where the log ended on disk: the LSN of its last record, or the one
    /// before its last segment's first.
    pub last_lsn: u64,
    /// Bytes cut off the end: a batch whose write a crash interrupted.
    pub truncated_bytes: u64,
    /// Records that batch announced, when its header was legible.
    pub dropped_records: Option<u32>,
    /// Set when the log ended before `start_after`: the LSN of the new segment's first record.
    pub restarted_at: Option<u64>,
}

/// Counters of the log since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Batches written, each with one `fdatasync`.
    pub batches: u64,
    /// Records written.
    pub records: u64,
    /// Batch bytes written (segment headers not counted).
    pub bytes: u64,
    /// Segment files in the log now.
    pub segments: u64,
}

/// What [`Wal::compact`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Segment files deleted.
    pub segments_removed: usize,
    /// Their bytes.
    pub bytes_removed: u64,
    /// The first LSN the log holds now.
    pub first_lsn: u64,
}

// ------------------------------------------------------------------ format

/// The file name of the segment whose first record is `first_lsn`.
pub fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:0NAME_DIGITS$}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A segment's header bytes.
pub(super) fn segment_header(kind: [u8; 4], first_lsn: u64, prev_lsn: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = Vec::with_capacity(SEGMENT_HEADER_LEN);
    h.put_bytes(&SEGMENT_MAGIC);
    h.put_u32(VERSION);
    h.put_bytes(&kind);
    h.put_u64(first_lsn);
    h.put_u64(prev_lsn);
    h.put_u32(0);
    h.put_u32(crc32fast::hash(&h[8..36]));
    let mut out = [0; SEGMENT_HEADER_LEN];
    out.copy_from_slice(&h);
    out
}

/// A segment header's fields after the magic.
struct HeaderFields {
    version: u32,
    kind: [u8; 4],
    first_lsn: u64,
    prev_lsn: u64,
    reserved: u32,
    crc: u32,
}

impl HeaderFields {
    fn read(header: &[u8]) -> codec::Result<HeaderFields> {
        let mut r = Reader::new(header);
        r.bytes(SEGMENT_MAGIC.len())?;
        Ok(HeaderFields {
            version: r.u32()?,
            kind: r.array()?,
            first_lsn: r.u64()?,
            prev_lsn: r.u64()?,
            reserved: r.u32()?,
            crc: r.u32()?,
        })
    }
}

/// A segment as its header describes it.
#[derive(Debug, Clone)]
struct Segment {
    first: u64,
    prev: u64,
    path: PathBuf,
}

/// Checks the header of the segment at `path`, named for `first`.
fn check_header(bytes: &[u8], path: &Path, kind: [u8; 4], first: u64) -> Result<Segment, OpenError> {
    let malformed = |what| OpenError::Malformed {
        path: path.to_owned(),
        offset: 0,
        what,
    };
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(if bytes.starts_with(&SEGMENT_MAGIC) {
            malformed("segment shorter than its header")
        } else {
            OpenError::NotALog { path: path.to_owned() }
        });
    }
    if bytes[..8] != SEGMENT_MAGIC {
        return Err(OpenError::NotALog { path: path.to_owned() });
    }
    let fields = HeaderFields::read(bytes).map_err(|e| malformed(e.what))?;
    let version = fields.version;
    if version != VERSION {
        return Err(OpenError::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
        });
    }
    if crc32fast::hash(&bytes[8..36]) != fields.crc {
        return Err(malformed("segment header checksum mismatch"));
    }
    let found = fields.kind;
    if found != kind {
        return Err(OpenError::WrongKind {
            path: path.to_owned(),
            found,
            expected: kind,
        });
    }
    let (first_lsn, prev) = (fields.first_lsn, fields.prev_lsn);
    if first_lsn != first {
        return Err(malformed(
            "the segment's first LSN does not match its file name (renamed?)",
        ));
    }
    if prev >= first || fields.reserved != 0 {
        return Err(malformed("invalid segment header"));
    }
    Ok(Segment {
        first,
        prev,
        path: path.to_owned(),
    })
}

/// Whether the last segment's `bytes` are what a crash can leave of its
/// creation: shorter than the header and agreeing with it as far as known,
/// or nothing but zeros (a filesystem that grew the file before its data
/// reached the disk).
fn interrupted_creation(bytes: &[u8], kind: [u8; 4], first: u64) -> bool {
    if bytes.len() > SEGMENT_HEADER_LEN {
        return false;
    }
    if bytes.iter().all(|&b| b == 0) {
        return true;
    }
    // prev_lsn and the checksum are unknown here: compare up to first_lsn.
    let known = &segment_header(kind, first, 0)[..24];
    bytes.len() < SEGMENT_HEADER_LEN && bytes.iter().zip(known).all(|(a, b)| a == b)
}

/// Frames `records` (`count` of them, each `len u32 | bytes`) as one batch into `out`.
fn frame_batch(out: &mut Vec<u8>, records: &[u8], count: u32, seq: u64) {
    out.put_bytes(&BATCH_MAGIC);
    out.put_u32(records.len() as u32);
    out.put_u32(count);
    out.put_u64(seq);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[out.len() - 16..]);
    crc.update(records);
    out.put_u32(crc.finalize());
    out.put_bytes(records);
}

/// A batch header's fields after the magic: records' length, count, seq, crc.
fn batch_fields(header: &[u8]) -> codec::Result<(u32, u32, u64, u32)> {
    let mut r = Reader::new(header);
    r.bytes(BATCH_MAGIC.len())?;
    Ok((r.u32()?, r.u32()?, r.u64()?, r.u32()?))
}

/// A batch that checks out.
struct Batch<'a> {
    count: u32,
    seq: u64,
    records: &'a [u8],
}

/// The valid batch at `pos`, if there is one.
fn batch_at(data: &[u8], pos: usize) -> Option<Batch<'_>> {
    let header = data.get(pos..pos.checked_add(BATCH_HEADER_LEN)?)?;
    if header[..8] != BATCH_MAGIC {
        return None;
    }
    let (len, count, seq, stored_crc) = batch_fields(header).ok()?;
    let len = len as usize;
    if len > MAX_BATCH_BYTES || count == 0 || count as usize > len / 4 {
        return None;
    }
    let records = data.get(pos + BATCH_HEADER_LEN..pos + BATCH_HEADER_LEN + len)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[8..24]);
    crc.update(records);
    if crc.finalize() != stored_crc {
        return None;
    }
    Some(Batch { count, seq, records })
}

/// The first valid batch starting at or after `from` that could follow a
/// damaged batch holding record `seq + 1` onwards: its own records come
/// later. (Checking the sequence keeps a batch-shaped record inside a torn
/// batch from passing for one; a forger who knows the record count could
/// still make such a record, and would make open refuse, not lose records.)
fn next_valid_batch(data: &[u8], from: usize, seq: u64) -> Option<usize> {
    let mut at = from;
    while at + BATCH_HEADER_LEN <= data.len() {
        let found = data[at..].windows(BATCH_MAGIC.len()).position(|w| w == BATCH_MAGIC)?;
        at += found;
        if batch_at(data, at).is_some_and(|b| b.seq > seq) {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// How one segment's replay ended.
struct SegmentEnd {
    /// Where its valid batches end.
    valid_len: usize,
    /// The LSN of its last record (first - 1 if it has none).
    last_lsn: u64,
}

/// Replays the batches of one segment (`data` is the whole file), calling
/// `apply` for each record after `after`. A torn final batch is tolerated
/// (and reported) only in the log's last segment.
fn replay_segment(
    data: &[u8],
    seg: &Segment,
    after: u64,
    last: bool,
    apply: &mut impl FnMut(u64, &[u8]) -> Result<(), &'static str>,
    recovery: &mut Recovery,
) -> Result<SegmentEnd, OpenError> {
    let mut pos = SEGMENT_HEADER_LEN;
    let mut seq = seg.first - 1;
    while pos < data.len() {
        let Some(batch) = batch_at(data, pos) else {
            let next = next_valid_batch(data, pos + 1, seq);
            if next.is_some() || !last {
                return Err(OpenError::Corrupt {
                    path: seg.path.clone(),
                    offset: pos as u64,
                    next: next.map(|n| n as u64),
                });
            }
            recovery.truncated_bytes = (data.len() - pos) as u64;
            recovery.dropped_records = data
                .get(pos..pos + 16)
                .filter(|h| h[..8] == BATCH_MAGIC)
                .and_then(|h| {
                    let mut r = Reader::new(h);
                    r.bytes(12).and_then(|_| r.u32()).ok()
                })
                .filter(|&n| n > 0);
            break;
        };
        let malformed = |what| OpenError::Malformed {
            path: seg.path.clone(),
            offset: pos as u64,
            what,
        };
        if batch.seq != seq {
            return Err(malformed("batch out of sequence (a copy from another log?)"));
        }
        let mut records = Reader::new(batch.records);
        for _ in 0..batch.count {
            let Ok(len) = records.u32() else {
                return Err(malformed("batch length does not match its records"));
            };
            let Ok(record) = records.bytes(len as usize) else {
                return Err(malformed("record runs past its batch"));
            };
            seq += 1;
            if seq > after {
                apply(seq, record).map_err(|what| OpenError::BadRecord {
                    path: seg.path.clone(),
                    offset: pos as u64,
                    lsn: seq,
                    what,
                })?;
                recovery.records += 1;
            }
        }
        if !records.is_empty() {
            return Err(malformed("batch length does not match its records"));
        }
        recovery.batches += 1;
        pos += BATCH_HEADER_LEN + batch.records.len();
    }
    Ok(SegmentEnd {
        valid_len: pos,
        last_lsn: seq,
    })
}

/// Creates the segment starting at `first` (which follows record `prev`):
/// header written and synced, directory synced. On failure, removes what it
/// made (best effort: a leftover partial file is recognized on open).
fn create_segment(
    dir: &Path,
    kind: [u8; 4],
    first: u64,
    prev: u64,
    failpoints: &Failpoints,
) -> io::Result<(File, PathBuf)> {
    let path = dir.join(segment_name(first));
    let mut file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    let header = segment_header(kind, first, prev);
    let written = (|| {
        if failpoints.fail_rolls.load(std::sync::atomic::Ordering::Relaxed) {
            file.write_all(&header[..SEGMENT_HEADER_LEN / 2])?;
            return Err(io::Error::other("injected segment creation failure"));
        }
        file.write_all(&header)?;
        file.sync_all()?;
        sync_dir(dir)
    })();
    match written {
        Ok(()) => Ok((file, path)),
        Err(e) => {
            drop(file);
            let _ = fs::remove_file(&path).and_then(|()| sync_dir(dir));
            Err(e)
        }
    }
}

// ------------------------------------------------------------ group commit

/// Records queued for the writer and what became of them.
#[derive(Debug, Default)]
struct Queue {
    /// Framed records the writer has not taken yet.
    pending: Vec<u8>,
    pending_records: u32,
    /// The LSN the next queued record gets.
    next_lsn: u64,
    /// Every record up to this one is on disk.
    durable_lsn: u64,
    /// Set by the first I/O error: records from this one on failed, and
    /// nothing more is accepted.
    failed: Option<(u64, Arc<str>)>,
    closing: bool,
    stats: Stats,
}

/// What the appenders, the writer and compaction share.
#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// The writer waits here for records.
    work: Condvar,
    /// Appenders wait here for their batch (and for room in the queue).
    done: Condvar,
    /// First LSNs of the segments, oldest first; the last is the writer's.
    segments: Mutex<VecDeque<u64>>,
    dir: PathBuf,
    failpoints: Arc<Failpoints>,
    on_failure: OnFailure,
}

/// [`Options::on_failure`], kept by the writer.
struct OnFailure(Option<FailureHook>);

impl std::fmt::Debug for OnFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

/// Failpoints of the writer: switches that make its next write fail as a
/// full disk would, for fault-injection tests of everything above the log
/// (the same code path as a real failure; one relaxed load per batch).
#[derive(Debug, Default)]
pub struct Failpoints {
    /// Fail batch writes after writing half of the batch.
    pub fail_writes: std::sync::atomic::AtomicBool,
    /// Fail segment creation after writing half of the header.
    pub fail_rolls: std::sync::atomic::AtomicBool,
}

/// Takes the appended bytes back out of the queue unless committed, so that
/// a panicking encoder cannot leave a half-framed record for the writer.
struct Rollback<'a> {
    pending: &'a mut Vec<u8>,
    start: usize,
    committed: bool,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.pending.truncate(self.start);
        }
    }
}

/// The writer thread's side: the current segment and where it stands.
struct Writer {
    shared: Arc<Shared>,
    name: &'static str,
    kind: [u8; 4],
    segment_bytes: u64,
    file: File,
    /// Bytes of the current segment that are durable.
    len: u64,
    /// The LSN of the last durable record.
    last_lsn: u64,
}

impl Writer {
    fn run(mut self) {
        let mut taken = Vec::new();
        let mut batch = Vec::new();
        loop {
            let (last, count) = {
                let mut q = self.shared.queue.lock();
                while q.pending.is_empty() && !q.closing {
                    self.shared.work.wait(&mut q);
                }
                if q.pending.is_empty() {
                    return;
                }
                std::mem::swap(&mut q.pending, &mut taken);
                let count = std::mem::take(&mut q.pending_records);
                // Room again for appenders waiting on a full queue.
                self.shared.done.notify_all();
                (q.next_lsn - 1, count)
            };
            debug_assert_eq!(last, self.last_lsn + u64::from(count));
            batch.clear();
            frame_batch(&mut batch, &taken, count, self.last_lsn);
            taken.clear();
            let written = self.write(&batch);
            let mut q = self.shared.queue.lock();
            match written {
                Ok(()) => {
                    self.len += batch.len() as u64;
                    self.last_lsn = last;
                    q.durable_lsn = last;
                    q.stats.batches += 1;
                    q.stats.records += u64::from(count);
                    q.stats.bytes += batch.len() as u64;
                    self.shared.done.notify_all();
                }
                Err(e) => {
                    // Best effort: cut the failed batch off, so that a
                    // restart does not replay records answered with an error.
                    let _ = self.file.set_len(self.len).and_then(|()| self.file.sync_all());
                    tracing::error!(log = self.name, error = %e, "log write failed; appends fail until restart");
                    q.failed = Some((q.durable_lsn + 1, e.to_string().into()));
                    q.pending.clear();
                    q.pending_records = 0;
                    self.shared.done.notify_all();
                    drop(q);
                    if let Some(hook) = &self.shared.on_failure.0 {
                        hook(self.name, &e.to_string());
                    }
                    return;
                }
            }
        }
    }

    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        let has_batches = self.len > SEGMENT_HEADER_LEN as u64;
        if has_batches && self.len + batch.len() as u64 > self.segment_bytes {
            self.roll()?;
        }
        if self
            .shared
            .failpoints
            .fail_writes
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let _ = self.file.write_all(&batch[..batch.len() / 2]);
            return Err(io::Error::other("injected write failure"));
        }
        self.file.write_all(batch)?;
        self.file.sync_data()
    }

    /// Starts a new segment after the last durable record.
    fn roll(&mut self) -> io::Result<()> {
        let first = self.last_lsn + 1;
        let (file, _) = create_segment(
            &self.shared.dir,
            self.kind,
            first,
            self.last_lsn,
            &self.shared.failpoints,
        )?;
        self.shared.segments.lock().push_back(first);
        self.file = file;
        self.len = SEGMENT_HEADER_LEN as u64;
        Ok(())
    }
}

/// Marks the log failed if the writer thread ends without a clean close
/// (a panic), so that no appender waits forever.
struct WriterGuard(Arc<Shared>);

impl Drop for WriterGuard {
    fn drop(&mut self) {
        let mut q = self.0.queue.lock();
        if q.failed.is_none() && !(q.closing && q.pending.is_empty()) {
            q.failed = Some((q.durable_lsn + 1, "the log writer stopped".into()));
        }
        self.0.done.notify_all();
    }
}

// --------------------------------------------------------------------- log

/// A write-ahead log in a directory (see the module docs).
pub struct Wal {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    name: &'static str,
    /// Held for the log's lifetime: the directory's lock.
    _lock: File,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("name", &self.name)
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OpenError {
    let path = path.to_owned();
    move |source| OpenError::Io { path, source }
}

/// The segment files in `dir`, by first LSN.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, OpenError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
            segments.push((first, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(first, _)| *first);
    Ok(segments)
}

fn read_prefix(path: &Path, n: usize) -> Result<Vec<u8>, OpenError> {
    let mut bytes = Vec::with_capacity(n);
    File::open(path)
        .and_then(|f| f.take(n as u64).read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    Ok(bytes)
}

impl Wal {
    /// Opens (or creates) the log in `dir`, replays it (calling `apply` for
    /// every record after `options.start_after`, in LSN order) and starts the
    /// writer. See the module docs for what is repaired and what refused; an
    /// error from `apply` stops the open with [`OpenError::BadRecord`].
    pub fn open(
        dir: &Path,
        options: Options,
        mut apply: impl FnMut(u64, &[u8]) -> Result<(), &'static str>,
    ) -> Result<(Wal, Recovery), OpenError> {
        let Options {
            name,
            kind,
            segment_bytes,
            start_after: after,
            on_failure,
        } = options;
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(OpenError::Locked { path: dir.to_owned() }),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }

        let mut found = list_segments(dir)?;
        if let Some((first, path)) = found.last() {
            let bytes = read_prefix(path, SEGMENT_HEADER_LEN + 1)?;
            if interrupted_creation(&bytes, kind, *first) {
                tracing::warn!(log = name, path = %path.display(), "removing a segment whose creation a crash interrupted");
                fs::remove_file(path).map_err(io_err(path))?;
                sync_dir(dir).map_err(io_err(dir))?;
                found.pop();
            }
        }
        let mut segments = Vec::with_capacity(found.len());
        for (first, path) in &found {
            let bytes = read_prefix(path, SEGMENT_HEADER_LEN)?;
            let segment = check_header(&bytes, path, kind, *first)?;
            if let Some(before) = segments.last().map(|s: &Segment| s.first) {
                if segment.prev + 1 < before {
                    return Err(OpenError::Malformed {
                        path: path.clone(),
                        offset: 0,
                        what: "the segment overlaps the one before it",
                    });
                }
            }
            segments.push(segment);
        }
        // Records replay needs but the log does not have, found from the
        // headers alone, before anything is applied.
        if let Some(first) = segments.first().map(|s| s.first) {
            if first > after + 1 {
                return Err(OpenError::Gap {
                    needed_from: after + 1,
                    first_available: first,
                });
            }
        }
        for s in segments.iter().skip(1) {
            if s.prev + 1 < s.first && after + 1 < s.first {
                return Err(OpenError::Gap {
                    needed_from: after.max(s.prev) + 1,
                    first_available: s.first,
                });
            }
        }

        let mut recovery = Recovery::default();
        let mut previous_end: Option<u64> = None;
        let mut tail: Option<(File, u64, u64)> = None;
        let mut data = Vec::new();
        for (i, seg) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            if !last && segments[i + 1].first <= after + 1 {
                // Only covered records: the header was checked, that is enough.
                previous_end = None;
                continue;
            }
            if let Some(end) = previous_end {
                if seg.prev > end {
                    return Err(OpenError::MissingRecords {
                        path: seg.path.clone(),
                        from: end + 1,
                        to: seg.prev,
                    });
                }
                if seg.prev < end {
                    return Err(OpenError::Malformed {
                        path: seg.path.clone(),
                        offset: 0,
                        what: "the segment overlaps the one before it",
                    });
                }
            }
            let mut file = OpenOptions::new()
                .read(true)
                .write(last)
                .open(&seg.path)
                .map_err(io_err(&seg.path))?;
            data.clear();
            file.read_to_end(&mut data).map_err(io_err(&seg.path))?;
            let end = replay_segment(&data, seg, after, last, &mut apply, &mut recovery)?;
            recovery.segments_read += 1;
            previous_end = Some(end.last_lsn);
            if last {
                if end.valid_len < data.len() {
                    file.set_len(end.valid_len as u64).map_err(io_err(&seg.path))?;
                    file.sync_all().map_err(io_err(&seg.path))?;
                    tracing::warn!(
                        log = name,
                        path = %seg.path.display(),
                        bytes = recovery.truncated_bytes,
                        records = recovery.dropped_records,
                        "cut off a batch whose write a crash interrupted"
                    );
                }
                file.seek(SeekFrom::Start(end.valid_len as u64))
                    .map_err(io_err(&seg.path))?;
                tail = Some((file, end.valid_len as u64, end.last_lsn));
            }
        }
        drop(data);

        let mut firsts: VecDeque<u64> = segments.iter().map(|s| s.first).collect();
        let last_lsn = tail.as_ref().map_or(0, |t| t.2);
        recovery.last_lsn = last_lsn;
        let (file, len, durable) = match tail {
            Some(tail) if last_lsn >= after => tail,
            _ => {
                // A new log, or one that ends before the snapshot: continue
                // after the snapshot, never reusing its LSNs.
                let first = after + 1;
                let (file, _) = create_segment(dir, kind, first, last_lsn, &Failpoints::default())
                    .map_err(io_err(&dir.join(segment_name(first))))?;
                if last_lsn < after {
                    tracing::warn!(
                        log = name,
                        last_lsn,
                        start_after = after,
                        "the log ends before the snapshot; continuing in a new segment after it"
                    );
                    recovery.restarted_at = Some(first);
                }
                firsts.push_back(first);
                (file, SEGMENT_HEADER_LEN as u64, after)
            }
        };
        recovery.segments = firsts.len();
        recovery.first_lsn = firsts.front().copied().unwrap_or(after + 1);

        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                next_lsn: durable + 1,
                durable_lsn: durable,
                ..Queue::default()
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            segments: Mutex::new(firsts),
            dir: dir.to_owned(),
            failpoints: Arc::default(),
            on_failure: OnFailure(on_failure),
        });
        let writer = Writer {
            shared: shared.clone(),
            name,
            kind,
            segment_bytes,
            file,
            len,
            last_lsn: durable,
        };
        let guard = WriterGuard(shared.clone());
        let writer = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _guard = guard;
                writer.run();
            })
            .map_err(io_err(dir))?;
        let wal = Wal {
            shared,
            writer: Some(writer),
            name,
            _lock: lock,
        };
        Ok((wal, recovery))
    }

    /// Queues one record of `len` bytes, written by `encode`; returns its
    /// LSN without waiting (see [`Wal::wait`]). `len` is used to wait for
    /// room in the queue; the record's frame takes what `encode` wrote.
    /// `encode` runs under the queue's lock: keep it short.
    pub fn append(&self, len: usize, encode: impl FnOnce(&mut Vec<u8>)) -> Result<u64, WalError> {
        let mut encode = Some(encode);
        self.append_many(
            std::slice::from_ref(&()),
            |_| len,
            |_, out| {
                if let Some(encode) = encode.take() {
                    encode(out);
                }
            },
        )
    }

    /// Queues one record per item, consecutive and in order, each of
    /// `len(item)` bytes written by `encode`; returns the last one's LSN (0
    /// for no items). The records go into one batch: they become durable
    /// together. `encode` runs under the queue's lock: keep it short.
    pub fn append_many<T>(
        &self,
        items: &[T],
        len: impl Fn(&T) -> usize,
        mut encode: impl FnMut(&T, &mut Vec<u8>),
    ) -> Result<u64, WalError> {
        if items.is_empty() {
            return Ok(0);
        }
        let bytes: usize = items.iter().map(|item| 4 + len(item)).sum();
        if bytes > MAX_APPEND_BYTES {
            return Err(WalError::TooLarge { bytes });
        }
        let mut guard = self.shared.queue.lock();
        loop {
            if let Some((_, why)) = &guard.failed {
                return Err(WalError::Failed(why.clone()));
            }
            if guard.pending.is_empty() || guard.pending.len() + bytes <= MAX_QUEUED_BYTES {
                break;
            }
            self.shared.done.wait(&mut guard);
        }
        let q = &mut *guard;
        let start = q.pending.len();
        let mut rollback = Rollback {
            pending: &mut q.pending,
            start,
            committed: false,
        };
        for item in items {
            let pending = &mut *rollback.pending;
            let at = pending.len();
            pending.extend_from_slice(&[0; 4]);
            encode(item, pending);
            // Checked again: the frame takes what was written, not `len`.
            if pending.len() - start > MAX_APPEND_BYTES {
                return Err(WalError::TooLarge {
                    bytes: pending.len() - start,
                });
            }
            let n = (pending.len() - at - 4) as u32;
            pending[at..at + 4].copy_from_slice(&n.to_le_bytes());
        }
        rollback.committed = true;
        drop(rollback);
        let count = items.len() as u64;
        q.pending_records += count as u32;
        q.next_lsn += count;
        let last = q.next_lsn - 1;
        drop(guard);
        self.shared.work.notify_one();
        Ok(last)
    }

    /// Waits until record `lsn` (and every one before it) is on disk; fails
    /// if its write failed. Returns at once for LSNs already durable.
    pub fn wait(&self, lsn: u64) -> Result<(), WalError> {
        let mut q = self.shared.queue.lock();
        if lsn >= q.next_lsn {
            return Err(WalError::NotAppended { lsn });
        }
        loop {
            match &q.failed {
                Some((from, why)) if lsn >= *from => return Err(WalError::Failed(why.clone())),
                _ if q.durable_lsn >= lsn => return Ok(()),
                _ => self.shared.done.wait(&mut q),
            }
        }
    }

    /// The LSN of the last record appended (durable or still queued).
    pub fn appended_lsn(&self) -> u64 {
        self.shared.queue.lock().next_lsn - 1
    }

    /// The LSN up to which every record is on disk.
    pub fn durable_lsn(&self) -> u64 {
        self.shared.queue.lock().durable_lsn
    }

    /// The first LSN the log holds (the next one to be appended if it holds none).
    pub fn first_lsn(&self) -> u64 {
        self.shared.segments.lock().front().copied().unwrap_or(1)
    }

    /// Deletes, oldest first, the segments all of whose records have an LSN
    /// of at most `upto_lsn` (the LSN a durable snapshot covers); never the
    /// current segment. The directory is synced after each deletion, so a
    /// crash leaves the oldest segments deleted, never a hole.
    pub fn compact(&self, upto_lsn: u64) -> io::Result<CompactReport> {
        let mut segments = self.shared.segments.lock();
        let mut report = CompactReport::default();
        while segments.len() > 1 && segments[1] - 1 <= upto_lsn {
            let path = self.shared.dir.join(segment_name(segments[0]));
            let bytes = fs::metadata(&path)?.len();
            fs::remove_file(&path)?;
            segments.pop_front();
            sync_dir(&self.shared.dir)?;
            report.segments_removed += 1;
            report.bytes_removed += bytes;
        }
        report.first_lsn = segments.front().copied().unwrap_or(1);
        if report.segments_removed > 0 {
            tracing::info!(
                log = self.name,
                segments = report.segments_removed,
                bytes = report.bytes_removed,
                first_lsn = report.first_lsn,
                "compacted the log"
            );
        }
        Ok(report)
    }

    /// Batches, records and bytes written since open; segments now.
    pub fn stats(&self) -> Stats {
        let segments = self.shared.segments.lock().len() as u64;
        Stats {
            segments,
            ..self.shared.queue.lock().stats
        }
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The writer's failpoints (see [`Failpoints`]).
    pub fn failpoints(&self) -> Arc<Failpoints> {
        self.shared.failpoints.clone()
    }
}

impl Drop for Wal {
    /// A clean close: the writer writes what is queued, then stops.
    fn drop(&mut self) {
        self.shared.queue.lock().closing = true;
        self.shared.work.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// A batch frame holding `records` (each framed `len u32 | bytes`) after record `seq`, as the writer makes it.
#[cfg(test)]
pub(crate) fn test_batch(records: &[&[u8]], seq: u64) -> Vec<u8> {
    let mut framed = Vec::new();
    for r in records {
        framed.extend_from_slice(&(r.len() as u32).to_le_bytes());
        framed.extend_from_slice(r);
    }
    let mut out = Vec::new();
    frame_batch(&mut out, &framed, records.len() as u32, seq);
    out
}

#[cfg(test)]
mod tests;
