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
//! file     := "VTRNCLTS" | version u32 (1) | body_len u64 | crc32 u32 | body
//!             crc32 covers version, body_len and the body
//! body     := topic s16 | count u32 | offset{count} | ledger
//! offset   := partition i32 | next i64
//! ledger   := the body of the claims journal's state file (claims_journal.rs)
//! ```
//! Integers are little-endian; every count is checked against the bytes
//! left before anything is allocated for it.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use vitrine_core::claims::BenefitImage;
use vitrine_core::LedgerImage;

use crate::storage::claims_journal::{decode_body, encode_state};
use crate::storage::wal::RecordReader;

/// The file, in `--data-dir`.
pub const STATE_FILE: &str = "claims-topic.state";
const STATE_TMP: &str = "claims-topic.state.tmp";
const MAGIC: [u8; 8] = *b"VTRNCLTS";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 4;

/// What the file holds.
#[derive(Debug, Default)]
pub struct TopicState {
    /// The claims topic the offsets belong to.
    pub topic: String,
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
    let topic = state.topic.as_bytes();
    let n = topic.len().min(usize::from(u16::MAX));
    body.extend_from_slice(&(n as u16).to_le_bytes());
    body.extend_from_slice(&topic[..n]);
    body.extend_from_slice(&(state.offsets.len() as u32).to_le_bytes());
    for (partition, next) in &state.offsets {
        body.extend_from_slice(&partition.to_le_bytes());
        body.extend_from_slice(&next.to_le_bytes());
    }
    encode_state(&state.ledger, &mut body);
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[8..]);
    crc.update(&body);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes a whole file; the byte offset and reason when it is refused.
/// Never panics; allocates at most in proportion to `bytes`.
pub fn decode(bytes: &[u8]) -> Result<TopicState, (u64, &'static str)> {
    let mut r = RecordReader::new(bytes);
    let header = (|| {
        if r.take(8)? != MAGIC {
            return Err("not a claims topic state file");
        }
        if u32::from_le_bytes(r.array()?) != VERSION {
            return Err("unsupported claims topic state version");
        }
        let len = u64::from_le_bytes(r.array()?);
        let crc = u32::from_le_bytes(r.array()?);
        Ok((len, crc))
    })();
    let (len, crc) = header.map_err(|what| (0, what))?;
    if len != r.remaining() as u64 {
        return Err((0, "length does not match the file (truncated?)"));
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[8..HEADER_LEN - 4]);
    hasher.update(&bytes[HEADER_LEN..]);
    if hasher.finalize() != crc {
        return Err((0, "checksum mismatch"));
    }
    let mut state = TopicState::default();
    let body = (|| {
        let n = u16::from_le_bytes(r.array()?);
        state.topic = std::str::from_utf8(r.take(usize::from(n))?)
            .map_err(|_| "the topic is not UTF-8")?
            .to_string();
        let count = u32::from_le_bytes(r.array()?) as usize;
        if count.saturating_mul(12) > r.remaining() {
            return Err("a count larger than the bytes that follow");
        }
        for _ in 0..count {
            let partition = i32::from_le_bytes(r.array()?);
            let next = i64::from_le_bytes(r.array()?);
            if partition < 0 || next < 0 || state.offsets.iter().any(|(p, _)| *p == partition) {
                return Err("a bad or repeated partition offset");
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
    body.map_err(|what| ((bytes.len() - r.remaining()) as u64, what))?;
    Ok(state)
}

/// Reads `data_dir/claims-topic.state`; `None` when there is none.
pub fn read(data_dir: &Path) -> Result<Option<TopicState>, StateError> {
    let path = data_dir.join(STATE_FILE);
    let _ = fs::remove_file(data_dir.join(STATE_TMP));
    let bytes = match fs::read(&path) {
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
    let tmp = data_dir.join(STATE_TMP);
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, data_dir.join(STATE_FILE))?;
        File::open(data_dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use vitrine_core::{ClaimLedger, ClaimOutcome, LedgerClaim, MemoryLedger};

    use super::*;
    use crate::test_support::TempDir;

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
            offsets: vec![(0, 3), (5, 0)],
            ledger: ledger.image(),
        }
    }

    #[test]
    fn roundtrip_through_the_file() {
        let dir = TempDir::new("claims-topic-state");
        let dir = &dir.0;
        assert!(read(dir).unwrap().is_none());
        let original = state();
        write(dir, &original).unwrap();
        let back = read(dir).unwrap().unwrap();
        assert_eq!(back.topic, original.topic);
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
        let dir = TempDir::new("claims-topic-damaged");
        let dir = &dir.0;
        fs::write(dir.join(STATE_FILE), &bytes[..bytes.len() - 1]).unwrap();
        let err = read(dir).unwrap_err().to_string();
        assert!(
            err.contains("claims-topic.state is damaged at byte 0: length does not match"),
            "{err}"
        );
    }
}
