//! The Merkle Mountain Range: appends leaves, computes roots and builds proofs from stored nodes.
//!
//! Roots bag the peaks right to left, so they equal the RFC 9162 Merkle Tree Hash of the same
//! leaves, and every proof is an RFC 9162 proof. Proofs read O(log n) stored nodes: each range
//! RFC 9162 hashes is either a perfect aligned subtree (one stored node) or a right-edge range
//! whose hash bags a suffix of the peaks.

use crate::position::{Subtree, split_point};
use crate::{
    ConsistencyProof, Hash, InclusionProof, LeafIndex, NodePos, NodeReader, NodeStore, TreeSize, empty_root,
    leaf_hash, node_hash,
};

/// A Merkle Mountain Range over a [`NodeStore`].
///
/// Appends never read the store: the current peaks are kept in memory.
#[derive(Debug)]
pub struct Mmr<S> {
    store: S,
    size: TreeSize,
    /// Peaks of the current tree, largest first. They make appends and the current root
    /// free of store reads.
    peaks: Vec<Hash>,
}

/// Read-only access to the tree of `size` leaves held in a store: roots and proofs.
///
/// Cheap to make (no reads): a server builds one per request, over a store handle and the
/// size it is answering for, while appends continue elsewhere.
#[derive(Debug, Clone, Copy)]
pub struct MmrView<R> {
    reader: R,
    size: TreeSize,
}

/// Why the MMR could not answer.
#[derive(Debug, thiserror::Error)]
pub enum MmrError<E> {
    #[error("tree size {requested} is beyond the current size {current}")]
    SizeBeyondCurrent { requested: TreeSize, current: TreeSize },
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange { index: LeafIndex, size: TreeSize },
    #[error("old tree size {old} is larger than new tree size {new}")]
    SizeDecreased { old: TreeSize, new: TreeSize },
    #[error("the MMR is full: it holds at most {} leaves", TreeSize::MAX)]
    Full,
    #[error("node {0} is missing from the store: the store is corrupt or truncated")]
    MissingNode(NodePos),
    #[error("node store failed")]
    Store(#[source] E),
}

impl<S: NodeStore> Mmr<S> {
    /// An MMR over an empty store.
    pub fn new(store: S) -> Self {
        Self { store, size: TreeSize(0), peaks: Vec::new() }
    }

    /// An MMR over a store that already holds the nodes of `size` leaves.
    /// Reads the peaks (O(log n) reads); the caller checks the root against the one it stored.
    pub fn open(store: S, size: TreeSize) -> Result<Self, MmrError<S::Error>> {
        if size > TreeSize::MAX {
            return Err(MmrError::Full);
        }
        let mut mmr = Self { store, size, peaks: Vec::new() };
        mmr.peaks = size.peaks().map(|peak| mmr.node(peak.pos())).collect::<Result<_, _>>()?;
        if let Some(last) = size.node_count().checked_sub(1) {
            // Catch a truncated store now rather than when it serves a proof.
            mmr.node(NodePos(last))?;
        }
        Ok(mmr)
    }

