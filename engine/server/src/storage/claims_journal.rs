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
//! # Files
//!
//! The journal is a [`crate::storage::wal`] log in the directory given to
//! [`DurableLedger::open`] (segments, batches, checksums, torn-tail repair
//! and corruption checks are described there), with kind [`KIND`]. A record,
//! integers little-endian:
//!
//! ```text
//! record  := outcome u8 | flags u8 (1 = has claim_id) | now_ms i64
//!            | shop s16 | benefit s16 | visitor s16 | [claim_id s16]
//! s16     := u16 length | UTF-8 bytes
//! ```
//!
//! A damaged batch at the end of the last segment is a write a crash
//! interrupted (none of its claims was answered) and is cut off on open;
//! damage anywhere else means acknowledged claims would be lost, and open
//! refuses with [`JournalError::Corrupt`] instead of skipping it.
//!
//! # Compaction
//!
//! [`DurableLedger::compact`] writes the ledger's whole state (each
//! benefit's grant total, each visitor's grant instants, each `claim_id`'s
//! first answer with its visitor) as of journal LSN *n* to [`STATE_FILE`],
//! then deletes the journal segments all of whose records are at most *n*.
//! A start loads the state file and replays only the records after *n*.
//!
//! The state is taken under a gate that claims hold while they decide and
//! queue their record, so it is exactly the replay of records 1..=n; it is
//! written only once those records are durable. The write is crash-safe:
//! `ledger.state.tmp`, `fsync`, rename over [`STATE_FILE`], directory
//! `fsync`, and only then are segments deleted (oldest first). A kill at
//! any point leaves the old state with every segment it needs, or the new
//! one with perhaps some covered segments still there (skipped on replay),
//! plus perhaps a `.tmp` file that the next open removes. A state file that
//! fails its checks refuses the start, naming the file: the journal it
//! covered may be gone, so it is never silently skipped.
//!
//! ```text
//! state    := "VTRNCLMS" | version u32 (1) | lsn u64 | body_len u64 | crc32 u32 | body
//!             crc32 covers version, lsn, body_len and the body
//! body     := count u32 | shop{count}
//! shop     := name s16 | count u32 | benefit{count}
//! benefit  := name s16 | total u64 | count u32 | visitor{count} | count u32 | answer{count}
//! visitor  := id s16 | count u32 | at_ms i64{count}
//! answer   := claim_id s16 | outcome u8 | visitor s16
//! ```
//!
//! Every count is checked against the bytes left before anything is
//! allocated for it, so a damaged or hostile file costs at most its size.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use ahash::RandomState;
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use vitrine_core::claims::{Answer, BenefitImage, LedgerImage, Usage};
use vitrine_core::codec::{self, Put, Reader};
use vitrine_core::{ClaimLedger, ClaimOutcome, Grants, LedgerClaim, LedgerError};

use crate::storage::fs::write_atomic_via;
use crate::storage::wal::{CompactReport, Failpoints, FailureHook, Options, Wal, WalError};

/// The record format of the claims journal, in its segments' headers.
pub const KIND: [u8; 4] = *b"CLM1";
/// A record's fixed part: outcome, flags, now_ms, three s16 lengths.
const MIN_RECORD_BYTES: usize = 1 + 1 + 8 + 3 * 2;
/// The ledger state file (see "Compaction" in the module docs).
pub const STATE_FILE: &str = "ledger.state";
const STATE_TMP: &str = "ledger.state.tmp";
const STATE_MAGIC: [u8; 8] = *b"VTRNCLMS";
const STATE_VERSION: u32 = 1;
const STATE_HEADER_LEN: usize = 8 + 4 + 8 + 8 + 4;

/// How to open the journal.
#[derive(Clone, Default)]
pub struct LedgerOptions {
    /// New segments start past this size (0: [`crate::storage::wal::DEFAULT_SEGMENT_BYTES`]).
    pub segment_bytes: u64,
    /// Told when the journal fails closed.
    pub on_failure: Option<FailureHook>,
}

impl std::fmt::Debug for LedgerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerOptions")
            .field("segment_bytes", &self.segment_bytes)
            .field("on_failure", &self.on_failure.is_some())
            .finish()
    }
}

/// What [`DurableLedger::compact`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compaction {
    /// The journal LSN the state file covers.
    pub lsn: u64,
    /// The state file's size.
    pub state_bytes: u64,
    /// The journal segments deleted.
    pub removed: CompactReport,
}

