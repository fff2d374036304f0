//! Read access to the ledger state, shared by the gRPC services while the state machine applies.
//!
//! Everything the ledger stores below the applied tree size is immutable (leaves, nodes, record
//! ids, published checkpoints), so readers need no lock: they read sled directly and bound
//! themselves by a tree size they were given.
//!
//! Node reads go through a [`NodeCache`] of the upper MMR nodes, shared by every clone of a
//! reader; proofs read through a [`NodeCursor`], which keeps the last node block it fetched, so
//! the several low siblings of one leaf cost one sled `get` instead of one each.

use std::cell::RefCell;
use std::sync::Arc;

use mmr::{Hash, MmrView, NodePos, NodeReader, TreeSize};

use super::node_cache::NodeCache;
use super::{blocks, id_index, keys};
use crate::types::RecordId;

/// A cheap, clonable read handle on the ledger tree.
#[derive(Clone, Debug)]
pub struct LedgerReader {
    tree: sled::Tree,
    /// Upper MMR nodes, read by nearly every proof: they are immutable, so caching them is
    /// exact (see `node_cache.rs`).
    nodes: Arc<NodeCache>,
}

/// Node reads for one proof or root: a [`LedgerReader`] that remembers the last node block it
/// read. Lives for one computation on one thread; the block it holds is bounded by the view's
/// tree size like every other read, so a partial block being rewritten meanwhile is harmless.
#[derive(Debug)]
pub struct NodeCursor<'a> {
    reader: &'a LedgerReader,
    /// The last node block fetched: its number and bytes (a cheap `Arc` clone of sled's value).
    block: RefCell<Option<(u64, sled::IVec)>>,
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
        Self { tree, nodes: Arc::new(NodeCache::new()) }
    }

    /// Opens the ledger tree of `db`.
    pub fn open(db: &sled::Db) -> Result<Self, ReadError> {
        Ok(Self::new(db.open_tree(keys::LEDGER_TREE)?))
    }

    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Forgets cached nodes: for when the whole tree is replaced (snapshot installation).
    /// Not needed for correctness, since replicas store the same nodes for the same log; it
    /// keeps a cache from outliving the state it was filled from.
    pub(crate) fn clear_caches(&self) {
        self.nodes.clear();
    }

    /// Roots and proofs for the tree of `size` leaves. `size` MUST NOT exceed the applied size.
    pub fn view(&self, size: TreeSize) -> MmrView<NodeCursor<'_>> {
        MmrView::new(NodeCursor { reader: self, block: RefCell::new(None) }, size)
    }

    /// The node block `block_number`, straight from sled.
    fn node_block(&self, block_number: u64) -> Result<Option<sled::IVec>, ReadError> {
        Ok(self.tree.get(keys::with_u64(keys::NODE, block_number))?)
    }

    /// The bytes of the record at `index`, if it has been applied.
    pub fn leaf(&self, index: u64) -> Result<Option<Vec<u8>>, ReadError> {
        let block_number = index / blocks::LEAVES_PER_BLOCK;
        let Some(block) = self.tree.get(keys::with_u64(keys::LEAF, block_number))? else { return Ok(None) };
        let count = blocks::leaf_block_len(&block).ok_or_else(|| corrupt_block("leaf", block_number))?;
        let offset = blocks::offset_in_block(index, blocks::LEAVES_PER_BLOCK);
        if offset >= count {
            return Ok(None);
        }
        let record =
            blocks::leaf_in_block(&block, offset).ok_or_else(|| corrupt_block("leaf", block_number))?;
        Ok(Some(record.to_vec()))
    }

    /// Records `start..end` in index order, read block by block; ends early at a gap.
    pub fn leaves(
        &self,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), ReadError>> + use<> {
        let first_block = start / blocks::LEAVES_PER_BLOCK;
        let end_block = end.div_ceil(blocks::LEAVES_PER_BLOCK);
        let mut blocks_in_range =
            self.tree.range(keys::with_u64(keys::LEAF, first_block)..keys::with_u64(keys::LEAF, end_block));
        let mut current: Option<(u64, sled::IVec, usize)> = None;
        let mut next = start;
        std::iter::from_fn(move || {
            loop {
                if next >= end {
                    return None;
                }
                if let Some((block_number, block, count)) = &current {
                    let offset =
                        usize::try_from(next - block_number * blocks::LEAVES_PER_BLOCK).unwrap_or(usize::MAX);
                    if offset < *count {
                        let record = blocks::leaf_in_block(block, offset).map(<[u8]>::to_vec);
                        let item = record
                            .map(|record| (next, record))
                            .ok_or_else(|| corrupt_block("leaf", *block_number));
                        next += 1;
                        return Some(item);
                    }
                    if offset < blocks::LEAF_OFFSET_END {
                        return None; // a partial block: the tree ends here
                    }
                }
                let (key, block) = match blocks_in_range.next()? {
                    Ok(item) => item,
                    Err(error) => return Some(Err(error.into())),
                };
                let Some(block_number) = keys::u64_of(&key) else {
                    return Some(Err(corrupt_block("leaf", 0)));
                };
                if block_number != next / blocks::LEAVES_PER_BLOCK {
                    return None; // a gap: leaves are dense, so nothing more is there
                }
                let Some(count) = blocks::leaf_block_len(&block) else {
                    return Some(Err(corrupt_block("leaf", block_number)));
                };
                current = Some((block_number, block, count));
            }
        })
    }

    /// The leaf index of the record with this id, if it is in the log.
    pub fn leaf_index_of(&self, id: &RecordId) -> Result<Option<u64>, ReadError> {
        id_index::lookup(&self.tree, id)
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
        cached_node(&self.nodes, pos, |block_number| self.node_block(block_number))
    }
}

