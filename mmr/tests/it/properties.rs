//! Property tests: the MMR's roots and proofs equal the naive RFC 9162 reference's, and verify.

use mmr::{Hash, LeafIndex, MemStore, Mmr, TreeSize, leaf_hash};
use proptest::prelude::*;

use crate::reference;
use crate::support::synthetic_leaves;

const SIZE_MAX: u64 = 5000;

fn tree(size: u64) -> (Vec<Hash>, Mmr<MemStore>) {
    let leaves: Vec<Hash> = synthetic_leaves(size).iter().map(|leaf| leaf_hash(leaf)).collect();
    let mut mmr = Mmr::new(MemStore::new());
    for leaf in &leaves {
        mmr.append_leaf_hash(*leaf).expect("in-memory append");
    }
    (leaves, mmr)
}

#[test]
fn roots_at_every_size_equal_the_reference() {
    let (leaves, full) = tree(3000);
    let mut grown = Mmr::new(MemStore::new());
    for size in 0..=leaves.len() {
        let expected = reference::root(&leaves[..size]);
        assert_eq!(grown.root(), expected, "root while growing, size {size}");
        assert_eq!(
            full.root_at(TreeSize(size as u64)).expect("size within tree"),
            expected,
            "root_at {size}"
        );
        if let Some(leaf) = leaves.get(size) {
            assert_eq!(grown.append_leaf_hash(*leaf).expect("append"), LeafIndex(size as u64));
        }
    }
}

/// A tree size, and (index, size) / (old, new) pairs inside it.
fn tree_with_pairs() -> impl Strategy<Value = (u64, Vec<(u64, u64)>)> {
    (1..=SIZE_MAX).prop_flat_map(|size| {
        let pair = (1..=size).prop_flat_map(|n| (0..=n, Just(n)));
        (Just(size), prop::collection::vec(pair, 1..8))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn inclusion_proofs_equal_the_reference_and_verify((size, pairs) in tree_with_pairs()) {
        let (leaves, mmr) = tree(size);
        for (index, n) in pairs {
            let index = index.min(n - 1);
            let proof = mmr.inclusion_proof(LeafIndex(index), TreeSize(n)).expect("within tree");
            let prefix = &leaves[..n as usize];
            prop_assert_eq!(&proof.path, &reference::inclusion_path(index as usize, prefix));
            prop_assert_eq!(proof.verify(&leaves[index as usize], &reference::root(prefix)), Ok(()));
        }
    }

    #[test]
    fn consistency_proofs_equal_the_reference_and_verify((size, pairs) in tree_with_pairs()) {
        let (leaves, mmr) = tree(size);
        for (m, n) in pairs {
            let proof = mmr.consistency_proof(TreeSize(m), TreeSize(n)).expect("within tree");
            let prefix = &leaves[..n as usize];
            prop_assert_eq!(&proof.path, &reference::consistency_path(m as usize, prefix));
            let old_root = reference::root(&leaves[..m as usize]);
            prop_assert_eq!(proof.verify(&old_root, &reference::root(prefix)), Ok(()));
        }
    }
}
