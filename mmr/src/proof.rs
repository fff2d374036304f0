//! RFC 9162 inclusion and consistency proofs, and their verification (§2.1.3.2, §2.1.4.2).
//!
//! This is the only proof verifier in Aegis. It takes hostile input: every path, index and
//! size may come from an attacker, so nothing here panics, allocates without bound or loops
//! past the length of the path it was given.

use crate::{Hash, LeafIndex, TreeSize, node_hash};

/// Proof that the leaf at `leaf_index` is in the tree of `tree_size` leaves.
/// `path` runs from the leaf's sibling up to the root's child (RFC 9162 §2.1.3.1).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct InclusionProof {
    pub leaf_index: LeafIndex,
    pub tree_size: TreeSize,
    pub path: Vec<Hash>,
}

/// Proof that the tree of `old_size` leaves is a prefix of the tree of `new_size` leaves
/// (RFC 9162 §2.1.4.1).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConsistencyProof {
    pub old_size: TreeSize,
    pub new_size: TreeSize,
    pub path: Vec<Hash>,
}

/// Why a proof did not verify. Every variant means "do not trust this".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange { index: LeafIndex, size: TreeSize },
    #[error("old tree size {old} is larger than new tree size {new}")]
    SizeDecreased { old: TreeSize, new: TreeSize },
    #[error("the proof path has more elements than a tree of this size needs")]
    PathTooLong,
    #[error("the proof path has fewer elements than a tree of this size needs")]
    PathTooShort,
    #[error("a consistency proof between equal sizes or from the empty tree must be empty")]
    PathNotEmpty,
    #[error("the proof leads to a different root than the one given")]
    RootMismatch,
    #[error("the old root given does not match the one the proof leads to")]
    OldRootMismatch,
}

impl InclusionProof {
    /// Checks that the leaf with hash `leaf` sits at `leaf_index` in the tree whose root is `root`.
    pub fn verify(&self, leaf: &Hash, root: &Hash) -> Result<(), ProofError> {
        verify_inclusion(self.leaf_index, self.tree_size, leaf, &self.path, root)
    }
}

impl ConsistencyProof {
    /// Checks that the tree with root `old_root` is a prefix of the tree with root `new_root`.
    pub fn verify(&self, old_root: &Hash, new_root: &Hash) -> Result<(), ProofError> {
        verify_consistency(self.old_size, self.new_size, &self.path, old_root, new_root)
    }
}

/// RFC 9162 §2.1.3.2: verifies an inclusion path for `leaf` at `index` in a tree of `size`.
pub fn verify_inclusion(
    index: LeafIndex,
    size: TreeSize,
    leaf: &Hash,
    path: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if !size.contains(index) {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut node_index = index.0;
    let mut last_index = size.0 - 1;
    let mut hash = *leaf;
    for sibling in path {
        if last_index == 0 {
            return Err(ProofError::PathTooLong);
        }
        if node_index & 1 == 1 || node_index == last_index {
            hash = node_hash(sibling, &hash);
            if node_index & 1 == 0 {
                // A right-edge node with no right sibling (node_index == last_index != 0):
                // climb until it is a right child.
                let shift = node_index.trailing_zeros();
                node_index >>= shift;
                last_index >>= shift;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        node_index >>= 1;
        last_index >>= 1;
    }
    if last_index != 0 {
        return Err(ProofError::PathTooShort);
    }
    if hash != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: verifies that the tree of `old_size` with `old_root` is a prefix of the
/// tree of `new_size` with `new_root`.
pub fn verify_consistency(
    old_size: TreeSize,
    new_size: TreeSize,
    path: &[Hash],
    old_root: &Hash,
    new_root: &Hash,
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizeDecreased { old: old_size, new: new_size });
    }
    if old_size == new_size {
        if !path.is_empty() {
            return Err(ProofError::PathNotEmpty);
        }
        return if old_root == new_root { Ok(()) } else { Err(ProofError::RootMismatch) };
    }
    if old_size.0 == 0 {
        // Every tree extends the empty tree; there is nothing to prove.
        if !path.is_empty() {
            return Err(ProofError::PathNotEmpty);
        }
        return Ok(());
    }
    let (first, rest) = match path.split_first() {
        Some(split) => split,
        None => return Err(ProofError::PathTooShort),
    };
    // When the old tree is a perfect subtree its root is the proof's implicit first element.
    let (seed, rest) = if old_size.0.is_power_of_two() { (old_root, path) } else { (first, rest) };

    let mut old_index = old_size.0 - 1;
    let mut new_index = new_size.0 - 1;
    let shift = old_index.trailing_ones();
    old_index >>= shift;
    new_index >>= shift;

    let mut old_hash = *seed;
    let mut new_hash = *seed;
    for node in rest {
        if new_index == 0 {
            return Err(ProofError::PathTooLong);
        }
        if old_index & 1 == 1 || old_index == new_index {
            old_hash = node_hash(node, &old_hash);
            new_hash = node_hash(node, &new_hash);
            if old_index & 1 == 0 {
                // Here old_index == new_index != 0: climb until it is a right child.
                let shift = old_index.trailing_zeros();
                old_index >>= shift;
                new_index >>= shift;
            }
        } else {
            new_hash = node_hash(&new_hash, node);
        }
        old_index >>= 1;
        new_index >>= 1;
    }
    if new_index != 0 {
        return Err(ProofError::PathTooShort);
    }
    if old_hash != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if new_hash != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}
