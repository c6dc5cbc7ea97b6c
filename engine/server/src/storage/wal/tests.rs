//! The WAL's tests: crashes at every byte, damage, compaction, concurrency.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Barrier;

use super::*;
use tempfile::TempDir;

const KIND: [u8; 4] = *b"TST1";

/// A fresh directory under the system temp dir, removed on drop.
/// Segment files of a log directory.
trait Segments {
    fn segment(&self, first: u64) -> PathBuf;
    /// First LSNs of the segment files, in order.
    fn segments(&self) -> Vec<u64>;
}

impl Segments for TempDir {
    fn segment(&self, first: u64) -> PathBuf {
        self.path().join(segment_name(first))
    }

    fn segments(&self) -> Vec<u64> {
        list_segments(self.path())
            .unwrap()
            .into_iter()
            .map(|(first, _)| first)
            .collect()
    }
}

/// A record's content, given its LSN: "rec-0001", 8 bytes.
fn content(lsn: u64) -> Vec<u8> {
    format!("rec-{lsn:04}").into_bytes()
}

/// Segments of two one-record batches for LSNs 1..=9 (a batch of one
/// record is 28 + 4 + 8 bytes).
const TWO_BATCHES: u64 = SEGMENT_HEADER_LEN as u64 + 2 * 40;

fn options(segment_bytes: u64, start_after: u64) -> Options {
    Options {
        segment_bytes,
        start_after,
        ..Options::new("test", KIND)
    }
}

/// Records as replayed: (LSN, bytes).
type Records = Vec<(u64, Vec<u8>)>;

/// Opens with `start_after`, collecting the replayed records.
fn open(dir: &TempDir, segment_bytes: u64, after: u64) -> Result<(Wal, Recovery, Records), OpenError> {
    let mut seen = Vec::new();
    let (wal, recovery) = Wal::open(dir.path(), options(segment_bytes, after), |lsn, r| {
        seen.push((lsn, r.to_vec()));
        Ok(())
    })?;
    Ok((wal, recovery, seen))
}

/// Appends the records of LSNs `lsns` one batch each.
fn append_each(wal: &Wal, lsns: std::ops::RangeInclusive<u64>) {
    for lsn in lsns {
        let record = content(lsn);
        assert_eq!(wal.append(record.len(), |out| out.extend_from_slice(&record)), Ok(lsn));
        wal.wait(lsn).unwrap();
    }
}

fn expected(lsns: std::ops::RangeInclusive<u64>) -> Records {
    lsns.map(|lsn| (lsn, content(lsn))).collect()
}

/// A log of records 1..=n, two per segment.
fn log_of(name: &str, n: u64) -> TempDir {
    let dir = tempfile::Builder::new().prefix(name).tempdir().unwrap();
    let (wal, _, _) = open(&dir, TWO_BATCHES, 0).unwrap();
    append_each(&wal, 1..=n);
    dir
}

#[test]
fn lsns_continue_across_reopens_and_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, recovery, seen) = open(&dir, TWO_BATCHES, 0).unwrap();
    assert!(seen.is_empty());
    assert_eq!((recovery.first_lsn, recovery.last_lsn, recovery.segments), (1, 0, 1));
    assert_eq!((wal.first_lsn(), wal.durable_lsn()), (1, 0));
    append_each(&wal, 1..=3);
    assert_eq!(dir.segments(), [1, 3]);
    let stats = wal.stats();
    assert_eq!(
        (stats.batches, stats.records, stats.bytes, stats.segments),
        (3, 3, 120, 2)
    );
    drop(wal);
    for round in 0..3 {
        let (wal, recovery, seen) = open(&dir, TWO_BATCHES, 0).unwrap();
        let last = 3 + 2 * round;
        assert_eq!(seen, expected(1..=last), "round {round}");
        assert_eq!((recovery.last_lsn, wal.durable_lsn()), (last, last));
        append_each(&wal, last + 1..=last + 2);
    }
    assert_eq!(dir.segments(), [1, 3, 5, 7, 9]);
    // Every segment's header names its place in the log.
    for first in dir.segments() {
        let header = fs::read(dir.segment(first)).unwrap();
        assert_eq!(header[..SEGMENT_HEADER_LEN], segment_header(KIND, first, first - 1));
    }
}

