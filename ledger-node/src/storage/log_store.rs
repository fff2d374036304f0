//! The Raft log on sled: the node's write-ahead log. Entries, the vote, the last purged and the
//! committed log id, made durable through the [`Syncer`] before openraft is told so.
//!
//! Layout: tree `raft_log` maps the log index (8 bytes, big-endian, so that sled's byte order is
//! index order) to the postcard encoding of the [`Entry`]; tree `raft_meta` holds the postcard
//! encodings of the vote, the last purged log id and the committed log id.
//!
//! Durability and order: sled appends every write to one log and recovers a prefix of it, and a
//! [`Syncer`] flush covers every write made before it was requested. So a durable append or vote
//! also makes every earlier write durable (truncations, purges, saved committed ids), which is
//! why only `append` and `save_vote` wait for the syncer and the write order openraft requires
//! holds on disk.

// openraft's storage traits fix `StorageError` (224 bytes) as the error type; the helpers and
// `open` return it as it is rather than box it and convert at every trait method.
#![expect(clippy::result_large_err)]

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, StorageIOError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::durable::Syncer;
use super::watermark::{Mark, Watermark, WatermarkError};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

/// Name of the sled tree that holds the log entries.
pub const LOG_TREE: &str = "raft_log";
/// Name of the sled tree that holds the vote and the log pointers.
pub const META_TREE: &str = "raft_meta";

/// The Raft log storage. Cheap to clone; clones share the trees and the syncer, and a clone is
/// the log reader openraft hands to its replication tasks.
#[derive(Clone, Debug)]
pub struct LogStore {
    log: sled::Tree,
    meta: sled::Tree,
    /// Makes appends and votes durable; shared with the state machine, which uses the same db.
    syncer: Syncer,
    /// Records, outside sled, how far the log and the vote were made durable.
    watermark: Watermark,
}

impl LogStore {
    /// Opens the Raft log trees in `db`. `syncer` MUST be the syncer of this same `db`, and
    /// `watermark` this node's (check it with [`Self::check_watermark`] before use).
    pub fn open(db: &sled::Db, syncer: Syncer, watermark: Watermark) -> Result<LogStore, StorageError> {
        let log =
            db.open_tree(LOG_TREE).map_err(|error| sled_error(ErrorSubject::Logs, ErrorVerb::Read, error))?;
        let meta = db
            .open_tree(META_TREE)
            .map_err(|error| sled_error(ErrorSubject::Store, ErrorVerb::Read, error))?;
        Ok(LogStore { log, meta, syncer, watermark })
    }

    /// Refuses a log or vote that sled recovered behind `mark`, the watermark read at start-up:
    /// sled dropped durable writes, so its data files are damaged.
    pub fn check_watermark(&self, mark: Mark) -> Result<(), WatermarkCheckError> {
        let last_purged: Option<LogId> = self.read_meta(META_LAST_PURGED, ErrorSubject::Logs)?;
        let last = self.last_entry_log_id()?.or(last_purged);
        let vote: Option<Vote> = self.read_meta(META_VOTE, ErrorSubject::Vote)?;
        let log_end = last.map_or(0, |log_id| log_id.index + 1);
        let vote_term = vote.map_or(0, |vote| vote.leader_id.term);
        Watermark::check(mark, log_end, vote_term)?;
        Ok(())
    }

    /// The syncer this store acknowledges durability through.
    pub fn syncer(&self) -> &Syncer {
        &self.syncer
    }

