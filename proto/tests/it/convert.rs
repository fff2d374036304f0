//! Conversions between wire messages and `mmr` types: round trips through the wire encoding,
//! and every rejection of bad input.

use mmr::{
    Checkpoint, CheckpointError, ConsistencyProof, Hash, InclusionProof, KeyId, LeafIndex, MemStore, Mmr,
    NoteError, NoteLimits, NoteSignature, NoteSigner, SignedNote, TreeSize, VerifierPolicy, leaf_hash,
};
use prost::Message;
use proto::v1;
use proto::{ConvertError, PROOF_PATH_LEN_MAX, hash_from_wire};

const ORIGIN: &str = "aegis.example.com/ledger/test";
const LEAVES: u64 = 11;

fn signer(name: &str, seed: u8) -> NoteSigner {
    NoteSigner::from_seed(name, &[seed; 32]).expect("valid key name")
}

fn record(index: u64) -> Vec<u8> {
    format!("record {index}").into_bytes()
}

fn tree() -> Mmr<MemStore> {
    let mut tree = Mmr::new(MemStore::new());
    for index in 0..LEAVES {
        tree.append(&record(index)).expect("append");
    }
    tree
}

/// The checkpoint of the tree at `size`, signed by two nodes, in wire form.
fn signed_checkpoint(tree: &Mmr<MemStore>, size: TreeSize) -> (Checkpoint, SignedNote, v1::SignedCheckpoint) {
    let checkpoint = Checkpoint::new(ORIGIN, size, tree.root_at(size).expect("root"));
    let note = checkpoint.sign(&[&signer("ledger-1", 1), &signer("ledger-2", 2)]).expect("sign");
    let wire = v1::SignedCheckpoint::new(&checkpoint, &note);
    (checkpoint, note, wire)
}

/// What the other end of a connection decodes.
fn through_wire<M: Message + Default>(message: &M) -> M {
    M::decode(message.encode_to_vec().as_slice()).expect("decodes")
}

fn hashes(count: usize, len: usize) -> Vec<Vec<u8>> {
    (0..count).map(|index| vec![u8::try_from(index % 256).expect("fits"); len]).collect()
}

#[test]
fn hash_from_wire_checks_the_length() {
    let check = |len: usize, expected: Result<Hash, ConvertError>| {
        assert_eq!(hash_from_wire("root", &vec![9; len]), expected, "{len} bytes");
    };
    check(32, Ok(Hash([9; 32])));
    check(31, Err(ConvertError::HashLength { field: "root", len: 31 }));
    check(33, Err(ConvertError::HashLength { field: "root", len: 33 }));
    check(0, Err(ConvertError::HashLength { field: "root", len: 0 }));
}

#[test]
fn inclusion_proofs_round_trip_and_verify_against_their_checkpoint() {
    let tree = tree();
    for size in [1, 2, 7, LEAVES] {
        let (checkpoint, _, wire_checkpoint) = signed_checkpoint(&tree, TreeSize(size));
        for index in 0..size {
            let proof = tree.inclusion_proof(LeafIndex(index), TreeSize(size)).expect("proof");
            let response = through_wire(&v1::GetInclusionProofResponse::from_proof(
                &proof,
                record(index),
                Some(wire_checkpoint.clone()),
            ));
            assert_eq!(response.leaf_index, index);
            assert_eq!(response.tree_size, size);
            assert_eq!(response.record, record(index));

            let decoded = InclusionProof::try_from(&response).expect("valid proof");
            assert_eq!(decoded, proof);
            let note =
                response.checkpoint.expect("checkpoint").to_note(&NoteLimits::default()).expect("note");
            let root = Checkpoint::from_body(note.text()).expect("checkpoint body").root;
            assert_eq!(root, checkpoint.root);
            assert_eq!(decoded.verify(&leaf_hash(&response.record), &root), Ok(()));
        }
    }
}

#[test]
fn consistency_proofs_round_trip_and_verify() {
    let tree = tree();
    for (old_size, new_size) in [(0, 5), (1, 2), (3, 7), (4, 8), (5, LEAVES), (LEAVES, LEAVES)] {
        let proof = tree.consistency_proof(TreeSize(old_size), TreeSize(new_size)).expect("proof");
        let (_, _, wire_checkpoint) = signed_checkpoint(&tree, TreeSize(new_size));
        let response =
            through_wire(&v1::GetConsistencyProofResponse::from_proof(&proof, Some(wire_checkpoint.clone())));
        assert_eq!((response.old_size, response.new_size), (old_size, new_size));
        assert_eq!(response.checkpoint, Some(wire_checkpoint));

        let decoded = ConsistencyProof::try_from(&response).expect("valid proof");
        assert_eq!(decoded, proof);
        let old_root = tree.root_at(TreeSize(old_size)).expect("old root");
        let new_root = tree.root_at(TreeSize(new_size)).expect("new root");
        assert_eq!(decoded.verify(&old_root, &new_root), Ok(()), "{old_size} -> {new_size}");
    }
}

