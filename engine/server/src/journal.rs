//! Durable claims: a [`ClaimLedger`] whose every grant, and every answer
//! recorded for a `claim_id`, is on disk before `claim()` returns.
//!
//! # How a claim becomes durable
//!
//! 1. Under the (shop, benefit) lock: a known `claim_id` gets its first
//!    answer; otherwise the shared cap and budget rules ([`Grants::check`])
//!    decide, a grant is *reserved* (counted, so concurrent claims see it)
//!    and the record is queued for the journal. Deciding, reserving and
//!    queueing under one lock is what makes N simultaneous claims against a
//!    budget of B grant exactly min(N, B), and it puts the records of one
//!    benefit in the journal in the order its state changed.
//! 2. The lock is released and the claimer waits until its record is on
//!    disk. One writer thread does **group commit**: it takes everything
//!    queued, writes it as one batch with one `write` and one `fdatasync`,
//!    then wakes the claimers of that batch. Under concurrency, a batch holds
//!    every claim that arrived during the previous `fdatasync`.
//! 3. Only then does `claim()` answer. If the write or the sync fails, the
//!    reservation is undone and the claim gets a [`LedgerError`]: never a
//!    grant that is not on disk. A retry that finds its `claim_id` answered
//!    by a claim still in flight waits for that record the same way.
//!
//! After an I/O error the journal **fails closed**: every later claim that
//! would write gets a [`LedgerError`] until the process reopens the journal
//! (after `fsync` fails, what reached the disk is unknown). The writer then
//! tries to cut the failed batch off the file, so that a restart does not
//! count claims that were answered with an error; if that fails too, a
//! restart counts them (budgets may be under-used, never over-used).
//!
//! Denials without a `claim_id` write nothing. A denial caused by a grant
//! still in flight stands even if that grant then fails (a conservative
//! answer; the ledger never over-grants).
//!
//! # File format
//!
//! `claims.journal` in the data directory; integers little-endian.
//!
//! ```text
//! file    := "VTRNCLMJ" | version u32 (1) | reserved u32 (0)      16 bytes
//!            batch*
//! batch   := "VTRNBTCH" | len u32 | count u32 | seq u64 | crc32 u32 | record{count}   (len bytes)
//!            crc32 covers len, count, seq and the records; seq is the number of
//!            records before the batch in the file
//! record  := len u32 | outcome u8 | flags u8 (1 = has claim_id) | now_ms i64
//!            | shop s16 | benefit s16 | visitor s16 | [claim_id s16]
//! s16     := u16 length | UTF-8 bytes
//! ```
//!
//! A batch is the unit of a write and of an `fdatasync`, so it is the unit
//! of validity: a batch whose checksum fails at the end of the file is a
//! write the crash interrupted (none of its claims was answered) and is cut
//! off on open, however its pages reached the disk. A damaged batch
//! *followed by a valid one* means acknowledged claims would be lost: open
//! refuses with [`JournalError::Corrupt`] instead of skipping it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use ahash::RandomState;
use dashmap::DashMap;
use parking_lot::{Condvar, Mutex};
use vitrine_core::claims::Usage;
use vitrine_core::{ClaimLedger, ClaimOutcome, Grants, LedgerClaim, LedgerError};

/// The journal's file name in the data directory.
pub const FILE_NAME: &str = "claims.journal";
/// The first eight bytes of the journal file.
pub const FILE_MAGIC: [u8; 8] = *b"VTRNCLMJ";
/// The journal format version this build writes and reads.
pub const VERSION: u32 = 1;
const FILE_HEADER_LEN: usize = 16;
const BATCH_MAGIC: [u8; 8] = *b"VTRNBTCH";
const BATCH_HEADER_LEN: usize = 28;
/// The largest batch accepted on replay; the writer never makes larger ones.
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Claimers wait for room when this much is queued.
const MAX_QUEUED_BYTES: usize = 8 << 20;
/// A record's fixed part: len, outcome, flags, now_ms, three s16 lengths.
const MIN_RECORD_BYTES: usize = 4 + 1 + 1 + 8 + 3 * 2;

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading, writing or locking the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Another ledger (this process or another) has the journal open.
    #[error("{path}: the claims journal is in use by another process")]
    Locked {
        /// The journal file.
        path: PathBuf,
    },
    /// The file does not start like a claims journal.
    #[error("{path}: not a claims journal")]
    NotAJournal {
        /// The journal file.
        path: PathBuf,
    },
    /// Written by another version of the format.
    #[error("{path}: claims journal version {found} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion {
        /// The journal file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
    },
    /// A damaged batch with valid batches after it: acknowledged claims would be lost.
    #[error(
        "{path}: damaged batch at byte {offset} followed by a valid batch at byte {next}; \
         refusing to drop acknowledged claims (restore the file or move it aside)"
    )]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// Where the damaged batch starts.
        offset: u64,
        /// Where the next valid batch starts.
        next: u64,
    },
    /// A batch whose checksum holds but whose content breaks the format.
    #[error("{path}: malformed batch at byte {offset}: {what}")]
    Malformed {
        /// The journal file.
        path: PathBuf,
        /// Where the batch starts.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
}