#[test]
fn a_crash_at_any_byte_of_the_last_write_keeps_exactly_the_complete_records() {
    // 4 records: the last write is the second batch of segment 3;
    // 5 records: it is the first batch of segment 5, created for it.
    for n in [4, 5] {
        let source = log_of("crash-src", n);
        let last_segment = if n == 4 { 3 } else { 5 };
        let bytes = fs::read(source.segment(last_segment)).unwrap();
        let last_start = bytes.len() - 40;
        // With 5 records, the crash may also interrupt the segment's creation.
        let first_cut = if n == 5 { 0 } else { last_start };
        for cut in first_cut..bytes.len() {
            let dir = tempfile::tempdir().unwrap();
            for first in source.segments() {
                fs::copy(source.segment(first), dir.segment(first)).unwrap();
            }
            fs::write(dir.segment(last_segment), &bytes[..cut]).unwrap();
            let (wal, recovery, seen) = open(&dir, TWO_BATCHES, 0).unwrap();
            assert_eq!(seen, expected(1..=n - 1), "n {n} cut at {cut}");
            if cut < SEGMENT_HEADER_LEN {
                // The crash interrupted the segment's creation: no record in it.
                assert_eq!(dir.segments().last(), Some(&(n - 2)), "cut at {cut}");
                assert_eq!(recovery.truncated_bytes, 0);
            } else {
                assert_eq!(recovery.truncated_bytes, (cut - last_start) as u64);
                let legible = cut >= last_start + 16;
                assert_eq!(recovery.dropped_records, legible.then_some(1), "cut at {cut}");
                let len = fs::metadata(dir.segment(last_segment)).unwrap().len();
                assert_eq!(len, last_start as u64, "cut back, at {cut}");
            }
            // The lost record was never acknowledged: its LSN goes to the next one.
            append_each(&wal, n..=n + 1);
            drop(wal);
            let (_wal, recovery, seen) = open(&dir, TWO_BATCHES, 0).unwrap();
            assert_eq!(seen, expected(1..=n + 1), "n {n} cut at {cut}, reopened");
            assert_eq!(recovery.truncated_bytes, 0);
        }
    }
}

#[test]
fn a_bit_flip_in_a_middle_segment_or_batch_is_corrupt_naming_file_and_offset() {
    let source = log_of("flip-src", 6);
    assert_eq!(source.segments(), [1, 3, 5]);
    // Every bit of the middle segment, and of the last segment's first batch.
    for (segment, range) in [(3, 0..120), (5, 40..80)] {
        let bytes = fs::read(source.segment(segment)).unwrap();
        for bit in range.start * 8..range.end * 8 {
            let dir = tempfile::tempdir().unwrap();
            for first in source.segments() {
                fs::copy(source.segment(first), dir.segment(first)).unwrap();
            }
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            fs::write(dir.segment(segment), &damaged).unwrap();
            let at = bit / 8;
            let err = open(&dir, TWO_BATCHES, 0).map(|_| ()).unwrap_err();
            let path = dir.segment(segment);
            match err {
                OpenError::NotALog { path: p }
                | OpenError::UnsupportedVersion { path: p, .. }
                | OpenError::Malformed { path: p, offset: 0, .. }
                    if at < SEGMENT_HEADER_LEN =>
                {
                    assert_eq!(p, path, "bit {bit}")
                }
                OpenError::Corrupt { path: p, offset, next } => {
                    assert_eq!(p, path, "bit {bit}");
                    let batch = if at < 80 { 40 } else { 80 };
                    assert_eq!(offset, batch, "bit {bit}");
                    // The last batch of a middle segment: the next segment follows.
                    assert_eq!(next, (batch == 40).then_some(80), "bit {bit}");
                }
                other => panic!("segment {segment} bit {bit}: {other:?}"),
            }
        }
    }
    // The message names the file and the offsets.
    let mut bytes = fs::read(source.segment(3)).unwrap();
    bytes[90] ^= 1;
    fs::write(source.segment(3), &bytes).unwrap();
    let err = open(&source, TWO_BATCHES, 0).map(|_| ()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: damaged batch at byte 80 followed by another segment; \
             refusing to drop acknowledged records (restore the file or move it aside)",
            source.segment(3).display()
        )
    );
}

