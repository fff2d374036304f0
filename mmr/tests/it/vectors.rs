//! Known answers from an independent implementation (`tests/vectors/*.json`, copied from shared/vectors).

use mmr::{
    CheckpointVerifier, LeafIndex, NoteLimits, NoteSigner, SignedNote, TreeSize, VerifierKey, VerifierPolicy,
    leaf_hash, verify_consistency, verify_inclusion,
};
use serde::Deserialize;

use crate::support::{b64, b64_hash, mmr_of};

#[derive(Deserialize)]
struct MerkleVectors {
    leaves: Vec<String>,
    leaf_hashes: Vec<String>,
    trees: Vec<TreeVector>,
    inclusion: Vec<InclusionVector>,
    consistency: Vec<ConsistencyVector>,
}

#[derive(Deserialize)]
struct TreeVector {
    size: u64,
    mmr_nodes: u64,
    root: String,
    peaks: Vec<String>,
}

#[derive(Deserialize)]
struct InclusionVector {
    index: u64,
    size: u64,
    path: Vec<String>,
}

#[derive(Deserialize)]
struct ConsistencyVector {
    old_size: u64,
    new_size: u64,
    path: Vec<String>,
}

#[derive(Deserialize)]
pub(crate) struct CheckpointVector {
    pub(crate) origin: String,
    pub(crate) size: u64,
    pub(crate) root: String,
    pub(crate) keys: Vec<KeyVector>,
    pub(crate) note: String,
}

#[derive(Deserialize)]
pub(crate) struct KeyVector {
    pub(crate) name: String,
    pub(crate) seed_hex: String,
    pub(crate) verifier_key: String,
}

fn merkle() -> MerkleVectors {
    serde_json::from_str(include_str!("../vectors/merkle.json")).expect("merkle.json parses")
}

pub(crate) fn checkpoint() -> CheckpointVector {
    serde_json::from_str(include_str!("../vectors/checkpoint.json")).expect("checkpoint.json parses")
}

fn leaves(vectors: &MerkleVectors) -> Vec<Vec<u8>> {
    vectors.leaves.iter().map(|leaf| b64(leaf)).collect()
}

#[test]
fn leaf_hashes() {
    let vectors = merkle();
    assert_eq!(vectors.leaves.len(), vectors.leaf_hashes.len());
    for (leaf, expected) in leaves(&vectors).iter().zip(&vectors.leaf_hashes) {
        assert_eq!(leaf_hash(leaf), b64_hash(expected));
    }
}

#[test]
fn roots_peaks_and_node_counts_at_every_size() {
    let vectors = merkle();
    let leaves = leaves(&vectors);
    let full = mmr_of(&leaves);
    assert_eq!(vectors.trees.len(), leaves.len() + 1, "a tree vector for every size 0..=n");
    for tree in &vectors.trees {
        let size = TreeSize(tree.size);
        let grown = mmr_of(&leaves[..tree.size as usize]);
        assert_eq!(size.node_count(), tree.mmr_nodes, "node count at size {}", tree.size);
        assert_eq!(grown.store().len(), tree.mmr_nodes, "nodes stored at size {}", tree.size);
        let peaks: Vec<_> = tree.peaks.iter().map(|peak| b64_hash(peak)).collect();
        assert_eq!(grown.peaks(), peaks.as_slice(), "peaks at size {}", tree.size);
        let root = b64_hash(&tree.root);
        assert_eq!(grown.root(), root, "root of a tree grown to size {}", tree.size);
        assert_eq!(
            full.root_at(size).expect("size within tree"),
            root,
            "historic root at size {}",
            tree.size
        );
    }
}

#[test]
fn inclusion_paths() {
    let vectors = merkle();
    let leaves = leaves(&vectors);
    let mmr = mmr_of(&leaves);
    assert!(vectors.inclusion.len() > 300);
    for case in &vectors.inclusion {
        let (index, size) = (LeafIndex(case.index), TreeSize(case.size));
        let expected: Vec<_> = case.path.iter().map(|hash| b64_hash(hash)).collect();
        let proof = mmr.inclusion_proof(index, size).expect("index and size within tree");
        assert_eq!(proof.path, expected, "inclusion path of leaf {} at size {}", case.index, case.size);
        let root = mmr.root_at(size).expect("size within tree");
        let leaf = leaf_hash(&leaves[case.index as usize]);
        assert_eq!(verify_inclusion(index, size, &leaf, &expected, &root), Ok(()));
    }
}

