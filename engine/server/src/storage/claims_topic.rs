//! `data/claims-topic.state`: a cluster replica's claim ledger and the
//! claims topic's next offset per partition, taken between two records, so
//! that a start loads it and reads the topic from those offsets: every
//! record applied to the state exactly once (`docs/cluster.md`, "Claims").
//!
//! In cluster mode the topic is the journal; this file only spares a start
//! the replay of the whole topic. It is written at every snapshot and at
//! shutdown, crash-safely: `claims-topic.state.tmp`, `fsync`, rename,
//! directory `fsync`. A file that fails its checks refuses the start, naming
//! the file (like the journals): reading the topic from its beginning over a
//! damaged file's half state would count grants twice.
//!
//! ```text
//! file     := "VTRNCLTS" | version u32 (2) | body_len u64 | crc32 u32 | body
//!             crc32 covers version, body_len and the body
//! body     := topic s16 | shops s16 | count u32 | offset{count} | ledger
//!             (version 1, no `shops`, is read as "shops unknown")
//! offset   := partition i32 | next i64
//! ledger   := the body of the claims journal's state file (claims_journal.rs)
//! ```
//! Integers are little-endian; every count is checked against the bytes
//! left before anything is allocated for it.
//!
//! `shops` is the `--shops` the state was built under: the reader skipped
//! the records of other shops, so a start under another `--shops` must not
//! resume from those offsets (the grants of a newly served shop would be
//! missing for good).

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use vitrine_core::claims::BenefitImage;
use vitrine_core::codec::{self, Put, Reader};
use vitrine_core::LedgerImage;

use crate::storage::claims_journal::{decode_body, encode_state};
use crate::storage::fs::write_atomic_via;

/// The file, in `--data-dir`.
pub const STATE_FILE: &str = "claims-topic.state";
const STATE_TMP: &str = "claims-topic.state.tmp";
const MAGIC: [u8; 8] = *b"VTRNCLTS";
const VERSION: u32 = 2;
/// The version without `shops`.
const VERSION_1: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 4;

/// What the file holds.
#[derive(Debug, Default)]
pub struct TopicState {
    /// The claims topic the offsets belong to.
    pub topic: String,
    /// The `--shops` it was built under (`Shops::describe`); `None`: not
    /// known (a version 1 file).
    pub shops: Option<String>,
    /// (partition, next offset to apply).
    pub offsets: Vec<(i32, i64)>,
    /// The ledger as of those offsets.
    pub ledger: LedgerImage,
}

/// Why the file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is damaged (or not such a file).
    #[error("{path} is damaged at byte {offset}: {reason}; move it away to rebuild the claims ledger from the whole claims topic")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Encodes the whole file.
pub fn encode(state: &TopicState) -> Vec<u8> {
    let mut body = Vec::new();
    body.put_str16(truncated(&state.topic, usize::from(u16::MAX)));
    body.put_str16(truncated(state.shops.as_deref().unwrap_or(""), usize::from(u16::MAX)));
    body.put_u32(state.offsets.len() as u32);
    for (partition, next) in &state.offsets {
        body.put_i32(*partition);
        body.put_i64(*next);
    }
    encode_state(&state.ledger, &mut body);
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.put_bytes(&MAGIC);
    out.put_u32(VERSION);
    out.put_u64(body.len() as u64);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[MAGIC.len()..]);
    crc.update(&body);
    out.put_u32(crc.finalize());
    out.put_bytes(&body);
    out
}