#[test]
fn a_missing_or_renamed_middle_segment_is_an_error_naming_the_gap() {
    let dir = log_of("missing", 6);
    fs::rename(dir.segment(3), dir.path().join("aside")).unwrap();
    for after in [0, 2] {
        let err = open(&dir, TWO_BATCHES, after).map(|_| ()).unwrap_err();
        assert!(
            matches!(&err, OpenError::MissingRecords { path, from: 3, to: 4 } if *path == dir.segment(5)),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "{}: records 3 to 4 before this segment are missing (a segment was deleted or moved?)",
                dir.segment(5).display()
            )
        );
    }
    // Renamed to look like another segment: its header says otherwise.
    fs::rename(dir.path().join("aside"), dir.segment(4)).unwrap();
    let err = open(&dir, TWO_BATCHES, 0).map(|_| ()).unwrap_err();
    assert!(
        matches!(&err, OpenError::Malformed { path, offset: 0, .. } if *path == dir.segment(4)),
        "{err:?}"
    );
}

#[test]
fn replay_after_a_snapshot_skips_exactly_the_covered_records() {
    let dir = log_of("after", 10);
    assert_eq!(dir.segments(), [1, 3, 5, 7, 9]);
    // (after, segments read): from the start, at a boundary, mid-segment, at the end.
    for (after, read) in [(0, 5), (4, 3), (5, 3), (9, 1), (10, 1)] {
        let (wal, recovery, seen) = open(&dir, TWO_BATCHES, after).unwrap();
        assert_eq!(seen, expected(after + 1..=10), "after {after}");
        assert_eq!(
            (recovery.records, recovery.segments_read),
            (10 - after, read),
            "after {after}"
        );
        assert_eq!((recovery.restarted_at, wal.durable_lsn()), (None, 10));
    }
    // Covered segments are not read: damage in their records goes unnoticed.
    let mut bytes = fs::read(dir.segment(1)).unwrap();
    bytes[50] ^= 1;
    fs::write(dir.segment(1), &bytes).unwrap();
    assert!(open(&dir, TWO_BATCHES, 2).is_ok());
    assert!(matches!(
        open(&dir, TWO_BATCHES, 1).map(|_| ()),
        Err(OpenError::Corrupt { .. })
    ));

    // Beyond the end (the log lost records the snapshot has): a new segment at after + 1.
    let (wal, recovery, seen) = open(&dir, TWO_BATCHES, 15).unwrap();
    assert!(seen.is_empty());
    assert_eq!((recovery.last_lsn, recovery.restarted_at), (10, Some(16)));
    assert_eq!(wal.durable_lsn(), 15);
    assert_eq!(wal.wait(15), Ok(()));
    append_each(&wal, 16..=17);
    drop(wal);
    assert_eq!(dir.segments(), [1, 3, 5, 7, 9, 16]);
    let header = fs::read(dir.segment(16)).unwrap();
    assert_eq!(header[..SEGMENT_HEADER_LEN], segment_header(KIND, 16, 10));
    let (_wal, recovery, seen) = open(&dir, TWO_BATCHES, 15).unwrap();
    assert_eq!((seen, recovery.restarted_at), (expected(16..=17), None));
    drop(_wal);
    // An older snapshot needs records 11..=15, which never were in this log.
    for (after, needed_from) in [(12, 13), (8, 11)] {
        let err = open(&dir, TWO_BATCHES, after).map(|_| ()).unwrap_err();
        assert!(
            matches!(err, OpenError::Gap { needed_from: n, first_available: 16 } if n == needed_from),
            "after {after}: {err:?}"
        );
    }
    // A new log opened after a snapshot (its directory was lost) starts after it.
    let fresh = tempfile::tempdir().unwrap();
    let (wal, recovery, _) = open(&fresh, TWO_BATCHES, 41).unwrap();
    assert_eq!((recovery.restarted_at, wal.first_lsn()), (Some(42), 42));
    append_each(&wal, 42..=42);
}

#[test]
fn compaction_deletes_exactly_the_covered_segments() {
    let dir = log_of("compact", 10);
    let (wal, _, _) = open(&dir, TWO_BATCHES, 0).unwrap();
    let report = wal.compact(4).unwrap();
    assert_eq!(
        (report.segments_removed, report.bytes_removed, report.first_lsn),
        (2, 240, 5)
    );
    assert_eq!(dir.segments(), [5, 7, 9]);
    assert_eq!(wal.compact(5).unwrap().segments_removed, 0, "segment 5 holds record 6");
    // Never the current segment, though the snapshot covers all of it.
    let report = wal.compact(100).unwrap();
    assert_eq!((report.segments_removed, report.first_lsn), (2, 9));
    assert_eq!((dir.segments(), wal.first_lsn(), wal.stats().segments), (vec![9], 9, 1));
    append_each(&wal, 11..=12);
    drop(wal);
    let (wal, recovery, seen) = open(&dir, TWO_BATCHES, 8).unwrap();
    assert_eq!((seen, recovery.first_lsn), (expected(9..=12), 9));
    drop(wal);
    let err = open(&dir, TWO_BATCHES, 7).map(|_| ()).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::Gap {
                needed_from: 8,
                first_available: 9
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "replay needs records from 8 on, but the log continues only at 9 \
         (compacted away, or lost: restore them or rebuild from an older source)"
    );
}