#[test]
fn proofs_with_a_hash_of_the_wrong_length_are_rejected() {
    for len in [31, 33] {
        let mut path = hashes(4, 32);
        path[2] = vec![0; len];
        let expected = ConvertError::PathHashLength { field: "path", index: 2, len };
        let inclusion = v1::GetInclusionProofResponse {
            leaf_index: 3,
            tree_size: 16,
            path: path.clone(),
            ..Default::default()
        };
        assert_eq!(InclusionProof::try_from(&inclusion), Err(expected.clone()));
        let consistency =
            v1::GetConsistencyProofResponse { old_size: 3, new_size: 16, path, ..Default::default() };
        assert_eq!(ConsistencyProof::try_from(&consistency), Err(expected));
    }
}

#[test]
fn proof_paths_longer_than_the_limit_are_rejected() {
    assert_eq!(PROOF_PATH_LEN_MAX, 64);
    // At the limit the conversion succeeds; whether the path fits the tree is the verifier's call.
    let inclusion = v1::GetInclusionProofResponse { path: hashes(64, 32), ..Default::default() };
    assert_eq!(InclusionProof::try_from(&inclusion).map(|proof| proof.path.len()), Ok(64));

    // Over it, the length alone decides, even when the elements are not hashes at all.
    for len in [32, 0] {
        let expected = ConvertError::PathTooLong { field: "path", len: 65 };
        let inclusion = v1::GetInclusionProofResponse { path: hashes(65, len), ..Default::default() };
        assert_eq!(InclusionProof::try_from(&inclusion), Err(expected.clone()));
        let consistency = v1::GetConsistencyProofResponse { path: hashes(65, len), ..Default::default() };
        assert_eq!(ConsistencyProof::try_from(&consistency), Err(expected));
    }
}

#[test]
fn signed_checkpoints_round_trip() {
    let tree = tree();
    let (checkpoint, note, wire) = signed_checkpoint(&tree, TreeSize(7));
    assert_eq!(wire.tree_size, 7);
    assert_eq!(wire.root, checkpoint.root.0.to_vec());
    assert_eq!(wire.note, note.to_string());
    assert!(wire.note.starts_with(&format!("{ORIGIN}\n7\n")), "{}", wire.note);

    let parsed = through_wire(&wire).to_note(&NoteLimits::default()).expect("valid note");
    assert_eq!(parsed, note);
    assert_eq!(Checkpoint::from_body(parsed.text()), Ok(checkpoint));
}

#[test]
fn bad_signed_checkpoints_are_rejected() {
    let tree = tree();
    let (_, _, good) = signed_checkpoint(&tree, TreeSize(7));
    let check = |wire: v1::SignedCheckpoint, limits: NoteLimits, expected: ConvertError| {
        assert_eq!(wire.to_note(&limits), Err(expected));
    };
    let limits = NoteLimits::default();
    let note_error = |error| ConvertError::Note { field: "checkpoint.note", error };

    check(
        v1::SignedCheckpoint { note: "not a note".to_owned(), ..good.clone() },
        limits,
        note_error(NoteError::NoSignatures),
    );
    check(
        v1::SignedCheckpoint { note: good.note.replace("\u{2014} ", "- "), ..good.clone() },
        limits,
        note_error(NoteError::BadSignatureLine("must start with an em dash and a space")),
    );
    let small = NoteLimits { note_bytes_max: 64, ..limits };
    let len = good.note.len();
    check(good.clone(), small, note_error(NoteError::TooLarge { len, max: 64 }));

    // A well-formed note whose text is not a checkpoint.
    let mut hello = SignedNote::new("hello\n".to_owned()).expect("note text");
    hello.sign(&signer("ledger-1", 1)).expect("sign");
    check(
        v1::SignedCheckpoint { note: hello.to_string(), ..good.clone() },
        limits,
        ConvertError::Checkpoint {
            field: "checkpoint.note",
            error: CheckpointError::MissingLine("tree size"),
        },
    );

    // Convenience fields that contradict the note.
    check(
        v1::SignedCheckpoint { tree_size: 8, ..good.clone() },
        limits,
        ConvertError::CheckpointMismatch { field: "checkpoint.tree_size" },
    );
    let mut other_root = good.root.clone();
    other_root[0] ^= 1;
    for root in [other_root, good.root[..31].to_vec(), Vec::new()] {
        check(
            v1::SignedCheckpoint { root, ..good.clone() },
            limits,
            ConvertError::CheckpointMismatch { field: "checkpoint.root" },
        );
    }
}

