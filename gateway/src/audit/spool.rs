//! The gateway's on-disk audit spool: a bounded, crash-safe FIFO of opaque audit records that the
//! gateway fills when the ledger is unreachable (or when a tenant requires durability before its
//! response is released) and drains, oldest first, once the ledger accepts records again.
//!
//! # On-disk format (one directory, Unix only)
//!
//! - Segment files `NNNNNNNNNNNNNNNNNNNN.spool`, named by a 20-digit zero-padded sequence number;
//!   the sequence numbers on disk are contiguous and the oldest holds the oldest records. A segment
//!   starts with a 12-byte header (the magic `AEGSPOOL`, then the format version as u32 LE) followed
//!   by frames `[record length: u32 LE][crc: u32 LE][record bytes]`. The crc is CRC-32 (IEEE) of the
//!   four length bytes followed by the record bytes, so it also protects the length, and a
//!   zero-filled tail (which some file systems leave after a crash) never parses as empty records.
//! - `cursor` (32 bytes): the magic `AEGCURSR`, version u32 LE, segment sequence u64 LE, byte offset
//!   u64 LE, and CRC-32 of those 28 bytes. Every record before (sequence, offset) has been delivered.
//!   Without a cursor file nothing has been delivered yet.
//! - `cursor.tmp`, only while the cursor is being replaced; `lock`, an advisory lock (flock) held by
//!   the open [`Spool`] so two processes never share a spool.
//!
//! # Durability argument
//!
//! - [`Spool::append`] returns Ok only after the frames were written and the segment fdatasync'd;
//!   fdatasync also persists the file length, so the frames read back after a power loss. A new
//!   segment is created with its header, fdatasync'd, and then the directory is fsync'd, so its name
//!   survives a crash before any frame lands in it. Before the writer moves on to a new segment it
//!   fdatasyncs the current one, so only the last segment can ever end in a torn write: recovery cuts
//!   such a tail off (those records were never acknowledged) and treats damage anywhere else as
//!   corruption that needs an operator.
//! - If a write or sync fails, the append is rolled back (the segment is truncated to its previous
//!   length and synced, and segments the append created are removed), so frames whose write-back
//!   failed cannot sit, unsynced, in front of frames acknowledged later. If the rollback fails too,
//!   the spool refuses further work until it is reopened and recovery has rescanned it.
//! - The cursor is replaced atomically: the new cursor is written to `cursor.tmp`, fsync'd, renamed
//!   over `cursor` (rename is atomic), and the directory is fsync'd. A crash leaves either the old or
//!   the new cursor, both valid; the old one only causes delivered records to be delivered again,
//!   which the ledger deduplicates. Segment files are deleted only after a durable cursor has moved
//!   past them, so deleting never loses an undelivered record.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes at the start of every segment file: the magic `AEGSPOOL` and the format version (u32 LE).
pub const SEGMENT_HEADER_BYTES: u64 = 12;
/// [`SEGMENT_HEADER_BYTES`] as an array length.
const SEGMENT_HEADER_LEN: usize = 12;

/// Bytes in front of every record inside a segment: its length (u32 LE) and its crc (u32 LE).
pub const FRAME_HEADER_BYTES: u64 = 8;
/// [`FRAME_HEADER_BYTES`] as an array length.
const FRAME_HEADER_LEN: usize = 8;

/// Where the spool lives and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// The directory holding the segment files and the cursor; created when missing.
    pub dir: PathBuf,
    /// A segment file is not grown beyond this many bytes (header and frames included); must be at
    /// least `SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES + record_bytes_max`.
    pub segment_bytes_max: u64,
    /// The segment files together never exceed this many bytes; must be at least `segment_bytes_max`.
    pub spool_bytes_max: u64,
    /// The largest record accepted; a longer frame found on disk is corruption.
    pub record_bytes_max: u32,
}

/// What [`Spool::open`] found and repaired; the gateway should log it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files in use after recovery.
    pub segment_count: usize,
    /// Records not yet delivered.
    pub pending_records: u64,
    /// Bytes of segment files on disk after recovery (as [`Spool::pending_bytes`]).
    pub pending_bytes: u64,
    /// Bytes cut off the end of the last segment because a crash interrupted an append there; the
    /// records in them were never acknowledged to the caller.
    pub dropped_torn_tail_bytes: u64,
    /// The segment whose torn tail (or torn header) was cut off, if any.
    pub torn_tail_segment_path: Option<PathBuf>,
    /// Fully delivered segment files deleted because a crash interrupted their deletion.
    pub deleted_consumed_segment_count: usize,
}

