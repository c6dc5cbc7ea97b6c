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
//! The journal is a [`crate::wal`] log in the directory given to
//! [`DurableLedger::open`] (segments, batches, checksums, torn-tail repair
//! and corruption checks are described there), with kind [`KIND`]. Claims
//! are never compacted: every replay starts at the first record. A record,
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

use std::path::Path;
use std::sync::Arc;

use ahash::RandomState;
use dashmap::DashMap;
use parking_lot::Mutex;
use vitrine_core::claims::{Answer, Usage};
use vitrine_core::{ClaimLedger, ClaimOutcome, Grants, LedgerClaim, LedgerError};

use crate::wal::{Options, RecordReader, Wal, WalError};

/// The record format of the claims journal, in its segments' headers.
pub const KIND: [u8; 4] = *b"CLM1";
/// A record's fixed part: outcome, flags, now_ms, three s16 lengths.
const MIN_RECORD_BYTES: usize = 1 + 1 + 8 + 3 * 2;

/// Why the journal could not be opened (see [`crate::wal::OpenError`]).
pub type JournalError = crate::wal::OpenError;

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
            return Err(LedgerError::Failed("a claim field is longer than 65535 bytes".into()));
        }
        Ok(())
    }

    fn encode(&self, out: &mut Vec<u8>) {
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

    /// Decodes a whole record (the log frames records, so `buf` is exactly one).
    fn decode(buf: &'a [u8]) -> Result<Record<'a>, &'static str> {
        let mut r = RecordReader::new(buf);
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
        let (shop, benefit, visitor) = (r.str16()?, r.str16()?, r.str16()?);
        let claim_id = if flags == 1 { Some(r.str16()?) } else { None };
        if !r.at_end() {
            return Err("record length does not match its fields");
        }
        if outcome != ClaimOutcome::Granted && claim_id.is_none() {
            return Err("a denial without a claim_id");
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

/// The claim record's strings: a u16 length, then the bytes.
impl<'a> RecordReader<'a> {
    fn str16(&mut self) -> Result<&'a str, &'static str> {
        let n = u16::from_le_bytes(self.array()?);
        std::str::from_utf8(self.take(usize::from(n))?).map_err(|_| "a field is not UTF-8")
    }
}

// ------------------------------------------------------------------- ledger

#[derive(Debug, Default)]
struct BenefitState {
    grants: Grants,
    /// claim_id -> (first answer and its visitor, LSN of its record; 0 = replayed).
    answers: std::collections::HashMap<Box<str>, (Answer, u64), RandomState>,
}

type Benefits = DashMap<Box<str>, Mutex<BenefitState>, RandomState>;

/// A claim ledger backed by an fsync'd, group-committed journal (see the module docs).
pub struct DurableLedger {
    shops: DashMap<Box<str>, Arc<Benefits>, RandomState>,
    wal: Wal,
    recovery: Recovery,
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
        let shops: DashMap<Box<str>, Arc<Benefits>, RandomState> = DashMap::default();
        let mut grants = 0;
        let (wal, found) = Wal::open(dir, Options::new("claims-journal", KIND), |_, bytes| {
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
        let recovery = Recovery {
            batches: found.batches,
            records: found.records,
            grants,
            truncated_bytes: found.truncated_bytes,
            dropped_records: found.dropped_records,
        };
        Ok(DurableLedger { shops, wal, recovery })
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
        })?;
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;
    use std::sync::atomic::Ordering;
    use std::sync::Barrier;

    use super::*;
    use crate::test_support::TempDir;
    use crate::wal::{segment_name, test_batch, SEGMENT_HEADER_LEN};

    /// A fresh directory under the system temp dir, removed on drop.
    /// The first (and, in these tests, only) segment of a journal directory.
    trait Segment {
        fn file(&self) -> PathBuf;
    }

    impl Segment for TempDir {
        fn file(&self) -> PathBuf {
            self.0.join(segment_name(1))
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
        let dir = TempDir::new("journal-race");
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
        let dir = TempDir::new("journal-cap");
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
        let dir = TempDir::new("journal-retry");
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
        let dir = TempDir::new("journal-retries");
        let ledger = DurableLedger::open(&dir.0).unwrap();
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
        let dir = TempDir::new("journal-bound");
        let ledger = DurableLedger::open(&dir.0).unwrap();
        assert_eq!(ledger.claim(&claim("a", Some("c1"))).unwrap(), ClaimOutcome::Granted);
        let intruder = LedgerClaim {
            denied: Some(ClaimOutcome::NotEligible),
            ..claim("b", Some("c1"))
        };
        let refused = Err(LedgerError::ClaimIdInUse { claim_id: "c1".into() });
        assert_eq!(ledger.claim(&intruder), refused);
        assert_eq!(ledger.stats().records, 1, "a refused reuse writes nothing");
        drop(ledger);
        let ledger = DurableLedger::open(&dir.0).unwrap();
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
        let source = TempDir::new("journal-crash-src");
        let ends = write_claims(&source.0, 4);
        let bytes = fs::read(source.file()).unwrap();
        assert_eq!(bytes.len() as u64, ends[3]);
        let last_start = ends[2] as usize;
        for cut in last_start..bytes.len() {
            let dir = TempDir::new("journal-crash");
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
        // A crash while the segment was being created.
        for cut in 0..SEGMENT_HEADER_LEN {
            let dir = TempDir::new("journal-crash-new");
            fs::write(dir.file(), &bytes[..cut]).unwrap();
            let ledger = DurableLedger::open(&dir.0).unwrap();
            assert_eq!(ledger.recovery(), Recovery::default(), "cut at {cut}");
        }
    }

    #[test]
    fn bit_flips_are_detected() {
        let source = TempDir::new("journal-flip-src");
        let ends = write_claims(&source.0, 3);
        let bytes = fs::read(source.file()).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let dir = TempDir::new("journal-flip");
            fs::write(dir.file(), &damaged).unwrap();
            let at = bit / 8;
            let opened = DurableLedger::open(&dir.0);
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
        let source = TempDir::new("journal-msg-src");
        let ends = write_claims(&source.0, 2);
        let mut bytes = fs::read(source.file()).unwrap();
        bytes[SEGMENT_HEADER_LEN + 30] ^= 1;
        let dir = TempDir::new("journal-msg");
        fs::write(dir.file(), &bytes).unwrap();
        let err = DurableLedger::open(&dir.0).unwrap_err();
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
        let err = DurableLedger::open(&dir.0).unwrap_err();
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
        let source = TempDir::new("journal-forged-src");
        let ends = write_claims(&source.0, 2);
        for (seq, refused) in [(0, false), (2, false), (3, true)] {
            let dir = TempDir::new("journal-forged");
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
        let dir = TempDir::new("journal-lock");
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
        let dir = TempDir::new("journal-fail");
        let ledger = DurableLedger::open(&dir.0).unwrap();
        assert_eq!(ledger.claim(&budgeted("a", Some("c1"))).unwrap(), ClaimOutcome::Granted);
        ledger.wal.faults().fail_writes.store(true, Ordering::SeqCst);
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
        ledger.wal.faults().fail_writes.store(false, Ordering::SeqCst);
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
}