    pub fn size(&self) -> TreeSize {
        self.size
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, for a caller that stages the MMR's writes (for example in a database batch)
    /// and commits them together with its own. It MUST NOT write nodes itself.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Gives the store back, for a caller that reopens it later.
    pub fn into_store(self) -> S {
        self.store
    }

    /// Peaks of the current tree, largest first.
    pub fn peaks(&self) -> &[Hash] {
        &self.peaks
    }

    /// Appends a leaf by its data, returning its index.
    pub fn append(&mut self, data: &[u8]) -> Result<LeafIndex, MmrError<S::Error>> {
        self.append_leaf_hash(leaf_hash(data))
    }

    /// Appends a leaf by its hash, returning its index. Writes the leaf and one node per
    /// merge: `2 − popcount(n)/n < 2` writes per leaf on average.
    ///
    /// On a store error nothing in memory changes, but the store may hold some of the
    /// leaf's nodes: reopen the MMR from the store's last consistent state.
    pub fn append_leaf_hash(&mut self, leaf: Hash) -> Result<LeafIndex, MmrError<S::Error>> {
        if self.size >= TreeSize::MAX {
            return Err(MmrError::Full);
        }
        let index = LeafIndex(self.size.0);
        let mut pos = index.pos();
        let mut hash = leaf;
        self.store.append(pos, hash).map_err(MmrError::Store)?;
        // Each trailing one bit of the index is a peak of equal height to merge with.
        let merges = index.0.trailing_ones() as usize;
        let kept = self.peaks.len() - merges;
        for left in self.peaks[kept..].iter().rev() {
            hash = node_hash(left, &hash);
            pos.0 += 1;
            self.store.append(pos, hash).map_err(MmrError::Store)?;
        }
        self.peaks.truncate(kept);
        self.peaks.push(hash);
        self.size.0 += 1;
        Ok(index)
    }

    /// Root of the current tree (RFC 9162 Merkle Tree Hash of all leaves).
    pub fn root(&self) -> Hash {
        bag(&self.peaks)
    }

    /// Root of the tree of the first `size` leaves, for any size up to the current one.
    pub fn root_at(&self, size: TreeSize) -> Result<Hash, MmrError<S::Error>> {
        if size == self.size {
            return Ok(self.root());
        }
        self.view().root_at(size)
    }

    /// Inclusion proof for the leaf at `index` in the tree of `size` leaves (RFC 9162 §2.1.3.1).
    pub fn inclusion_proof(
        &self,
        index: LeafIndex,
        size: TreeSize,
    ) -> Result<InclusionProof, MmrError<S::Error>> {
        self.view().inclusion_proof(index, size)
    }

    /// Consistency proof from the tree of `old_size` leaves to the tree of `new_size` leaves
    /// (RFC 9162 §2.1.4.1). Empty when `old_size` is 0 or equals `new_size`.
    pub fn consistency_proof(
        &self,
        old_size: TreeSize,
        new_size: TreeSize,
    ) -> Result<ConsistencyProof, MmrError<S::Error>> {
        self.view().consistency_proof(old_size, new_size)
    }

    /// A read-only view of the current tree.
    pub fn view(&self) -> MmrView<&S> {
        MmrView::new(&self.store, self.size)
    }

    fn node(&self, pos: NodePos) -> Result<Hash, MmrError<S::Error>> {
        self.view().node(pos)
    }
}

impl<R: NodeReader> MmrView<R> {
    /// A view of the first `size` leaves of the tree in `reader`. The caller vouches that the
    /// store holds at least that many; a missing node surfaces as [`MmrError::MissingNode`].
    pub fn new(reader: R, size: TreeSize) -> Self {
        Self { reader, size }
    }

    pub fn size(&self) -> TreeSize {
        self.size
    }

    /// Root of the whole view (reads its peaks).
    pub fn root(&self) -> Result<Hash, MmrError<R::Error>> {
        self.root_at(self.size)
    }

    /// Root of the tree of the first `size` leaves, for any size up to the view's.
    pub fn root_at(&self, size: TreeSize) -> Result<Hash, MmrError<R::Error>> {
        self.check_size(size)?;
        self.range_hash(0, size.0, size)
    }

    /// Inclusion proof for the leaf at `index` in the tree of `size` leaves (RFC 9162 §2.1.3.1).
    pub fn inclusion_proof(
        &self,
        index: LeafIndex,
        size: TreeSize,
    ) -> Result<InclusionProof, MmrError<R::Error>> {
        self.check_size(size)?;
        if !size.contains(index) {
            return Err(MmrError::IndexOutOfRange { index, size });
        }
        let mut path = Vec::with_capacity(path_len_max(size));
        // Walk RFC 9162's PATH(m, D[lo:hi]) from the root down, then reverse to leaf-first.
        let (mut lo, mut hi) = (0, size.0);
        while hi - lo > 1 {
            let mid = lo + split_point(hi - lo);
            if index.0 < mid {
                path.push(self.range_hash(mid, hi, size)?);
                hi = mid;
            } else {
                path.push(self.range_hash(lo, mid, size)?);
                lo = mid;
            }
        }
        path.reverse();
        Ok(InclusionProof { leaf_index: index, tree_size: size, path })
    }