/// Why a spool operation failed. Every message says what the operator (or caller) should do.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The append would grow the spool beyond `spool_bytes_max`; nothing was written.
    #[error(
        "audit spool is full: the append would grow it to {bytes} bytes, over spool_bytes_max = \
         {bytes_max}; nothing was written. Restore connectivity to the ledger so the spool drains, or \
         raise spool_bytes_max"
    )]
    Full { bytes: u64, bytes_max: u64 },

    /// A record is longer than `record_bytes_max`; nothing was written.
    #[error(
        "audit record of {bytes} bytes exceeds record_bytes_max = {bytes_max}; nothing was written. \
         Raise record_bytes_max (and segment_bytes_max with it) or make the record smaller"
    )]
    RecordTooLarge { bytes: usize, bytes_max: u32 },

    /// The caller asked to consume more records than are pending; nothing was consumed.
    #[error(
        "cannot mark {count} audit records delivered: only {pending} are pending; nothing was \
         consumed. This is a bug in the caller, which must consume at most the records it peeked"
    )]
    ConsumeBeyondPending { count: usize, pending: u64 },

    /// The configuration cannot work.
    #[error("invalid audit spool configuration: {reason}")]
    InvalidConfig { reason: String },

    /// Another open spool holds the directory's lock.
    #[error(
        "audit spool directory {} is in use by another open spool (another gateway process, or an \
         earlier spool in this one); stop it or give this gateway its own spool directory",
        .dir.display()
    )]
    Locked { dir: PathBuf },

    /// A file-system operation failed.
    #[error(
        "audit spool I/O failed while {context}: {source}; check that the spool directory's disk is \
         writable, mounted and not full, then retry"
    )]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// A spool file holds data that cannot be a crash artefact.
    #[error("audit spool file {} is corrupt at byte offset {byte_offset}: {reason}; {operator_action}", .path.display())]
    Corrupt { path: PathBuf, byte_offset: u64, reason: String, operator_action: String },

    /// An append failed and could not be rolled back, so the in-memory state no longer matches disk.
    #[error(
        "audit spool refuses further work because a failed append could not be rolled back \
         ({reason}); reopen the spool (restart the gateway) so recovery rescans the segment files"
    )]
    Poisoned { reason: String },
    /// The thread that owns the spool is gone (the gateway is stopping).
    #[error("the audit spool thread has stopped")]
    Stopped,
}

/// An open audit spool. See the module documentation for the format and durability guarantees.
#[derive(Debug)]
pub struct Spool {
    config: SpoolConfig,
    /// Segment files on disk, oldest first, with contiguous sequence numbers.
    segments: VecDeque<SegmentFile>,
    /// The durable cursor: every record before it has been delivered.
    cursor: SpoolPosition,
    /// The records right after the cursor that the last peek returned, kept so that peeking again
    /// and consuming do not reread them; never more than the last peek returned.
    lookahead: VecDeque<LookaheadRecord>,
    /// A read handle on the segment peek reads from.
    reader: Option<OpenSegment>,
    /// An append handle on the last segment.
    writer: Option<OpenSegment>,
    pending_records: u64,
    /// Set when a failed append could not be rolled back.
    poisoned_reason: Option<String>,
    /// Holds the advisory lock on the directory for as long as the spool is open.
    _lock_file: File,
}

/// A place in the spool: a byte offset inside the segment with the given sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SpoolPosition {
    sequence: u64,
    offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegmentFile {
    sequence: u64,
    file_bytes: u64,
}

#[derive(Debug)]
struct OpenSegment {
    sequence: u64,
    file: File,
}

#[derive(Debug)]
struct LookaheadRecord {
    bytes: Vec<u8>,
    /// The position right after this record's frame.
    end: SpoolPosition,
}

/// A frame header read from a segment, already checked against the segment's length.
#[derive(Debug, Clone, Copy)]
struct FrameLocation {
    start: SpoolPosition,
    record_bytes: u32,
    crc: u32,
    end: SpoolPosition,
}

/// How to undo an append that failed half-way.
#[derive(Debug, Clone, Copy)]
struct AppendCheckpoint {
    segment_count: usize,
    last_segment_bytes: Option<u64>,
}

/// What recovery found in one segment file.
#[derive(Debug, Clone, Copy)]
enum SegmentScan {
    /// The last segment is shorter than its header: a crash interrupted its creation.
    HeaderTorn { file_bytes: u64 },
    /// Frames from the scan start up to `valid_bytes` are intact; anything after them (only possible
    /// in the last segment) is a torn tail.
    Valid { valid_bytes: u64, file_bytes: u64, records: u64 },
}

enum FrameScan {
    Valid { frame_bytes: u64 },
    Damaged { reason: String },
}

const SEGMENT_MAGIC: [u8; 8] = *b"AEGSPOOL";
const SEGMENT_FORMAT_VERSION: u32 = 1;
const SEGMENT_FILE_SUFFIX: &str = ".spool";
const SEGMENT_SEQUENCE_DIGITS: usize = 20;
const FIRST_SEGMENT_SEQUENCE: u64 = 1;
const CURSOR_MAGIC: [u8; 8] = *b"AEGCURSR";
const CURSOR_FORMAT_VERSION: u32 = 1;
const CURSOR_FILE_BYTES: usize = 32;
const CURSOR_FILE_NAME: &str = "cursor";
const CURSOR_TEMPORARY_FILE_NAME: &str = "cursor.tmp";
const LOCK_FILE_NAME: &str = "lock";
const RECOVERY_READ_BUFFER_BYTES: usize = 64 * 1024;

const CURSOR_DAMAGED_ACTION: &str = "stop the gateway and delete the cursor file; every record still in \
     the spool is then delivered again from the oldest segment, which is safe because the ledger \
     deduplicates records";
const SEGMENT_UNREADABLE_ACTION: &str = "stop the gateway, copy the spool directory aside for \
     investigation, and restore this file from a backup; if that is impossible, move the spool \
     directory aside, start the gateway with an empty spool and replay the surviving segments by hand";