/// Why the journal could not be opened (see [`crate::storage::wal::OpenError`]).
pub type JournalError = crate::storage::wal::OpenError;

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
    /// The journal LSN the loaded state file covered (0: no state file).
    pub state_lsn: u64,
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
pub(super) struct Record<'a> {
    pub(super) outcome: ClaimOutcome,
    pub(super) now_ms: i64,
    pub(super) shop: &'a str,
    pub(super) benefit: &'a str,
    pub(super) visitor: &'a str,
    pub(super) claim_id: Option<&'a str>,
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
            return Err(LedgerError::Failed("a claim field is longer than 65535 bytes".into()));
        }
        Ok(())
    }

    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        out.put_u8(outcome_code(self.outcome));
        out.put_u8(u8::from(self.claim_id.is_some()));
        out.put_i64(self.now_ms);
        for field in [Some(self.shop), Some(self.benefit), Some(self.visitor), self.claim_id]
            .into_iter()
            .flatten()
        {
            // `check` refused fields longer than a u16 length can say.
            out.put_str16(field);
        }
    }

    /// Decodes a whole record (the log frames records, so `buf` is exactly one).
    pub(super) fn decode(buf: &'a [u8]) -> Result<Record<'a>, &'static str> {
        Record::read(&mut Reader::new(buf)).map_err(|e| e.what)
    }

    fn read(r: &mut Reader<'a>) -> codec::Result<Record<'a>> {
        let outcome = read_outcome(r)?;
        let flags = r.u8()?;
        if flags > 1 {
            return Err(r.error("unknown record flags"));
        }
        let now_ms = r.i64()?;
        let (shop, benefit, visitor) = (r.str16()?, r.str16()?, r.str16()?);
        let claim_id = if flags == 1 { Some(r.str16()?) } else { None };
        if !r.is_empty() {
            return Err(r.error("record length does not match its fields"));
        }
        if outcome != ClaimOutcome::Granted && claim_id.is_none() {
            return Err(r.error("a denial without a claim_id"));
        }
        Ok(Record {
            outcome,
            now_ms,
            shop,
            benefit,
            visitor,
            claim_id,
        })
    }
}

// ------------------------------------------------------------------- ledger

#[derive(Debug, Default)]
pub(super) struct BenefitState {
    grants: Grants,
    /// claim_id -> (first answer and its visitor, LSN of its record; 0 = replayed).
    answers: std::collections::HashMap<Box<str>, (Answer, u64), RandomState>,
}

impl BenefitState {
    fn grants(&self) -> &Grants {
        &self.grants
    }
}

pub(super) type Benefits = DashMap<Box<str>, Mutex<BenefitState>, RandomState>;
/// Every shop's benefits.
pub(super) type Shops = vitrine_core::claims::ShopsOf<BenefitState>;

/// A claim ledger backed by an fsync'd, group-committed journal (see the module docs).
pub struct DurableLedger {
    shops: Shops,
    wal: Wal,
    recovery: Recovery,
    /// Held shared by a claim while it decides and queues its record, and
    /// exclusively by compaction while it copies the state.
    gate: RwLock<()>,
    /// One compaction at a time.
    compacting: Mutex<()>,
}

impl std::fmt::Debug for DurableLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableLedger")
            .field("dir", &self.wal.dir())
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

/// A log error as the claim API reports it.
fn ledger_error(e: WalError) -> LedgerError {
    LedgerError::Failed(format!("claims journal: {e}"))
}

impl DurableLedger {
    /// Opens (or creates) the journal in `dir`, replays it and starts the
    /// writer. A batch torn by a crash at the end of the journal is cut off
    /// and reported in [`DurableLedger::recovery`]; damage anywhere else is
    /// an error.
    pub fn open(dir: &Path) -> Result<DurableLedger, JournalError> {
        DurableLedger::open_with(dir, LedgerOptions::default())
    }