/// What opening the journal found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Batches replayed.
    pub batches: u64,
    /// Records replayed.
    pub records: u64,
    /// Grants among them.
    pub grants: u64,
    /// Bytes cut off the end: a batch whose write a crash interrupted.
    pub truncated_bytes: u64,
    /// Records that batch announced, when its header was legible.
    pub dropped_records: Option<u32>,
}

/// Counters of the journal since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Batches written, each with one `fdatasync`.
    pub batches: u64,
    /// Records written.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
}

// ------------------------------------------------------------------ records

/// One journaled claim: a grant, or a denial recorded for its `claim_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record<'a> {
    outcome: ClaimOutcome,
    now_ms: i64,
    shop: &'a str,
    benefit: &'a str,
    visitor: &'a str,
    claim_id: Option<&'a str>,
}

/// Outcome codes on disk (fixed here, not by the enum's order).
const OUTCOMES: [(ClaimOutcome, u8); 6] = [
    (ClaimOutcome::Granted, 0),
    (ClaimOutcome::CapReached, 1),
    (ClaimOutcome::BudgetExhausted, 2),
    (ClaimOutcome::NotEligible, 3),
    (ClaimOutcome::HeldOut, 4),
    (ClaimOutcome::OutsideWindow, 5),
];

impl<'a> Record<'a> {
    fn encoded_len(&self) -> usize {
        MIN_RECORD_BYTES
            + self.shop.len()
            + self.benefit.len()
            + self.visitor.len()
            + self.claim_id.map_or(0, |id| 2 + id.len())
    }

    /// Refuses what the format cannot hold, before anything is reserved.
    fn check(&self) -> Result<(), LedgerError> {
        let fields = [Some(self.shop), Some(self.benefit), Some(self.visitor), self.claim_id];
        if fields.iter().flatten().any(|f| f.len() > usize::from(u16::MAX)) {
            return Err(LedgerError("a claim field is longer than 65535 bytes".into()));
        }
        Ok(())
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.encoded_len() as u32).to_le_bytes());
        let code = OUTCOMES.iter().find(|(o, _)| *o == self.outcome).map_or(0, |(_, c)| *c);
        out.push(code);
        out.push(u8::from(self.claim_id.is_some()));
        out.extend_from_slice(&self.now_ms.to_le_bytes());
        for field in [Some(self.shop), Some(self.benefit), Some(self.visitor), self.claim_id]
            .into_iter()
            .flatten()
        {
            out.extend_from_slice(&(field.len() as u16).to_le_bytes());
            out.extend_from_slice(field.as_bytes());
        }
    }

    /// Decodes the record at the start of `buf`; returns it and its length.
    fn decode(buf: &'a [u8]) -> Result<(Record<'a>, usize), &'static str> {
        let mut r = Cursor { buf, pos: 0 };
        let len = r.u32()? as usize;
        if len < MIN_RECORD_BYTES || len > buf.len() {
            return Err("record length out of range");
        }
        let mut r = Cursor {
            buf: &buf[..len],
            pos: 4,
        };
        let code = r.u8()?;
        let outcome = OUTCOMES
            .iter()
            .find(|(_, c)| *c == code)
            .map(|(o, _)| *o)
            .ok_or("unknown claim outcome")?;
        let flags = r.u8()?;
        if flags > 1 {
            return Err("unknown record flags");
        }
        let now_ms = i64::from_le_bytes(r.array()?);
        let (shop, benefit, visitor) = (r.str()?, r.str()?, r.str()?);
        let claim_id = if flags == 1 { Some(r.str()?) } else { None };
        if r.pos != len {
            return Err("record length does not match its fields");
        }
        if outcome != ClaimOutcome::Granted && claim_id.is_none() {
            return Err("a denial without a claim_id");
        }
        let record = Record {
            outcome,
            now_ms,
            shop,
            benefit,
            visitor,
            claim_id,
        };
        Ok((record, len))
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if n > self.buf.len() - self.pos {
            return Err("record runs past its length");
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn str(&mut self) -> Result<&'a str, &'static str> {
        let n = u16::from_le_bytes(self.array()?);
        std::str::from_utf8(self.take(usize::from(n))?).map_err(|_| "a field is not UTF-8")
    }
}

// ------------------------------------------------------------------ batches

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Frames `records` (`count` of them) as one batch into `out`.
fn frame_batch(out: &mut Vec<u8>, records: &[u8], count: u32, seq: u64) {
    out.extend_from_slice(&BATCH_MAGIC);
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[out.len() - 16..]);
    crc.update(records);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(records);
}

/// A batch that checks out.
struct Batch<'a> {
    count: u32,
    seq: u64,
    records: &'a [u8],
}

/// The valid batch at `pos`, if there is one.
fn batch_at(data: &[u8], pos: usize) -> Option<Batch<'_>> {
    let header = data.get(pos..pos + BATCH_HEADER_LEN)?;
    if header[..8] != BATCH_MAGIC {
        return None;
    }
    let len = u32_at(header, 8) as usize;
    let count = u32_at(header, 12);
    if len > MAX_BATCH_BYTES || count == 0 || count as usize > len / MIN_RECORD_BYTES {
        return None;
    }
    let records = data.get(pos + BATCH_HEADER_LEN..pos + BATCH_HEADER_LEN + len)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[8..24]);
    crc.update(records);
    if crc.finalize() != u32_at(header, 24) {
        return None;
    }
    let seq = u64::from(u32_at(header, 16)) | u64::from(u32_at(header, 20)) << 32;
    Some(Batch { count, seq, records })
}