impl Spool {
    /// Opens the spool in `config.dir` (creating the directory if needed) and recovers it: deletes
    /// segments a crash left behind after they were delivered, validates the header and every
    /// frame's crc from the cursor on, and cuts off a torn tail of the last segment (a crash
    /// mid-append), reporting how many bytes were dropped. Damage anywhere but the end of the last
    /// segment is returned as [`SpoolError::Corrupt`] instead of being skipped.
    pub fn open(config: SpoolConfig) -> Result<(Spool, RecoveryReport), SpoolError> {
        config.validate()?;
        create_directory_durably(&config.dir)?;
        let lock_file = lock_directory(&config.dir)?;
        remove_file_if_exists(&config.dir.join(CURSOR_TEMPORARY_FILE_NAME))?;
        let mut sequences = list_segment_sequences(&config.dir)?;
        let cursor = read_cursor(&config.dir)?.unwrap_or(SpoolPosition {
            sequence: sequences.first().copied().unwrap_or(FIRST_SEGMENT_SEQUENCE),
            offset: SEGMENT_HEADER_BYTES,
        });
        let mut report = RecoveryReport::default();

        // Segments before the cursor were delivered; a crash interrupted their deletion.
        for &sequence in sequences.iter().filter(|&&sequence| sequence < cursor.sequence) {
            remove_file_if_exists(&segment_path(&config.dir, sequence))?;
            report.deleted_consumed_segment_count += 1;
        }
        sequences.retain(|&sequence| sequence >= cursor.sequence);
        if report.deleted_consumed_segment_count > 0 {
            sync_directory(&config.dir)?;
        }
        check_segments_are_contiguous(&config.dir, cursor, &sequences)?;

        let mut segments = VecDeque::with_capacity(sequences.len());
        let mut pending_records = 0_u64;
        let last_index = sequences.len().checked_sub(1);
        for (index, &sequence) in sequences.iter().enumerate() {
            let path = segment_path(&config.dir, sequence);
            let scan_start_offset =
                if sequence == cursor.sequence { cursor.offset } else { SEGMENT_HEADER_BYTES };
            let is_last = Some(index) == last_index;
            match scan_segment(&path, scan_start_offset, is_last, config.record_bytes_max)? {
                SegmentScan::HeaderTorn { file_bytes } => {
                    remove_file_if_exists(&path)?;
                    sync_directory(&config.dir)?;
                    report.dropped_torn_tail_bytes = file_bytes;
                    report.torn_tail_segment_path = Some(path);
                }
                SegmentScan::Valid { valid_bytes, file_bytes, records } => {
                    if valid_bytes < file_bytes {
                        truncate_durably(&path, valid_bytes)?;
                        report.dropped_torn_tail_bytes = file_bytes - valid_bytes;
                        report.torn_tail_segment_path = Some(path);
                    }
                    segments.push_back(SegmentFile { sequence, file_bytes: valid_bytes });
                    pending_records += records;
                }
            }
        }

        let mut spool = Spool {
            config,
            segments,
            cursor,
            lookahead: VecDeque::new(),
            reader: None,
            writer: None,
            pending_records,
            poisoned_reason: None,
            _lock_file: lock_file,
        };
        // Move the cursor past segments with nothing left to deliver so they can be deleted.
        let normalized_cursor = spool.normalize(cursor)?;
        if normalized_cursor != cursor {
            write_cursor_durably(&spool.config.dir, normalized_cursor)?;
            spool.cursor = normalized_cursor;
            report.deleted_consumed_segment_count += spool.delete_segments_before_cursor()?;
        }
        report.segment_count = spool.segments.len();
        report.pending_records = spool.pending_records;
        report.pending_bytes = spool.pending_bytes();
        Ok((spool, report))
    }

    /// Appends `records`, in order, as one unit with respect to the limits: if any record is longer
    /// than `record_bytes_max` or the spool would grow beyond `spool_bytes_max`, nothing is written.
    /// Returns Ok only after the frames were written and fdatasync'd, so the caller may then
    /// acknowledge them as durable. Starts a new segment whenever the current one would exceed
    /// `segment_bytes_max`. On an I/O error nothing is acknowledged and the append is rolled back.
    pub fn append<R: AsRef<[u8]>>(&mut self, records: &[R]) -> Result<(), SpoolError> {
        self.refuse_if_poisoned()?;
        for record in records {
            self.record_length(record.as_ref())?;
        }
        if records.is_empty() {
            return Ok(());
        }
        let bytes_after_append = self.pending_bytes().saturating_add(self.bytes_added_by_append(records));
        if bytes_after_append > self.config.spool_bytes_max {
            return Err(SpoolError::Full {
                bytes: bytes_after_append,
                bytes_max: self.config.spool_bytes_max,
            });
        }
        let checkpoint = AppendCheckpoint {
            segment_count: self.segments.len(),
            last_segment_bytes: self.segments.back().map(|segment| segment.file_bytes),
        };
        match self.write_frames(records) {
            Ok(()) => {
                self.pending_records += records.len() as u64;
                Ok(())
            }
            Err(write_error) => {
                if let Err(rollback_error) = self.roll_back_append(checkpoint) {
                    self.poisoned_reason =
                        Some(format!("{write_error}; rolling the append back also failed: {rollback_error}"));
                }
                Err(write_error)
            }
        }
    }

    /// Returns the oldest undelivered records, in order, without consuming them: at most
    /// `records_max` records and at most `bytes_max` record bytes in total, except that one record
    /// is returned whenever any is pending (and `records_max > 0`), however large it is.
    pub fn peek(&mut self, records_max: usize, bytes_max: usize) -> Result<Vec<Vec<u8>>, SpoolError> {
        self.refuse_if_poisoned()?;
        let admits = |record_count: usize, bytes_total: usize, record_bytes: usize| {
            record_count < records_max
                && (record_count == 0 || bytes_total.saturating_add(record_bytes) <= bytes_max)
        };
        let mut records = Vec::new();
        let mut bytes_total = 0_usize;
        for cached in &self.lookahead {
            if !admits(records.len(), bytes_total, cached.bytes.len()) {
                break;
            }
            bytes_total += cached.bytes.len();
            records.push(cached.bytes.clone());
        }
        if records.len() < self.lookahead.len() {
            self.lookahead.truncate(records.len());
            return Ok(records);
        }
        while records.len() < records_max {
            let Some(frame) = self.read_frame_header(self.lookahead_end())? else {
                break;
            };
            if !admits(records.len(), bytes_total, frame.record_bytes as usize) {
                break;
            }
            let bytes = self.read_frame_record(frame)?;
            bytes_total += bytes.len();
            records.push(bytes.clone());
            self.lookahead.push_back(LookaheadRecord { bytes, end: frame.end });
        }
        Ok(records)
    }

