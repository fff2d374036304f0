//! Reopening an MMR from its store, and what happens when the store is wrong.

use std::convert::Infallible;

use mmr::{Hash, LeafIndex, MemStore, Mmr, MmrError, MmrView, NodePos, NodeReader, NodeStore, TreeSize};

use crate::support::{mmr_of, synthetic_leaves};

#[test]
fn reopened_mmr_has_the_same_root_and_keeps_appending() {
    let leaves = synthetic_leaves(1000);
    let mut original = mmr_of(&leaves[..777]);
    let root = original.root();
    let mut reopened = Mmr::open(original.store().clone(), TreeSize(777)).expect("store holds 777 leaves");
    assert_eq!(reopened.root(), root);
    assert_eq!(reopened.peaks(), original.peaks());
    for leaf in &leaves[777..] {
        assert_eq!(reopened.append(leaf).expect("append"), original.append(leaf).expect("append"));
    }
    assert_eq!(reopened.root(), original.root());
    assert_eq!(reopened.root(), mmr_of(&leaves).root());
}

#[test]
fn opening_a_truncated_store_is_an_error() {
    let mmr = mmr_of(&synthetic_leaves(10));
    // The store holds 10 leaves (18 nodes); claiming 11 needs node 18 and 19, which are absent.
    match Mmr::open(mmr.store().clone(), TreeSize(11)) {
        Err(MmrError::MissingNode(NodePos(pos))) => assert!(pos >= 18, "missing node {pos}"),
        other => panic!("expected a missing node, got {other:?}"),
    }
}

/// A store that answers every read with a fixed hash: stands in for a corrupted disk.
struct Corrupt(MemStore, Hash);

impl NodeReader for Corrupt {
    type Error = Infallible;

    fn get(&self, pos: NodePos) -> Result<Option<Hash>, Infallible> {
        Ok(self.0.get(pos)?.map(|_| self.1))
    }
}

impl NodeStore for Corrupt {
    fn append(&mut self, pos: NodePos, hash: Hash) -> Result<(), Infallible> {
        self.0.append(pos, hash)
    }
}

#[test]
fn a_corrupted_store_changes_the_recomputed_root() {
    // The ledger compares the root recomputed from stored peaks with the root it stored:
    // corruption of any peak must show up there.
    let mmr = mmr_of(&synthetic_leaves(100));
    let reopened = Mmr::open(Corrupt(mmr.store().clone(), Hash([0xAA; 32])), TreeSize(100)).expect("opens");
    assert_ne!(reopened.root(), mmr.root());
}

#[test]
fn sizes_and_indexes_beyond_the_tree_are_refused() {
    let mmr = mmr_of(&synthetic_leaves(10));
    assert!(matches!(
        mmr.root_at(TreeSize(11)),
        Err(MmrError::SizeBeyondCurrent { requested: TreeSize(11), current: TreeSize(10) })
    ));
    assert!(matches!(
        mmr.inclusion_proof(LeafIndex(10), TreeSize(10)),
        Err(MmrError::IndexOutOfRange { index: LeafIndex(10), size: TreeSize(10) })
    ));
    assert!(matches!(mmr.inclusion_proof(LeafIndex(0), TreeSize(0)), Err(MmrError::IndexOutOfRange { .. })));
    assert!(matches!(
        mmr.inclusion_proof(LeafIndex(0), TreeSize(u64::MAX)),
        Err(MmrError::SizeBeyondCurrent { .. })
    ));
    assert!(matches!(mmr.consistency_proof(TreeSize(5), TreeSize(4)), Err(MmrError::SizeDecreased { .. })));
    assert!(matches!(
        mmr.consistency_proof(TreeSize(5), TreeSize(11)),
        Err(MmrError::SizeBeyondCurrent { .. })
    ));
    assert!(matches!(Mmr::open(MemStore::new(), TreeSize(u64::MAX)), Err(MmrError::Full)));
}

#[test]
fn appends_write_fewer_than_two_nodes_per_leaf() {
    for count in [1u64, 2, 3, 7, 8, 1000, 1024, 4097] {
        let mmr = mmr_of(&synthetic_leaves(count));
        assert_eq!(mmr.store().len(), 2 * count - u64::from(count.count_ones()));
        assert!(mmr.store().len() < 2 * count);
    }
}

#[test]
fn a_view_over_a_shared_store_answers_like_the_mmr() {
    let leaves = synthetic_leaves(300);
    let mut mmr = mmr_of(&leaves[..200]);
    let snapshot = mmr.store().clone();
    // Appends continue on the MMR; the view answers for the 200 leaves it was made for.
    for leaf in &leaves[200..] {
        mmr.append(leaf).expect("append");
    }
    let view = MmrView::new(&snapshot, TreeSize(200));
    assert_eq!(view.root().expect("root"), mmr.root_at(TreeSize(200)).expect("root at 200"));
    assert_eq!(
        view.inclusion_proof(LeafIndex(17), TreeSize(150)).expect("proof"),
        mmr.inclusion_proof(LeafIndex(17), TreeSize(150)).expect("proof")
    );
    assert_eq!(
        view.consistency_proof(TreeSize(33), TreeSize(200)).expect("proof"),
        mmr.consistency_proof(TreeSize(33), TreeSize(200)).expect("proof")
    );
    assert!(matches!(view.root_at(TreeSize(201)), Err(MmrError::SizeBeyondCurrent { .. })));
    assert_eq!(MmrView::new(&snapshot, TreeSize(0)).root().expect("empty root"), mmr::empty_root());
}