/// The first valid batch starting after `from` that could follow a damaged
/// batch holding record `seq` onwards: its own first record comes later.
/// (Checking the sequence keeps a batch-shaped claim id inside a torn batch
/// from passing for one; a forger who knows the record count could still
/// make such an id, and would make open refuse, not lose claims.)
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

/// What replaying a journal's batches gives.
struct Replayed {
    /// Where the valid batches end (the file is cut there).
    end: usize,
    records: u64,
    recovery: Recovery,
}

/// Replays the batches of `data` (the file without its header; `base` is
/// the header's length), calling `apply` for every record in order.
fn replay<'a>(
    data: &'a [u8],
    base: usize,
    path: &Path,
    mut apply: impl FnMut(Record<'a>),
) -> Result<Replayed, JournalError> {
    let mut pos = 0;
    let mut recovery = Recovery::default();
    let mut seq = 0u64;
    while pos < data.len() {
        let Some(batch) = batch_at(data, pos) else {
            if let Some(next) = next_valid_batch(data, pos + 1, seq) {
                return Err(JournalError::Corrupt {
                    path: path.to_owned(),
                    offset: (base + pos) as u64,
                    next: (base + next) as u64,
                });
            }
            recovery.truncated_bytes = (data.len() - pos) as u64;
            recovery.dropped_records = data
                .get(pos..pos + 16)
                .filter(|h| h[..8] == BATCH_MAGIC)
                .map(|h| u32_at(h, 12))
                .filter(|&n| n > 0);
            break;
        };
        let malformed = |what| JournalError::Malformed {
            path: path.to_owned(),
            offset: (base + pos) as u64,
            what,
        };
        if batch.seq != seq {
            return Err(malformed("batch out of sequence (a copy from another journal?)"));
        }
        let mut at = 0;
        for _ in 0..batch.count {
            let (record, len) = Record::decode(&batch.records[at..]).map_err(malformed)?;
            recovery.grants += u64::from(record.outcome == ClaimOutcome::Granted);
            apply(record);
            at += len;
        }
        if at != batch.records.len() {
            return Err(malformed("batch length does not match its records"));
        }
        seq += u64::from(batch.count);
        recovery.batches += 1;
        pos += BATCH_HEADER_LEN + batch.records.len();
    }
    recovery.records = seq;
    Ok(Replayed {
        end: base + pos,
        records: seq,
        recovery,
    })
}

// ------------------------------------------------------------- group commit

/// Records queued for the writer and what became of them.
#[derive(Debug, Default)]
struct Queue {
    /// Encoded records the writer has not taken yet.
    pending: Vec<u8>,
    pending_records: u32,
    /// The sequence number the next queued record gets (the first is 1).
    next_lsn: u64,
    /// Every record up to this one is on disk.
    durable_lsn: u64,
    /// Set by the first I/O error: records from this one on failed, and
    /// nothing more is accepted.
    failed: Option<(u64, Arc<str>)>,
    closing: bool,
    stats: JournalStats,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// The writer waits here for records.
    work: Condvar,
    /// Claimers wait here for their batch (and for room in the queue).
    done: Condvar,
    #[cfg(test)]
    faults: tests::Faults,
}

impl Shared {
    /// Queues a record; returns its sequence number.
    fn append(&self, record: &Record<'_>) -> Result<u64, LedgerError> {
        let len = record.encoded_len();
        let mut q = self.queue.lock();
        loop {
            if let Some((_, why)) = &q.failed {
                return Err(LedgerError(format!("claims journal failed earlier: {why}")));
            }
            if q.closing {
                return Err(LedgerError("claims journal is closed".into()));
            }
            if q.pending.is_empty() || q.pending.len() + len <= MAX_QUEUED_BYTES {
                break;
            }
            self.done.wait(&mut q);
        }
        record.encode(&mut q.pending);
        q.pending_records += 1;
        let lsn = q.next_lsn;
        q.next_lsn += 1;
        self.work.notify_one();
        Ok(lsn)
    }

    /// Waits until record `lsn` is on disk, or failed.
    fn wait(&self, lsn: u64) -> Result<(), LedgerError> {
        let mut q = self.queue.lock();
        loop {
            match &q.failed {
                Some((from, why)) if lsn >= *from => {
                    return Err(LedgerError(format!("claims journal write failed: {why}")));
                }
                _ if q.durable_lsn >= lsn => return Ok(()),
                _ => self.done.wait(&mut q),
            }
        }
    }
}