    /// Marks the oldest `count` pending records delivered: durably advances the cursor (written to
    /// a temporary file, fsync'd, renamed over the cursor, directory fsync'd), then deletes segment
    /// files that hold no undelivered record. `count` above [`Spool::pending_records`] is an error
    /// and consumes nothing.
    pub fn consume(&mut self, count: usize) -> Result<(), SpoolError> {
        self.refuse_if_poisoned()?;
        let count_u64 = count as u64;
        if count_u64 > self.pending_records {
            return Err(SpoolError::ConsumeBeyondPending { count, pending: self.pending_records });
        }
        if count == 0 {
            return Ok(());
        }
        let consumed_from_lookahead = count.min(self.lookahead.len());
        let mut position = match consumed_from_lookahead.checked_sub(1) {
            Some(index) => self.lookahead.get(index).map_or(self.cursor, |record| record.end),
            None => self.cursor,
        };
        for _ in consumed_from_lookahead..count {
            let Some(frame) = self.read_frame_header(position)? else {
                return Err(SpoolError::Corrupt {
                    path: segment_path(&self.config.dir, position.sequence),
                    byte_offset: position.offset,
                    reason: format!(
                        "the segments hold fewer records than the {} counted as pending",
                        self.pending_records
                    ),
                    operator_action: "reopen the spool (restart the gateway) so recovery recounts the \
                                      records, and report this bug"
                        .to_owned(),
                });
            };
            position = frame.end;
        }
        let new_cursor = self.normalize(position)?;
        write_cursor_durably(&self.config.dir, new_cursor)?;
        self.cursor = new_cursor;
        self.pending_records -= count_u64;
        self.lookahead.drain(..consumed_from_lookahead);
        self.delete_segments_before_cursor()?;
        Ok(())
    }

    /// Records appended and not yet consumed.
    pub fn pending_records(&self) -> u64 {
        self.pending_records
    }