#[test]
#[should_panic(expected = "the note must sign this checkpoint's body")]
fn wire_checkpoint_of_a_note_over_another_body_is_a_bug() {
    let tree = tree();
    let (_, note, _) = signed_checkpoint(&tree, TreeSize(7));
    let other = Checkpoint::new(ORIGIN, TreeSize(8), tree.root_at(TreeSize(8)).expect("root"));
    let _ = v1::SignedCheckpoint::new(&other, &note);
}

#[test]
fn cosign_signatures_round_trip_into_a_verifiable_note() {
    let tree = tree();
    let (checkpoint, _, _) = signed_checkpoint(&tree, TreeSize(LEAVES));
    let body = checkpoint.to_body();
    let (leader, follower) = (signer("ledger-1", 1), signer("ledger-2", 2));
    let signature = follower.sign(&body);

    let wire = through_wire(&v1::CosignResponse {
        outcome: Some(v1::cosign_response::Outcome::Signature(v1::CosignSignature::from(&signature))),
    });
    let Some(v1::cosign_response::Outcome::Signature(wire_signature)) = wire.outcome else {
        panic!("expected a signature, got {:?}", wire.outcome);
    };
    assert_eq!(wire_signature.key_name, "ledger-2");
    assert_eq!(wire_signature.key_id, follower.verifier_key().key_id().0.to_vec());
    assert_eq!(wire_signature.signature.len(), 64);
    let decoded = NoteSignature::try_from(&wire_signature).expect("valid signature");
    assert_eq!(decoded, signature);

    // The leader adds the cosignature to its own; a 2-of-2 policy accepts the result.
    let mut note = SignedNote::new(body).expect("body");
    note.sign(&leader).expect("sign");
    note.add_signature(decoded).expect("cosignature");
    let policy =
        VerifierPolicy::new(vec![leader.verifier_key(), follower.verifier_key()], 2).expect("policy");
    assert_eq!(policy.verify(&note).map(|keys| keys.len()), Ok(2));
}

#[test]
fn cosign_signatures_of_the_wrong_lengths_are_rejected() {
    let good =
        v1::CosignSignature { key_name: "ledger-2".to_owned(), key_id: vec![1; 4], signature: vec![2; 64] };
    assert_eq!(
        NoteSignature::try_from(&good),
        Ok(NoteSignature { key_name: "ledger-2".to_owned(), key_id: KeyId([1; 4]), signature: vec![2; 64] })
    );
    for len in [0, 3, 5] {
        let wire = v1::CosignSignature { key_id: vec![1; len], ..good.clone() };
        assert_eq!(NoteSignature::try_from(&wire), Err(ConvertError::KeyIdLength { field: "key_id", len }));
    }
    for len in [0, 63, 65] {
        let wire = v1::CosignSignature { signature: vec![2; len], ..good.clone() };
        assert_eq!(
            NoteSignature::try_from(&wire),
            Err(ConvertError::SignatureLength { field: "signature", len })
        );
    }
}

#[test]
fn convert_errors_become_invalid_argument_with_a_clear_message() {
    let check = |error: ConvertError, message: &str| {
        let status = tonic::Status::from(error);
        assert_eq!((status.code(), status.message()), (tonic::Code::InvalidArgument, message));
    };
    check(ConvertError::HashLength { field: "root", len: 31 }, "root must be 32 bytes, got 31");
    check(
        ConvertError::PathHashLength { field: "path", index: 2, len: 33 },
        "path[2] must be 32 bytes, got 33",
    );
    check(
        ConvertError::PathTooLong { field: "path", len: 65 },
        "path has 65 hashes, more than the limit of 64",
    );
    check(ConvertError::KeyIdLength { field: "key_id", len: 3 }, "key_id must be 4 bytes, got 3");
    check(
        ConvertError::SignatureLength { field: "signature", len: 63 },
        "signature must be 64 bytes, got 63",
    );
    check(
        ConvertError::Note { field: "checkpoint.note", error: NoteError::NoSignatures },
        "checkpoint.note is not a valid signed note: note has no signatures (no blank line followed by \
         signature lines)",
    );
    check(
        ConvertError::CheckpointMismatch { field: "checkpoint.root" },
        "checkpoint.root disagrees with the signed checkpoint note",
    );
}
