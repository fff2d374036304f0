//! Behaviour tests for the audit spool, through its public API and its files on disk.

#![allow(clippy::cast_possible_truncation)] // test data: small indexes into bytes

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use gateway::audit::spool::{FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES, Spool, SpoolConfig, SpoolError};

const RECORD_BYTES_MAX: u32 = 64;

fn config(dir: &Path, segment_bytes_max: u64, spool_bytes_max: u64) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_owned(),
        segment_bytes_max,
        spool_bytes_max,
        record_bytes_max: RECORD_BYTES_MAX,
    }
}

/// A config whose segments hold at most three 40-byte records.
fn small_segments_config(dir: &Path) -> SpoolConfig {
    config(dir, SEGMENT_HEADER_BYTES + 3 * (FRAME_HEADER_BYTES + 40) + 20, 1 << 20)
}

fn open(config: &SpoolConfig) -> Spool {
    match Spool::open(config.clone()) {
        Ok((spool, _)) => spool,
        Err(error) => panic!("opening the spool failed: {error}"),
    }
}

/// Distinct records of 1..=40 bytes.
fn record(index: usize) -> Vec<u8> {
    let record_bytes = 1 + index % 40;
    (0..record_bytes).map(|position| ((index * 7 + position) % 256) as u8).collect()
}

fn frame_bytes(record: &[u8]) -> u64 {
    FRAME_HEADER_BYTES + record.len() as u64
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .expect("listing the spool directory")
        .map(|entry| entry.expect("reading a directory entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "spool"))
        .collect();
    paths.sort();
    paths
}

fn directory_snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .expect("listing the spool directory")
        .map(|entry| {
            let entry = entry.expect("reading a directory entry");
            (
                entry.file_name().to_string_lossy().into_owned(),
                fs::read(entry.path()).expect("reading a file"),
            )
        })
        .collect()
}

fn append_to_file(path: &Path, bytes: &[u8]) {
    let mut file = OpenOptions::new().append(true).open(path).expect("opening a segment");
    file.write_all(bytes).expect("appending to a segment");
}

fn drain(spool: &mut Spool, records_max: usize) -> Vec<Vec<u8>> {
    let mut drained = Vec::new();
    while !spool.is_empty() {
        let batch = spool.peek(records_max, usize::MAX).expect("peek");
        assert!(!batch.is_empty(), "peek returned nothing while records are pending");
        spool.consume(batch.len()).expect("consume");
        drained.extend(batch);
    }
    drained
}

#[test]
fn append_peek_consume_keeps_order_across_many_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_segments_config(dir.path());
    let mut spool = open(&config);
    let records: Vec<Vec<u8>> = (0..100).map(record).collect();
    for batch in records.chunks(7) {
        spool.append(batch).expect("append");
    }
    assert_eq!(spool.pending_records(), 100);
    assert!(segment_files(dir.path()).len() >= 10, "expected many segments: {:?}", segment_files(dir.path()));
    assert_eq!(spool.peek(3, usize::MAX).expect("peek"), records[..3].to_vec());
    assert_eq!(spool.peek(5, usize::MAX).expect("peek"), records[..5].to_vec(), "peek must not consume");

    let drained = drain(&mut spool, 4);

    assert_eq!(drained, records);
    assert!(spool.is_empty());
    assert_eq!(spool.pending_records(), 0);
    assert_eq!(spool.pending_bytes(), 0);
    assert_eq!(spool.peek(10, usize::MAX).expect("peek"), Vec::<Vec<u8>>::new());
    assert_eq!(segment_files(dir.path()), Vec::<PathBuf>::new());
}

#[test]
fn consume_without_peek_skips_the_right_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_segments_config(dir.path());
    let mut spool = open(&config);
    let records: Vec<Vec<u8>> = (0..20).map(record).collect();
    spool.append(&records).expect("append");
    assert_eq!(spool.peek(2, usize::MAX).expect("peek"), records[..2].to_vec());

    spool.consume(11).expect("consume more than was peeked");

    assert_eq!(spool.pending_records(), 9);
    assert_eq!(spool.peek(100, usize::MAX).expect("peek"), records[11..].to_vec());
}

