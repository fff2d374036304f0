//! The wire form of recently served published checkpoints, by tree size.
//!
//! Every proof carries the published checkpoint of its tree size, and almost all proofs ask for
//! the same few sizes (the latest ones). A published checkpoint never changes, so its parsed
//! wire form can be kept instead of reading and parsing its note from sled per request.

use std::collections::BTreeMap;
use std::sync::Mutex;

use proto::v1;

/// Checkpoints kept. Clients prove against the latest few publications; older sizes are read
/// from sled as before. Each entry is one note (a few hundred bytes).
pub const CHECKPOINT_CACHE_ENTRIES: usize = 16;

/// Parsed published checkpoints, the largest sizes kept.
#[derive(Debug, Default)]
pub struct CheckpointCache {
    by_size: Mutex<BTreeMap<u64, v1::SignedCheckpoint>>,
}

impl CheckpointCache {
    /// The cached checkpoint of exactly `size`.
    pub fn get(&self, size: u64) -> Option<v1::SignedCheckpoint> {
        self.by_size.lock().expect("the checkpoint cache is never poisoned").get(&size).cloned()
    }

    /// Keeps `checkpoint`, which MUST be the published checkpoint of its `tree_size`; drops
    /// the smallest sizes beyond [`CHECKPOINT_CACHE_ENTRIES`].
    pub fn insert(&self, checkpoint: v1::SignedCheckpoint) {
        let mut by_size = self.by_size.lock().expect("the checkpoint cache is never poisoned");
        by_size.insert(checkpoint.tree_size, checkpoint);
        while by_size.len() > CHECKPOINT_CACHE_ENTRIES {
            by_size.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(size: u64) -> v1::SignedCheckpoint {
        v1::SignedCheckpoint {
            tree_size: size,
            root: vec![u8::try_from(size % 256).unwrap_or(0); 32],
            note: format!("note {size}"),
        }
    }

    #[test]
    fn a_hit_returns_what_was_inserted_and_the_largest_sizes_stay() {
        let cache = CheckpointCache::default();
        assert_eq!(cache.get(5), None);
        cache.insert(checkpoint(5));
        assert_eq!(cache.get(5), Some(checkpoint(5)));
        for size in 6..6 + CHECKPOINT_CACHE_ENTRIES as u64 {
            cache.insert(checkpoint(size));
        }
        assert_eq!(cache.get(5), None, "the smallest size is dropped first");
        for size in 6..6 + CHECKPOINT_CACHE_ENTRIES as u64 {
            assert_eq!(cache.get(size), Some(checkpoint(size)));
        }
        assert_eq!(cache.by_size.lock().expect("not poisoned").len(), CHECKPOINT_CACHE_ENTRIES);
    }
}
