//! The record-id index (record id → leaf index): how appends stay idempotent and how a proof
//! can be asked for by record id. Exact and durable: it is written in the same sled batch as
//! the leaves it points to.
//!
//! # Layout
//!
//! - Bucket `I` + the id's first [`BUCKET_PREFIX_LEN`] bytes (a UUIDv7's millisecond timestamp)
//!   → up to [`BUCKET_IDS_MAX`] entries `rest of the id (10 bytes) ‖ leaf index (u64 BE)`,
//!   sorted by id, no duplicates.
//! - Overflow `i` + the whole 16-byte id → leaf index (u64 BE), one key per record, for ids
//!   whose bucket was already full when they were appended.
//!
//! An id is in its bucket, or in the overflow if and only if its bucket is full: buckets only
//! grow (the ledger never removes a record), and an id goes to the overflow only when its
//! bucket is full, so a miss in a bucket that is not full proves the id absent.
//!
//! # Why buckets
//!
//! sled's cost is per insert, and its leaf pages split every 16 keys (sled 0.34.7,
//! `Node::should_split`), each split rewriting both halves and the parent index page. One key
//! per record made the index about a third of the leader's CPU. Ids appended together share a
//! millisecond, so a Raft entry of a few hundred records touches a handful of buckets. The
//! bound keeps a bucket rewrite small (4.5 KiB) whatever clients choose as timestamps: a client
//! that sends many ids of one millisecond only falls back to one key per record.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use super::keys;
use super::reader::ReadError;
use crate::types::RecordId;

/// Bytes of the id that name its bucket: UUIDv7's 48-bit Unix timestamp in milliseconds.
pub(crate) const BUCKET_PREFIX_LEN: usize = 6;
/// Most ids in one bucket: ~256 000 records/s of one millisecond before any overflow, and at
/// most 4.5 KiB rewritten per bucket touched.
pub(crate) const BUCKET_IDS_MAX: usize = 256;

const REST_LEN: usize = 16 - BUCKET_PREFIX_LEN;
const ENTRY_LEN: usize = REST_LEN + 8;

type Prefix = [u8; BUCKET_PREFIX_LEN];
type Rest = [u8; REST_LEN];

/// The index changes of one sled batch: the buckets it read (and changed) and the overflow
/// keys it added, so lookups within the batch see its own inserts. Dropped with the batch.
#[derive(Debug, Default)]
pub(crate) struct IdIndexWriter {
    buckets: HashMap<Prefix, Bucket>,
    /// Overflow keys added by this batch, not yet in sled.
    overflow: HashMap<RecordId, u64>,
}

/// One bucket, decoded: entries sorted by the rest of the id.
#[derive(Debug, Default)]
struct Bucket {
    entries: Vec<(Rest, u64)>,
    /// Changed since read from sled: to be written back.
    dirty: bool,
}

impl IdIndexWriter {
    /// The leaf index of `id`, counting this batch's inserts.
    pub(crate) fn lookup(&mut self, tree: &sled::Tree, id: &RecordId) -> Result<Option<u64>, ReadError> {
        let (prefix, rest) = split(id);
        let bucket = self.bucket(tree, prefix)?;
        if let Some(index) = bucket.find(&rest) {
            return Ok(Some(index));
        }
        if !bucket.is_full() {
            return Ok(None);
        }
        match self.overflow.get(id) {
            Some(&index) => Ok(Some(index)),
            None => overflow_get(tree, id),
        }
    }

    /// Records that `id` is at leaf `index`. Returns false, changing nothing, if `id` is
    /// already indexed: callers look it up first.
    pub(crate) fn insert(&mut self, tree: &sled::Tree, id: RecordId, index: u64) -> Result<bool, ReadError> {
        if self.lookup(tree, &id)?.is_some() {
            return Ok(false);
        }
        let (prefix, rest) = split(&id);
        let bucket = self.bucket(tree, prefix)?;
        if bucket.is_full() {
            self.overflow.insert(id, index);
        } else {
            let at = bucket.entries.binary_search_by(|(entry, _)| entry.cmp(&rest)).unwrap_err();
            bucket.entries.insert(at, (rest, index));
            bucket.dirty = true;
        }
        Ok(true)
    }