#[test]
fn reopen_after_drop_keeps_pending_records_and_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_segments_config(dir.path());
    let records: Vec<Vec<u8>> = (0..30).map(record).collect();
    {
        let mut spool = open(&config);
        spool.append(&records).expect("append");
        assert_eq!(spool.peek(12, usize::MAX).expect("peek"), records[..12].to_vec());
        spool.consume(12).expect("consume");
    }

    let (mut spool, report) = Spool::open(config.clone()).expect("reopen");

    assert_eq!(report.pending_records, 18);
    assert_eq!(report.dropped_torn_tail_bytes, 0);
    assert_eq!(report.torn_tail_segment_path, None);
    assert_eq!(report.pending_bytes, spool.pending_bytes());
    assert_eq!(report.segment_count, segment_files(dir.path()).len());
    assert_eq!(spool.pending_records(), 18);
    assert_eq!(spool.peek(100, usize::MAX).expect("peek"), records[12..].to_vec());
    spool.append(&[record(1000)]).expect("append after reopen");
    let mut expected = records[12..].to_vec();
    expected.push(record(1000));
    assert_eq!(drain(&mut spool, 5), expected);
}

#[test]
fn torn_last_frame_is_dropped_on_open_and_earlier_records_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), 1 << 16, 1 << 20);
    let records: Vec<Vec<u8>> = (0..5).map(record).collect();
    {
        let mut spool = open(&config);
        spool.append(&records).expect("append");
    }
    let segment = segment_files(dir.path()).pop().expect("one segment");
    let file_bytes = fs::metadata(&segment).expect("metadata").len();
    let cut_bytes = 3;
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open")
        .set_len(file_bytes - cut_bytes)
        .expect("cut");

    let (mut spool, report) = Spool::open(config.clone()).expect("reopen");

    let last_frame_bytes = frame_bytes(&records[4]);
    assert_eq!(report.dropped_torn_tail_bytes, last_frame_bytes - cut_bytes);
    assert_eq!(report.torn_tail_segment_path, Some(segment.clone()));
    assert_eq!(report.pending_records, 4);
    assert_eq!(fs::metadata(&segment).expect("metadata").len(), file_bytes - last_frame_bytes);
    assert_eq!(spool.peek(100, usize::MAX).expect("peek"), records[..4].to_vec());
    spool.append(&[record(77)]).expect("append after recovery");
    let mut expected = records[..4].to_vec();
    expected.push(record(77));
    assert_eq!(drain(&mut spool, 2), expected);
}

#[test]
fn garbage_after_the_last_frame_is_dropped_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_segments_config(dir.path());
    let records: Vec<Vec<u8>> = (0..10).map(record).collect();
    {
        let mut spool = open(&config);
        spool.append(&records).expect("append");
    }
    let last_segment = segment_files(dir.path()).pop().expect("segments");
    append_to_file(&last_segment, &[0xAB; 13]);

    let (mut spool, report) = Spool::open(config.clone()).expect("reopen");

    assert_eq!(report.dropped_torn_tail_bytes, 13);
    assert_eq!(report.torn_tail_segment_path, Some(last_segment));
    assert_eq!(spool.pending_records(), 10);
    assert_eq!(drain(&mut spool, 3), records);
}

#[test]
fn zero_filled_tail_is_not_read_as_empty_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), 1 << 16, 1 << 20);
    {
        let mut spool = open(&config);
        spool.append(&[record(1), record(2)]).expect("append");
    }
    let segment = segment_files(dir.path()).pop().expect("one segment");
    append_to_file(&segment, &[0; 64]);

    let (mut spool, report) = Spool::open(config.clone()).expect("reopen");

    assert_eq!(report.dropped_torn_tail_bytes, 64);
    assert_eq!(spool.pending_records(), 2);
    assert_eq!(spool.peek(100, usize::MAX).expect("peek"), vec![record(1), record(2)]);
}

#[test]
fn empty_records_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_segments_config(dir.path());
    let mut spool = open(&config);
    let records = vec![Vec::new(), record(3), Vec::new()];
    spool.append(&records).expect("append");
    drop(spool);

    let (mut spool, report) = Spool::open(config.clone()).expect("reopen");

    assert_eq!(report.pending_records, 3);
    assert_eq!(drain(&mut spool, 2), records);
}