    /// Bytes of the segment files on disk, which count against `spool_bytes_max`; this includes
    /// delivered records in the oldest segment until the whole segment is delivered and deleted.
    pub fn pending_bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.file_bytes).sum()
    }

    /// Whether every appended record has been consumed.
    pub fn is_empty(&self) -> bool {
        self.pending_records == 0
    }

    fn refuse_if_poisoned(&self) -> Result<(), SpoolError> {
        match &self.poisoned_reason {
            Some(reason) => Err(SpoolError::Poisoned { reason: reason.clone() }),
            None => Ok(()),
        }
    }

    fn record_length(&self, record: &[u8]) -> Result<u32, SpoolError> {
        let too_large =
            || SpoolError::RecordTooLarge { bytes: record.len(), bytes_max: self.config.record_bytes_max };
        let record_bytes = u32::try_from(record.len()).map_err(|_| too_large())?;
        if record_bytes > self.config.record_bytes_max {
            return Err(too_large());
        }
        Ok(record_bytes)
    }

    /// Whether a frame of `frame_bytes` must go into a new segment, given the size of the last
    /// segment (None when there is no segment to append to).
    fn needs_new_segment(&self, last_segment_bytes: Option<u64>, frame_bytes: u64) -> bool {
        last_segment_bytes.is_none_or(|bytes| bytes + frame_bytes > self.config.segment_bytes_max)
    }

    /// The bytes `write_frames` would add to the spool, segment headers included.
    fn bytes_added_by_append<R: AsRef<[u8]>>(&self, records: &[R]) -> u64 {
        let mut last_segment_bytes = self.segments.back().map(|segment| segment.file_bytes);
        let mut bytes_added = 0_u64;
        for record in records {
            let frame_bytes = FRAME_HEADER_BYTES + record.as_ref().len() as u64;
            if self.needs_new_segment(last_segment_bytes, frame_bytes) {
                bytes_added += SEGMENT_HEADER_BYTES + frame_bytes;
                last_segment_bytes = Some(SEGMENT_HEADER_BYTES + frame_bytes);
            } else {
                bytes_added += frame_bytes;
                last_segment_bytes = last_segment_bytes.map(|bytes| bytes + frame_bytes);
            }
        }
        bytes_added
    }

    fn write_frames<R: AsRef<[u8]>>(&mut self, records: &[R]) -> Result<(), SpoolError> {
        let mut frames = Vec::new();
        for record in records {
            let record = record.as_ref();
            let record_bytes = self.record_length(record)?;
            let frame_bytes = FRAME_HEADER_BYTES + u64::from(record_bytes);
            let last_segment_bytes =
                self.segments.back().map(|segment| segment.file_bytes + frames.len() as u64);
            if self.needs_new_segment(last_segment_bytes, frame_bytes) {
                // Sync the current segment first so only the last segment can hold a torn write.
                self.write_and_sync_last_segment(&mut frames)?;
                self.create_segment()?;
            }
            frames.extend_from_slice(&record_bytes.to_le_bytes());
            frames.extend_from_slice(&frame_checksum(record_bytes, record).to_le_bytes());
            frames.extend_from_slice(record);
        }
        self.write_and_sync_last_segment(&mut frames)
    }

    /// Writes `frames` at the end of the last segment, fdatasyncs it and empties `frames`.
    fn write_and_sync_last_segment(&mut self, frames: &mut Vec<u8>) -> Result<(), SpoolError> {
        if frames.is_empty() {
            return Ok(());
        }
        let Some(last_segment) = self.segments.back().copied() else {
            return Err(SpoolError::Io {
                context: "appending (internal error: no segment to append to; report this bug)".to_owned(),
                source: io::Error::other("no segment"),
            });
        };
        let path = segment_path(&self.config.dir, last_segment.sequence);
        let writer = match self.writer.take() {
            Some(writer) if writer.sequence == last_segment.sequence => writer,
            _ => OpenSegment {
                sequence: last_segment.sequence,
                file: OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .with_io_context(|| format!("opening segment {} for appending", path.display()))?,
            },
        };
        let writer = self.writer.insert(writer);
        writer.file.write_all(frames).with_io_context(|| format!("writing to segment {}", path.display()))?;
        writer.file.sync_data().with_io_context(|| format!("fdatasyncing segment {}", path.display()))?;
        if let Some(segment) = self.segments.back_mut() {
            segment.file_bytes += frames.len() as u64;
        }
        frames.clear();
        Ok(())
    }

    /// Creates the next segment file with its header, durably (file fdatasync'd, directory fsync'd),
    /// and makes it the one appends go to.
    fn create_segment(&mut self) -> Result<(), SpoolError> {
        let sequence = match self.segments.back() {
            Some(last_segment) => next_sequence(&self.config.dir, last_segment.sequence)?,
            None => self.cursor.sequence,
        };
        let path = segment_path(&self.config.dir, sequence);
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .with_io_context(|| format!("creating segment {}", path.display()))?;
        // Registered before anything can fail, so a rollback removes the file again.
        self.segments.push_back(SegmentFile { sequence, file_bytes: 0 });
        let mut header = [0_u8; SEGMENT_HEADER_LEN];
        header[..SEGMENT_MAGIC.len()].copy_from_slice(&SEGMENT_MAGIC);
        header[SEGMENT_MAGIC.len()..].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
        file.write_all(&header).with_io_context(|| format!("writing the header of {}", path.display()))?;
        file.sync_data().with_io_context(|| format!("fdatasyncing new segment {}", path.display()))?;
        sync_directory(&self.config.dir)?;
        if let Some(segment) = self.segments.back_mut() {
            segment.file_bytes = SEGMENT_HEADER_BYTES;
        }
        self.writer = Some(OpenSegment { sequence, file });
        Ok(())
    }

    /// Undoes a failed append: removes the segments it created and truncates the segment it
    /// appended to back to its previous length, durably.
    fn roll_back_append(&mut self, checkpoint: AppendCheckpoint) -> Result<(), SpoolError> {
        self.writer = None;
        self.reader = None;
        let mut removed_segment = false;
        while self.segments.len() > checkpoint.segment_count {
            if let Some(segment) = self.segments.pop_back() {
                remove_file_if_exists(&segment_path(&self.config.dir, segment.sequence))?;
                removed_segment = true;
            }
        }
        if removed_segment {
            sync_directory(&self.config.dir)?;
        }
        if let (Some(file_bytes), Some(segment)) = (checkpoint.last_segment_bytes, self.segments.back_mut()) {
            segment.file_bytes = file_bytes;
            truncate_durably(&segment_path(&self.config.dir, segment.sequence), file_bytes)?;
        }
        Ok(())
    }

    /// The position right after the records held in the lookahead.
    fn lookahead_end(&self) -> SpoolPosition {
        self.lookahead.back().map_or(self.cursor, |record| record.end)
    }

    fn segment(&self, sequence: u64) -> Option<SegmentFile> {
        let front = self.segments.front()?;
        let index = usize::try_from(sequence.checked_sub(front.sequence)?).ok()?;
        self.segments.get(index).copied().filter(|segment| segment.sequence == sequence)
    }

    /// Moves `position` forward past segment ends, so that it points at a frame, or at the start
    /// of the segment the next append will create.
    fn normalize(&self, mut position: SpoolPosition) -> Result<SpoolPosition, SpoolError> {
        loop {
            let at_end = match self.segment(position.sequence) {
                Some(segment) => position.offset >= segment.file_bytes,
                None => position.offset != SEGMENT_HEADER_BYTES,
            };
            if !at_end {
                return Ok(position);
            }
            position = SpoolPosition {
                sequence: next_sequence(&self.config.dir, position.sequence)?,
                offset: SEGMENT_HEADER_BYTES,
            };
        }
    }

    /// Reads the header of the frame at `position` (after normalizing it); None when no record is
    /// stored there yet.
    fn read_frame_header(&mut self, position: SpoolPosition) -> Result<Option<FrameLocation>, SpoolError> {
        let start = self.normalize(position)?;
        let Some(segment) = self.segment(start.sequence) else {
            return Ok(None);
        };
        let path = segment_path(&self.config.dir, start.sequence);
        let mut header = [0_u8; FRAME_HEADER_LEN];
        self.reader_for(start.sequence)?.read_exact_at(&mut header, start.offset).with_io_context(|| {
            format!("reading a frame header in {} at {}", path.display(), start.offset)
        })?;
        let (record_bytes, crc) = decode_frame_header(header);
        let corrupt = |reason: String| SpoolError::Corrupt {
            path: path.clone(),
            byte_offset: start.offset,
            reason,
            operator_action: damaged_frame_action(&path, start.offset),
        };
        if record_bytes > self.config.record_bytes_max {
            return Err(corrupt(format!(
                "frame length {record_bytes} exceeds record_bytes_max {}",
                self.config.record_bytes_max
            )));
        }
        let end_offset = start.offset + FRAME_HEADER_BYTES + u64::from(record_bytes);
        if end_offset > segment.file_bytes {
            return Err(corrupt(format!(
                "frame ends at byte {end_offset}, past the end of the segment at {}",
                segment.file_bytes
            )));
        }
        Ok(Some(FrameLocation {
            start,
            record_bytes,
            crc,
            end: SpoolPosition { sequence: start.sequence, offset: end_offset },
        }))
    }

    /// Reads and checks the record of a frame located by `read_frame_header`.
    fn read_frame_record(&mut self, frame: FrameLocation) -> Result<Vec<u8>, SpoolError> {
        let path = segment_path(&self.config.dir, frame.start.sequence);
        let record_offset = frame.start.offset + FRAME_HEADER_BYTES;
        let mut record = vec![0_u8; frame.record_bytes as usize];
        self.reader_for(frame.start.sequence)?
            .read_exact_at(&mut record, record_offset)
            .with_io_context(|| format!("reading a record in {} at {record_offset}", path.display()))?;
        if frame_checksum(frame.record_bytes, &record) != frame.crc {
            return Err(SpoolError::Corrupt {
                byte_offset: frame.start.offset,
                reason: "frame checksum mismatch (the file changed after recovery checked it)".to_owned(),
                operator_action: damaged_frame_action(&path, frame.start.offset),
                path,
            });
        }
        Ok(record)
    }

    fn reader_for(&mut self, sequence: u64) -> Result<&File, SpoolError> {
        let reader = match self.reader.take() {
            Some(reader) if reader.sequence == sequence => reader,
            _ => {
                let path = segment_path(&self.config.dir, sequence);
                let file = File::open(&path)
                    .with_io_context(|| format!("opening segment {} for reading", path.display()))?;
                OpenSegment { sequence, file }
            }
        };
        Ok(&self.reader.insert(reader).file)
    }

    /// Deletes the segment files before the cursor (all their records are delivered) and returns
    /// how many it deleted.
    fn delete_segments_before_cursor(&mut self) -> Result<usize, SpoolError> {
        let mut deleted_segment_count = 0;
        while let Some(front) = self.segments.front()
            && front.sequence < self.cursor.sequence
        {
            let sequence = front.sequence;
            if self.reader.as_ref().is_some_and(|reader| reader.sequence == sequence) {
                self.reader = None;
            }
            if self.writer.as_ref().is_some_and(|writer| writer.sequence == sequence) {
                self.writer = None;
            }
            remove_file_if_exists(&segment_path(&self.config.dir, sequence))?;
            self.segments.pop_front();
            deleted_segment_count += 1;
        }
        if deleted_segment_count > 0 {
            sync_directory(&self.config.dir)?;
        }
        Ok(deleted_segment_count)
    }
}

