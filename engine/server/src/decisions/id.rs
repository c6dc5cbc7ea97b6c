//! `decision_id`: unique across replicas and restarts, and cheap.
//!
//! An id is `PPPPPPPPPPPPPPPP-S`: a random 64-bit prefix drawn once per
//! process (16 hex digits, also the record's `replica`) and a per-process
//! sequence number (hex, no padding) from one atomic counter. A Decide takes
//! its id with one relaxed `fetch_add`: no lock, no syscall. Two processes
//! collide only if they draw the same prefix (odds 2^-64 per pair).

use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};

/// Hex digits of the prefix.
const PREFIX_DIGITS: usize = 16;

/// The ids of one process (or one in-process server).
#[derive(Debug)]
pub struct DecisionIds {
    prefix: u64,
    next: AtomicU64,
}

impl Default for DecisionIds {
    fn default() -> DecisionIds {
        DecisionIds::new(random_prefix())
    }
}

impl DecisionIds {
    /// Ids under `prefix`, from sequence number 1.
    pub fn new(prefix: u64) -> DecisionIds {
        DecisionIds {
            prefix,
            next: AtomicU64::new(1),
        }
    }

    /// The next sequence number.
    #[inline]
    pub fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The id of sequence number `seq`.
    pub fn format(&self, seq: u64) -> String {
        let mut out = String::with_capacity(PREFIX_DIGITS + 1 + 16);
        push_hex(&mut out, self.prefix, PREFIX_DIGITS);
        out.push('-');
        let digits = (16 - seq.leading_zeros() as usize / 4).max(1);
        push_hex(&mut out, seq, digits);
        out
    }

    /// The prefix as written in ids and in the record's `replica`.
    pub fn replica(&self) -> String {
        let mut out = String::with_capacity(PREFIX_DIGITS);
        push_hex(&mut out, self.prefix, PREFIX_DIGITS);
        out
    }
}

/// The low `digits` hex digits of `value`, most significant first.
fn push_hex(out: &mut String, value: u64, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(HEX[((value >> (i * 4)) & 0xf) as usize] as char);
    }
}

/// 64 random bits: the standard library's per-process random hasher keys
/// (drawn from the OS) over the process id and the clock.
fn random_prefix() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(nanos);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefix_dash_hex_sequence() {
        let ids = DecisionIds::new(0x00ab_cdef_0123_4567);
        assert_eq!(ids.format(ids.next()), "00abcdef01234567-1");
        assert_eq!(ids.format(0x1f), "00abcdef01234567-1f");
        assert_eq!(ids.format(0), "00abcdef01234567-0");
        assert_eq!(ids.format(u64::MAX), "00abcdef01234567-ffffffffffffffff");
        assert_eq!(ids.replica(), "00abcdef01234567");
    }

    #[test]
    fn two_processes_draw_different_prefixes() {
        assert_ne!(DecisionIds::default().prefix, DecisionIds::default().prefix);
    }
}