#[test]
fn torn_header_of_the_last_segment_is_removed_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_segments_config(dir.path());
    let records: Vec<Vec<u8>> = (0..5).map(record).collect();
    {
        let mut spool = open(&config);
        spool.append(&records).expect("append");
    }
    let segments = segment_files(dir.path());
    let last_name = segments.last().and_then(|path| path.file_name()).expect("segments");
    let last_sequence: u64 =
        last_name.to_string_lossy().trim_end_matches(".spool").parse().expect("sequence in the name");
    let torn_segment = dir.path().join(format!("{:020}.spool", last_sequence + 1));
    fs::write(&torn_segment, b"AEGSP").expect("writing a torn header");

    let (mut spool, report) = Spool::open(config.clone()).expect("reopen");

    assert_eq!(report.dropped_torn_tail_bytes, 5);
    assert_eq!(report.torn_tail_segment_path, Some(torn_segment.clone()));
    assert!(!torn_segment.exists());
    assert_eq!(segment_files(dir.path()), segments);
    spool.append(&(5..12).map(record).collect::<Vec<_>>()).expect("append after recovery");
    assert!(torn_segment.exists(), "the sequence number is reused for the next segment");
    assert_eq!(drain(&mut spool, 4), (0..12).map(record).collect::<Vec<_>>());
}

#[test]
fn flipped_byte_in_a_middle_segment_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_segments_config(dir.path());
    {
        let mut spool = open(&config);
        spool.append(&(0..30).map(record).collect::<Vec<_>>()).expect("append");
    }
    let segments = segment_files(dir.path());
    assert!(segments.len() >= 4);
    let damaged_segment = &segments[1];
    let mut bytes = fs::read(damaged_segment).expect("read");
    let first_record_bytes = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    let second_frame_offset = 12 + 8 + first_record_bytes;
    bytes[second_frame_offset + 8] ^= 0x01;
    fs::write(damaged_segment, &bytes).expect("write");

    let error = Spool::open(config.clone()).expect_err("a damaged middle segment must not open");

    match &error {
        SpoolError::Corrupt { path, byte_offset, .. } => {
            assert_eq!(path, damaged_segment);
            assert_eq!(*byte_offset, second_frame_offset as u64);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains("truncate -s"), "the message must tell the operator what to do: {message}");
    assert!(message.contains(&damaged_segment.display().to_string()));
}

#[test]
fn missing_middle_segment_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_segments_config(dir.path());
    {
        let mut spool = open(&config);
        spool.append(&(0..30).map(record).collect::<Vec<_>>()).expect("append");
    }
    let segments = segment_files(dir.path());
    fs::remove_file(&segments[2]).expect("remove");

    let error = Spool::open(config.clone()).expect_err("a missing segment must not open");

    assert!(
        matches!(&error, SpoolError::Corrupt { path, .. } if path == &segments[2]),
        "expected Corrupt naming {:?}, got {error:?}",
        segments[2]
    );
}

#[test]
fn damaged_cursor_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_segments_config(dir.path());
    {
        let mut spool = open(&config);
        spool.append(&(0..10).map(record).collect::<Vec<_>>()).expect("append");
        spool.consume(4).expect("consume");
    }
    let cursor_path = dir.path().join("cursor");
    let mut bytes = fs::read(&cursor_path).expect("read cursor");
    assert_eq!(bytes.len(), 32);
    bytes[14] ^= 0x10;
    fs::write(&cursor_path, &bytes).expect("write cursor");

    let error = Spool::open(config.clone()).expect_err("a damaged cursor must not open");

    assert!(matches!(&error, SpoolError::Corrupt { path, .. } if path == &cursor_path), "got {error:?}");
    assert!(error.to_string().contains("delete the cursor file"));

    fs::remove_file(&cursor_path).expect("remove cursor as the message says");
    let (mut spool, report) = Spool::open(config.clone()).expect("open without a cursor");
    assert_eq!(report.pending_records, 10, "without a cursor every remaining record is replayed");
    assert_eq!(drain(&mut spool, 3), (0..10).map(record).collect::<Vec<_>>());
}

