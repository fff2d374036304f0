//! A witness, outside sled, of how far the Raft log and the vote were made durable.
//!
//! sled 0.34 recovers from a damaged data file (a flipped bit, a bad sector) the way it
//! recovers from a torn write: it stops reading its log at the first record whose checksum
//! fails and silently drops everything after it. A node would then come back with fewer log
//! entries, or an older vote, than it acknowledged to its leader; Raft's safety assumes that
//! never happens (an entry counted toward a majority could vanish, a vote could be cast twice),
//! and openraft's leader panics when it meets such a follower. The watermark lets the node
//! notice at start-up and refuse to serve instead.
//!
//! # Format and writes
//!
//! `raft.watermark` holds two 48-byte slots at offsets 0 and 64; each write goes to the slot the
//! last write did not use, with a sequence number and a checksum, so a torn write (power loss)
//! leaves the other slot intact and reading takes the valid slot with the higher sequence.
//!
//! Raising the marks costs one small `pwrite` per durable log append or vote (on the syncer
//! thread, as the group flush completes them) and no fsync: a process crash
//! keeps the page cache, and after a power loss a stale (lower) mark only detects less, never
//! too much, because a mark is written only after what it claims is durable. Lowering the log
//! mark (a follower truncating conflicting entries) is written and `fdatasync`ed before the
//! truncation, so no crash can leave a mark above a legitimately shorter log.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// File name, in the data directory.
pub const FILE_NAME: &str = "raft.watermark";

const MAGIC: &[u8; 8] = b"AEGISWM1";
const SLOT_BYTES: usize = 48;
const SLOT_OFFSETS: [u64; 2] = [0, 64];

/// What was durable: log entries below `log_end` (last index + 1; 0 for none) and a vote of
/// `vote_term`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    pub log_end: u64,
    pub vote_term: u64,
}

/// Why the stored log cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum WatermarkError {
    #[error(
        "the Raft log in sled ends at index {found} but entries up to {expected} were made durable \
         before: sled's data files are damaged and dropped acknowledged entries. Do not restart this \
         node on this data: remove it from the cluster (aegisctl remove-node) and add a node with a \
         fresh data directory and a new id"
    )]
    LogRegressed { expected: u64, found: u64 },
    #[error(
        "the stored Raft vote is for term {found} but a vote for term {expected} was made durable \
         before: sled's data files are damaged. Do not restart this node on this data: remove it \
         from the cluster (aegisctl remove-node) and add a node with a fresh data directory and a new id"
    )]
    VoteRegressed { expected: u64, found: u64 },
    #[error(
        "{path}: neither slot holds a valid watermark (both checksums fail): the file is damaged, so \
         the Raft log cannot be checked. Replace the node as for a damaged data directory"
    )]
    Damaged { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The watermark file. Cheap to clone; clones share the file.
#[derive(Clone, Debug)]
pub struct Watermark {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    path: PathBuf,
    mark: Mark,
    sequence: u64,
    /// Bumped by every lowering, so raises computed before it are dropped.
    generation: u64,
    /// The first write error; later raises are skipped (the mark only gets staler: safe).
    failed: bool,
}

impl Watermark {
    /// Opens (or creates, durably) the watermark in `dir` and returns it with the stored mark.
    pub fn open(dir: &Path) -> Result<(Self, Mark), WatermarkError> {
        let path = dir.join(FILE_NAME);
        let io_error = |source| WatermarkError::Io { path: path.clone(), source };
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        let (mark, sequence) = if existed {
            read(&file).map_err(io_error)?.ok_or_else(|| WatermarkError::Damaged { path: path.clone() })?
        } else {
            write_slot(&file, 0, Mark::default()).map_err(io_error)?;
            file.sync_all().map_err(io_error)?;
            File::open(dir).and_then(|dir| dir.sync_all()).map_err(io_error)?;
            (Mark::default(), 0)
        };
        let inner = Inner { file, path, mark, sequence, generation: 0, failed: false };
        Ok((Self { inner: Arc::new(Mutex::new(inner)) }, mark))
    }

    /// Checks the state sled recovered against the mark: neither may be behind it.
    pub fn check(mark: Mark, log_end: u64, vote_term: u64) -> Result<(), WatermarkError> {
        if log_end < mark.log_end {
            return Err(WatermarkError::LogRegressed { expected: mark.log_end, found: log_end });
        }
        if vote_term < mark.vote_term {
            return Err(WatermarkError::VoteRegressed { expected: mark.vote_term, found: vote_term });
        }
        Ok(())
    }

    /// The generation to pass to [`Self::raise_log`] for entries written now.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Records that log entries below `log_end` are durable (written in `generation`). Never
    /// lowers the mark; ignored if a lowering happened since `generation`.
    pub fn raise_log(&self, log_end: u64, generation: u64) {
        let mut inner = self.lock();
        if generation == inner.generation && log_end > inner.mark.log_end {
            let mark = Mark { log_end, ..inner.mark };
            inner.write(mark, false);
        }
    }

    /// Records that a vote of `term` is durable.
    pub fn raise_vote(&self, term: u64) {
        let mut inner = self.lock();
        if term > inner.mark.vote_term {
            let mark = Mark { vote_term: term, ..inner.mark };
            inner.write(mark, false);
        }
    }

    /// Lowers the log mark to `log_end` and makes that durable; call before truncating the log
    /// there. Blocking (an fdatasync): call it off the async runtime.
    pub fn lower_log(&self, log_end: u64) -> io::Result<()> {
        let mut inner = self.lock();
        inner.generation += 1;
        if log_end >= inner.mark.log_end {
            return Ok(());
        }
        let mark = Mark { log_end, ..inner.mark };
        if inner.write(mark, true) {
            Ok(())
        } else {
            Err(io::Error::other("writing the Raft watermark failed"))
        }
    }

    /// The mark as last written.
    pub fn mark(&self) -> Mark {
        self.lock().mark
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Writes `mark` into the other slot (and syncs it if asked); returns whether it worked.
    fn write(&mut self, mark: Mark, sync: bool) -> bool {
        if self.failed {
            return false;
        }
        let sequence = self.sequence + 1;
        let result = write_slot(&self.file, sequence, mark)
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        match result {
            Ok(()) => {
                self.sequence = sequence;
                self.mark = mark;
                true
            }
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error, "writing the Raft watermark failed; it stays at its last value");
                self.failed = true;
                false
            }
        }
    }
}

