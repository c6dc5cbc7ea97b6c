//! Snapshot files: the audience index written to `--data-dir/snapshots`
//! periodically and at shutdown, and loaded at start.
//!
//! A snapshot file is [`vitrine_core::snapshot`]'s checksummed encoding of
//! the index, with a [`Position`] as its meta: what the index reflects (the
//! events journal up to an LSN, each Kafka partition up to an offset) and
//! the rule revisions it was taken under. Restart = load the newest valid
//! snapshot, replay the events journal after its LSN, resume Kafka from its
//! offsets. The position is taken *before* the index is encoded and applying
//! an event is idempotent, so whatever the encoding picked up of events
//! applied meanwhile, replaying from the position gives the exact state.
//!
//! # Files
//!
//! `snapshot-NNNNNNNNNNNN.vsnap`, numbered in the order written. A write goes
//! to `snapshot-N.vsnap.tmp`, is fsync'd, renamed into place and the
//! directory fsync'd, so a crash leaves either the old set of snapshots or
//! the new one, plus perhaps a `.tmp` file that the next start removes. Only
//! the newest `--snapshot-keep` are kept.
//!
//! A snapshot that fails its checks (truncated, bit-flipped, not a
//! snapshot, a meta this build does not understand) is never loaded: it is
//! renamed to `*.damaged` (kept for inspection, out of the rotation), counted
//! in `vitrine_snapshot_load_failures_total`, and the next older one is
//! tried; with none left, the engine starts empty and replays the whole log.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use vitrine_core::codec::{self, Put, Reader};
use vitrine_core::{snapshot, Index};

use crate::storage::fs::{sync_dir, write_atomic_via};

/// The subdirectory of `--data-dir` holding snapshots.
pub const DIR_NAME: &str = "snapshots";
const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".vsnap";
/// How much of a file [`SnapshotDir::positions`] reads to find its meta.
const META_PREFIX_BYTES: u64 = 1 << 20;
const META_VERSION: u8 = 1;

/// What a snapshot's index reflects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// When the snapshot was taken, ms since the Unix epoch.
    pub created_ms: i64,
    /// Every events-journal record up to this LSN is in the index (0: none).
    pub events_lsn: u64,
    /// The Kafka topic and, per partition, the next offset to read.
    pub kafka: Option<KafkaPosition>,
    /// Each shop's rule revision when the snapshot was taken.
    pub revisions: Vec<(String, u64)>,
    /// The decisions topic and its next offsets (cluster mode): every
    /// decision record before them is in the index as an exposure.
    pub decisions: Option<KafkaPosition>,
}

/// Where a snapshot stands in the behavior topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaPosition {
    /// The topic.
    pub topic: String,
    /// (partition, next offset): every message before it is in the index.
    pub offsets: Vec<(i32, i64)>,
}