#[test]
fn full_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment_bytes_max = SEGMENT_HEADER_BYTES + 3 * (FRAME_HEADER_BYTES + 40) + 20;
    let config = config(dir.path(), segment_bytes_max, 2 * segment_bytes_max);
    let mut spool = open(&config);
    let forty_byte_record = vec![7_u8; 40];
    spool.append(&vec![forty_byte_record.clone(); 6]).expect("two full segments fit");
    assert_eq!(spool.pending_bytes(), 2 * (SEGMENT_HEADER_BYTES + 3 * 48));
    let pending_records = spool.pending_records();
    let pending_bytes = spool.pending_bytes();
    let snapshot = directory_snapshot(dir.path());

    let error =
        spool.append(std::slice::from_ref(&forty_byte_record)).expect_err("a third segment does not fit");

    match error {
        SpoolError::Full { bytes, bytes_max } => {
            assert_eq!(bytes_max, 2 * segment_bytes_max);
            assert_eq!(bytes, pending_bytes + SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES + 40);
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(spool.pending_records(), pending_records);
    assert_eq!(spool.pending_bytes(), pending_bytes);
    assert_eq!(directory_snapshot(dir.path()), snapshot);
    assert_eq!(spool.peek(100, usize::MAX).expect("peek"), vec![forty_byte_record.clone(); 6]);

    // Draining a segment makes room again.
    spool.consume(3).expect("consume a segment");
    spool.append(std::slice::from_ref(&forty_byte_record)).expect("room after draining");
    assert_eq!(spool.pending_records(), 4);
}

#[test]
fn full_batch_writes_none_of_its_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), 200, 400);
    let mut spool = open(&config);
    spool.append(&vec![vec![1_u8; 60]; 4]).expect("append");
    let pending_records = spool.pending_records();
    let pending_bytes = spool.pending_bytes();
    let snapshot = directory_snapshot(dir.path());

    let error = spool.append(&[vec![2_u8; 10], vec![3_u8; 60], vec![4_u8; 60]]).expect_err("too much");

    assert!(matches!(error, SpoolError::Full { bytes_max: 400, .. }), "got {error:?}");
    assert_eq!(spool.pending_records(), pending_records);
    assert_eq!(spool.pending_bytes(), pending_bytes);
    assert_eq!(directory_snapshot(dir.path()), snapshot);
}

#[test]
fn record_too_large_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_segments_config(dir.path());
    let mut spool = open(&config);
    spool.append(&[record(1)]).expect("append");
    let snapshot = directory_snapshot(dir.path());
    let pending_bytes = spool.pending_bytes();

    let error = spool
        .append(&[record(2), vec![0_u8; RECORD_BYTES_MAX as usize + 1]])
        .expect_err("the second record is too large");

    match error {
        SpoolError::RecordTooLarge { bytes, bytes_max } => {
            assert_eq!(bytes, RECORD_BYTES_MAX as usize + 1);
            assert_eq!(bytes_max, RECORD_BYTES_MAX);
        }
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    assert_eq!(spool.pending_records(), 1);
    assert_eq!(spool.pending_bytes(), pending_bytes);
    assert_eq!(directory_snapshot(dir.path()), snapshot);
    spool.append(&[vec![9_u8; RECORD_BYTES_MAX as usize]]).expect("a record of exactly the maximum fits");
}

#[test]
fn consumed_segments_are_deleted_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_segments_config(dir.path());
    let mut spool = open(&config);
    let forty_byte_record = vec![5_u8; 40];
    spool.append(&vec![forty_byte_record; 9]).expect("append three full segments");
    let segments = segment_files(dir.path());
    assert_eq!(segments.len(), 3);
    let segment_bytes = SEGMENT_HEADER_BYTES + 3 * 48;
    assert_eq!(spool.pending_bytes(), 3 * segment_bytes);

    spool.consume(2).expect("consume part of the first segment");
    assert_eq!(segment_files(dir.path()), segments, "a partly consumed segment stays");
    spool.consume(1).expect("consume the rest of the first segment");
    assert_eq!(segment_files(dir.path()), segments[1..].to_vec());
    assert_eq!(spool.pending_bytes(), 2 * segment_bytes);
    spool.consume(4).expect("consume the second segment and part of the third");
    assert_eq!(segment_files(dir.path()), segments[2..].to_vec());
    spool.consume(2).expect("consume everything");
    assert_eq!(segment_files(dir.path()), Vec::<PathBuf>::new());
    assert_eq!(spool.pending_bytes(), 0);

    spool.append(&[record(1)]).expect("append after draining");
    let new_segments = segment_files(dir.path());
    assert_eq!(new_segments.len(), 1);
    assert!(new_segments[0] > segments[2], "sequence numbers keep increasing: {new_segments:?}");
    drop(spool);
    let (mut spool, report) = Spool::open(config.clone()).expect("reopen");
    assert_eq!(report.pending_records, 1);
    assert_eq!(drain(&mut spool, 1), vec![record(1)]);
}

