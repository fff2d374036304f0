//! A naive, recursive RFC 9162 §2.1 reference: MTH, PATH and PROOF straight from the RFC text.
//! It rehashes every subtree on every call, which is the point: it shares no code with the MMR.
//! It takes leaf hashes, so callers hash each leaf's data once.

use mmr::{Hash, node_hash};
use sha2::{Digest, Sha256};

/// The largest power of two strictly less than `n` (n ≥ 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]).
pub(crate) fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Hash(Sha256::digest([]).into()),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]).
pub(crate) fn inclusion_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = split(n);
    if m < k {
        let mut path = inclusion_path(m, &leaves[..k]);
        path.push(root(&leaves[k..]));
        path
    } else {
        let mut path = inclusion_path(m - k, &leaves[k..]);
        path.push(root(&leaves[..k]));
        path
    }
}

/// PROOF(m, D[n]); empty for m = 0 and m = n.
pub(crate) fn consistency_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    if m == 0 || m == leaves.len() {
        return Vec::new();
    }
    subproof(m, leaves, true)
}

fn subproof(m: usize, leaves: &[Hash], whole_old_tree: bool) -> Vec<Hash> {
    let n = leaves.len();
    if m == n {
        return if whole_old_tree { Vec::new() } else { vec![root(leaves)] };
    }
    let k = split(n);
    if m <= k {
        let mut path = subproof(m, &leaves[..k], whole_old_tree);
        path.push(root(&leaves[k..]));
        path
    } else {
        let mut path = subproof(m - k, &leaves[k..], false);
        path.push(root(&leaves[..k]));
        path
    }
}

#[test]
fn reference_matches_rfc_example_shapes() {
    // RFC 9162 §2.1.5: in a 7-leaf tree, the path for d0 is [b, h, l] (3 elements), the
    // consistency proof 3 -> 7 is [c, d, g, l] (4 elements), 4 -> 7 is [l] (1), 6 -> 7 is [i, j, k] (3).
    let leaves: Vec<Hash> = (0..7u8).map(|i| mmr::leaf_hash(&[i])).collect();
    assert_eq!(inclusion_path(0, &leaves).len(), 3);
    assert_eq!(consistency_path(3, &leaves).len(), 4);
    assert_eq!(consistency_path(4, &leaves).len(), 1);
    assert_eq!(consistency_path(6, &leaves).len(), 3);
    assert_eq!(consistency_path(4, &leaves)[0], root(&leaves[4..]));
}