    /// [`RaftLogStorage::append`] with a plain callback: writes `entries` (readable when this
    /// returns) and calls `on_durable` once they are durable, from the syncer thread.
    ///
    /// Exists because openraft's `LogFlushed` cannot be built outside openraft; tests and tools
    /// use this. Callers MUST serialize writes as openraft does: entries continue the log.
    pub async fn append_then<I, F>(&mut self, entries: I, on_durable: F) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry>,
        F: FnOnce(io::Result<()>) + Send + 'static,
    {
        // One batch: sled applies it atomically, so a crash cannot leave half of it, nor a hole.
        let mut batch = sled::Batch::default();
        let mut last_log_id = None;
        for entry in entries {
            let value = encode_entry(&entry)?;
            batch.insert(&index_key(entry.log_id.index)[..], value);
            last_log_id = Some(entry.log_id);
        }
        let subject = || last_log_id.map_or(ErrorSubject::Logs, ErrorSubject::Log);
        let generation = self.watermark.generation();
        self.log.apply_batch(batch).map_err(|error| sled_error(subject(), ErrorVerb::Write, error))?;
        let watermark = self.watermark.clone();
        self.syncer
            .sync_then(move |result| {
                if let (Ok(()), Some(log_id)) = (&result, last_log_id) {
                    watermark.raise_log(log_id.index + 1, generation);
                }
                on_durable(result);
            })
            .await;
        Ok(())
    }

    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        let Some(bytes) =
            self.meta.get(key).map_err(|error| sled_error(subject.clone(), ErrorVerb::Read, error))?
        else {
            return Ok(None);
        };
        postcard::from_bytes(&bytes).map(Some).map_err(|error| io_error(subject, ErrorVerb::Read, &error))
    }

    fn write_meta<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let bytes = encode(value, || subject.clone())?;
        self.meta.insert(key, bytes).map_err(|error| sled_error(subject, ErrorVerb::Write, error))?;
        Ok(())
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let last = self.log.last().map_err(|error| sled_error(ErrorSubject::Logs, ErrorVerb::Read, error))?;
        match last {
            Some((key, value)) => Ok(Some(decode_entry(&key, &value)?.log_id)),
            None => Ok(None),
        }
    }

    /// Removes the keys of `keys`, in the order given, in bounded batches. Each batch is atomic,
    /// so the order decides what a crash can leave: callers pass an order that keeps the log
    /// contiguous at every batch boundary.
    fn remove_in_batches(
        &self,
        keys: impl Iterator<Item = sled::Result<sled::IVec>>,
        subject: impl Fn() -> ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        let mut batch_len = 0;
        for key in keys {
            let key = key.map_err(|error| sled_error(subject(), ErrorVerb::Read, error))?;
            batch.remove(key);
            batch_len += 1;
            if batch_len == REMOVE_BATCH_KEYS_MAX {
                let full = std::mem::take(&mut batch);
                self.log
                    .apply_batch(full)
                    .map_err(|error| sled_error(subject(), ErrorVerb::Delete, error))?;
                batch_len = 0;
            }
        }
        if batch_len > 0 {
            self.log.apply_batch(batch).map_err(|error| sled_error(subject(), ErrorVerb::Delete, error))?;
        }
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&index) => Some(index),
            Bound::Excluded(&index) => index.checked_add(1),
            Bound::Unbounded => Some(0),
        };
        let end = match range.end_bound() {
            Bound::Included(&index) => Bound::Included(index_key(index)),
            Bound::Excluded(&index) => Bound::Excluded(index_key(index)),
            Bound::Unbounded => Bound::Unbounded,
        };
        // Excluded(u64::MAX) as a start bound: nothing can follow it.
        let Some(start) = start else { return Ok(Vec::new()) };
        let empty = match range.end_bound() {
            Bound::Included(&index) => index < start,
            Bound::Excluded(&index) => index <= start,
            Bound::Unbounded => false,
        };
        if empty {
            return Ok(Vec::new());
        }

        let mut entries = Vec::new();
        for item in self.log.range((Bound::Included(index_key(start)), end)) {
            let (key, value) =
                item.map_err(|error| sled_error(ErrorSubject::Logs, ErrorVerb::Read, error))?;
            let entry = decode_entry(&key, &value)?;
            // A hole would make openraft replicate or apply the wrong history: report it.
            if let Some(previous) = entries.last().map(|previous: &Entry| previous.log_id.index)
                && previous + 1 != entry.log_id.index
            {
                return Err(storage_error(
                    ErrorSubject::LogIndex(previous + 1),
                    ErrorVerb::Read,
                    AnyError::error(format!(
                        "hole in the Raft log: {previous} is followed by {}",
                        entry.log_id
                    )),
                ));
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(META_LAST_PURGED, ErrorSubject::Logs)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(META_VOTE, vote, ErrorSubject::Vote)?;
        // openraft MUST NOT act on a vote (grant it, campaign with it) that a power loss could
        // take back: wait for the group flush. The wait runs on the syncer thread, not here.
        let (done, durable) = tokio::sync::oneshot::channel();
        let (watermark, term) = (self.watermark.clone(), vote.leader_id.term);
        self.syncer
            .sync_then(move |result| {
                if result.is_ok() {
                    watermark.raise_vote(term);
                }
                let _ = done.send(result);
            })
            .await;
        durable
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the sled syncer thread has stopped")))
            .map_err(|error| StorageError::from_io_error(ErrorSubject::Vote, ErrorVerb::Write, error))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(META_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: losing the newest committed id on power loss only means re-learning it from
        // the leader. It becomes durable with the next append or vote.
        match committed {
            Some(log_id) => self.write_meta(META_COMMITTED, &log_id, ErrorSubject::Store),
            None => {
                let removed = self.meta.remove(META_COMMITTED);
                removed.map(drop).map_err(|error| sled_error(ErrorSubject::Store, ErrorVerb::Delete, error))
            }
        }
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(META_COMMITTED, ErrorSubject::Store)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_then(entries, move |result| callback.log_io_completed(result)).await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The watermark goes down first, durably: a crash after the truncation must not leave a
        // mark above the (legitimately) shorter log.
        let watermark = self.watermark.clone();
        tokio::task::spawn_blocking(move || watermark.lower_log(log_id.index))
            .await
            .map_err(|error| io::Error::other(error.to_string()))
            .and_then(|lowered| lowered)
            .map_err(|error| {
                StorageError::from_io_error(ErrorSubject::Log(log_id), ErrorVerb::Write, error)
            })?;
        // Highest index first: whatever prefix of the removal a crash keeps, the log stays
        // contiguous.
        let keys = self.log.range(index_key(log_id.index)..).keys().rev();
        self.remove_in_batches(keys, || ErrorSubject::Log(log_id))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The pointer first: after a crash in between, `get_log_state` still reports the purge,
        // and leftover entries at or below it are merely not yet deleted.
        if let Some(last_purged) = self.read_meta::<LogId>(META_LAST_PURGED, ErrorSubject::Logs)?
            && last_purged.index > log_id.index
        {
            return Err(storage_error(
                ErrorSubject::Log(log_id),
                ErrorVerb::Delete,
                AnyError::error(format!("purge up to {log_id} after a purge up to {last_purged}")),
            ));
        }
        self.write_meta(META_LAST_PURGED, &log_id, ErrorSubject::Log(log_id))?;
        // Lowest index first, so the log stays contiguous whatever a crash keeps.
        let keys = self.log.range(..=index_key(log_id.index)).keys();
        self.remove_in_batches(keys, || ErrorSubject::Log(log_id))
    }
}

/// Why [`LogStore::check_watermark`] refused the stored log.
#[derive(Debug, thiserror::Error)]
pub enum WatermarkCheckError {
    #[error("reading the Raft log state: {0}")]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Behind(#[from] WatermarkError),
}

/// `raft_meta` key of the vote.
const META_VOTE: &str = "vote";
/// `raft_meta` key of the last purged log id.
const META_LAST_PURGED: &str = "last_purged";
/// `raft_meta` key of the last saved committed log id.
const META_COMMITTED: &str = "committed";

/// Most keys removed in one sled batch by `truncate` and `purge`: a purge may cover a log larger
/// than memory.
const REMOVE_BATCH_KEYS_MAX: usize = 1024;

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry, StorageError> {
    let index = match <[u8; 8]>::try_from(key) {
        Ok(bytes) => u64::from_be_bytes(bytes),
        Err(_) => {
            let message = format!("a raft_log key has {} bytes, expected 8", key.len());
            return Err(storage_error(ErrorSubject::Logs, ErrorVerb::Read, AnyError::error(message)));
        }
    };
    let entry: Entry = postcard::from_bytes(value)
        .map_err(|error| io_error(ErrorSubject::LogIndex(index), ErrorVerb::Read, &error))?;
    if entry.log_id.index != index {
        let message = format!("entry {} is stored under index {index}", entry.log_id);
        return Err(storage_error(ErrorSubject::LogIndex(index), ErrorVerb::Read, AnyError::error(message)));
    }
    Ok(entry)
}

/// Encodes an entry into a buffer sized for it up front: entries are up to a megabyte, and
/// growing the buffer by doubling costs reallocations and fresh pages on the hot path.
fn encode_entry(entry: &Entry) -> Result<Vec<u8>, StorageError> {
    let size_hint = match &entry.payload {
        openraft::EntryPayload::Normal(crate::types::Command::Append(batch)) => {
            batch.records.iter().map(|record| record.bytes.len() + 24).sum::<usize>() + 64
        }
        _ => 256,
    };
    postcard::to_extend(entry, Vec::with_capacity(size_hint))
        .map_err(|error| io_error(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, &error))
}

fn encode<T: Serialize>(
    value: &T,
    subject: impl FnOnce() -> ErrorSubject<NodeId>,
) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(value).map_err(|error| io_error(subject(), ErrorVerb::Write, &error))
}

fn sled_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, error: sled::Error) -> StorageError {
    io_error(subject, verb, &error)
}

fn io_error<E: std::error::Error + 'static>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    error: &E,
) -> StorageError {
    storage_error(subject, verb, AnyError::new(error))
}

fn storage_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, source: AnyError) -> StorageError {
    StorageIOError::new(subject, verb, source).into()
}