#[test]
fn consume_more_than_pending_is_an_error_and_consumes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_segments_config(dir.path());
    let mut spool = open(&config);
    spool.append(&[record(1), record(2)]).expect("append");

    let error = spool.consume(3).expect_err("only two are pending");

    assert!(matches!(error, SpoolError::ConsumeBeyondPending { count: 3, pending: 2 }), "got {error:?}");
    assert_eq!(spool.pending_records(), 2);
    assert_eq!(spool.peek(10, usize::MAX).expect("peek"), vec![record(1), record(2)]);
    spool.consume(0).expect("consuming nothing is fine");
    assert_eq!(spool.pending_records(), 2);
}

#[test]
fn peek_respects_limits_but_returns_one_oversized_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_segments_config(dir.path());
    let mut spool = open(&config);
    let records = vec![vec![1_u8; 30], vec![2_u8; 10], vec![3_u8; 10], vec![4_u8; 25]];
    spool.append(&records).expect("append");

    assert_eq!(spool.peek(10, 5).expect("peek"), records[..1].to_vec(), "one record even above bytes_max");
    assert_eq!(spool.peek(10, 50).expect("peek"), records[..3].to_vec());
    assert_eq!(spool.peek(2, 1000).expect("peek"), records[..2].to_vec());
    assert_eq!(spool.peek(0, 1000).expect("peek"), Vec::<Vec<u8>>::new());
    assert_eq!(spool.peek(10, 75).expect("peek"), records.clone());
    spool.consume(1).expect("consume");
    assert_eq!(spool.peek(10, 0).expect("peek"), records[1..2].to_vec());
    assert_eq!(spool.peek(10, 45).expect("peek"), records[1..4].to_vec());
}

#[test]
fn second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_segments_config(dir.path());
    let spool = open(&config);

    let error = Spool::open(config.clone()).expect_err("the directory is locked");

    assert!(matches!(&error, SpoolError::Locked { dir: locked } if locked == dir.path()), "got {error:?}");
    drop(spool);
    open(&config);
}

#[test]
fn invalid_config_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let too_small_segments = config(dir.path(), SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES + 63, 1 << 20);
    let spool_smaller_than_segment = config(dir.path(), 1000, 999);

    for config in [too_small_segments, spool_smaller_than_segment] {
        let error = Spool::open(config).expect_err("invalid config");
        assert!(matches!(error, SpoolError::InvalidConfig { .. }), "got {error:?}");
    }
}

#[test]
fn open_creates_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool_dir = dir.path().join("nested").join("spool");
    let config = small_segments_config(&spool_dir);

    let (spool, report) = Spool::open(config).expect("open");

    assert!(spool_dir.is_dir());
    assert!(spool.is_empty());
    assert_eq!(report.pending_records, 0);
    assert_eq!(report.segment_count, 0);
}

#[test]
fn segment_left_fully_consumed_by_a_torn_tail_is_deleted_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), 1 << 16, 1 << 20);
    {
        let mut spool = open(&config);
        spool.append(&[record(1), record(2)]).expect("append");
        spool.consume(1).expect("consume");
    }
    let segment = segment_files(dir.path()).pop().expect("one segment");
    let file_bytes = fs::metadata(&segment).expect("metadata").len();
    OpenOptions::new().write(true).open(&segment).expect("open").set_len(file_bytes - 1).expect("tear");

    let (mut spool, report) = Spool::open(config.clone()).expect("reopen");

    assert_eq!(report.dropped_torn_tail_bytes, frame_bytes(&record(2)) - 1);
    assert_eq!(report.pending_records, 0);
    assert_eq!(report.pending_bytes, 0);
    assert_eq!(report.deleted_consumed_segment_count, 1);
    assert_eq!(segment_files(dir.path()), Vec::<PathBuf>::new());
    spool.append(&[record(3)]).expect("append");
    let new_segment = segment_files(dir.path()).pop().expect("a new segment");
    assert!(new_segment > segment, "{new_segment:?} must sort after {segment:?}");
    assert_eq!(drain(&mut spool, 5), vec![record(3)]);
}
