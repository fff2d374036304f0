//! Leaf indexes, tree sizes and node positions, and the arithmetic of the MMR's post-order layout.
//!
//! The MMR stores every node of its perfect subtrees in post order, positions from 0.
//! A perfect subtree is named by its height `h` and its index `k` among the subtrees
//! of that height: it covers leaves `[k·2^h, (k+1)·2^h)`. Three distinct newtypes keep
//! "the i-th leaf", "a tree of n leaves" and "the p-th stored node" apart.

use std::fmt;

/// The index of a leaf, from 0, in append order. Final once assigned, never reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct LeafIndex(pub u64);

/// The number of leaves in a tree (a tree of size `n` holds leaves `0..n`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct TreeSize(pub u64);

/// The post-order position of a stored node in the MMR, from 0.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct NodePos(pub u64);

/// A perfect subtree of `2^height` leaves starting at leaf `first_leaf`: a stored node.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Subtree {
    pub height: u32,
    pub first_leaf: u64,
}

impl fmt::Display for LeafIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for TreeSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for NodePos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TreeSize {
    /// The largest tree an MMR holds: one more leaf and node positions would overflow `u64`.
    pub const MAX: TreeSize = TreeSize(u64::MAX >> 1);

    /// Number of stored MMR nodes for this many leaves: `2n − popcount(n)`.
    /// Defined for sizes up to [`TreeSize::MAX`].
    pub const fn node_count(self) -> u64 {
        2 * self.0 - self.0.count_ones() as u64
    }

    /// Whether `index` names a leaf of a tree of this size.
    pub const fn contains(self, index: LeafIndex) -> bool {
        index.0 < self.0
    }

    /// The peaks of this tree: the perfect subtrees of the binary decomposition of its size,
    /// largest (leftmost) first.
    pub fn peaks(self) -> impl DoubleEndedIterator<Item = Subtree> {
        let size = self.0;
        (0..u64::BITS).rev().filter(move |height| size & (1 << height) != 0).map(move |height| {
            // Leaves covered by the larger peaks to the left: the bits of `size` above `height`.
            let first_leaf = size & !((2u64 << height).wrapping_sub(1));
            Subtree { height, first_leaf }
        })
    }
}

impl LeafIndex {
    /// Position of this leaf in the MMR: every node of the tree of `index` leaves precedes it.
    pub const fn pos(self) -> NodePos {
        NodePos(TreeSize(self.0).node_count())
    }
}

impl Subtree {
    /// The subtree of `len` leaves starting at `first_leaf`, if that range is a perfect,
    /// aligned subtree (and so a stored node).
    pub const fn covering(first_leaf: u64, len: u64) -> Option<Subtree> {
        if len.is_power_of_two() && first_leaf.is_multiple_of(len) {
            Some(Subtree { height: len.trailing_zeros(), first_leaf })
        } else {
            None
        }
    }

    pub const fn leaf_count(self) -> u64 {
        1 << self.height
    }

    /// One past the last leaf it covers.
    pub const fn end_leaf(self) -> u64 {
        self.first_leaf + self.leaf_count()
    }

    /// Post-order position of this subtree's root: after its last leaf come exactly
    /// `height` merges up its right spine.
    pub const fn pos(self) -> NodePos {
        let last_leaf = LeafIndex(self.end_leaf() - 1);
        NodePos(last_leaf.pos().0 + self.height as u64)
    }
}

/// The largest power of two strictly less than `n` (`n ≥ 2`): RFC 9162's split point `k`.
pub(crate) const fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (u64::BITS - 1 - (n - 1).leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_counts_follow_two_n_minus_popcount() {
        let expected = [0, 1, 3, 4, 7, 8, 10, 11, 15, 16, 18];
        for (size, nodes) in expected.into_iter().enumerate() {
            assert_eq!(TreeSize(size as u64).node_count(), nodes, "size {size}");
        }
    }

    #[test]
    fn leaf_positions_in_post_order() {
        // Leaves sit at 0, 1, 3, 4, 7, 8, 10, 11, 15 in the classic MMR picture.
        let expected = [0, 1, 3, 4, 7, 8, 10, 11, 15];
        for (index, pos) in expected.into_iter().enumerate() {
            assert_eq!(LeafIndex(index as u64).pos(), NodePos(pos), "leaf {index}");
        }
    }

    #[test]
    fn subtree_positions_in_post_order() {
        let check = |height, first_leaf, pos| {
            assert_eq!(Subtree { height, first_leaf }.pos(), NodePos(pos), "h{height} at {first_leaf}");
        };
        check(1, 0, 2);
        check(1, 2, 5);
        check(2, 0, 6);
        check(1, 4, 9);
        check(1, 6, 12);
        check(2, 4, 13);
        check(3, 0, 14);
    }

    #[test]
    fn peaks_are_the_binary_decomposition_largest_first() {
        let peaks: Vec<(u32, u64)> = TreeSize(11).peaks().map(|s| (s.height, s.first_leaf)).collect();
        assert_eq!(peaks, vec![(3, 0), (1, 8), (0, 10)]);
        assert_eq!(TreeSize(0).peaks().count(), 0);
        let top: Vec<_> = TreeSize(u64::MAX).peaks().take(2).collect();
        assert_eq!(top[0], Subtree { height: 63, first_leaf: 0 });
        assert_eq!(top[1], Subtree { height: 62, first_leaf: 1 << 63 });
    }

    #[test]
    fn covering_accepts_only_aligned_powers_of_two() {
        assert_eq!(Subtree::covering(4, 4), Some(Subtree { height: 2, first_leaf: 4 }));
        assert_eq!(Subtree::covering(2, 4), None);
        assert_eq!(Subtree::covering(0, 3), None);
        assert_eq!(Subtree::covering(0, 0), None);
    }

    #[test]
    fn split_point_is_largest_power_of_two_below() {
        for (n, k) in [(2, 1), (3, 2), (4, 2), (5, 4), (8, 4), (9, 8), (u64::MAX, 1 << 63)] {
            assert_eq!(split_point(n), k, "n={n}");
        }
    }
}