/// At most `max` bytes of `s`, cut at a character boundary (a topic name is
/// at most 249 bytes: never cut in practice).
fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decodes a whole file; the byte offset and reason when it is refused.
/// Never panics; allocates at most in proportion to `bytes`.
pub fn decode(bytes: &[u8]) -> Result<TopicState, (u64, &'static str)> {
    let mut r = Reader::new(bytes);
    let header = (|| {
        if r.bytes(MAGIC.len())? != MAGIC {
            return Err(r.error("not a claims topic state file"));
        }
        let version = r.u32()?;
        if version != VERSION && version != VERSION_1 {
            return Err(r.error("unsupported claims topic state version"));
        }
        Ok((version, r.u64()?, r.u32()?))
    })();
    let (version, len, crc) = header.map_err(|e: codec::Error| (0, e.what))?;
    if len != r.remaining() as u64 {
        return Err((0, "length does not match the file (truncated?)"));
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[MAGIC.len()..HEADER_LEN - 4]);
    hasher.update(&bytes[HEADER_LEN..]);
    if hasher.finalize() != crc {
        return Err((0, "checksum mismatch"));
    }
    let mut state = TopicState::default();
    let body = (|| {
        state.topic = r.str16()?.to_string();
        if version == VERSION {
            state.shops = Some(r.str16()?.to_string());
        }
        for _ in 0..r.count32(4 + 8)? {
            let partition = r.i32()?;
            let next = r.i64()?;
            if partition < 0 || next < 0 || state.offsets.iter().any(|(p, _)| *p == partition) {
                return Err(r.error("a bad or repeated partition offset"));
            }
            state.offsets.push((partition, next));
        }
        let mut seen = HashSet::new();
        let ledger = &mut state.ledger;
        decode_body(&mut r, |shop, benefit, grants, answers| {
            if !seen.insert((shop.to_string(), benefit.to_string())) {
                return Err("a benefit listed twice");
            }
            let image = BenefitImage { grants, answers };
            match ledger.last_mut().filter(|(s, _)| **s == *shop) {
                Some((_, benefits)) => benefits.push((benefit.into(), image)),
                None => ledger.push((shop.into(), vec![(benefit.into(), image)])),
            }
            Ok(())
        })
    })();
    body.map_err(|e: codec::Error| (e.offset as u64, e.what))?;
    Ok(state)
}

/// Reads `data_dir/claims-topic.state`; `None` when there is none.
pub fn read(data_dir: &Path) -> Result<Option<TopicState>, StateError> {
    let path = data_dir.join(STATE_FILE);
    let _ = std::fs::remove_file(data_dir.join(STATE_TMP));
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    decode(&bytes)
        .map(Some)
        .map_err(|(offset, reason)| StateError::Damaged { path, offset, reason })
}

/// Writes `data_dir/claims-topic.state` atomically; returns its size.
pub fn write(data_dir: &Path, state: &TopicState) -> io::Result<u64> {
    let bytes = encode(state);
    write_atomic_via(&data_dir.join(STATE_FILE), STATE_TMP, &bytes)?;
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use vitrine_core::{ClaimLedger, ClaimOutcome, LedgerClaim, MemoryLedger};

    use super::*;

    fn state() -> TopicState {
        let ledger = MemoryLedger::new();
        for (i, visitor) in ["a", "b", "a"].into_iter().enumerate() {
            let claim = LedgerClaim {
                shop: "s/1",
                benefit: if i == 2 { "other" } else { "b" },
                visitor,
                now_ms: 1_000 + i as i64,
                claim_id: Some("c1"),
                cap: Some((1, 100)),
                budget: Some(5),
                denied: None,
            };
            let _ = ledger.claim(&claim);
        }
        TopicState {
            topic: "vitrine.claims".into(),
            shops: Some("s/*,t".into()),
            offsets: vec![(0, 3), (5, 0)],
            ledger: ledger.image(),
        }
    }

    #[test]
    fn roundtrip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        assert!(read(dir).unwrap().is_none());
        let original = state();
        write(dir, &original).unwrap();
        let back = read(dir).unwrap().unwrap();
        assert_eq!(back.topic, original.topic);
        assert_eq!(back.shops, original.shops);
        assert_eq!(back.offsets, original.offsets);
        assert_eq!(encode(&back), encode(&original));
        let ledger = MemoryLedger::from_image(back.ledger);
        let retry = LedgerClaim {
            shop: "s/1",
            benefit: "b",
            visitor: "a",
            now_ms: 5_000,
            claim_id: Some("c1"),
            cap: None,
            budget: None,
            denied: None,
        };
        assert_eq!(ledger.claim(&retry), Ok(ClaimOutcome::Granted));
        assert!(!dir.join(STATE_TMP).exists(), "the temporary file is renamed away");
    }

    /// Every truncation and every single bit flip is refused (CRC), never a
    /// panic and never a silently different state.
    #[test]
    fn damage_is_refused_with_the_file_named() {
        let bytes = encode(&state());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                assert!(decode(&damaged).is_err(), "bit {bit} of byte {at}");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        std::fs::write(dir.join(STATE_FILE), &bytes[..bytes.len() - 1]).unwrap();
        let err = read(dir).unwrap_err().to_string();
        assert!(
            err.contains("claims-topic.state is damaged at byte 0: length does not match"),
            "{err}"
        );
    }
}
