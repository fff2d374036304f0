//! Negative space of proof verification: every tampering with a valid proof must be rejected.

use mmr::{
    Hash, LeafIndex, MemStore, Mmr, ProofError, TreeSize, leaf_hash, verify_consistency, verify_inclusion,
};
use proptest::prelude::*;

use crate::support::{mmr_of, synthetic_leaves};

/// Tree large enough that wrong sizes above every proof's size exist.
const LEAVES: u64 = 70;
/// Proofs are tampered with at every size up to this one.
const PROOF_SIZE_MAX: u64 = 40;

/// Every path obtained from `path` by one tampering: a flipped bit, a dropped, duplicated,
/// prepended or appended element, or two elements swapped.
fn tampered(path: &[Hash]) -> Vec<(String, Vec<Hash>)> {
    let mut variants = Vec::new();
    for (i, element) in path.iter().enumerate() {
        for bit in 0..256 {
            let mut flipped = path.to_vec();
            flipped[i].0[bit / 8] ^= 1 << (bit % 8);
            variants.push((format!("bit {bit} of element {i} flipped"), flipped));
        }
        let mut dropped = path.to_vec();
        dropped.remove(i);
        variants.push((format!("element {i} dropped"), dropped));
        let mut duplicated = path.to_vec();
        duplicated.insert(i, *element);
        variants.push((format!("element {i} duplicated"), duplicated));
        if i + 1 < path.len() && path[i] != path[i + 1] {
            let mut swapped = path.to_vec();
            swapped.swap(i, i + 1);
            variants.push((format!("elements {i} and {} swapped", i + 1), swapped));
        }
    }
    for extra in [Hash([0; 32]), leaf_hash(b"extra")] {
        let mut appended = path.to_vec();
        appended.push(extra);
        variants.push(("element appended".to_owned(), appended));
        let mut prepended = path.to_vec();
        prepended.insert(0, extra);
        variants.push(("element prepended".to_owned(), prepended));
    }
    variants
}

fn tree() -> (Vec<Hash>, Mmr<MemStore>) {
    let leaves = synthetic_leaves(LEAVES);
    (leaves.iter().map(|leaf| leaf_hash(leaf)).collect(), mmr_of(&leaves))
}

fn root(mmr: &Mmr<MemStore>, size: u64) -> Hash {
    mmr.root_at(TreeSize(size)).expect("size within tree")
}

#[test]
fn tampered_inclusion_proofs_fail() {
    let (leaves, mmr) = tree();
    for n in 1..=PROOF_SIZE_MAX {
        for i in 0..n {
            let proof = mmr.inclusion_proof(LeafIndex(i), TreeSize(n)).expect("within tree");
            let leaf = leaves[i as usize];
            let root_n = root(&mmr, n);
            assert_eq!(verify_inclusion(LeafIndex(i), TreeSize(n), &leaf, &proof.path, &root_n), Ok(()));
            for (what, path) in tampered(&proof.path) {
                let result = verify_inclusion(LeafIndex(i), TreeSize(n), &leaf, &path, &root_n);
                assert!(result.is_err(), "leaf {i} size {n}: {what} still verifies");
            }
            for wrong in (0..n + 3).filter(|&wrong| wrong != i) {
                let result = verify_inclusion(LeafIndex(wrong), TreeSize(n), &leaf, &proof.path, &root_n);
                assert!(result.is_err(), "leaf {i} size {n}: claimed index {wrong} still verifies");
            }
            for wrong in (1..=LEAVES).filter(|&wrong| wrong != n) {
                let result =
                    verify_inclusion(LeafIndex(i), TreeSize(wrong), &leaf, &proof.path, &root(&mmr, wrong));
                assert!(result.is_err(), "leaf {i} size {n}: claimed size {wrong} still verifies");
            }
            let other_leaf = leaf_hash(b"not in the tree");
            assert_eq!(
                verify_inclusion(LeafIndex(i), TreeSize(n), &other_leaf, &proof.path, &root_n),
                Err(ProofError::RootMismatch)
            );
        }
    }
}

