//! A bounded in-memory cache of the upper MMR nodes, shared by every reader of one ledger.
//!
//! Every inclusion proof reads the siblings along its leaf's path, so the nodes near the top
//! are read by almost every proof, and each read used to be a sled `get` of a 32 KiB node
//! block. A node never changes once written (positions are dense and append-only, and every
//! replica stores the same nodes for the same committed log), so a cached hash can never go
//! stale: the cache needs no invalidation, only a bound.
//!
//! Only nodes of height [`NODE_CACHE_HEIGHT_MIN`] and above are admitted: a proof's lower
//! siblings lie in the one or two node blocks around its leaf, which the proof reads anyway
//! (see `reader::NodeCursor`), and caching them would only push out nodes that are shared.
//! The cache is a fixed table of [`NODE_CACHE_SLOTS`] slots, each position hashing to one slot;
//! on a collision the higher node wins, since it is shared by more proofs.

use std::sync::Mutex;

use mmr::{Hash, NodePos};

/// Slots in a node cache: each holds one hash, so the cache takes about 3 MiB. That holds
/// every node of height ≥ 6 of a tree of 2·10⁶ leaves, and the ~10⁵ most shared nodes of any
/// larger tree.
pub(crate) const NODE_CACHE_SLOTS: usize = 1 << 16;
/// Lowest node height the cache admits. A subtree of 2⁶ leaves spans 127 consecutive node
/// positions, mostly inside one 1024-node block: nodes below this height come with the
/// leaf's own node block.
pub(crate) const NODE_CACHE_HEIGHT_MIN: u32 = 6;
/// Independently locked parts of the table, so concurrent proofs rarely wait on each other.
const SHARDS: usize = 64;
const SLOTS_PER_SHARD: usize = NODE_CACHE_SLOTS / SHARDS;

/// The cache: see the module documentation.
#[derive(Debug)]
pub(crate) struct NodeCache {
    shards: Box<[Mutex<Box<[Slot]>>]>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Position + 1 of the cached node; 0 for an empty slot.
    pos_plus_one: u64,
    height: u32,
    hash: Hash,
}

impl NodeCache {
    pub(crate) fn new() -> Self {
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(vec![Slot::default(); SLOTS_PER_SHARD].into_boxed_slice()))
            .collect();
        Self { shards }
    }

    /// Whether a node at `pos` may be cached at all; callers skip the cache when not.
    pub(crate) fn admits(pos: NodePos) -> Option<u32> {
        let height = node_height(pos);
        (height >= NODE_CACHE_HEIGHT_MIN).then_some(height)
    }

    /// The cached hash of the node at `pos`.
    pub(crate) fn get(&self, pos: NodePos) -> Option<Hash> {
        let (shard, index) = slot_of(pos);
        let slot = self.shards[shard].lock().expect("the node cache is never poisoned")[index];
        (slot.pos_plus_one == pos.0 + 1).then_some(slot.hash)
    }

    /// Caches `hash`, the stored node at `pos` of `height` (from [`NodeCache::admits`]), unless
    /// its slot holds a higher node.
    pub(crate) fn insert(&self, pos: NodePos, height: u32, hash: Hash) {
        let (shard, index) = slot_of(pos);
        let mut slots = self.shards[shard].lock().expect("the node cache is never poisoned");
        let slot = &mut slots[index];
        if slot.pos_plus_one == 0 || slot.height <= height {
            *slot = Slot { pos_plus_one: pos.0 + 1, height, hash };
        }
    }

    /// Forgets everything: for when the tree is replaced wholesale (snapshot installation).
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            shard.lock().expect("the node cache is never poisoned").fill(Slot::default());
        }
    }

    /// How many slots hold a node.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard.lock().expect("never poisoned").iter().filter(|slot| slot.pos_plus_one != 0).count()
            })
            .sum()
    }
}

/// Height of the node at a post-order MMR position (leaves are height 0).
pub(crate) fn node_height(pos: NodePos) -> u32 {
    // In 1-based post order, a perfect tree of height h ends at 2^(h+1) − 1, an all-ones
    // number; stripping the leftmost perfect subtree that precedes `pos` keeps its height.
    let mut position = pos.0 + 1;
    loop {
        let bits = u64::BITS - position.leading_zeros();
        if position.count_ones() == bits {
            return bits - 1;
        }
        position -= (1 << (bits - 1)) - 1;
    }
}