#[test]
fn concurrent_appenders_get_distinct_lsns_and_replay_sees_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(&dir, 4 << 10, 0).unwrap();
    let barrier = Barrier::new(8);
    let appended: Vec<(u64, Vec<u8>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (wal, barrier) = (&wal, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let mut mine = Vec::new();
                    for i in 0..150 {
                        // Alternately one record, and three in one call.
                        let records: Vec<Vec<u8>> = (0..1 + 2 * (i % 2))
                            .map(|k| format!("t{t}-i{i}-k{k}").into_bytes())
                            .collect();
                        let last = wal
                            .append_many(&records, |r| r.len(), |r, out| out.extend_from_slice(r))
                            .unwrap();
                        wal.wait(last).unwrap();
                        let first = last + 1 - records.len() as u64;
                        mine.extend((first..=last).zip(records));
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let total = 8 * 75 * 4;
    let by_lsn: HashMap<u64, Vec<u8>> = appended.iter().cloned().collect();
    assert_eq!(by_lsn.len(), total, "distinct LSNs");
    assert!(by_lsn.keys().all(|&lsn| (1..=total as u64).contains(&lsn)));
    let stats = wal.stats();
    assert!(stats.batches <= stats.records && stats.segments > 3, "{stats:?}");
    drop(wal);
    let (_wal, recovery, seen) = open(&dir, 4 << 10, 0).unwrap();
    assert_eq!(recovery.records, total as u64);
    let mut sorted = appended;
    sorted.sort();
    assert_eq!(seen, sorted, "every record once, in LSN order, as appended");
}

#[test]
fn records_of_one_call_share_a_batch_and_oversized_appends_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(&dir, 1 << 20, 0).unwrap();
    let records = [&b"a"[..], b"", b"ccc"];
    let last = wal
        .append_many(&records, |r| r.len(), |r, out| out.extend_from_slice(r))
        .unwrap();
    assert_eq!(last, 3);
    assert_eq!(wal.wait(4), Err(WalError::NotAppended { lsn: 4 }));
    wal.wait(last).unwrap();
    assert_eq!((wal.stats().batches, wal.stats().records), (1, 3));
    let empty: [&[u8]; 0] = [];
    assert_eq!(
        wal.append_many(&empty, |r| r.len(), |r, out| out.extend_from_slice(r)),
        Ok(0)
    );
    // Refused by its announced length, or by what it wrote: nothing queued.
    let big = MAX_APPEND_BYTES;
    assert_eq!(wal.append(big, |_| {}), Err(WalError::TooLarge { bytes: big + 4 }));
    let lied = wal.append(1, |out| out.resize(out.len() + big, 0));
    assert!(matches!(lied, Err(WalError::TooLarge { .. })), "{lied:?}");
    append_each(&wal, 4..=4);
    drop(wal);
    let (_wal, _, seen) = open(&dir, 1 << 20, 0).unwrap();
    let want: Records = vec![(1, b"a".to_vec()), (2, vec![]), (3, b"ccc".to_vec()), (4, content(4))];
    assert_eq!(seen, want);
}

#[test]
fn a_failed_write_or_roll_fails_closed_and_a_reopen_continues() {
    for roll in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _, _) = open(&dir, TWO_BATCHES, 0).unwrap();
        // With two records, segment 1 is full: the next write starts segment 3.
        let durable = if roll { 2 } else { 1 };
        append_each(&wal, 1..=durable);
        let failpoints = wal.failpoints();
        let fault = if roll {
            &failpoints.fail_rolls
        } else {
            &failpoints.fail_writes
        };
        fault.store(true, Ordering::SeqCst);
        let lsn = wal.append(1, |out| out.push(b'x')).unwrap();
        assert!(matches!(wal.wait(lsn), Err(WalError::Failed(_))), "roll {roll}");
        fault.store(false, Ordering::SeqCst);
        // Closed until reopened; what was durable stays so.
        assert!(matches!(wal.append(1, |out| out.push(b'y')), Err(WalError::Failed(_))));
        assert_eq!((wal.wait(durable), wal.durable_lsn()), (Ok(()), durable));
        drop(wal);
        assert_eq!(dir.segments(), [1], "roll {roll}: no partial segment left");
        let (wal, recovery, seen) = open(&dir, TWO_BATCHES, 0).unwrap();
        assert_eq!(seen, expected(1..=durable), "roll {roll}");
        assert_eq!(recovery.truncated_bytes, 0, "roll {roll}: the failed batch was cut off");
        append_each(&wal, durable + 1..=3);
        assert_eq!(dir.segments(), [1, 3]);
    }
}