#[test]
fn tampered_consistency_proofs_fail() {
    let (_, mmr) = tree();
    for n in 1..=PROOF_SIZE_MAX {
        for m in 1..n {
            let proof = mmr.consistency_proof(TreeSize(m), TreeSize(n)).expect("within tree");
            let (root_m, root_n) = (root(&mmr, m), root(&mmr, n));
            assert_eq!(verify_consistency(TreeSize(m), TreeSize(n), &proof.path, &root_m, &root_n), Ok(()));
            for (what, path) in tampered(&proof.path) {
                let result = verify_consistency(TreeSize(m), TreeSize(n), &path, &root_m, &root_n);
                assert!(result.is_err(), "{m} -> {n}: {what} still verifies");
            }
            for wrong in (1..=LEAVES).filter(|&wrong| wrong != m) {
                let result = verify_consistency(
                    TreeSize(wrong),
                    TreeSize(n),
                    &proof.path,
                    &root(&mmr, wrong),
                    &root_n,
                );
                assert!(result.is_err(), "{m} -> {n}: claimed old size {wrong} still verifies");
            }
            for wrong in (1..=LEAVES).filter(|&wrong| wrong != n) {
                let result = verify_consistency(
                    TreeSize(m),
                    TreeSize(wrong),
                    &proof.path,
                    &root_m,
                    &root(&mmr, wrong),
                );
                assert!(result.is_err(), "{m} -> {n}: claimed new size {wrong} still verifies");
            }
            let forged = leaf_hash(b"forged root");
            assert!(verify_consistency(TreeSize(m), TreeSize(n), &proof.path, &forged, &root_n).is_err());
            assert!(verify_consistency(TreeSize(m), TreeSize(n), &proof.path, &root_m, &forged).is_err());
        }
    }
}

#[test]
fn consistency_edge_cases_follow_rfc_9162() {
    let (_, mmr) = tree();
    let (root_5, root_9) = (root(&mmr, 5), root(&mmr, 9));
    let some_path = mmr.consistency_proof(TreeSize(5), TreeSize(9)).expect("within tree").path;
    // From the empty tree: only the empty proof.
    assert_eq!(verify_consistency(TreeSize(0), TreeSize(9), &[], &mmr::empty_root(), &root_9), Ok(()));
    assert_eq!(
        verify_consistency(TreeSize(0), TreeSize(9), &some_path, &mmr::empty_root(), &root_9),
        Err(ProofError::PathNotEmpty)
    );
    // Equal sizes: only the empty proof, and equal roots.
    assert_eq!(verify_consistency(TreeSize(9), TreeSize(9), &[], &root_9, &root_9), Ok(()));
    assert_eq!(
        verify_consistency(TreeSize(9), TreeSize(9), &[], &root_5, &root_9),
        Err(ProofError::RootMismatch)
    );
    assert_eq!(
        verify_consistency(TreeSize(9), TreeSize(9), &some_path, &root_9, &root_9),
        Err(ProofError::PathNotEmpty)
    );
    // Shrinking and empty proofs between different sizes.
    assert_eq!(
        verify_consistency(TreeSize(9), TreeSize(5), &some_path, &root_9, &root_5),
        Err(ProofError::SizeDecreased { old: TreeSize(9), new: TreeSize(5) })
    );
    assert_eq!(
        verify_consistency(TreeSize(5), TreeSize(9), &[], &root_5, &root_9),
        Err(ProofError::PathTooShort)
    );
}

#[test]
fn inclusion_edge_cases() {
    let leaf = leaf_hash(b"x");
    assert_eq!(
        verify_inclusion(LeafIndex(0), TreeSize(0), &leaf, &[], &leaf),
        Err(ProofError::IndexOutOfRange { index: LeafIndex(0), size: TreeSize(0) })
    );
    assert_eq!(verify_inclusion(LeafIndex(0), TreeSize(1), &leaf, &[], &leaf), Ok(()));
    assert_eq!(
        verify_inclusion(LeafIndex(0), TreeSize(1), &leaf, &[leaf], &leaf),
        Err(ProofError::PathTooLong)
    );
    assert_eq!(verify_inclusion(LeafIndex(0), TreeSize(2), &leaf, &[], &leaf), Err(ProofError::PathTooShort));
}

fn arbitrary_hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash)
}

proptest! {
    /// Random garbage never panics and never verifies.
    #[test]
    fn garbage_never_verifies(
        index in any::<u64>(),
        old in any::<u64>(),
        size in any::<u64>(),
        path in prop::collection::vec(arbitrary_hash(), 0..80),
        leaf in arbitrary_hash(),
        root in arbitrary_hash(),
    ) {
        prop_assert!(verify_inclusion(LeafIndex(index), TreeSize(size), &leaf, &path, &root).is_err());
        if old != 0 {
            prop_assert!(verify_consistency(TreeSize(old), TreeSize(size), &path, &leaf, &root).is_err());
        }
    }
}