/// The writer thread's side: the file and where it stands.
struct Writer {
    shared: Arc<Shared>,
    file: File,
    /// Bytes of the file that are durable.
    len: u64,
    /// Records in the file.
    seq: u64,
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
                // Room again for claimers waiting on a full queue.
                self.shared.done.notify_all();
                (q.next_lsn - 1, count)
            };
            batch.clear();
            frame_batch(&mut batch, &taken, count, self.seq);
            taken.clear();
            let written = self.write(&batch);
            let mut q = self.shared.queue.lock();
            match written {
                Ok(()) => {
                    self.len += batch.len() as u64;
                    self.seq += u64::from(count);
                    q.durable_lsn = last;
                    q.stats.batches += 1;
                    q.stats.records += u64::from(count);
                    q.stats.bytes += batch.len() as u64;
                    self.shared.done.notify_all();
                }
                Err(e) => {
                    // Best effort: cut the failed batch off, so that a
                    // restart does not count claims answered with an error.
                    let _ = self.file.set_len(self.len).and_then(|()| self.file.sync_all());
                    tracing::error!(error = %e, "claims journal write failed; claims fail until restart");
                    q.failed = Some((q.durable_lsn + 1, e.to_string().into()));
                    q.pending.clear();
                    self.shared.done.notify_all();
                    return;
                }
            }
        }
    }

    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(e) = self.shared.faults.inject(&mut self.file, batch) {
            return Err(e);
        }
        self.file.write_all(batch)?;
        self.file.sync_data()
    }
}

/// Marks the journal failed if the writer thread ends without a clean
/// close (a panic), so that no claimer waits forever.
struct WriterGuard(Arc<Shared>);

impl Drop for WriterGuard {
    fn drop(&mut self) {
        let mut q = self.0.queue.lock();
        if q.failed.is_none() && !(q.closing && q.pending.is_empty()) {
            q.failed = Some((q.durable_lsn + 1, "the journal writer stopped".into()));
        }
        self.0.done.notify_all();
    }
}

// ------------------------------------------------------------------- ledger

#[derive(Debug, Default)]
struct BenefitState {
    grants: Grants,
    /// claim_id -> (first answer, sequence number of its record; 0 = replayed).
    answers: std::collections::HashMap<Box<str>, (ClaimOutcome, u64), RandomState>,
}

type Benefits = DashMap<Box<str>, Mutex<BenefitState>, RandomState>;

/// A claim ledger backed by an fsync'd, group-committed journal (see the module docs).
pub struct DurableLedger {
    shops: DashMap<Box<str>, Arc<Benefits>, RandomState>,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    path: PathBuf,
    recovery: Recovery,
}

impl std::fmt::Debug for DurableLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableLedger")
            .field("path", &self.path)
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

impl DurableLedger {
    /// Opens (or creates) the journal in `dir`, replays it and starts the
    /// writer. A batch torn by a crash at the end of the file is cut off and
    /// reported in [`DurableLedger::recovery`]; damage anywhere else is an error.
    pub fn open(dir: &Path) -> Result<DurableLedger, JournalError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| JournalError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(JournalError::Locked { path }),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io_err(&path))?;
        let mut header = [0; FILE_HEADER_LEN];
        header[..8].copy_from_slice(&FILE_MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        if data.len() < FILE_HEADER_LEN {
            // New, or a creation the crash interrupted: (re)write the header.
            if !header.starts_with(&data) {
                return Err(JournalError::NotAJournal { path });
            }
            file.set_len(0).map_err(io_err(&path))?;
            file.seek(SeekFrom::Start(0)).map_err(io_err(&path))?;
            file.write_all(&header).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            data = header.to_vec();
        }
        if data[..8] != FILE_MAGIC || u32_at(&data, 12) != 0 {
            return Err(JournalError::NotAJournal { path });
        }
        let version = u32_at(&data, 8);
        if version != VERSION {
            return Err(JournalError::UnsupportedVersion { path, found: version });
        }

        let shops: DashMap<Box<str>, Arc<Benefits>, RandomState> = DashMap::default();
        let replayed = replay(&data[FILE_HEADER_LEN..], FILE_HEADER_LEN, &path, |r| {
            let benefits = shops.entry(r.shop.into()).or_default().clone();
            let state = benefits.entry(r.benefit.into()).or_default();
            let mut state = state.lock();
            if r.outcome == ClaimOutcome::Granted {
                state.grants.grant(r.visitor, r.now_ms);
            }
            if let Some(id) = r.claim_id {
                state.answers.entry(id.into()).or_insert((r.outcome, 0));
            }
        })?;
        if replayed.end < data.len() {
            file.set_len(replayed.end as u64).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
            tracing::warn!(
                path = %path.display(),
                bytes = replayed.recovery.truncated_bytes,
                records = ?replayed.recovery.dropped_records,
                "claims journal: cut off a batch whose write a crash interrupted"
            );
        }
        file.seek(SeekFrom::Start(replayed.end as u64)).map_err(io_err(&path))?;

        let shared = Arc::new(Shared::default());
        shared.queue.lock().next_lsn = 1;
        let writer = Writer {
            shared: shared.clone(),
            file,
            len: replayed.end as u64,
            seq: replayed.records,
        };
        let guard = WriterGuard(shared.clone());
        let writer = std::thread::Builder::new()
            .name("claims-journal".into())
            .spawn(move || {
                let _guard = guard;
                writer.run();
            })
            .map_err(io_err(&path))?;
        Ok(DurableLedger {
            shops,
            shared,
            writer: Some(writer),
            path,
            recovery: replayed.recovery,
        })
    }

    /// What opening the journal found.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Batches, records and bytes written since open.
    pub fn stats(&self) -> JournalStats {
        self.shared.queue.lock().stats
    }

    fn benefits(&self, shop: &str) -> Arc<Benefits> {
        match self.shops.get(shop) {
            Some(b) => b.value().clone(),
            None => self.shops.entry(shop.into()).or_default().value().clone(),
        }
    }

    fn with<R>(&self, shop: &str, benefit: &str, f: impl FnOnce(&mut BenefitState) -> R) -> R {
        let benefits = self.benefits(shop);
        if let Some(state) = benefits.get(benefit) {
            return f(&mut state.lock());
        }
        let state = benefits.entry(benefit.into()).or_default();
        let mut guard = state.lock();
        f(&mut guard)
    }
}