#[test]
fn a_zeroed_new_segment_is_an_interrupted_creation() {
    let dir = log_of("zeroed", 2);
    fs::write(dir.segment(3), [0; SEGMENT_HEADER_LEN]).unwrap();
    let (wal, _, seen) = open(&dir, TWO_BATCHES, 0).unwrap();
    assert_eq!(seen, expected(1..=2));
    assert_eq!(dir.segments(), [1]);
    append_each(&wal, 3..=3);
    // Only the last segment: elsewhere, a short segment is damage.
    drop(wal);
    fs::write(dir.segment(1), [0; 8]).unwrap();
    assert!(matches!(
        open(&dir, TWO_BATCHES, 0).map(|_| ()),
        Err(OpenError::NotALog { .. })
    ));
}

#[test]
fn a_second_open_of_the_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(&dir, TWO_BATCHES, 0).unwrap();
    assert!(matches!(
        open(&dir, TWO_BATCHES, 0).map(|_| ()),
        Err(OpenError::Locked { .. })
    ));
    drop(wal);
    assert!(open(&dir, TWO_BATCHES, 0).is_ok());
}

#[test]
fn a_record_the_callback_refuses_stops_the_open() {
    let dir = log_of("refused", 3);
    let err = Wal::open(dir.path(), options(TWO_BATCHES, 0), |lsn, _| {
        if lsn == 3 {
            Err("not a test record")
        } else {
            Ok(())
        }
    })
    .map(|_| ())
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: record 3 in the batch at byte 40: not a test record",
            dir.segment(3).display()
        )
    );
}

mod fuzz_segments {
    use proptest::prelude::*;

    use super::*;
    use vitrine_testkit::{apply, config, mutations};

    /// Opens a log whose only segment holds `bytes`: records or an error, never a panic.
    fn open_bytes(bytes: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.segment(1), bytes).unwrap();
        if let Ok((wal, _, seen)) = open(&dir, TWO_BATCHES, 0) {
            assert!(seen.iter().all(|(_, r)| r.len() <= MAX_BATCH_BYTES));
            drop(wal);
        }
    }

    proptest! {
        #![proptest_config(config(64))]

        #[test]
        fn fuzz_wal_arbitrary_segment(bytes in proptest::collection::vec(any::<u8>(), 0..256), header in any::<bool>()) {
            let mut file = if header { segment_header(KIND, 1, 0).to_vec() } else { Vec::new() };
            file.extend_from_slice(&bytes);
            open_bytes(&file);
        }

        #[test]
        fn fuzz_wal_mutated_segment(muts in mutations(), keep_header in any::<bool>()) {
            let source = log_of("wal-fuzz-src", 2);
            let mut bytes = fs::read(source.segment(1)).unwrap();
            apply(&mut bytes, &muts, if keep_header { SEGMENT_HEADER_LEN } else { 0 });
            open_bytes(&bytes);
        }

        #[test]
        fn fuzz_wal_batch_with_any_header_fields(len in any::<u32>(), count in any::<u32>(), seq in any::<u64>(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            // A batch whose checksum holds, whatever its fields say.
            let mut file = segment_header(KIND, 1, 0).to_vec();
            file.extend_from_slice(&BATCH_MAGIC);
            let mut fields = Vec::new();
            fields.extend_from_slice(&len.to_le_bytes());
            fields.extend_from_slice(&count.to_le_bytes());
            fields.extend_from_slice(&seq.to_le_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(&fields);
            crc.update(&body);
            file.extend_from_slice(&fields);
            file.extend_from_slice(&crc.finalize().to_le_bytes());
            file.extend_from_slice(&body);
            open_bytes(&file);
        }
    }
}