impl NodeReader for NodeCursor<'_> {
    type Error = ReadError;

    fn get(&self, pos: NodePos) -> Result<Option<Hash>, ReadError> {
        cached_node(&self.reader.nodes, pos, |block_number| {
            let mut last = self.block.borrow_mut();
            if let Some((number, block)) = &*last
                && *number == block_number
            {
                return Ok(Some(block.clone()));
            }
            let block = self.reader.node_block(block_number)?;
            *last = block.clone().map(|block| (block_number, block));
            Ok(block)
        })
    }
}

/// The node at `pos`: from `cache` if it holds it, else from its block (fetched by
/// `fetch_block`), caching it if the cache admits it.
fn cached_node(
    cache: &NodeCache,
    pos: NodePos,
    fetch_block: impl FnOnce(u64) -> Result<Option<sled::IVec>, ReadError>,
) -> Result<Option<Hash>, ReadError> {
    let admitted = NodeCache::admits(pos);
    if admitted.is_some()
        && let Some(hash) = cache.get(pos)
    {
        return Ok(Some(hash));
    }
    let block_number = pos.0 / blocks::NODES_PER_BLOCK;
    let Some(block) = fetch_block(block_number)? else { return Ok(None) };
    let count = blocks::node_block_len(&block).ok_or_else(|| corrupt_block("MMR node", block_number))?;
    let offset = blocks::offset_in_block(pos.0, blocks::NODES_PER_BLOCK);
    if offset >= count {
        return Ok(None);
    }
    let hash =
        blocks::node_in_block(&block, offset).ok_or_else(|| corrupt_block("MMR node", block_number))?;
    if let Some(height) = admitted {
        cache.insert(pos, height, hash);
    }
    Ok(Some(hash))
}

fn corrupt_block(what: &str, block_number: u64) -> ReadError {
    ReadError::Corrupt(format!("{what} block {block_number} is malformed"))
}

fn note_text(bytes: &[u8]) -> Result<String, ReadError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ReadError::Corrupt("a stored checkpoint is not UTF-8".to_owned()))
}