impl KafkaPosition {
    /// `topic str | n u32 | (partition i32 | offset i64)*`.
    fn encode(&self, out: &mut Vec<u8>) {
        out.put_str32(&self.topic);
        out.put_u32(self.offsets.len() as u32);
        for &(p, o) in &self.offsets {
            out.put_i32(p);
            out.put_i64(o);
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<KafkaPosition, codec::Error> {
        let topic = r.str32()?.to_owned();
        let n = r.count32(12)?;
        let mut offsets = Vec::with_capacity(n);
        for _ in 0..n {
            offsets.push((r.i32()?, r.i64()?));
        }
        Ok(KafkaPosition { topic, offsets })
    }
}

impl Position {
    /// The meta bytes: `version u8 | created_ms i64 | events_lsn u64 |
    /// kafka u8 [topic str | n u32 | (partition i32 | offset i64)*] |
    /// n u32 | (shop str | revision u64)* [| decisions]`, with `str` = u32
    /// length + UTF-8 and the optional trailer `decisions` = `topic str | n
    /// u32 | (partition i32 | offset i64)*`, written only in cluster mode
    /// (so a position without it encodes exactly as before it existed).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![META_VERSION];
        out.put_i64(self.created_ms);
        out.put_u64(self.events_lsn);
        match &self.kafka {
            None => out.put_u8(0),
            Some(k) => {
                out.put_u8(1);
                k.encode(&mut out);
            }
        }
        out.put_u32(self.revisions.len() as u32);
        for (shop, revision) in &self.revisions {
            out.put_str32(shop);
            out.put_u64(*revision);
        }
        if let Some(d) = &self.decisions {
            d.encode(&mut out);
        }
        out
    }

    /// Reads [`Position::encode`]'s bytes; never panics on garbage.
    pub fn decode(bytes: &[u8]) -> Result<Position, codec::Error> {
        let mut r = Reader::new(bytes);
        if r.u8()? != META_VERSION {
            return Err(r.error("unknown snapshot meta version"));
        }
        let created_ms = r.i64()?;
        let events_lsn = r.u64()?;
        let kafka = match r.u8()? {
            0 => None,
            1 => Some(KafkaPosition::decode(&mut r)?),
            _ => return Err(r.error("bad Kafka flag in snapshot meta")),
        };
        let n = r.count32(12)?;
        let mut revisions = Vec::with_capacity(n);
        for _ in 0..n {
            revisions.push((r.str32()?.to_owned(), r.u64()?));
        }
        let decisions = if r.is_empty() {
            None
        } else {
            Some(KafkaPosition::decode(&mut r)?)
        };
        r.finish()?;
        Ok(Position {
            created_ms,
            events_lsn,
            kafka,
            revisions,
            decisions,
        })
    }
}

/// A snapshot loaded at start.
#[derive(Debug)]
pub struct Loaded {
    /// The index it holds.
    pub index: Index,
    /// What the index reflects.
    pub position: Position,
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Reading and decoding it.
    pub took: Duration,
}

/// A snapshot just written.
#[derive(Debug, Clone)]
pub struct Written {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Encoding the index.
    pub encode: Duration,
    /// Writing, fsync and rename.
    pub write: Duration,
}

/// A snapshot that could not be loaded, and why.
#[derive(Debug, Clone)]
pub struct Damaged {
    /// Where it was (it is renamed to `*.damaged`).
    pub path: PathBuf,
    /// What was wrong.
    pub reason: String,
}

/// The snapshot directory.
#[derive(Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
    keep: usize,
    /// One write at a time (periodic and shutdown snapshots may meet).
    writing: Mutex<()>,
}