impl SpoolConfig {
    fn validate(&self) -> Result<(), SpoolError> {
        let segment_bytes_min = SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES + u64::from(self.record_bytes_max);
        if self.segment_bytes_max < segment_bytes_min {
            return Err(SpoolError::InvalidConfig {
                reason: format!(
                    "segment_bytes_max ({}) must be at least {segment_bytes_min} so that a record of \
                     record_bytes_max ({}) bytes fits in one segment with its headers; raise \
                     segment_bytes_max or lower record_bytes_max",
                    self.segment_bytes_max, self.record_bytes_max
                ),
            });
        }
        if self.spool_bytes_max < self.segment_bytes_max {
            return Err(SpoolError::InvalidConfig {
                reason: format!(
                    "spool_bytes_max ({}) must be at least segment_bytes_max ({}); raise spool_bytes_max \
                     or lower segment_bytes_max",
                    self.spool_bytes_max, self.segment_bytes_max
                ),
            });
        }
        Ok(())
    }
}

/// Attaches a description of the failed operation to an I/O error.
trait WithIoContext<T> {
    fn with_io_context(self, context: impl FnOnce() -> String) -> Result<T, SpoolError>;
}

impl<T> WithIoContext<T> for io::Result<T> {
    fn with_io_context(self, context: impl FnOnce() -> String) -> Result<T, SpoolError> {
        self.map_err(|source| SpoolError::Io { context: context(), source })
    }
}

fn segment_path(dir: &Path, sequence: u64) -> PathBuf {
    dir.join(format!("{sequence:0width$}{SEGMENT_FILE_SUFFIX}", width = SEGMENT_SEQUENCE_DIGITS))
}

fn parse_segment_file_name(file_name: &str) -> Option<u64> {
    let digits = file_name.strip_suffix(SEGMENT_FILE_SUFFIX)?;
    if digits.len() != SEGMENT_SEQUENCE_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn next_sequence(dir: &Path, sequence: u64) -> Result<u64, SpoolError> {
    sequence.checked_add(1).ok_or_else(|| SpoolError::Corrupt {
        path: segment_path(dir, sequence),
        byte_offset: 0,
        reason: "segment sequence numbers are exhausted".to_owned(),
        operator_action: "drain the spool, then stop the gateway and empty the spool directory".to_owned(),
    })
}

fn damaged_frame_action(path: &Path, byte_offset: u64) -> String {
    format!(
        "stop the gateway, copy the spool directory aside for investigation, then cut the damaged frame \
         and the rest of this segment off with `truncate -s {byte_offset} {}` (the undelivered records \
         cut off must be reconciled from the copy) and restart",
        path.display()
    )
}

fn decode_frame_header(header: [u8; FRAME_HEADER_LEN]) -> (u32, u32) {
    let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
    (u32::from_le_bytes([l0, l1, l2, l3]), u32::from_le_bytes([c0, c1, c2, c3]))
}

/// CRC-32 of the frame's length field followed by the record.
fn frame_checksum(record_bytes: u32, record: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&record_bytes.to_le_bytes());
    hasher.update(record);
    hasher.finalize()
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(offset..offset + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(offset..offset + 8)?.try_into().ok()?))
}