    /// [`DurableLedger::open`] with `options`: loads the state file, if
    /// any, then replays the journal records after it.
    pub fn open_with(dir: &Path, options: LedgerOptions) -> Result<DurableLedger, JournalError> {
        let shops: Shops = DashMap::default();
        let state_path = dir.join(STATE_FILE);
        let state_lsn = match fs::read(&state_path) {
            Ok(bytes) => decode_state(&bytes, &shops).map_err(|(offset, what)| JournalError::Malformed {
                path: state_path.clone(),
                offset,
                what,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(JournalError::Io {
                    path: state_path,
                    source,
                })
            }
        };
        let mut grants = 0;
        let wal_options = Options {
            start_after: state_lsn,
            on_failure: options.on_failure,
            segment_bytes: if options.segment_bytes == 0 {
                crate::storage::wal::DEFAULT_SEGMENT_BYTES
            } else {
                options.segment_bytes
            },
            ..Options::new("claims-journal", KIND)
        };
        let (wal, found) = Wal::open(dir, wal_options, |_, bytes| {
            let r = Record::decode(bytes)?;
            let benefits = shops.entry(r.shop.into()).or_default().clone();
            let state = benefits.entry(r.benefit.into()).or_default();
            let mut state = state.lock();
            if r.outcome == ClaimOutcome::Granted {
                state.grants.grant(r.visitor, r.now_ms);
                grants += 1;
            }
            if let Some(id) = r.claim_id {
                let answer = Answer {
                    outcome: r.outcome,
                    visitor: r.visitor.into(),
                };
                state.answers.entry(id.into()).or_insert((answer, 0));
            }
            Ok(())
        })?;
        // Under the lock now: a compaction a crash interrupted left this.
        let tmp = dir.join(STATE_TMP);
        match fs::remove_file(&tmp) {
            Ok(()) => {
                tracing::warn!(path = %tmp.display(), "removed a ledger state file whose write a crash interrupted")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(JournalError::Io { path: tmp, source }),
        }
        let recovery = Recovery {
            batches: found.batches,
            records: found.records,
            grants,
            truncated_bytes: found.truncated_bytes,
            dropped_records: found.dropped_records,
            state_lsn,
        };
        Ok(DurableLedger {
            shops,
            wal,
            recovery,
            gate: RwLock::new(()),
            compacting: Mutex::new(()),
        })
    }

    /// Writes the ledger's state to [`STATE_FILE`] and deletes the journal
    /// segments it covers (see "Compaction" in the module docs). Blocking;
    /// claims wait only while the state is copied in memory.
    pub fn compact(&self) -> io::Result<Compaction> {
        let _one = self.compacting.lock();
        let (lsn, image) = {
            let _gate = self.gate.write();
            (self.wal.appended_lsn(), self.image())
        };
        // Every record the image reflects must be durable before the image is.
        self.wal.wait(lsn).map_err(io::Error::other)?;
        let file_bytes = encode_state_file(lsn, &image);
        drop(image);
        let dir = self.wal.dir();
        write_atomic_via(&dir.join(STATE_FILE), STATE_TMP, &file_bytes)?;
        let removed = self.wal.compact(lsn)?;
        Ok(Compaction {
            lsn,
            state_bytes: file_bytes.len() as u64,
            removed,
        })
    }

    /// Whether [`DurableLedger::compact`] would delete a segment now: the
    /// journal has more than its current segment.
    pub fn compaction_due(&self) -> bool {
        self.wal.stats().segments > 1
    }

    /// The writer's failpoints, for fault-injection tests.
    pub fn failpoints(&self) -> Arc<Failpoints> {
        self.wal.failpoints()
    }

    /// A copy of every benefit's state, sorted (so equal states encode alike).
    fn image(&self) -> Image {
        image_of(&self.shops)
    }

    /// What opening the journal found.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// The journal's directory.
    pub fn path(&self) -> &Path {
        self.wal.dir()
    }

    /// Batches, records and bytes written since open.
    pub fn stats(&self) -> JournalStats {
        let s = self.wal.stats();
        JournalStats {
            batches: s.batches,
            records: s.records,
            bytes: s.bytes,
        }
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

impl ClaimLedger for DurableLedger {
    fn granted(&self, shop: &str, visitor: &str, benefits: Option<&[Arc<str>]>, at: &dyn Fn(i64) -> bool) -> bool {
        vitrine_core::claims::shops_granted(&self.shops, BenefitState::grants, (shop, visitor), benefits, at)
    }

    fn grantees(&self, shop: &str, benefits: Option<&[Arc<str>]>, at: &dyn Fn(i64) -> bool, f: &mut dyn FnMut(&str)) {
        vitrine_core::claims::shops_grantees(&self.shops, BenefitState::grants, shop, benefits, at, f)
    }

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
        // Decide, reserve and queue under the benefit's lock (and the
        // compaction gate, so that a state copy sees whole claims).
        let gate = self.gate.read();
        let decided = self.with(claim.shop, claim.benefit, |state| {
            if let Some(id) = claim.claim_id {
                if let Some((first, lsn)) = state.answers.get(id) {
                    return Ok((first.for_visitor(claim.visitor, id)?, *lsn, false));
                }
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
            let lsn = self
                .wal
                .append(record.encoded_len(), |out| record.encode(out))
                .map_err(ledger_error)?;
            if outcome == ClaimOutcome::Granted {
                state.grants.grant(claim.visitor, claim.now_ms);
            }
            if let Some(id) = claim.claim_id {
                let answer = Answer {
                    outcome,
                    visitor: claim.visitor.into(),
                };
                state.answers.insert(id.into(), (answer, lsn));
            }
            Ok::<_, LedgerError>((outcome, lsn, true))
        });
        drop(gate);
        let (outcome, lsn, reserved) = decided?;
        if lsn == 0 {
            return Ok(outcome);
        }
        // Answer only once the record is on disk.
        match self.wal.wait(lsn).map_err(ledger_error) {
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

// -------------------------------------------------------------- state file

/// Every shop's benefits' state, sorted by name.
pub(super) type Image = LedgerImage;

/// A count as the state file's `u32` (every count here is of strings that
/// each came through `Record::check`, far below `u32::MAX`).
fn put_count(out: &mut Vec<u8>, n: usize) {
    out.put_u32(n as u32);
}

fn outcome_code(outcome: ClaimOutcome) -> u8 {
    OUTCOMES.iter().find(|(o, _)| *o == outcome).map_or(0, |(_, c)| *c)
}

/// The outcome an on-disk code names.
fn read_outcome(r: &mut Reader<'_>) -> codec::Result<ClaimOutcome> {
    let code = r.u8()?;
    OUTCOMES
        .iter()
        .find(|(_, c)| *c == code)
        .map(|(o, _)| *o)
        .ok_or_else(|| r.error("unknown claim outcome"))
}

/// Every shop's benefits' state, sorted by name, copied under each benefit's lock.
pub(super) fn image_of(shops: &Shops) -> Image {
    vitrine_core::claims::ledger_image(shops, |state: &BenefitState| BenefitImage {
        grants: state.grants.clone(),
        answers: state
            .answers
            .iter()
            .map(|(id, (answer, _))| (id.clone(), answer.clone()))
            .collect(),
    })
}

/// A whole state file: header and body, the state as of journal LSN `lsn`.
pub(super) fn encode_state_file(lsn: u64, image: &Image) -> Vec<u8> {
    let mut body = Vec::new();
    encode_state(image, &mut body);
    let mut file_bytes = Vec::with_capacity(STATE_HEADER_LEN + body.len());
    file_bytes.put_bytes(&STATE_MAGIC);
    let crc_from = file_bytes.len();
    file_bytes.put_u32(STATE_VERSION);
    file_bytes.put_u64(lsn);
    file_bytes.put_u64(body.len() as u64);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&file_bytes[crc_from..]);
    crc.update(&body);
    file_bytes.put_u32(crc.finalize());
    file_bytes.put_bytes(&body);
    file_bytes
}

/// Encodes the body of a state file; the claims topic's state file
/// (`claims_topic.rs`) holds the same body.
pub(crate) fn encode_state(shops: &Image, out: &mut Vec<u8>) {
    put_count(out, shops.len());
    for (shop, benefits) in shops {
        out.put_str16(shop);
        put_count(out, benefits.len());
        for (benefit, image) in benefits {
            out.put_str16(benefit);
            out.put_u64(image.grants.total());
            let mut visitors: Vec<_> = image.grants.visitors().collect();
            visitors.sort_unstable();
            put_count(out, visitors.len());
            for (visitor, times) in visitors {
                out.put_str16(visitor);
                put_count(out, times.len());
                for t in times {
                    out.put_i64(*t);
                }
            }
            let mut answers: Vec<_> = image.answers.iter().collect();
            answers.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            put_count(out, answers.len());
            for (id, answer) in answers {
                out.put_str16(id);
                out.put_u8(outcome_code(answer.outcome));
                out.put_str16(&answer.visitor);
            }
        }
    }
}

/// Decodes a state file into `shops`; returns the LSN it covers, or the
/// byte offset and reason it is refused. Never panics; allocates at most
/// in proportion to `bytes`.
pub(super) fn decode_state(bytes: &[u8], shops: &Shops) -> Result<u64, (u64, &'static str)> {
    let mut r = Reader::new(bytes);
    let header = (|| {
        if r.bytes(STATE_MAGIC.len())? != STATE_MAGIC {
            return Err(r.error("not a claims ledger state file"));
        }
        if r.u32()? != STATE_VERSION {
            return Err(r.error("unsupported ledger state version"));
        }
        Ok((r.u64()?, r.u64()?, r.u32()?))
    })();
    // Header defects are reported at offset 0: the file as a whole is refused.
    let (lsn, len, crc) = header.map_err(|e: codec::Error| (0, e.what))?;
    if len != r.remaining() as u64 {
        return Err((0, "ledger state length does not match the file (truncated?)"));
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[STATE_MAGIC.len()..STATE_HEADER_LEN - 4]);
    hasher.update(r.rest());
    if hasher.finalize() != crc {
        return Err((0, "ledger state checksum mismatch"));
    }
    let mut r = Reader::with_base(&bytes[STATE_HEADER_LEN..], STATE_HEADER_LEN);
    decode_state_body(&mut r, shops).map_err(|e| (e.offset as u64, e.what))?;
    Ok(lsn)
}

/// The body of a state file (after its header), into `shops`.
fn decode_state_body(r: &mut Reader<'_>, shops: &Shops) -> codec::Result<()> {
    decode_body(r, |shop, benefit, grants, answers| {
        let benefits = shops.entry(shop.into()).or_default().clone();
        let answers = answers.into_iter().map(|(id, answer)| (id, (answer, 0))).collect();
        match benefits.insert(benefit.into(), Mutex::new(BenefitState { grants, answers })) {
            Some(_) => Err("a benefit listed twice"),
            None => Ok(()),
        }
    })
}

/// Decodes the body of a state file, handing each benefit to `insert`
/// (which may refuse it); the reader must then be at its end. Never panics;
/// allocates at most in proportion to the bytes.
pub(crate) fn decode_body(
    r: &mut Reader<'_>,
    mut insert: impl FnMut(&str, &str, Grants, Vec<(Box<str>, Answer)>) -> Result<(), &'static str>,
) -> codec::Result<()> {
    for _ in 0..r.count32(2 + 4)? {
        let shop = r.str16()?;
        for _ in 0..r.count32(2 + 8 + 4 + 4)? {
            let benefit = r.str16()?;
            let total = r.u64()?;
            let mut visitors = Vec::new();
            for _ in 0..r.count32(2 + 4)? {
                let visitor = r.str16()?;
                let n = r.count32(8)?;
                let mut times = Vec::with_capacity(n);
                for _ in 0..n {
                    times.push(r.i64()?);
                }
                visitors.push((Box::<str>::from(visitor), times));
            }
            let grants = Grants::from_parts(total, visitors).map_err(|what| r.error(what))?;
            let mut answers = Vec::new();
            for _ in 0..r.count32(2 + 1 + 2)? {
                let id = r.str16()?;
                let outcome = read_outcome(r)?;
                let visitor = r.str16()?;
                let answer = Answer {
                    outcome,
                    visitor: visitor.into(),
                };
                answers.push((Box::<str>::from(id), answer));
            }
            insert(shop, benefit, grants, answers).map_err(|what| r.error(what))?;
        }
    }
    if !r.is_empty() {
        return Err(r.error("bytes after the ledger state"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;
    use std::sync::atomic::Ordering;
    use std::sync::Barrier;

    use super::*;
    use crate::storage::wal::{segment_name, test_batch, SEGMENT_HEADER_LEN};
    use tempfile::TempDir;

    /// A fresh directory under the system temp dir, removed on drop.
    /// The first (and, in these tests, only) segment of a journal directory.
    trait Segment {
        fn file(&self) -> PathBuf;
    }

    impl Segment for TempDir {
        fn file(&self) -> PathBuf {
            self.path().join(segment_name(1))
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
        let dir = tempfile::tempdir().unwrap();
        let ledger = DurableLedger::open(dir.path()).unwrap();
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
        let ledger = DurableLedger::open(dir.path()).unwrap();
        for (benefit, want) in [("b1", 7), ("b2", 16), ("b3", 16), ("b4", 1), ("b5", 0)] {
            assert_eq!(total(&ledger, benefit), want, "{benefit} after reopen");
        }
        assert_eq!(ledger.recovery().grants, 40);
        assert_eq!(ledger.recovery().truncated_bytes, 0);
    }

    #[test]
    fn caps_hold_per_visitor_under_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = DurableLedger::open(dir.path()).unwrap();
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
        let ledger = DurableLedger::open(dir.path()).unwrap();
        let c = LedgerClaim {
            cap: Some((2, 10_000)),
            ..claim("same", None)
        };
        assert_eq!(ledger.claim(&c).unwrap(), ClaimOutcome::CapReached, "after reopen");
    }

    #[test]
    fn claim_id_retries_get_the_first_answer_also_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = DurableLedger::open(dir.path()).unwrap();
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

        let ledger = DurableLedger::open(dir.path()).unwrap();
        assert_eq!(
            ledger.recovery(),
            Recovery {
                batches: 5,
                records: 5,
                grants: 2,
                truncated_bytes: 0,
                dropped_records: None,
                state_lsn: 0,
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
        let dir = tempfile::tempdir().unwrap();
        let ledger = DurableLedger::open(dir.path()).unwrap();
        let barrier = Barrier::new(8);
        let outcomes: Vec<Result<ClaimOutcome, LedgerError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (ledger, barrier) = (&ledger, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        // Retries of one visitor, and others trying the same id.
                        let visitor = if i % 2 == 0 { "v".to_string() } else { format!("v{i}") };
                        let c = LedgerClaim {
                            budget: Some(5),
                            ..claim(&visitor, Some("order-1"))
                        };
                        (visitor == "v", ledger.claim(&c))
                    })
                })
                .collect();
            let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            // Whoever came first owns the id; the rest are its retries or refused.
            let owner_first = results.iter().filter(|(_, r)| r.is_ok()).all(|(same, _)| *same);
            let owner_others = results.iter().filter(|(_, r)| r.is_ok()).all(|(same, _)| !*same);
            assert!(owner_first || owner_others, "{results:?}");
            results.into_iter().map(|(_, r)| r).collect()
        });
        let granted = outcomes.iter().filter(|o| **o == Ok(ClaimOutcome::Granted)).count();
        assert!(granted >= 1, "{outcomes:?}");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Ok(ClaimOutcome::Granted) | Err(LedgerError::ClaimIdInUse { .. }))),
            "{outcomes:?}"
        );
        assert_eq!(total(&ledger, "b"), 1);
    }

    /// Regression (hardening #12): a reused claim_id gave another visitor's
    /// grant. It is bound to its visitor, also after a reopen (the journal
    /// record holds the visitor: no format change).
    #[test]
    fn a_claim_id_is_bound_to_its_visitor_also_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = DurableLedger::open(dir.path()).unwrap();
        assert_eq!(ledger.claim(&claim("a", Some("c1"))).unwrap(), ClaimOutcome::Granted);
        let intruder = LedgerClaim {
            denied: Some(ClaimOutcome::NotEligible),
            ..claim("b", Some("c1"))
        };
        let refused = Err(LedgerError::ClaimIdInUse { claim_id: "c1".into() });
        assert_eq!(ledger.claim(&intruder), refused);
        assert_eq!(ledger.stats().records, 1, "a refused reuse writes nothing");
        drop(ledger);
        let ledger = DurableLedger::open(dir.path()).unwrap();
        assert_eq!(ledger.claim(&intruder), refused);
        assert_eq!(ledger.claim(&claim("a", Some("c1"))).unwrap(), ClaimOutcome::Granted);
        assert_eq!(ledger.usage("s", "b", "b", None).visitor_in_window, 0);
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
            ends.push(fs::metadata(ledger.path().join(segment_name(1))).unwrap().len());
        }
        ends
    }