impl SnapshotDir {
    /// Opens (creating) `data_dir/snapshots`, removing `.tmp` files that a
    /// crash left behind. Keeps the newest `keep` (at least 1) snapshots.
    pub fn open(data_dir: &Path, keep: usize) -> io::Result<SnapshotDir> {
        let dir = data_dir.join(DIR_NAME);
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                tracing::info!(path = %path.display(), "removing an unfinished snapshot");
                fs::remove_file(&path)?;
            }
        }
        Ok(SnapshotDir {
            dir,
            keep: keep.max(1),
            writing: Mutex::new(()),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Snapshot files by number, oldest first.
    fn list(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(n) = name
                .strip_prefix(PREFIX)
                .and_then(|r| r.strip_suffix(SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            {
                out.push((n, path));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The highest number any file (also damaged ones) has used.
    fn last_number(&self) -> io::Result<u64> {
        let mut last = 0;
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(n) = name
                .strip_prefix(PREFIX)
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse::<u64>().ok())
            {
                last = last.max(n);
            }
        }
        Ok(last)
    }

    /// Loads the newest snapshot that passes every check; damaged ones on
    /// the way are set aside and returned. `None`: no valid snapshot.
    pub fn load_newest(&self) -> io::Result<(Option<Loaded>, Vec<Damaged>)> {
        let mut damaged = Vec::new();
        for (_, path) in self.list()?.into_iter().rev() {
            let started = Instant::now();
            let bytes = fs::read(&path)?;
            let reason = match snapshot::decode(&bytes) {
                Ok(s) => match Position::decode(&s.meta) {
                    Ok(position) => {
                        return Ok((
                            Some(Loaded {
                                index: s.index,
                                position,
                                path,
                                bytes: bytes.len() as u64,
                                took: started.elapsed(),
                            }),
                            damaged,
                        ))
                    }
                    Err(e) => format!("snapshot meta: {e}"),
                },
                Err(e) => e.to_string(),
            };
            let mut aside = path.clone().into_os_string();
            aside.push(".damaged");
            fs::rename(&path, &aside)?;
            sync_dir(&self.dir)?;
            damaged.push(Damaged { path, reason });
        }
        Ok((None, damaged))
    }

    /// Encodes `index` with `position` and writes it as the newest snapshot
    /// (temp file, fsync, rename, directory fsync); then drops the oldest
    /// beyond `keep`.
    pub fn write(&self, index: &Index, position: &Position) -> io::Result<Written> {
        let _one = self.writing.lock();
        let started = Instant::now();
        let bytes = snapshot::encode(index, &position.encode());
        let encode = started.elapsed();
        let started = Instant::now();
        let n = self.last_number()? + 1;
        let path = self.dir.join(format!("{PREFIX}{n:012}{SUFFIX}"));
        write_atomic_via(&path, &format!("{PREFIX}{n:012}{SUFFIX}.tmp"), &bytes)?;
        let write = started.elapsed();
        let snapshots = self.list()?;
        if snapshots.len() > self.keep {
            for (_, old) in &snapshots[..snapshots.len() - self.keep] {
                fs::remove_file(old)?;
            }
            sync_dir(&self.dir)?;
        }
        Ok(Written {
            path,
            bytes: bytes.len() as u64,
            encode,
            write,
        })
    }

    /// The positions of the snapshots kept, oldest first, read from the
    /// start of each file (unverified: see [`snapshot::peek_meta`]). A
    /// snapshot whose position cannot be read is listed as `None`.
    pub fn positions(&self) -> io::Result<Vec<(PathBuf, Option<Position>)>> {
        let mut out = Vec::new();
        for (_, path) in self.list()? {
            let mut prefix = Vec::new();
            File::open(&path)?.take(META_PREFIX_BYTES).read_to_end(&mut prefix)?;
            let position = snapshot::peek_meta(&prefix).ok().and_then(|m| Position::decode(m).ok());
            out.push((path, position));
        }
        Ok(out)
    }

    /// The events-journal LSN that every kept snapshot covers: records up
    /// to it may be compacted away. `None` when some kept snapshot's
    /// position is unreadable (keep everything).
    pub fn compactable_lsn(&self) -> io::Result<Option<u64>> {
        let positions = self.positions()?;
        let mut lsn = u64::MAX;
        for (_, p) in &positions {
            match p {
                Some(p) => lsn = lsn.min(p.events_lsn),
                None => return Ok(None),
            }
        }
        Ok((!positions.is_empty()).then_some(lsn))
    }
}

#[cfg(test)]
mod tests {
    use vitrine_core::event::Fields;
    use vitrine_core::Event;

    use super::*;

    fn index(visitors: usize) -> Index {
        let index = Index::new();
        for v in 0..visitors {
            let visitor = format!("v{v}");
            let event = Event::validate(Fields {
                shop: Some("s".into()),
                visitor: Some(visitor.as_str().into()),
                action: Some("view".into()),
                item: Some("i1".into()),
                ts: Some(1_794_000_000_000),
                ..Fields::default()
            })
            .unwrap();
            index.apply(&event);
        }
        index
    }

    fn position(lsn: u64) -> Position {
        Position {
            created_ms: 1_794_000_000_000,
            events_lsn: lsn,
            kafka: Some(KafkaPosition {
                topic: "vitrine.behavior".into(),
                offsets: vec![(0, 10), (1, 0), (3, 99)],
            }),
            revisions: vec![("demo-apparel".into(), 3), ("s".into(), 1)],
            decisions: None,
        }
    }

    fn visitors(index: &Index) -> u64 {
        index.shop("s").map_or(0, |s| s.stats().visitors)
    }

    #[test]
    fn positions_roundtrip_and_garbage_is_refused() {
        let p = position(42);
        assert_eq!(Position::decode(&p.encode()).unwrap(), p);
        let empty = Position::default();
        assert_eq!(Position::decode(&empty.encode()).unwrap(), empty);
        let bytes = p.encode();
        for cut in 0..bytes.len() {
            assert!(Position::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = position(1).encode();
        // The Kafka offsets count, made absurd: refused, not allocated.
        huge[18 + 4 + "vitrine.behavior".len()..][..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Position::decode(&huge).is_err());
    }

    /// The decisions topic's offsets ride as an optional trailer: a
    /// position without them encodes as before (the golden files), one with
    /// them roundtrips, and a cut trailer is refused.
    #[test]
    fn decisions_offsets_roundtrip_as_an_optional_trailer() {
        let old = position(42);
        let with = Position {
            decisions: Some(KafkaPosition {
                topic: "vitrine.decisions".into(),
                offsets: vec![(0, 7), (5, 1)],
            }),
            ..old.clone()
        };
        let (old_bytes, bytes) = (old.encode(), with.encode());
        assert_eq!(Position::decode(&bytes).unwrap(), with);
        assert_eq!(&bytes[..old_bytes.len()], &old_bytes[..]);
        assert_eq!(Position::decode(&old_bytes).unwrap(), old);
        for cut in old_bytes.len() + 1..bytes.len() {
            assert!(Position::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn newest_valid_snapshot_loads_and_old_ones_rotate_out() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path(), 2).unwrap();
        assert!(dir.load_newest().unwrap().0.is_none());
        for n in 1..=4 {
            dir.write(&index(n * 10), &position(n as u64)).unwrap();
        }
        let kept = dir.positions().unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].1.as_ref().unwrap().events_lsn, 3);
        assert_eq!(dir.compactable_lsn().unwrap(), Some(3));
        let (loaded, damaged) = dir.load_newest().unwrap();
        let loaded = loaded.unwrap();
        assert!(damaged.is_empty());
        assert_eq!(loaded.position, position(4));
        assert_eq!(visitors(&loaded.index), 40);
    }

    #[test]
    fn damaged_snapshots_are_set_aside_and_an_older_one_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path(), 5).unwrap();
        for n in 1..=4 {
            dir.write(&index(n * 10), &position(n as u64)).unwrap();
        }
        let files: Vec<PathBuf> = dir.list().unwrap().into_iter().map(|(_, p)| p).collect();
        // Newest: truncated. Third: one bit flipped in the middle. Second: not a snapshot.
        let bytes = fs::read(&files[3]).unwrap();
        fs::write(&files[3], &bytes[..bytes.len() - 7]).unwrap();
        let mut bytes = fs::read(&files[2]).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x10;
        fs::write(&files[2], &bytes).unwrap();
        fs::write(&files[1], b"hello").unwrap();
        // And an unfinished write a crash left behind.
        fs::write(dir.dir().join("snapshot-000000000009.vsnap.tmp"), b"partial").unwrap();

        let dir = SnapshotDir::open(tmp.path(), 5).unwrap();
        let (loaded, damaged) = dir.load_newest().unwrap();
        let loaded = loaded.unwrap();
        assert_eq!(loaded.position.events_lsn, 1);
        assert_eq!(visitors(&loaded.index), 10);
        assert_eq!(damaged.len(), 3, "{damaged:?}");
        assert!(damaged[0].reason.contains("truncated"), "{damaged:?}");
        assert!(damaged[1].reason.contains("damaged"), "{damaged:?}");
        // Set aside, never tried again; a new write gets a fresh number.
        assert_eq!(dir.list().unwrap().len(), 1);
        let written = dir.write(&index(5), &position(9)).unwrap();
        assert!(
            written.path.ends_with("snapshot-000000000005.vsnap"),
            "{}",
            written.path.display()
        );
        assert!(!dir.dir().join("snapshot-000000000009.vsnap.tmp").exists());
    }

    #[test]
    fn no_valid_snapshot_means_none() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path(), 3).unwrap();
        dir.write(&index(3), &position(7)).unwrap();
        let (_, path) = dir.list().unwrap().remove(0);
        fs::write(&path, b"").unwrap();
        let (loaded, damaged) = dir.load_newest().unwrap();
        assert!(loaded.is_none());
        assert_eq!(damaged.len(), 1);
        assert_eq!(dir.compactable_lsn().unwrap(), None);
    }

    mod fuzz_files {
        use proptest::prelude::*;

        use super::*;
        use vitrine_testkit::{apply, config, mutations};

        proptest! {
            #![proptest_config(config(64))]

            #[test]
            fn fuzz_position_arbitrary(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
                let _ = Position::decode(&bytes);
            }

            #[test]
            fn fuzz_position_mutated(muts in mutations()) {
                let mut bytes = position(7).encode();
                apply(&mut bytes, &muts, 0);
                if let Ok(p) = Position::decode(&bytes) {
                    prop_assert_eq!(p.encode(), bytes);
                }
            }

            /// A damaged snapshot file is set aside (or, if it still checks out, loaded): never a panic.
            #[test]
            fn fuzz_snapshot_file_mutated(muts in mutations(), seal in any::<bool>()) {
                let tmp = tempfile::tempdir().unwrap();
                let dir = SnapshotDir::open(tmp.path(), 2).unwrap();
                let written = dir.write(&index(3), &position(5)).unwrap();
                let mut bytes = fs::read(&written.path).unwrap();
                apply(&mut bytes, &muts, 0);
                if seal {
                    snapshot::reseal(&mut bytes);
                }
                fs::write(&written.path, &bytes).unwrap();
                let _ = dir.positions();
                let (loaded, damaged) = dir.load_newest().unwrap();
                prop_assert_eq!(loaded.is_some() as usize + damaged.len(), 1);
            }
        }
    }
}