fn encode_cursor(position: SpoolPosition) -> [u8; CURSOR_FILE_BYTES] {
    let mut bytes = [0_u8; CURSOR_FILE_BYTES];
    bytes[0..8].copy_from_slice(&CURSOR_MAGIC);
    bytes[8..12].copy_from_slice(&CURSOR_FORMAT_VERSION.to_le_bytes());
    bytes[12..20].copy_from_slice(&position.sequence.to_le_bytes());
    bytes[20..28].copy_from_slice(&position.offset.to_le_bytes());
    let crc = crc32fast::hash(&bytes[0..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Reads the cursor file; None when there is none (nothing delivered yet).
fn read_cursor(dir: &Path) -> Result<Option<SpoolPosition>, SpoolError> {
    let path = dir.join(CURSOR_FILE_NAME);
    let contents = match fs::read(&path) {
        Ok(contents) => contents,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SpoolError::Io { context: format!("reading cursor {}", path.display()), source });
        }
    };
    let corrupt = |byte_offset: u64, reason: String| SpoolError::Corrupt {
        path: path.clone(),
        byte_offset,
        reason,
        operator_action: CURSOR_DAMAGED_ACTION.to_owned(),
    };
    let Ok(bytes) = <[u8; CURSOR_FILE_BYTES]>::try_from(contents.as_slice()) else {
        return Err(corrupt(0, format!("the cursor is {} bytes, not {CURSOR_FILE_BYTES}", contents.len())));
    };
    let (checked_bytes, _) = bytes.split_at(CURSOR_FILE_BYTES - 4);
    if !checked_bytes.starts_with(&CURSOR_MAGIC) {
        return Err(corrupt(0, "the cursor does not start with the magic AEGCURSR".to_owned()));
    }
    if u32_at(&bytes, 28) != Some(crc32fast::hash(checked_bytes)) {
        return Err(corrupt(28, "the cursor's checksum does not match its contents".to_owned()));
    }
    let version = u32_at(&bytes, 8);
    if version != Some(CURSOR_FORMAT_VERSION) {
        return Err(corrupt(
            8,
            format!(
                "cursor format version {version:?} is not supported (this build reads {CURSOR_FORMAT_VERSION})"
            ),
        ));
    }
    let (Some(sequence), Some(offset)) = (u64_at(&bytes, 12), u64_at(&bytes, 20)) else {
        return Err(corrupt(12, "the cursor is truncated".to_owned()));
    };
    if offset < SEGMENT_HEADER_BYTES {
        return Err(corrupt(20, format!("the cursor offset {offset} points into a segment header")));
    }
    Ok(Some(SpoolPosition { sequence, offset }))
}

fn write_cursor_durably(dir: &Path, position: SpoolPosition) -> Result<(), SpoolError> {
    let temporary_path = dir.join(CURSOR_TEMPORARY_FILE_NAME);
    let path = dir.join(CURSOR_FILE_NAME);
    let mut file =
        File::create(&temporary_path).with_io_context(|| format!("creating {}", temporary_path.display()))?;
    file.write_all(&encode_cursor(position))
        .with_io_context(|| format!("writing {}", temporary_path.display()))?;
    file.sync_all().with_io_context(|| format!("fsyncing {}", temporary_path.display()))?;
    drop(file);
    fs::rename(&temporary_path, &path)
        .with_io_context(|| format!("renaming {} to {}", temporary_path.display(), path.display()))?;
    sync_directory(dir)
}

/// Fails with [`SpoolError::Corrupt`] unless the segments start at the cursor's segment and have
/// no gaps (a missing segment file means lost records).
fn check_segments_are_contiguous(
    dir: &Path,
    cursor: SpoolPosition,
    sequences: &[u64],
) -> Result<(), SpoolError> {
    let mut expected_sequence = cursor.sequence;
    for &sequence in sequences {
        if sequence != expected_sequence {
            return Err(SpoolError::Corrupt {
                path: segment_path(dir, expected_sequence),
                byte_offset: 0,
                reason: format!("the segment file is missing although segment {sequence} exists"),
                operator_action: SEGMENT_UNREADABLE_ACTION.to_owned(),
            });
        }
        expected_sequence = next_sequence(dir, sequence)?;
    }
    Ok(())
}

/// Checks the header and the frames of a segment from `scan_start_offset` on. Damage in the last
/// segment is a torn tail and reported through the returned scan; elsewhere it is an error.
fn scan_segment(
    path: &Path,
    scan_start_offset: u64,
    is_last: bool,
    record_bytes_max: u32,
) -> Result<SegmentScan, SpoolError> {
    let corrupt = |byte_offset: u64, reason: String, operator_action: String| SpoolError::Corrupt {
        path: path.to_owned(),
        byte_offset,
        reason,
        operator_action,
    };
    let file = File::open(path).with_io_context(|| format!("opening segment {}", path.display()))?;
    let file_bytes =
        file.metadata().with_io_context(|| format!("reading the length of {}", path.display()))?.len();
    if file_bytes < SEGMENT_HEADER_BYTES {
        if is_last && scan_start_offset == SEGMENT_HEADER_BYTES {
            return Ok(SegmentScan::HeaderTorn { file_bytes });
        }
        return Err(corrupt(
            0,
            format!("the file is {file_bytes} bytes, shorter than its {SEGMENT_HEADER_BYTES}-byte header"),
            SEGMENT_UNREADABLE_ACTION.to_owned(),
        ));
    }
    let mut reader = BufReader::with_capacity(RECOVERY_READ_BUFFER_BYTES, file);
    let mut header = [0_u8; SEGMENT_HEADER_LEN];
    reader.read_exact(&mut header).with_io_context(|| format!("reading the header of {}", path.display()))?;
    if header.get(0..SEGMENT_MAGIC.len()) != Some(SEGMENT_MAGIC.as_slice()) {
        return Err(corrupt(
            0,
            "the segment does not start with the magic AEGSPOOL".to_owned(),
            SEGMENT_UNREADABLE_ACTION.to_owned(),
        ));
    }
    let version = u32_at(&header, SEGMENT_MAGIC.len());
    if version != Some(SEGMENT_FORMAT_VERSION) {
        return Err(corrupt(
            SEGMENT_MAGIC.len() as u64,
            format!(
                "segment format version {version:?} is not supported (this build reads \
                 {SEGMENT_FORMAT_VERSION})"
            ),
            "run a gateway build that reads this format version, or drain the spool with the build that \
             wrote it"
                .to_owned(),
        ));
    }
    if scan_start_offset > file_bytes {
        return Err(corrupt(
            scan_start_offset,
            format!("the cursor points past the end of the segment ({file_bytes} bytes)"),
            CURSOR_DAMAGED_ACTION.to_owned(),
        ));
    }
    if scan_start_offset > SEGMENT_HEADER_BYTES {
        reader
            .seek(SeekFrom::Start(scan_start_offset))
            .with_io_context(|| format!("seeking to the cursor in {}", path.display()))?;
    }
    let mut offset = scan_start_offset;
    let mut records = 0_u64;
    let mut record = Vec::new();
    while offset < file_bytes {
        match scan_frame(&mut reader, path, offset, file_bytes, record_bytes_max, &mut record)? {
            FrameScan::Valid { frame_bytes } => {
                offset += frame_bytes;
                records += 1;
            }
            FrameScan::Damaged { .. } if is_last => break,
            FrameScan::Damaged { reason } => {
                return Err(corrupt(offset, reason, damaged_frame_action(path, offset)));
            }
        }
    }
    Ok(SegmentScan::Valid { valid_bytes: offset, file_bytes, records })
}

/// Reads the frame at `offset` (where `reader` stands) and checks its length and crc.
fn scan_frame(
    reader: &mut impl Read,
    path: &Path,
    offset: u64,
    file_bytes: u64,
    record_bytes_max: u32,
    record: &mut Vec<u8>,
) -> Result<FrameScan, SpoolError> {
    let remaining_bytes = file_bytes - offset;
    if remaining_bytes < FRAME_HEADER_BYTES {
        return Ok(FrameScan::Damaged {
            reason: format!("only {remaining_bytes} bytes remain, fewer than a frame header"),
        });
    }
    let mut header = [0_u8; FRAME_HEADER_LEN];
    reader
        .read_exact(&mut header)
        .with_io_context(|| format!("reading a frame header in {} at {offset}", path.display()))?;
    let (record_bytes, crc) = decode_frame_header(header);
    if record_bytes > record_bytes_max {
        return Ok(FrameScan::Damaged {
            reason: format!("frame length {record_bytes} exceeds record_bytes_max {record_bytes_max}"),
        });
    }
    let frame_bytes = FRAME_HEADER_BYTES + u64::from(record_bytes);
    if frame_bytes > remaining_bytes {
        return Ok(FrameScan::Damaged {
            reason: format!("a frame of {frame_bytes} bytes runs past the end of the file"),
        });
    }
    record.resize(record_bytes as usize, 0);
    reader
        .read_exact(record)
        .with_io_context(|| format!("reading a record in {} at {offset}", path.display()))?;
    if frame_checksum(record_bytes, record) != crc {
        return Ok(FrameScan::Damaged { reason: "frame checksum mismatch".to_owned() });
    }
    Ok(FrameScan::Valid { frame_bytes })
}

fn list_segment_sequences(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut sequences = Vec::new();
    let entries = fs::read_dir(dir).with_io_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_io_context(|| format!("listing {}", dir.display()))?;
        if let Some(sequence) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            sequences.push(sequence);
        }
    }
    sequences.sort_unstable();
    Ok(sequences)
}