    /// Adds every change to `batch`.
    pub(crate) fn stage(&self, batch: &mut sled::Batch) {
        for (prefix, bucket) in &self.buckets {
            if bucket.dirty {
                let mut value = Vec::with_capacity(bucket.entries.len() * ENTRY_LEN);
                for (rest, index) in &bucket.entries {
                    value.extend_from_slice(rest);
                    value.extend_from_slice(&index.to_be_bytes());
                }
                batch.insert(&bucket_key(prefix), value);
            }
        }
        for (id, index) in &self.overflow {
            batch.insert(&keys::with_record_id(&id.0), &index.to_be_bytes());
        }
    }

    fn bucket(&mut self, tree: &sled::Tree, prefix: Prefix) -> Result<&mut Bucket, ReadError> {
        match self.buckets.entry(prefix) {
            Entry::Occupied(cached) => Ok(cached.into_mut()),
            Entry::Vacant(missing) => Ok(missing.insert(read_bucket(tree, &prefix)?)),
        }
    }
}

/// The leaf index of `id` as stored in `tree`.
pub(crate) fn lookup(tree: &sled::Tree, id: &RecordId) -> Result<Option<u64>, ReadError> {
    let (prefix, rest) = split(id);
    let bucket = read_bucket(tree, &prefix)?;
    match bucket.find(&rest) {
        Some(index) => Ok(Some(index)),
        None if bucket.is_full() => overflow_get(tree, id),
        None => Ok(None),
    }
}

impl Bucket {
    fn find(&self, rest: &Rest) -> Option<u64> {
        let at = self.entries.binary_search_by(|(entry, _)| entry.cmp(rest)).ok()?;
        Some(self.entries[at].1)
    }

    fn is_full(&self) -> bool {
        self.entries.len() >= BUCKET_IDS_MAX
    }
}

fn split(id: &RecordId) -> (Prefix, Rest) {
    let mut prefix = [0; BUCKET_PREFIX_LEN];
    let mut rest = [0; REST_LEN];
    prefix.copy_from_slice(&id.0[..BUCKET_PREFIX_LEN]);
    rest.copy_from_slice(&id.0[BUCKET_PREFIX_LEN..]);
    (prefix, rest)
}

fn bucket_key(prefix: &Prefix) -> [u8; 1 + BUCKET_PREFIX_LEN] {
    let mut key = [0; 1 + BUCKET_PREFIX_LEN];
    key[0] = keys::RECORD_ID_BUCKET;
    key[1..].copy_from_slice(prefix);
    key
}

/// Reads and checks a bucket: a bucket that is not sorted would make lookups miss ids, and
/// a missed id would be appended twice, so a malformed one is reported as corruption.
fn read_bucket(tree: &sled::Tree, prefix: &Prefix) -> Result<Bucket, ReadError> {
    let Some(value) = tree.get(bucket_key(prefix))? else { return Ok(Bucket::default()) };
    let corrupt = || ReadError::Corrupt(format!("record id bucket {prefix:02x?} is malformed"));
    if !value.len().is_multiple_of(ENTRY_LEN) || value.len() / ENTRY_LEN > BUCKET_IDS_MAX {
        return Err(corrupt());
    }
    let mut entries: Vec<(Rest, u64)> = Vec::with_capacity(value.len() / ENTRY_LEN);
    for chunk in value.chunks_exact(ENTRY_LEN) {
        let (rest, index) = chunk.split_at(REST_LEN);
        let rest: Rest = rest.try_into().map_err(|_| corrupt())?;
        let index = keys::u64_of(index).ok_or_else(corrupt)?;
        if entries.last().is_some_and(|(previous, _)| *previous >= rest) {
            return Err(corrupt());
        }
        entries.push((rest, index));
    }
    Ok(Bucket { entries, dirty: false })
}