    #[test]
    fn a_crash_at_any_byte_of_the_last_write_keeps_exactly_the_complete_claims() {
        let source = tempfile::tempdir().unwrap();
        let ends = write_claims(source.path(), 4);
        let bytes = fs::read(source.file()).unwrap();
        assert_eq!(bytes.len() as u64, ends[3]);
        let last_start = ends[2] as usize;
        for cut in last_start..bytes.len() {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.file(), &bytes[..cut]).unwrap();
            let ledger = DurableLedger::open(dir.path()).unwrap();
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
            let ledger = DurableLedger::open(dir.path()).unwrap();
            assert_eq!((ledger.recovery().records, ledger.recovery().truncated_bytes), (4, 0));
        }
        // A crash while the segment was being created.
        for cut in 0..SEGMENT_HEADER_LEN {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.file(), &bytes[..cut]).unwrap();
            let ledger = DurableLedger::open(dir.path()).unwrap();
            assert_eq!(ledger.recovery(), Recovery::default(), "cut at {cut}");
        }
    }

    #[test]
    fn bit_flips_are_detected() {
        let source = tempfile::tempdir().unwrap();
        let ends = write_claims(source.path(), 3);
        let bytes = fs::read(source.file()).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.file(), &damaged).unwrap();
            let at = bit / 8;
            let opened = DurableLedger::open(dir.path());
            if at < SEGMENT_HEADER_LEN {
                assert!(
                    matches!(
                        opened,
                        Err(JournalError::NotALog { .. }
                            | JournalError::UnsupportedVersion { .. }
                            | JournalError::Malformed { offset: 0, .. })
                    ),
                    "bit {bit}: {opened:?}"
                );
            } else if (at as u64) < ends[1] {
                // An acknowledged batch with a valid one after it.
                let first_damaged = if (at as u64) < ends[0] {
                    SEGMENT_HEADER_LEN as u64
                } else {
                    ends[0]
                };
                match opened {
                    Err(JournalError::Corrupt { offset, next, .. }) => {
                        assert_eq!(offset, first_damaged, "bit {bit}");
                        assert!(next.is_some_and(|n| n > offset), "bit {bit}");
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
        let source = tempfile::tempdir().unwrap();
        let ends = write_claims(source.path(), 2);
        let mut bytes = fs::read(source.file()).unwrap();
        bytes[SEGMENT_HEADER_LEN + 30] ^= 1;
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.file(), &bytes).unwrap();
        let err = DurableLedger::open(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: damaged batch at byte 40 followed by a valid batch at byte {}; \
                 refusing to drop acknowledged records (restore the file or move it aside)",
                dir.file().display(),
                ends[0]
            )
        );
        fs::write(dir.file(), b"hello, world, this is not it").unwrap();
        let err = DurableLedger::open(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: not a write-ahead log segment", dir.file().display())
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
                String::from_utf8(test_batch(&[&records], seq)).ok()
            })
            .unwrap()
    }

    #[test]
    fn a_batch_shaped_claim_id_in_a_torn_batch_is_not_taken_for_a_batch() {
        let source = tempfile::tempdir().unwrap();
        let ends = write_claims(source.path(), 2);
        for (seq, refused) in [(0, false), (2, false), (3, true)] {
            let dir = tempfile::tempdir().unwrap();
            fs::copy(source.file(), dir.file()).unwrap();
            let forged = batch_shaped_text(seq);
            {
                let ledger = DurableLedger::open(dir.path()).unwrap();
                let c = claim(&forged, Some("tail"));
                assert_eq!(ledger.claim(&c).unwrap(), ClaimOutcome::Granted);
            }
            // A crash tore the last batch just after the forged frame.
            let bytes = fs::read(dir.file()).unwrap();
            let cut = bytes.len() - 1;
            fs::write(dir.file(), &bytes[..cut]).unwrap();
            let opened = DurableLedger::open(dir.path());
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
        let dir = tempfile::tempdir().unwrap();
        let ledger = DurableLedger::open(dir.path()).unwrap();
        assert!(matches!(
            DurableLedger::open(dir.path()),
            Err(JournalError::Locked { .. })
        ));
        drop(ledger);
        assert!(DurableLedger::open(dir.path()).is_ok());
    }

    fn budgeted<'a>(visitor: &'a str, id: Option<&'a str>) -> LedgerClaim<'a> {
        LedgerClaim {
            budget: Some(3),
            ..claim(visitor, id)
        }
    }

    #[test]
    fn a_failed_write_grants_nothing_and_undoes_its_reservations() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = DurableLedger::open(dir.path()).unwrap();
        assert_eq!(ledger.claim(&budgeted("a", Some("c1"))).unwrap(), ClaimOutcome::Granted);
        ledger.wal.failpoints().fail_writes.store(true, Ordering::SeqCst);
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
        ledger.wal.failpoints().fail_writes.store(false, Ordering::SeqCst);
        assert!(ledger.claim(&budgeted("g", None)).is_err());
        assert!(ledger.claim(&budgeted("f0", Some("f0"))).is_err());
        assert_eq!(ledger.claim(&budgeted("a", Some("c1"))).unwrap(), ClaimOutcome::Granted);
        drop(ledger);
        let ledger = DurableLedger::open(dir.path()).unwrap();
        assert_eq!(total(&ledger, "b"), 1);
        assert_eq!(ledger.recovery().truncated_bytes, 0, "the failed batch was cut off");
        assert_eq!(ledger.claim(&budgeted("g", None)).unwrap(), ClaimOutcome::Granted);
    }

    // ------------------------------------------------------------ compaction

    fn small(dir: &Path) -> DurableLedger {
        let options = LedgerOptions {
            segment_bytes: 200,
            on_failure: None,
        };
        DurableLedger::open_with(dir, options).unwrap()
    }

    fn wal_segments(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".wal"))
            .collect();
        names.sort();
        names
    }

    /// Claims v0..n (granted, capped at one per visitor, budget 1000) with ids c0..n.
    fn fill(ledger: &DurableLedger, range: std::ops::Range<usize>) {
        for i in range {
            let (visitor, id) = (format!("v{i}"), format!("c{i}"));
            let c = LedgerClaim {
                now_ms: 1_000 + i as i64,
                cap: Some((1, 1 << 40)),
                budget: Some(1_000),
                ..claim(&visitor, Some(&id))
            };
            assert_eq!(ledger.claim(&c).unwrap(), ClaimOutcome::Granted, "{i}");
        }
        let denied = LedgerClaim {
            denied: Some(ClaimOutcome::HeldOut),
            ..claim("held", Some("held-id"))
        };
        let _ = ledger.claim(&denied);
    }

    /// What a reopened ledger must answer after claims 0..n (any compactions between).
    fn check_filled(ledger: &DurableLedger, n: usize) {
        assert_eq!(total(ledger, "b"), n as u64);
        for i in [0, n / 2, n - 1] {
            let (visitor, id) = (format!("v{i}"), format!("c{i}"));
            assert_eq!(ledger.usage("s", "b", &visitor, None).visitor_in_window, 1, "{i}");
            // The retry gets its answer; another visitor is refused the id.
            assert_eq!(
                ledger.claim(&claim(&visitor, Some(&id))).unwrap(),
                ClaimOutcome::Granted
            );
            assert!(matches!(
                ledger.claim(&claim("other", Some(&id))),
                Err(LedgerError::ClaimIdInUse { .. })
            ));
            let again = LedgerClaim {
                cap: Some((1, 1 << 40)),
                ..claim(&visitor, None)
            };
            assert_eq!(ledger.claim(&again).unwrap(), ClaimOutcome::CapReached, "{i}");
        }
        assert_eq!(
            ledger.claim(&claim("held", Some("held-id"))).unwrap(),
            ClaimOutcome::HeldOut
        );
    }

    #[test]
    fn compaction_writes_the_state_deletes_covered_segments_and_a_reopen_restores_everything() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = small(dir.path());
        fill(&ledger, 0..20);
        assert!(ledger.compaction_due());
        let before = wal_segments(dir.path()).len();
        let done = ledger.compact().unwrap();
        assert_eq!(done.lsn, 21);
        assert_eq!(done.removed.segments_removed, before - 1);
        assert!(done.removed.bytes_removed > 0 && done.state_bytes > 0);
        assert_eq!(wal_segments(dir.path()).len(), 1);
        assert!(!ledger.compaction_due());
        fill(&ledger, 20..30);
        drop(ledger);

        let ledger = small(dir.path());
        assert_eq!(ledger.recovery().state_lsn, 21);
        assert_eq!(
            ledger.recovery().grants,
            10,
            "only the records after the state are replayed"
        );
        check_filled(&ledger, 30);
        // Compacting again, and once more with nothing new, is fine.
        ledger.compact().unwrap();
        ledger.compact().unwrap();
        drop(ledger);
        let ledger = small(dir.path());
        check_filled(&ledger, 30);
    }

    /// Copies every file of `from` into a fresh directory.
    fn copy_dir(from: &Path, name: &str) -> TempDir {
        let to = tempfile::Builder::new().prefix(name).tempdir().unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_name() != crate::storage::wal::LOCK_FILE {
                fs::copy(e.path(), to.path().join(e.file_name())).unwrap();
            }
        }
        to
    }

    #[test]
    fn a_crash_at_any_step_of_compaction_leaves_a_loadable_journal() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = small(dir.path());
        fill(&ledger, 0..20);
        ledger.compact().unwrap();
        fill(&ledger, 20..40);
        // Before the second compaction: the old state and every segment it needs.
        let before = copy_dir(dir.path(), "journal-compact-before");
        ledger.compact().unwrap();
        drop(ledger);
        let state = fs::read(dir.path().join(STATE_FILE)).unwrap();

        // 1. Killed while writing the new state: a partial .tmp beside the old state.
        for cut in [0, 10, state.len() / 2, state.len()] {
            let d = copy_dir(before.path(), "journal-compact-tmp");
            fs::write(d.path().join(STATE_TMP), &state[..cut]).unwrap();
            let ledger = small(d.path());
            check_filled(&ledger, 40);
            assert!(!d.path().join(STATE_TMP).exists(), "the partial state is removed");
        }
        // 2. Killed after the rename, before (or while) deleting segments.
        let mut segments = wal_segments(before.path());
        segments.pop();
        for keep in 0..=segments.len() {
            let d = copy_dir(before.path(), "journal-compact-renamed");
            fs::write(d.path().join(STATE_FILE), &state).unwrap();
            for name in &segments[..segments.len() - keep] {
                fs::remove_file(d.path().join(name)).unwrap();
            }
            let ledger = small(d.path());
            assert_eq!(ledger.recovery().state_lsn, 41);
            check_filled(&ledger, 40);
        }
        // 3. A damaged state file refuses the start, naming the file.
        let mut damaged = state.clone();
        damaged[STATE_HEADER_LEN + 3] ^= 1;
        fs::write(dir.path().join(STATE_FILE), &damaged).unwrap();
        let err = DurableLedger::open(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: malformed at byte 0: ledger state checksum mismatch",
                dir.path().join(STATE_FILE).display()
            )
        );
        // 4. A missing state file, the journal compacted: a gap, not an empty ledger.
        fs::remove_file(dir.path().join(STATE_FILE)).unwrap();
        assert!(matches!(DurableLedger::open(dir.path()), Err(JournalError::Gap { .. })));
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
        assert_eq!(Record::decode(&buf), Ok(record));
        for cut in 0..buf.len() {
            assert!(Record::decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = buf.clone();
        bad[0] = 9;
        assert_eq!(Record::decode(&bad), Err("unknown claim outcome"));
        let long = "x".repeat(70_000);
        assert!(Record {
            visitor: &long,
            ..record
        }
        .check()
        .is_err());
    }

    mod fuzz_decoders {
        use proptest::prelude::*;

        use super::*;
        use vitrine_testkit::{apply, config, mutations};

        fn valid_record() -> Vec<u8> {
            let mut buf = Vec::new();
            Record {
                outcome: ClaimOutcome::CapReached,
                now_ms: 1_000,
                shop: "shop",
                benefit: "coupon",
                visitor: "visitor-1",
                claim_id: Some("order-1"),
            }
            .encode(&mut buf);
            buf
        }

        /// A valid state file of a ledger with grants and answers.
        fn valid_state() -> Vec<u8> {
            let dir = tempfile::tempdir().unwrap();
            let ledger = DurableLedger::open(dir.path()).unwrap();
            for (visitor, id) in [("a", "c1"), ("b", "c2"), ("a", "c3")] {
                let c = LedgerClaim {
                    cap: Some((1, 10_000)),
                    ..claim(visitor, Some(id))
                };
                ledger.claim(&c).unwrap();
            }
            ledger.compact().unwrap();
            fs::read(dir.path().join(STATE_FILE)).unwrap()
        }

        /// Recomputes a state file's length and checksum for its body.
        fn reseal(bytes: &mut [u8]) {
            if bytes.len() < STATE_HEADER_LEN {
                return;
            }
            let len = (bytes.len() - STATE_HEADER_LEN) as u64;
            bytes[20..28].copy_from_slice(&len.to_le_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(&bytes[8..28]);
            crc.update(&bytes[STATE_HEADER_LEN..]);
            let crc = crc.finalize();
            bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        }

        fn decode_any(bytes: &[u8]) {
            let shops = DashMap::default();
            let _ = decode_state(bytes, &shops);
        }

        #[test]
        fn fuzz_inputs_start_valid() {
            let state = valid_state();
            let mut resealed = state.clone();
            reseal(&mut resealed);
            assert_eq!(resealed, state);
            let shops = DashMap::default();
            assert_eq!(decode_state(&state, &shops), Ok(3));
            assert!(Record::decode(&valid_record()).is_ok());
            // A count of 2^32 - 1 shops in a 4-byte body allocates nothing for them.
            let mut huge = state[..STATE_HEADER_LEN].to_vec();
            huge.extend_from_slice(&u32::MAX.to_le_bytes());
            reseal(&mut huge);
            let shops = DashMap::default();
            assert_eq!(
                decode_state(&huge, &shops),
                Err((36, "a count larger than the bytes that follow"))
            );
        }

        proptest! {
            #![proptest_config(config(256))]

            #[test]
            fn fuzz_claim_record_arbitrary(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
                let _ = Record::decode(&bytes);
            }

            #[test]
            fn fuzz_claim_record_mutated(muts in mutations()) {
                let mut bytes = valid_record();
                apply(&mut bytes, &muts, 0);
                if let Ok(r) = Record::decode(&bytes) {
                    let mut again = Vec::new();
                    r.encode(&mut again);
                    prop_assert_eq!(again, bytes);
                }
            }

            #[test]
            fn fuzz_ledger_state_arbitrary(bytes in proptest::collection::vec(any::<u8>(), 0..256), seal in any::<bool>()) {
                let mut bytes = bytes;
                if seal {
                    let mut framed = valid_state()[..STATE_HEADER_LEN].to_vec();
                    framed.extend_from_slice(&bytes);
                    reseal(&mut framed);
                    bytes = framed;
                }
                decode_any(&bytes);
            }

            #[test]
            fn fuzz_ledger_state_mutated(muts in mutations(), seal in any::<bool>()) {
                let mut bytes = valid_state();
                apply(&mut bytes, &muts, 0);
                if seal {
                    reseal(&mut bytes);
                }
                decode_any(&bytes);
            }
        }
    }

    /// `claimed(...)` reads grants by benefit and instant, also after a reopen.
    #[test]
    fn grants_are_found_by_benefit_and_instant_also_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let at = |visitor, benefit, now_ms| LedgerClaim {
            benefit,
            now_ms,
            ..claim(visitor, None)
        };
        {
            let ledger = DurableLedger::open(dir.path()).unwrap();
            assert_eq!(ledger.claim(&at("a", "b", 1_000)).unwrap(), ClaimOutcome::Granted);
            assert_eq!(ledger.claim(&at("c", "other", 5_000)).unwrap(), ClaimOutcome::Granted);
        }
        let ledger = DurableLedger::open(dir.path()).unwrap();
        let b: Arc<str> = Arc::from("b");
        let only_b = Some(std::slice::from_ref(&b));
        assert!(ledger.granted("s", "a", only_b, &|t| (1_000..1_001).contains(&t)));
        assert!(
            !ledger.granted("s", "a", only_b, &|t| (1_001..9_000).contains(&t)),
            "the grant is before"
        );
        assert!(
            !ledger.granted("s", "a", only_b, &|t| (0..1_000).contains(&t)),
            "the grant is after"
        );
        assert!(!ledger.granted("s", "c", only_b, &|_| true));
        assert!(ledger.granted("s", "c", None, &|_| true), "any benefit");
        assert!(!ledger.granted("t", "a", None, &|_| true), "another shop");
        let mut seen = Vec::new();
        ledger.grantees("s", None, &|_| true, &mut |v| seen.push(v.to_string()));
        seen.sort();
        assert_eq!(seen, ["a", "c"]);
        seen.clear();
        ledger.grantees("s", only_b, &|t| t >= 2_000, &mut |v| seen.push(v.to_string()));
        assert!(seen.is_empty());
    }
}