/// The shard and index within it of the one slot `pos` may occupy.
fn slot_of(pos: NodePos) -> (usize, usize) {
    // Fibonacci hashing spreads the sparse positions of high nodes over the whole table.
    let mixed = pos.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (u64::BITS - NODE_CACHE_SLOTS.trailing_zeros());
    let slot = usize::try_from(mixed).expect("a slot number fits in usize");
    (slot % SHARDS, slot / SHARDS)
}

#[cfg(test)]
mod tests {
    use mmr::{LeafIndex, Subtree, TreeSize};

    use super::*;

    #[test]
    fn heights_follow_post_order() {
        // The classic picture: positions 0..=14 of an 8-leaf tree.
        let expected = [0, 0, 1, 0, 0, 1, 2, 0, 0, 1, 0, 0, 1, 2, 3];
        for (pos, height) in expected.into_iter().enumerate() {
            assert_eq!(node_height(NodePos(pos as u64)), height, "position {pos}");
        }
        for height in 0..40 {
            let subtree = Subtree::covering(5 << height, 1 << height).expect("aligned");
            assert_eq!(node_height(subtree.pos()), height);
        }
        assert_eq!(node_height(LeafIndex(TreeSize::MAX.0 - 1).pos()), 0);
    }

    #[test]
    fn a_hit_returns_the_inserted_hash_and_a_miss_nothing() {
        let cache = NodeCache::new();
        let pos = Subtree::covering(0, 1 << 10).expect("aligned").pos();
        let height = NodeCache::admits(pos).expect("a height-10 node is admitted");
        assert_eq!(cache.get(pos), None);
        cache.insert(pos, height, Hash([7; 32]));
        assert_eq!(cache.get(pos), Some(Hash([7; 32])));
        assert_eq!(cache.get(NodePos(pos.0 + 1)), None);
        cache.clear();
        assert_eq!(cache.get(pos), None);
    }

    #[test]
    fn low_nodes_are_not_admitted() {
        assert_eq!(NodeCache::admits(LeafIndex(12345).pos()), None);
        let below = Subtree::covering(64, 32).expect("aligned").pos();
        assert_eq!(NodeCache::admits(below), None);
    }

    #[test]
    fn the_bound_holds_and_higher_nodes_win_collisions() {
        let cache = NodeCache::new();
        let mut inserted = 0;
        for first_leaf in (0..(NODE_CACHE_SLOTS as u64) * 4).map(|index| index << NODE_CACHE_HEIGHT_MIN) {
            let pos = Subtree::covering(first_leaf, 1 << NODE_CACHE_HEIGHT_MIN).expect("aligned").pos();
            cache.insert(pos, NODE_CACHE_HEIGHT_MIN, Hash([1; 32]));
            inserted += 1;
        }
        assert!(inserted > NODE_CACHE_SLOTS);
        assert!(cache.len() <= NODE_CACHE_SLOTS, "{} slots used of {NODE_CACHE_SLOTS}", cache.len());
        // A higher node takes its slot from whatever lower node is there, and keeps it.
        let high = Subtree::covering(0, 1 << 30).expect("aligned").pos();
        cache.insert(high, 30, Hash([3; 32]));
        let (shard, index) = slot_of(high);
        let colliding = (0..u64::MAX)
            .map(|leaf| Subtree::covering(leaf << NODE_CACHE_HEIGHT_MIN, 1 << NODE_CACHE_HEIGHT_MIN))
            .map(|subtree| subtree.expect("aligned").pos())
            .find(|pos| *pos != high && slot_of(*pos) == (shard, index))
            .expect("some low node shares the slot");
        cache.insert(colliding, NODE_CACHE_HEIGHT_MIN, Hash([4; 32]));
        assert_eq!(cache.get(high), Some(Hash([3; 32])));
        assert_eq!(cache.get(colliding), None);
    }
}