impl Drop for DurableLedger {
    fn drop(&mut self) {
        self.shared.queue.lock().closing = true;
        self.shared.work.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl ClaimLedger for DurableLedger {
    fn usage(&self, shop: &str, benefit: &str, visitor: &str, since_ms: Option<i64>) -> Usage {
        let Some(benefits) = self.shops.get(shop).map(|b| b.value().clone()) else {
            return Usage::default();
        };
        let usage = match benefits.get(benefit) {
            Some(state) => state.lock().grants.usage(visitor, since_ms),
            None => Usage::default(),
        };
        usage
    }

    fn claim(&self, claim: &LedgerClaim<'_>) -> Result<ClaimOutcome, LedgerError> {
        // Decide, reserve and queue under the benefit's lock.
        let (outcome, lsn, reserved) = self.with(claim.shop, claim.benefit, |state| {
            if let Some(&(first, lsn)) = claim.claim_id.and_then(|id| state.answers.get(id)) {
                return Ok((first, lsn, false));
            }
            let outcome = state.grants.check(claim);
            if outcome != ClaimOutcome::Granted && claim.claim_id.is_none() {
                return Ok((outcome, 0, false));
            }
            let record = Record {
                outcome,
                now_ms: claim.now_ms,
                shop: claim.shop,
                benefit: claim.benefit,
                visitor: claim.visitor,
                claim_id: claim.claim_id,
            };
            record.check()?;
            let lsn = self.shared.append(&record)?;
            if outcome == ClaimOutcome::Granted {
                state.grants.grant(claim.visitor, claim.now_ms);
            }
            if let Some(id) = claim.claim_id {
                state.answers.insert(id.into(), (outcome, lsn));
            }
            Ok::<_, LedgerError>((outcome, lsn, true))
        })?;
        if lsn == 0 {
            return Ok(outcome);
        }
        // Answer only once the record is on disk.
        match self.shared.wait(lsn) {
            Ok(()) => Ok(outcome),
            Err(e) => {
                if reserved {
                    self.with(claim.shop, claim.benefit, |state| {
                        if outcome == ClaimOutcome::Granted {
                            state.grants.revoke(claim.visitor, claim.now_ms);
                        }
                        if let Some(id) = claim.claim_id {
                            if state.answers.get(id).is_some_and(|&(_, l)| l == lsn) {
                                state.answers.remove(id);
                            }
                        }
                    });
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Barrier;

    use super::*;

    /// Failures the writer injects on request.
    #[derive(Debug, Default)]
    pub(super) struct Faults {
        /// Fail the next writes after writing half of the batch.
        fail_writes: AtomicBool,
    }

    impl Faults {
        pub(super) fn inject(&self, file: &mut File, batch: &[u8]) -> Option<io::Error> {
            if !self.fail_writes.load(Ordering::SeqCst) {
                return None;
            }
            let _ = file.write_all(&batch[..batch.len() / 2]);
            Some(io::Error::other("injected write failure"))
        }
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("vitrine-journal-{name}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn file(&self) -> PathBuf {
            self.0.join(FILE_NAME)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn claim<'a>(visitor: &'a str, claim_id: Option<&'a str>) -> LedgerClaim<'a> {
        LedgerClaim {
            shop: "s",
            benefit: "b",
            visitor,
            now_ms: 1_000,
            claim_id,
            cap: None,
            budget: None,
            denied: None,
        }
    }

    fn total(ledger: &DurableLedger, benefit: &str) -> u64 {
        ledger.usage("s", benefit, "", None).total
    }

    /// `threads` claimers at once, each with `per_thread` distinct visitors,
    /// against `budget`; returns the grants.
    fn race(ledger: &DurableLedger, benefit: &str, threads: usize, per_thread: usize, budget: u64) -> usize {
        let barrier = Barrier::new(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        (0..per_thread)
                            .filter(|i| {
                                let visitor = format!("v{t}-{i}");
                                let c = LedgerClaim {
                                    benefit,
                                    budget: Some(budget),
                                    ..claim(&visitor, None)
                                };
                                ledger.claim(&c).unwrap() == ClaimOutcome::Granted
                            })
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        })
    }

    #[test]
    fn concurrent_claims_grant_exactly_min_of_claims_and_budget() {
        let dir = TempDir::new("race");
        let ledger = DurableLedger::open(&dir.0).unwrap();
        for (benefit, threads, per_thread, budget) in [
            ("b1", 8, 5, 7),
            ("b2", 16, 1, 16),
            ("b3", 16, 1, 100),
            ("b4", 4, 10, 1),
            ("b5", 8, 4, 0),
        ] {
            let granted = race(&ledger, benefit, threads, per_thread, budget);
            let want = (threads * per_thread).min(budget as usize);
            assert_eq!(granted, want, "{benefit}");
            assert_eq!(total(&ledger, benefit), want as u64, "{benefit}");
        }
        let stats = ledger.stats();
        assert!(stats.batches <= stats.records, "{stats:?}");
        drop(ledger);
        // And the journal says the same.
        let ledger = DurableLedger::open(&dir.0).unwrap();
        for (benefit, want) in [("b1", 7), ("b2", 16), ("b3", 16), ("b4", 1), ("b5", 0)] {
            assert_eq!(total(&ledger, benefit), want, "{benefit} after reopen");
        }
        assert_eq!(ledger.recovery().grants, 40);
        assert_eq!(ledger.recovery().truncated_bytes, 0);
    }

    #[test]
    fn caps_hold_per_visitor_under_concurrency() {
        let dir = TempDir::new("cap");
        let ledger = DurableLedger::open(&dir.0).unwrap();
        let barrier = Barrier::new(8);
        let granted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let c = LedgerClaim {
                            cap: Some((2, 10_000)),
                            ..claim("same", None)
                        };
                        (0..3)
                            .filter(|_| ledger.claim(&c).unwrap() == ClaimOutcome::Granted)
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, 2);
        drop(ledger);
        let ledger = DurableLedger::open(&dir.0).unwrap();
        let c = LedgerClaim {
            cap: Some((2, 10_000)),
            ..claim("same", None)
        };
        assert_eq!(ledger.claim(&c).unwrap(), ClaimOutcome::CapReached, "after reopen");
    }

    #[test]
    fn claim_id_retries_get_the_first_answer_also_after_reopen() {
        let dir = TempDir::new("retry");
        let ledger = DurableLedger::open(&dir.0).unwrap();
        let capped = |visitor, id| LedgerClaim {
            cap: Some((1, 10_000)),
            budget: Some(2),
            ..claim(visitor, Some(id))
        };
        assert_eq!(ledger.claim(&capped("a", "c1")).unwrap(), ClaimOutcome::Granted);
        assert_eq!(ledger.claim(&capped("a", "c1")).unwrap(), ClaimOutcome::Granted);
        assert_eq!(ledger.claim(&capped("a", "c2")).unwrap(), ClaimOutcome::CapReached);
        let denied = LedgerClaim {
            denied: Some(ClaimOutcome::HeldOut),
            ..capped("b", "c3")
        };
        assert_eq!(ledger.claim(&denied).unwrap(), ClaimOutcome::HeldOut);
        assert_eq!(ledger.claim(&capped("c", "c4")).unwrap(), ClaimOutcome::Granted);
        assert_eq!(ledger.claim(&capped("d", "c5")).unwrap(), ClaimOutcome::BudgetExhausted);
        // A denial without a claim_id is not journaled.
        assert_eq!(ledger.claim(&capped("a", "c2")).unwrap(), ClaimOutcome::CapReached);
        let _ = ledger.claim(&LedgerClaim {
            claim_id: None,
            ..capped("e", "")
        });
        assert_eq!(ledger.stats().records, 5);
        drop(ledger);

        let ledger = DurableLedger::open(&dir.0).unwrap();
        assert_eq!(
            ledger.recovery(),
            Recovery {
                batches: 5,
                records: 5,
                grants: 2,
                truncated_bytes: 0,
                dropped_records: None
            }
        );
        // Every retry gets its first answer, though the state has changed since.
        assert_eq!(ledger.claim(&capped("a", "c1")).unwrap(), ClaimOutcome::Granted);
        assert_eq!(ledger.claim(&capped("a", "c2")).unwrap(), ClaimOutcome::CapReached);
        let eligible_now = LedgerClaim {
            denied: None,
            ..capped("b", "c3")
        };
        assert_eq!(ledger.claim(&eligible_now).unwrap(), ClaimOutcome::HeldOut);
        assert_eq!(ledger.claim(&capped("d", "c5")).unwrap(), ClaimOutcome::BudgetExhausted);
        assert_eq!(total(&ledger, "b"), 2);
        assert_eq!(ledger.usage("s", "b", "a", Some(0)).visitor_in_window, 1);
        // Same claim_id, other benefit: another claim.
        let other = LedgerClaim {
            benefit: "other",
            ..capped("a", "c1")
        };
        assert_eq!(ledger.claim(&other).unwrap(), ClaimOutcome::Granted);
    }

    #[test]
    fn concurrent_retries_of_one_claim_id_grant_once() {
        let dir = TempDir::new("retries");
        let ledger = DurableLedger::open(&dir.0).unwrap();
        let barrier = Barrier::new(8);
        let outcomes: Vec<ClaimOutcome> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (ledger, barrier) = (&ledger, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        // Different visitors: only the first answer counts.
                        let visitor = format!("v{i}");
                        let c = LedgerClaim {
                            budget: Some(5),
                            ..claim(&visitor, Some("order-1"))
                        };
                        ledger.claim(&c).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(outcomes.iter().all(|&o| o == ClaimOutcome::Granted), "{outcomes:?}");
        assert_eq!(total(&ledger, "b"), 1);
    }

    /// Claims made one at a time: one batch each.
    fn write_claims(dir: &Path, n: usize) -> Vec<u64> {
        let ledger = DurableLedger::open(dir).unwrap();
        let mut ends = Vec::new();
        for i in 0..n {
            let visitor = format!("v{i}");
            let id = format!("c{i}");
            let c = LedgerClaim {
                now_ms: 1_000 + i as i64,
                ..claim(&visitor, Some(&id))
            };
            assert_eq!(ledger.claim(&c).unwrap(), ClaimOutcome::Granted);
            ends.push(fs::metadata(ledger.path()).unwrap().len());
        }
        ends
    }

    #[test]
    fn a_crash_at_any_byte_of_the_last_write_keeps_exactly_the_complete_claims() {
        let source = TempDir::new("crash-src");
        let ends = write_claims(&source.0, 4);
        let bytes = fs::read(source.file()).unwrap();
        assert_eq!(bytes.len() as u64, ends[3]);
        let last_start = ends[2] as usize;
        for cut in last_start..bytes.len() {
            let dir = TempDir::new("crash");
            fs::write(dir.file(), &bytes[..cut]).unwrap();
            let ledger = DurableLedger::open(&dir.0).unwrap();
            let r = ledger.recovery();
            assert_eq!((r.records, r.grants, total(&ledger, "b")), (3, 3, 3), "cut at {cut}");
            assert_eq!(r.truncated_bytes, (cut - last_start) as u64, "cut at {cut}");
            let legible = cut - last_start >= 16;
            assert_eq!(r.dropped_records, legible.then_some(1), "cut at {cut}");
            assert_eq!(
                fs::metadata(dir.file()).unwrap().len(),
                last_start as u64,
                "file cut back"
            );
            // The lost claim was never answered: its retry is a new claim.
            let retry = LedgerClaim {
                now_ms: 1_003,
                ..claim("v3", Some("c3"))
            };
            assert_eq!(ledger.claim(&retry).unwrap(), ClaimOutcome::Granted);
            assert_eq!(ledger.claim(&claim("v0", Some("c0"))).unwrap(), ClaimOutcome::Granted);
            assert_eq!(total(&ledger, "b"), 4);
            drop(ledger);
            let ledger = DurableLedger::open(&dir.0).unwrap();
            assert_eq!((ledger.recovery().records, ledger.recovery().truncated_bytes), (4, 0));
        }
        // A crash while the file was being created.
        for cut in 0..FILE_HEADER_LEN {
            let dir = TempDir::new("crash-new");
            fs::write(dir.file(), &bytes[..cut]).unwrap();
            let ledger = DurableLedger::open(&dir.0).unwrap();
            assert_eq!(ledger.recovery(), Recovery::default(), "cut at {cut}");
        }
    }

    #[test]
    fn bit_flips_are_detected() {
        let source = TempDir::new("flip-src");
        let ends = write_claims(&source.0, 3);
        let bytes = fs::read(source.file()).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let dir = TempDir::new("flip");
            fs::write(dir.file(), &damaged).unwrap();
            let at = bit / 8;
            let opened = DurableLedger::open(&dir.0);
            if at < FILE_HEADER_LEN {
                assert!(
                    matches!(
                        opened,
                        Err(JournalError::NotAJournal { .. } | JournalError::UnsupportedVersion { .. })
                    ),
                    "bit {bit}: {opened:?}"
                );
            } else if (at as u64) < ends[1] {
                // An acknowledged batch with a valid one after it.
                let first_damaged = if (at as u64) < ends[0] {
                    FILE_HEADER_LEN as u64
                } else {
                    ends[0]
                };
                match opened {
                    Err(JournalError::Corrupt { offset, next, .. }) => {
                        assert_eq!(offset, first_damaged, "bit {bit}");
                        assert!(next > offset, "bit {bit}");
                    }
                    other => panic!("bit {bit}: {other:?}"),
                }
            } else {
                // The last batch: indistinguishable from a torn write.
                let ledger = opened.unwrap();
                assert_eq!(ledger.recovery().records, 2, "bit {bit}");
                assert_eq!(ledger.recovery().truncated_bytes, ends[2] - ends[1], "bit {bit}");
            }
        }
    }

    #[test]
    fn corruption_messages_name_the_file_and_offsets() {
        let source = TempDir::new("msg-src");
        let ends = write_claims(&source.0, 2);
        let mut bytes = fs::read(source.file()).unwrap();
        bytes[FILE_HEADER_LEN + 30] ^= 1;
        let dir = TempDir::new("msg");
        fs::write(dir.file(), &bytes).unwrap();
        let err = DurableLedger::open(&dir.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: damaged batch at byte 16 followed by a valid batch at byte {}; \
                 refusing to drop acknowledged claims (restore the file or move it aside)",
                dir.file().display(),
                ends[0]
            )
        );
        fs::write(dir.file(), b"hello, world, this is not it").unwrap();
        let err = DurableLedger::open(&dir.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: not a claims journal", dir.file().display())
        );
    }

    /// A batch frame, valid UTF-8, holding one grant with sequence number `seq`.
    fn batch_shaped_text(seq: u64) -> String {
        (0..)
            .find_map(|i: i64| {
                let mut records = Vec::new();
                Record {
                    outcome: ClaimOutcome::Granted,
                    now_ms: i,
                    shop: "s",
                    benefit: "b",
                    visitor: "forged",
                    claim_id: None,
                }
                .encode(&mut records);
                let mut frame = Vec::new();
                frame_batch(&mut frame, &records, 1, seq);
                String::from_utf8(frame).ok()
            })
            .unwrap()
    }

    #[test]
    fn a_batch_shaped_claim_id_in_a_torn_batch_is_not_taken_for_a_batch() {
        let source = TempDir::new("forged-src");
        let ends = write_claims(&source.0, 2);
        for (seq, refused) in [(0, false), (2, false), (3, true)] {
            let dir = TempDir::new("forged");
            fs::copy(source.file(), dir.file()).unwrap();
            let forged = batch_shaped_text(seq);
            {
                let ledger = DurableLedger::open(&dir.0).unwrap();
                let c = claim(&forged, Some("tail"));
                assert_eq!(ledger.claim(&c).unwrap(), ClaimOutcome::Granted);
            }
            // A crash tore the last batch just after the forged frame.
            let bytes = fs::read(dir.file()).unwrap();
            let cut = bytes.len() - 1;
            fs::write(dir.file(), &bytes[..cut]).unwrap();
            let opened = DurableLedger::open(&dir.0);
            if refused {
                // Documented: a forger who knows the record count makes open refuse.
                assert!(
                    matches!(opened, Err(JournalError::Corrupt { .. })),
                    "seq {seq}: {opened:?}"
                );
            } else {
                let ledger = opened.unwrap();
                assert_eq!(ledger.recovery().records, 2, "seq {seq}");
                assert_eq!(ledger.recovery().truncated_bytes, (cut as u64) - ends[1], "seq {seq}");
                assert_eq!(ledger.usage("s", "b", "forged", None).visitor_in_window, 0);
                assert_eq!(ledger.usage("s", "b", &forged, None).visitor_in_window, 0);
            }
        }
    }

    #[test]
    fn a_second_ledger_on_the_same_directory_is_refused() {
        let dir = TempDir::new("lock");
        let ledger = DurableLedger::open(&dir.0).unwrap();
        assert!(matches!(DurableLedger::open(&dir.0), Err(JournalError::Locked { .. })));
        drop(ledger);
        assert!(DurableLedger::open(&dir.0).is_ok());
    }

    fn budgeted<'a>(visitor: &'a str, id: Option<&'a str>) -> LedgerClaim<'a> {
        LedgerClaim {
            budget: Some(3),
            ..claim(visitor, id)
        }
    }

    #[test]
    fn a_failed_write_grants_nothing_and_undoes_its_reservations() {
        let dir = TempDir::new("fail");
        let ledger = DurableLedger::open(&dir.0).unwrap();
        assert_eq!(ledger.claim(&budgeted("a", Some("c1"))).unwrap(), ClaimOutcome::Granted);
        ledger.shared.faults.fail_writes.store(true, Ordering::SeqCst);
        let barrier = Barrier::new(6);
        let results: Vec<Result<ClaimOutcome, LedgerError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|i| {
                    let (ledger, barrier) = (&ledger, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let visitor = format!("f{i}");
                        let id = format!("f{i}");
                        ledger.claim(&budgeted(&visitor, Some(&id)))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Nothing granted; denials that saw in-flight reservations may stand.
        assert!(
            results.iter().all(|r| !matches!(r, Ok(ClaimOutcome::Granted))),
            "{results:?}"
        );
        assert!(results.iter().any(|r| r.is_err()), "{results:?}");
        assert_eq!(total(&ledger, "b"), 1, "reservations undone");
        // Fails closed until reopened, also for a retry of a failed claim;
        // answers already on disk are still given.
        ledger.shared.faults.fail_writes.store(false, Ordering::SeqCst);
        assert!(ledger.claim(&budgeted("g", None)).is_err());
        assert!(ledger.claim(&budgeted("f0", Some("f0"))).is_err());
        assert_eq!(ledger.claim(&budgeted("a", Some("c1"))).unwrap(), ClaimOutcome::Granted);
        drop(ledger);
        let ledger = DurableLedger::open(&dir.0).unwrap();
        assert_eq!(total(&ledger, "b"), 1);
        assert_eq!(ledger.recovery().truncated_bytes, 0, "the failed batch was cut off");
        assert_eq!(ledger.claim(&budgeted("g", None)).unwrap(), ClaimOutcome::Granted);
    }

    #[test]
    fn records_roundtrip_and_refuse_garbage() {
        let record = Record {
            outcome: ClaimOutcome::OutsideWindow,
            now_ms: -5,
            shop: "shöp",
            benefit: "",
            visitor: "v",
            claim_id: Some("id"),
        };
        let mut buf = Vec::new();
        record.encode(&mut buf);
        assert_eq!(buf.len(), record.encoded_len());
        assert_eq!(Record::decode(&buf), Ok((record, buf.len())));
        for cut in 0..buf.len() {
            assert!(Record::decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = buf.clone();
        bad[4] = 9;
        assert_eq!(Record::decode(&bad), Err("unknown claim outcome"));
        let long = "x".repeat(70_000);
        assert!(Record {
            visitor: &long,
            ..record
        }
        .check()
        .is_err());
    }
}