fn write_slot(file: &File, sequence: u64, mark: Mark) -> io::Result<()> {
    let mut slot = [0u8; SLOT_BYTES];
    slot[..8].copy_from_slice(MAGIC);
    slot[8..16].copy_from_slice(&sequence.to_le_bytes());
    slot[16..24].copy_from_slice(&mark.log_end.to_le_bytes());
    slot[24..32].copy_from_slice(&mark.vote_term.to_le_bytes());
    let sum = checksum(&slot[..32]);
    slot[32..48].copy_from_slice(&sum);
    let offset = SLOT_OFFSETS[usize::from(sequence % 2 == 1)];
    file.write_all_at(&slot, offset)
}

/// The first 16 bytes of a SHA-256 of `data` (RFC 9162's leaf hash, which the node has at hand).
fn checksum(data: &[u8]) -> [u8; 16] {
    mmr::leaf_hash(data).0[..16].try_into().expect("16 of 32 bytes")
}

/// The valid slot with the highest sequence: (mark, sequence), or `None` if neither is valid.
fn read(file: &File) -> io::Result<Option<(Mark, u64)>> {
    let mut best: Option<(Mark, u64)> = None;
    for offset in SLOT_OFFSETS {
        let mut slot = [0u8; SLOT_BYTES];
        match file.read_exact_at(&mut slot, offset) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => continue,
            Err(error) => return Err(error),
        }
        if &slot[..8] != MAGIC || slot[32..48] != checksum(&slot[..32]) {
            continue;
        }
        let field =
            |range: std::ops::Range<usize>| u64::from_le_bytes(slot[range].try_into().expect("8 bytes"));
        let sequence = field(8..16);
        let mark = Mark { log_end: field(16..24), vote_term: field(24..32) };
        if best.is_none_or(|(_, best_sequence)| sequence > best_sequence) {
            best = Some((mark, sequence));
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_reopening_and_only_rise_unless_lowered() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (watermark, mark) = Watermark::open(dir.path()).expect("created");
        assert_eq!(mark, Mark::default());
        let generation = watermark.generation();
        watermark.raise_log(10, generation);
        watermark.raise_log(7, generation);
        watermark.raise_vote(3);
        watermark.raise_vote(2);
        assert_eq!(watermark.mark(), Mark { log_end: 10, vote_term: 3 });
        drop(watermark);
        let (watermark, mark) = Watermark::open(dir.path()).expect("reopened");
        assert_eq!(mark, Mark { log_end: 10, vote_term: 3 });

        // A raise computed before a lowering is dropped.
        let before = watermark.generation();
        watermark.lower_log(6).expect("lowered");
        watermark.raise_log(12, before);
        assert_eq!(watermark.mark().log_end, 6);
        watermark.raise_log(8, watermark.generation());
        drop(watermark);
        assert_eq!(Watermark::open(dir.path()).expect("reopened").1, Mark { log_end: 8, vote_term: 3 });
    }

    #[test]
    fn a_torn_slot_falls_back_to_the_other_and_two_bad_slots_are_damage() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (watermark, _) = Watermark::open(dir.path()).expect("created");
        watermark.raise_log(5, 0); // sequence 1: slot at 64
        watermark.raise_log(9, 0); // sequence 2: slot at 0
        drop(watermark);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[20] ^= 1; // the newer slot's log_end
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(Watermark::open(dir.path()).expect("the older slot").1.log_end, 5);
        bytes[64 + 20] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(Watermark::open(dir.path()), Err(WatermarkError::Damaged { .. })));
    }

    #[test]
    fn a_log_or_vote_behind_the_mark_is_refused() {
        let mark = Mark { log_end: 100, vote_term: 4 };
        assert!(Watermark::check(mark, 100, 4).is_ok());
        assert!(Watermark::check(mark, 150, 5).is_ok());
        let error = Watermark::check(mark, 99, 4).expect_err("a shorter log");
        assert!(matches!(error, WatermarkError::LogRegressed { expected: 100, found: 99 }));
        assert!(error.to_string().contains("remove it from the cluster"), "{error}");
        assert!(matches!(Watermark::check(mark, 100, 3), Err(WatermarkError::VoteRegressed { .. })));
    }
}
