//! The node-storage trait the MMR is written against, and an in-memory implementation.

use std::convert::Infallible;

use crate::{Hash, NodePos};

/// Read access to stored MMR nodes: all that roots and proofs need.
pub trait NodeReader {
    /// Why the store could not read (I/O, corruption). Pure stores use [`Infallible`].
    type Error: std::error::Error + Send + Sync + 'static;

    /// The node at `pos`, or `None` if it was never written.
    fn get(&self, pos: NodePos) -> Result<Option<Hash>, Self::Error>;
}

/// Where the MMR keeps its nodes. Positions are dense: nodes are appended in post order,
/// and a node, once written, never changes.
///
/// The ledger implements this on sled; [`MemStore`] serves tests, tools and benchmarks.
pub trait NodeStore: NodeReader {
    /// Writes the node at `pos`, which MUST be one past the last node written.
    fn append(&mut self, pos: NodePos, hash: Hash) -> Result<(), Self::Error>;
}

/// Nodes in a `Vec`, indexed by position.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    nodes: Vec<Hash>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store with room for the nodes of `leaves` leaves, so appends do not reallocate.
    pub fn with_leaf_capacity(leaves: usize) -> Self {
        Self { nodes: Vec::with_capacity(leaves.saturating_mul(2)) }
    }

    /// How many nodes have been written.
    pub fn len(&self) -> u64 {
        self.nodes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

impl NodeReader for MemStore {
    type Error = Infallible;

    fn get(&self, pos: NodePos) -> Result<Option<Hash>, Infallible> {
        Ok(usize::try_from(pos.0).ok().and_then(|index| self.nodes.get(index)).copied())
    }
}

impl NodeStore for MemStore {
    fn append(&mut self, pos: NodePos, hash: Hash) -> Result<(), Infallible> {
        assert_eq!(pos.0, self.len(), "MMR nodes are appended densely, in post order");
        self.nodes.push(hash);
        Ok(())
    }
}

impl<R: NodeReader + ?Sized> NodeReader for &R {
    type Error = R::Error;

    fn get(&self, pos: NodePos) -> Result<Option<Hash>, R::Error> {
        (**self).get(pos)
    }
}

impl<R: NodeReader + ?Sized> NodeReader for &mut R {
    type Error = R::Error;

    fn get(&self, pos: NodePos) -> Result<Option<Hash>, R::Error> {
        (**self).get(pos)
    }
}

impl<S: NodeStore + ?Sized> NodeStore for &mut S {
    fn append(&mut self, pos: NodePos, hash: Hash) -> Result<(), S::Error> {
        (**self).append(pos, hash)
    }
}
