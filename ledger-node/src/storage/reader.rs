//! Read access to the ledger state, shared by the gRPC services while the state machine applies.
//!
//! Everything the ledger stores below the applied tree size is immutable (leaves, nodes, record
//! ids, published checkpoints), so readers need no lock: they read sled directly and bound
//! themselves by a tree size they were given.

use mmr::{Hash, MmrView, NodePos, NodeReader, TreeSize};

use super::keys;
use crate::types::RecordId;

/// A cheap, clonable read handle on the ledger tree.
#[derive(Clone, Debug)]
pub struct LedgerReader {
    tree: sled::Tree,
}

/// Why the ledger could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt ledger state: {0}")]
    Corrupt(String),
}

impl LedgerReader {
    pub(crate) fn new(tree: sled::Tree) -> Self {
        Self { tree }
    }

    /// Opens the ledger tree of `db`.
    pub fn open(db: &sled::Db) -> Result<Self, ReadError> {
        Ok(Self::new(db.open_tree(keys::LEDGER_TREE)?))
    }

    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Roots and proofs for the tree of `size` leaves. `size` MUST NOT exceed the applied size.
    pub fn view(&self, size: TreeSize) -> MmrView<&LedgerReader> {
        MmrView::new(self, size)
    }

    /// The bytes of the record at `index`, if it has been applied.
    pub fn leaf(&self, index: u64) -> Result<Option<sled::IVec>, ReadError> {
        Ok(self.tree.get(keys::with_u64(keys::LEAF, index))?)
    }

    /// Records `start..end` in index order (lazily read; stops at the first gap).
    pub fn leaves(
        &self,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = Result<(u64, sled::IVec), ReadError>> + use<> {
        let range = keys::with_u64(keys::LEAF, start)..keys::with_u64(keys::LEAF, end);
        self.tree.range(range).map(|item| {
            let (key, value) = item?;
            let index = keys::u64_of(&key).ok_or_else(|| ReadError::Corrupt(format!("leaf key {key:?}")))?;
            Ok((index, value))
        })
    }

    /// The leaf index of the record with this id, if it is in the log.
    pub fn leaf_index_of(&self, id: &RecordId) -> Result<Option<u64>, ReadError> {
        let Some(value) = self.tree.get(keys::with_record_id(&id.0))? else { return Ok(None) };
        keys::u64_of(&value)
            .map(Some)
            .ok_or_else(|| ReadError::Corrupt(format!("record id index value {value:?}")))
    }

    /// The published checkpoint note of exactly this size.
    pub fn published(&self, size: u64) -> Result<Option<String>, ReadError> {
        let Some(note) = self.tree.get(keys::with_u64(keys::CHECKPOINT, size))? else { return Ok(None) };
        Ok(Some(note_text(&note)?))
    }

    /// The latest published checkpoint: its size and note.
    pub fn latest_published(&self) -> Result<Option<(u64, String)>, ReadError> {
        self.published_before(u64::MAX)
    }

    /// The largest published checkpoint of a size below `size_end`.
    pub fn published_before(&self, size_end: u64) -> Result<Option<(u64, String)>, ReadError> {
        let range = keys::with_u64(keys::CHECKPOINT, 0)..keys::with_u64(keys::CHECKPOINT, size_end);
        let Some(item) = self.tree.range(range).next_back() else { return Ok(None) };
        let (key, note) = item?;
        let size = keys::u64_of(&key).ok_or_else(|| ReadError::Corrupt(format!("checkpoint key {key:?}")))?;
        Ok(Some((size, note_text(&note)?)))
    }

    /// Published checkpoints of sizes `first_size..`, smallest first.
    pub fn published_from(
        &self,
        first_size: u64,
    ) -> impl Iterator<Item = Result<(u64, String), ReadError>> + use<> {
        let start = keys::with_u64(keys::CHECKPOINT, first_size);
        let end = [keys::CHECKPOINT + 1];
        self.tree.range(start.as_slice()..end.as_slice()).map(|item| {
            let (key, note) = item?;
            let size =
                keys::u64_of(&key).ok_or_else(|| ReadError::Corrupt(format!("checkpoint key {key:?}")))?;
            Ok((size, note_text(&note)?))
        })
    }
}

impl NodeReader for LedgerReader {
    type Error = ReadError;

    fn get(&self, pos: NodePos) -> Result<Option<Hash>, ReadError> {
        let Some(value) = self.tree.get(keys::with_u64(keys::NODE, pos.0))? else { return Ok(None) };
        Hash::try_from(value.as_ref())
            .map(Some)
            .map_err(|_| ReadError::Corrupt(format!("MMR node {pos} is {} bytes, not 32", value.len())))
    }
}

fn note_text(bytes: &[u8]) -> Result<String, ReadError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ReadError::Corrupt("a stored checkpoint is not UTF-8".to_owned()))
}
