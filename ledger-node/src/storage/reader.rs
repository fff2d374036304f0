//! Read access to the ledger state, shared by the gRPC services while the state machine applies.
//!
//! Everything the ledger stores below the applied tree size is immutable (leaves, nodes, record
//! ids, published checkpoints), so readers need no lock: they read sled directly and bound
//! themselves by a tree size they were given.

use mmr::{Hash, MmrView, NodePos, NodeReader, TreeSize};

use super::{keys, runs};
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
    pub fn leaf(&self, index: u64) -> Result<Option<Vec<u8>>, ReadError> {
        let Some((first, run)) = self.run_containing(keys::LEAF, index)? else { return Ok(None) };
        let count = runs::leaf_run_len(&run).ok_or_else(|| corrupt_run("leaf", first))?;
        let Some(offset) = index.checked_sub(first).and_then(|offset| usize::try_from(offset).ok()) else {
            return Ok(None);
        };
        if offset >= count {
            return Ok(None);
        }
        let record = runs::leaf_in_run(&run, offset).ok_or_else(|| corrupt_run("leaf", first))?;
        Ok(Some(record.to_vec()))
    }

    /// Records `start..end` in index order, lazily read run by run; ends early at a gap.
    pub fn leaves(
        &self,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), ReadError>> + use<> {
        let mut runs = match self.run_containing(keys::LEAF, start) {
            // Start from the run holding `start` (it may begin before it), then go forward.
            Ok(Some((first, _))) => {
                self.tree.range(keys::with_u64(keys::LEAF, first)..keys::with_u64(keys::LEAF, end))
            }
            Ok(None) => self.tree.range(keys::with_u64(keys::LEAF, start)..keys::with_u64(keys::LEAF, end)),
            Err(error) => return Box::new(std::iter::once(Err(error))) as Box<dyn Iterator<Item = _> + Send>,
        };
        let mut current: Option<(u64, sled::IVec, usize)> = None;
        let mut next = start;
        Box::new(std::iter::from_fn(move || {
            loop {
                if next >= end {
                    return None;
                }
                if let Some((first, run, count)) = &current {
                    let offset = usize::try_from(next - first).unwrap_or(usize::MAX);
                    if offset < *count {
                        let record = runs::leaf_in_run(run, offset).map(<[u8]>::to_vec);
                        let item =
                            record.map(|record| (next, record)).ok_or_else(|| corrupt_run("leaf", *first));
                        next += 1;
                        return Some(item);
                    }
                }
                let (key, run) = match runs.next()? {
                    Ok(item) => item,
                    Err(error) => return Some(Err(error.into())),
                };
                let Some(first) = keys::u64_of(&key) else { return Some(Err(corrupt_run("leaf", 0))) };
                if first > next {
                    return None; // a gap: leaves are dense, so nothing more is there
                }
                let Some(count) = runs::leaf_run_len(&run) else {
                    return Some(Err(corrupt_run("leaf", first)));
                };
                current = Some((first, run, count));
            }
        })) as Box<dyn Iterator<Item = _> + Send>
    }

    /// The run of kind `kind` whose first position is the largest at or below `position`.
    fn run_containing(&self, kind: u8, position: u64) -> Result<Option<(u64, sled::IVec)>, ReadError> {
        let lowest = [kind];
        let key = keys::with_u64(kind, position);
        let Some(item) = self.tree.range(lowest.as_slice()..=key.as_slice()).next_back() else {
            return Ok(None);
        };
        let (key, run) = item?;
        let first = keys::u64_of(&key).ok_or_else(|| ReadError::Corrupt(format!("run key {key:?}")))?;
        Ok(Some((first, run)))
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
        let Some((first, run)) = self.run_containing(keys::NODE, pos.0)? else { return Ok(None) };
        let count = runs::node_run_len(&run).ok_or_else(|| corrupt_run("MMR node", first))?;
        let offset = usize::try_from(pos.0 - first).unwrap_or(usize::MAX);
        if offset >= count {
            return Ok(None);
        }
        runs::node_in_run(&run, offset).map(Some).ok_or_else(|| corrupt_run("MMR node", first))
    }
}

fn corrupt_run(what: &str, first: u64) -> ReadError {
    ReadError::Corrupt(format!("the {what} run starting at {first} is malformed"))
}

fn note_text(bytes: &[u8]) -> Result<String, ReadError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ReadError::Corrupt("a stored checkpoint is not UTF-8".to_owned()))
}