fn create_directory_durably(dir: &Path) -> Result<(), SpoolError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).with_io_context(|| format!("creating the spool directory {}", dir.display()))?;
    let parent = dir.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    sync_directory(parent)
}

fn lock_directory(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE_NAME);
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_io_context(|| format!("opening the lock file {}", path.display()))?;
    match lock_file.try_lock() {
        Ok(()) => Ok(lock_file),
        Err(TryLockError::WouldBlock) => Err(SpoolError::Locked { dir: dir.to_owned() }),
        Err(TryLockError::Error(source)) => {
            Err(SpoolError::Io { context: format!("locking {}", path.display()), source })
        }
    }
}

fn sync_directory(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|directory| directory.sync_all())
        .with_io_context(|| format!("fsyncing the directory {}", dir.display()))
}

fn truncate_durably(path: &Path, file_bytes: u64) -> Result<(), SpoolError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .with_io_context(|| format!("opening {} to truncate it", path.display()))?;
    file.set_len(file_bytes)
        .with_io_context(|| format!("truncating {} to {file_bytes} bytes", path.display()))?;
    file.sync_all().with_io_context(|| format!("fsyncing {} after truncating it", path.display()))
}

fn remove_file_if_exists(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(SpoolError::Io { context: format!("deleting {}", path.display()), source: error })
        }
        _ => Ok(()),
    }
}