#[test]
fn consistency_paths() {
    let vectors = merkle();
    let leaves = leaves(&vectors);
    let mmr = mmr_of(&leaves);
    assert!(vectors.consistency.len() > 400);
    for case in &vectors.consistency {
        let (old, new) = (TreeSize(case.old_size), TreeSize(case.new_size));
        let expected: Vec<_> = case.path.iter().map(|hash| b64_hash(hash)).collect();
        let proof = mmr.consistency_proof(old, new).expect("sizes within tree");
        assert_eq!(proof.path, expected, "consistency path {} -> {}", case.old_size, case.new_size);
        let (old_root, new_root) = (mmr.root_at(old).expect("old size"), mmr.root_at(new).expect("new size"));
        assert_eq!(verify_consistency(old, new, &expected, &old_root, &new_root), Ok(()));
    }
}

fn seed(key: &KeyVector) -> [u8; 32] {
    let bytes: Vec<u8> = (0..key.seed_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&key.seed_hex[i..i + 2], 16).expect("hex seed"))
        .collect();
    bytes.try_into().expect("32-byte seed")
}

pub(crate) fn signers(vector: &CheckpointVector) -> Vec<NoteSigner> {
    vector
        .keys
        .iter()
        .map(|key| NoteSigner::from_seed(&key.name, &seed(key)).expect("valid key name"))
        .collect()
}

pub(crate) fn verifier_keys(vector: &CheckpointVector) -> Vec<VerifierKey> {
    vector.keys.iter().map(|key| key.verifier_key.parse().expect("verifier key parses")).collect()
}

#[test]
fn checkpoint_verifier_keys_derive_from_seeds() {
    let vector = checkpoint();
    for (signer, key) in signers(&vector).iter().zip(&vector.keys) {
        assert_eq!(signer.verifier_key().to_string(), key.verifier_key);
        let reparsed: NoteSigner = signer.to_private_key_string().parse().expect("private key round trip");
        assert_eq!(reparsed.verifier_key(), signer.verifier_key());
    }
}

#[test]
fn checkpoint_verifies_with_each_key_and_with_two_of_three() {
    let vector = checkpoint();
    let keys = verifier_keys(&vector);
    let mut policies: Vec<_> =
        keys.iter().map(|key| VerifierPolicy::new(vec![key.clone()], 1).expect("one-key policy")).collect();
    policies.push(VerifierPolicy::new(keys.clone(), 2).expect("2-of-3 policy"));
    policies.push(VerifierPolicy::new(keys.clone(), 3).expect("3-of-3 policy"));
    for policy in policies {
        let verifier = CheckpointVerifier::new(vector.origin.clone(), policy, NoteLimits::default());
        let verified = verifier.open(vector.note.as_bytes()).expect("the vector note verifies");
        assert_eq!(verified.checkpoint.origin, vector.origin);
        assert_eq!(verified.checkpoint.size, TreeSize(vector.size));
        assert_eq!(verified.checkpoint.root, b64_hash(&vector.root));
        assert!(verified.signed_by.len() >= verifier.policy().threshold());
    }
}

#[test]
fn checkpoint_root_is_the_merkle_vectors_root_at_its_size() {
    let vector = checkpoint();
    let merkle = merkle();
    let tree =
        merkle.trees.iter().find(|tree| tree.size == vector.size).expect("a tree of the checkpoint's size");
    assert_eq!(tree.root, vector.root);
}

#[test]
fn signing_the_vector_checkpoint_reproduces_the_note() {
    // Ed25519 is deterministic: signing the same body with the same seeds gives the same note.
    let vector = checkpoint();
    let parsed = SignedNote::parse(vector.note.as_bytes(), &NoteLimits::default()).expect("note parses");
    let signers = signers(&vector);
    let checkpoint = mmr::Checkpoint::from_body(parsed.text()).expect("checkpoint body");
    let note = checkpoint.sign(&signers.iter().collect::<Vec<_>>()).expect("sign");
    assert_eq!(note.to_string(), vector.note);
}

#[test]
fn copies_match_shared_vectors_where_present() {
    // shared/ sits beside the repository in CI and on developer machines, not on a user's:
    // where it is, the copies the tests use must not have drifted from it.
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["merkle.json", "checkpoint.json"] {
        let Ok(upstream) = std::fs::read(crate_dir.join("../../shared/vectors").join(name)) else { continue };
        let copy =
            std::fs::read(crate_dir.join("tests/vectors").join(name)).expect("the copy is in the repository");
        assert!(
            upstream == copy,
            "mmr/tests/vectors/{name} differs from shared/vectors/{name}: copy it again"
        );
    }
}