    /// Consistency proof from the tree of `old_size` leaves to the tree of `new_size` leaves
    /// (RFC 9162 §2.1.4.1). Empty when `old_size` is 0 or equals `new_size`.
    pub fn consistency_proof(
        &self,
        old_size: TreeSize,
        new_size: TreeSize,
    ) -> Result<ConsistencyProof, MmrError<R::Error>> {
        self.check_size(new_size)?;
        if old_size > new_size {
            return Err(MmrError::SizeDecreased { old: old_size, new: new_size });
        }
        let mut path = Vec::with_capacity(path_len_max(new_size) + 1);
        if old_size.0 > 0 && old_size < new_size {
            // RFC 9162 SUBPROOF(m, D[lo:hi], b), unrolled: each step recurses into one half
            // and emits the hash of the other, so the path comes out root-first.
            let (mut lo, mut hi, mut m) = (0, new_size.0, old_size.0);
            let mut whole_old_tree = true;
            while m != hi - lo {
                let k = split_point(hi - lo);
                if m <= k {
                    path.push(self.range_hash(lo + k, hi, new_size)?);
                    hi = lo + k;
                } else {
                    path.push(self.range_hash(lo, lo + k, new_size)?);
                    lo += k;
                    m -= k;
                    whole_old_tree = false;
                }
            }
            // The subtree the old tree ends in is itself part of the proof, unless it is the
            // whole old tree (the verifier already holds that root).
            if !whole_old_tree {
                path.push(self.range_hash(lo, hi, new_size)?);
            }
            path.reverse();
        }
        Ok(ConsistencyProof { old_size, new_size, path })
    }

    fn check_size(&self, size: TreeSize) -> Result<(), MmrError<R::Error>> {
        if size > self.size {
            return Err(MmrError::SizeBeyondCurrent { requested: size, current: self.size });
        }
        Ok(())
    }

    /// RFC 9162 Merkle Tree Hash of leaves `[lo, hi)` within the tree of `size` leaves.
    /// The range is either a perfect aligned subtree, or ends at `size` and starts at a peak.
    fn range_hash(&self, lo: u64, hi: u64, size: TreeSize) -> Result<Hash, MmrError<R::Error>> {
        if lo == hi {
            return Ok(empty_root());
        }
        if let Some(subtree) = Subtree::covering(lo, hi - lo) {
            return self.node(subtree.pos());
        }
        assert_eq!(hi, size.0, "RFC 9162 ranges that are not perfect end at the tree's edge");
        // Bag the peaks of `size` that lie in [lo, size), right to left.
        let mut peaks = size.peaks().rev().take_while(|peak| peak.first_leaf >= lo);
        let last = peaks.next().expect("a non-empty right-edge range holds at least one peak");
        let mut root = self.node(last.pos())?;
        for peak in peaks {
            root = node_hash(&self.node(peak.pos())?, &root);
        }
        Ok(root)
    }

    fn node(&self, pos: NodePos) -> Result<Hash, MmrError<R::Error>> {
        self.reader.get(pos).map_err(MmrError::Store)?.ok_or(MmrError::MissingNode(pos))
    }
}

/// Bags peaks (largest first) right to left into the RFC 9162 root.
fn bag(peaks: &[Hash]) -> Hash {
    let mut peaks = peaks.iter().rev();
    let Some(last) = peaks.next() else { return empty_root() };
    peaks.fold(*last, |right, left| node_hash(left, &right))
}

/// Upper bound on an inclusion path in a tree of `size` leaves: its height.
fn path_len_max(size: TreeSize) -> usize {
    (u64::BITS - size.0.saturating_sub(1).leading_zeros()) as usize
}