fn overflow_get(tree: &sled::Tree, id: &RecordId) -> Result<Option<u64>, ReadError> {
    let Some(value) = tree.get(keys::with_record_id(&id.0))? else { return Ok(None) };
    keys::u64_of(&value)
        .map(Some)
        .ok_or_else(|| ReadError::Corrupt(format!("record id index value {value:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(prefix: u8, n: u16) -> RecordId {
        let mut bytes = [0u8; 16];
        bytes[..BUCKET_PREFIX_LEN].fill(prefix);
        bytes[14..].copy_from_slice(&n.to_be_bytes());
        RecordId(bytes)
    }

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().expect("temporary sled");
        db.open_tree("ledger").expect("tree")
    }

    /// Writes `ids` (id, leaf) through one writer per chunk of `per_batch`, as apply does.
    fn write(tree: &sled::Tree, ids: &[(RecordId, u64)], per_batch: usize) {
        for chunk in ids.chunks(per_batch) {
            let mut writer = IdIndexWriter::default();
            for &(id, index) in chunk {
                assert!(writer.insert(tree, id, index).expect("insert"), "{id:?} is new");
            }
            let mut batch = sled::Batch::default();
            writer.stage(&mut batch);
            tree.apply_batch(batch).expect("apply");
        }
    }

    #[test]
    fn full_buckets_overflow_and_every_id_is_found_exactly() {
        let tree = tree();
        // Bucket 1 overflows by 44 ids, bucket 2 stays partial; written in uneven batches.
        let ids: Vec<(RecordId, u64)> = (0..300u16)
            .map(|n| id(1, n.wrapping_mul(7919)))
            .chain((0..10).map(|n| id(2, n)))
            .zip(0..)
            .collect();
        write(&tree, &ids, 37);
        for &(id, index) in &ids {
            assert_eq!(lookup(&tree, &id).expect("lookup"), Some(index), "{id:?}");
            assert_eq!(IdIndexWriter::default().lookup(&tree, &id).expect("lookup"), Some(index));
        }
        for absent in [id(1, 1), id(2, 10), id(3, 0)] {
            assert_eq!(lookup(&tree, &absent).expect("lookup"), None, "{absent:?}");
        }
        let overflow = tree.scan_prefix([keys::RECORD_ID]).count();
        assert_eq!(overflow, 300 - BUCKET_IDS_MAX, "only the ids past a full bucket get keys of their own");
    }

    #[test]
    fn a_writer_sees_its_own_inserts_and_refuses_duplicates() {
        let tree = tree();
        let mut writer = IdIndexWriter::default();
        assert!(writer.insert(&tree, id(5, 1), 10).expect("insert"));
        assert_eq!(writer.lookup(&tree, &id(5, 1)).expect("lookup"), Some(10));
        assert!(!writer.insert(&tree, id(5, 1), 11).expect("insert"), "a duplicate is refused");
        assert_eq!(lookup(&tree, &id(5, 1)).expect("lookup"), None, "nothing is in sled before staging");
    }

    #[test]
    fn malformed_buckets_are_corruption() {
        let tree = tree();
        tree.insert(bucket_key(&[7; BUCKET_PREFIX_LEN]), vec![0u8; ENTRY_LEN + 1]).expect("insert");
        assert!(matches!(lookup(&tree, &id(7, 0)), Err(ReadError::Corrupt(_))));
        let unsorted: Vec<u8> = [[2u8; ENTRY_LEN], [1u8; ENTRY_LEN]].concat();
        tree.insert(bucket_key(&[8; BUCKET_PREFIX_LEN]), unsorted).expect("insert");
        assert!(matches!(lookup(&tree, &id(8, 0)), Err(ReadError::Corrupt(_))));
    }
}
