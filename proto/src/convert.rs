//! The one place that converts between wire messages and `mmr` types. Wire input is hostile:
//! every conversion from the wire checks lengths and limits and returns a [`ConvertError`],
//! never panics.

use mmr::{
    Checkpoint, CheckpointError, ConsistencyProof, HASH_LEN, Hash, InclusionProof, KeyId, LeafIndex,
    NoteError, NoteLimits, NoteSignature, SignedNote, TreeSize,
};

use crate::v1;

/// Most hashes a proof path on the wire may carry. An inclusion path in a tree of at most
/// `mmr::TreeSize::MAX` (2^63 − 1) leaves has at most 63; a consistency path at most 64.
pub const PROOF_PATH_LEN_MAX: usize = 64;

/// Length of a C2SP signed-note key id.
pub const KEY_ID_LEN: usize = 4;

/// Length of an Ed25519 signature, the only kind ledger nodes cosign with.
pub const SIGNATURE_LEN: usize = 64;

/// Why a wire message could not be turned into an `mmr` type. Messages name the offending
/// field and say nothing about the node's internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("{field} must be {HASH_LEN} bytes, got {len}")]
    HashLength { field: &'static str, len: usize },
    #[error("{field}[{index}] must be {HASH_LEN} bytes, got {len}")]
    PathHashLength { field: &'static str, index: usize, len: usize },
    #[error("{field} has {len} hashes, more than the limit of {PROOF_PATH_LEN_MAX}")]
    PathTooLong { field: &'static str, len: usize },
    #[error("{field} must be {KEY_ID_LEN} bytes, got {len}")]
    KeyIdLength { field: &'static str, len: usize },
    #[error("{field} must be {SIGNATURE_LEN} bytes, got {len}")]
    SignatureLength { field: &'static str, len: usize },
    #[error("{field} is not a valid signed note: {error}")]
    Note { field: &'static str, error: NoteError },
    #[error("{field} is not a valid checkpoint: {error}")]
    Checkpoint { field: &'static str, error: CheckpointError },
    #[error("{field} disagrees with the signed checkpoint note")]
    CheckpointMismatch { field: &'static str },
}

/// Reads a 32-byte hash from the wire field named `field`.
pub fn hash_from_wire(field: &'static str, bytes: &[u8]) -> Result<Hash, ConvertError> {
    Hash::try_from(bytes).map_err(|error| ConvertError::HashLength { field, len: error.len })
}

impl From<ConvertError> for tonic::Status {
    fn from(error: ConvertError) -> Self {
        tonic::Status::invalid_argument(error.to_string())
    }
}

impl TryFrom<&v1::GetInclusionProofResponse> for InclusionProof {
    type Error = ConvertError;

    fn try_from(response: &v1::GetInclusionProofResponse) -> Result<Self, ConvertError> {
        Ok(Self {
            leaf_index: LeafIndex(response.leaf_index),
            tree_size: TreeSize(response.tree_size),
            path: path_from_wire("path", &response.path)?,
        })
    }
}

impl TryFrom<&v1::GetConsistencyProofResponse> for ConsistencyProof {
    type Error = ConvertError;

    fn try_from(response: &v1::GetConsistencyProofResponse) -> Result<Self, ConvertError> {
        Ok(Self {
            old_size: TreeSize(response.old_size),
            new_size: TreeSize(response.new_size),
            path: path_from_wire("path", &response.path)?,
        })
    }
}

impl TryFrom<&v1::CosignSignature> for NoteSignature {
    type Error = ConvertError;

    /// Checks lengths only. The key name is checked when the signature is added to a note
    /// (`SignedNote::add_signature`), and the signature itself by a `VerifierPolicy`.
    fn try_from(signature: &v1::CosignSignature) -> Result<Self, ConvertError> {
        let key_id = <[u8; KEY_ID_LEN]>::try_from(signature.key_id.as_slice())
            .map_err(|_| ConvertError::KeyIdLength { field: "key_id", len: signature.key_id.len() })?;
        if signature.signature.len() != SIGNATURE_LEN {
            return Err(ConvertError::SignatureLength { field: "signature", len: signature.signature.len() });
        }
        Ok(Self {
            key_name: signature.key_name.clone(),
            key_id: KeyId(key_id),
            signature: signature.signature.clone(),
        })
    }
}

impl From<&NoteSignature> for v1::CosignSignature {
    fn from(signature: &NoteSignature) -> Self {
        Self {
            key_name: signature.key_name.clone(),
            key_id: signature.key_id.0.to_vec(),
            signature: signature.signature.clone(),
        }
    }
}

impl v1::SignedCheckpoint {
    /// The wire form of `note`, whose text is the body of `checkpoint`.
    ///
    /// # Panics
    ///
    /// If `note`'s text is not `checkpoint`'s body: serving a checkpoint whose convenience
    /// fields contradict its note is a bug, never a client's doing.
    pub fn new(checkpoint: &Checkpoint, note: &SignedNote) -> Self {
        assert_eq!(note.text(), checkpoint.to_body(), "the note must sign this checkpoint's body");
        Self { note: note.to_string(), tree_size: checkpoint.size.0, root: checkpoint.root.0.to_vec() }
    }

    /// Parses the note within `limits`, and checks that it is a checkpoint whose tree size and
    /// root are the convenience fields'. Signatures are not checked: that is the job of
    /// `mmr::CheckpointVerifier`, which takes the returned note.
    pub fn to_note(&self, limits: &NoteLimits) -> Result<SignedNote, ConvertError> {
        let note = SignedNote::parse(self.note.as_bytes(), limits)
            .map_err(|error| ConvertError::Note { field: "checkpoint.note", error })?;
        let checkpoint = Checkpoint::from_body(note.text())
            .map_err(|error| ConvertError::Checkpoint { field: "checkpoint.note", error })?;
        if checkpoint.size.0 != self.tree_size {
            return Err(ConvertError::CheckpointMismatch { field: "checkpoint.tree_size" });
        }
        if checkpoint.root.0.as_slice() != self.root.as_slice() {
            return Err(ConvertError::CheckpointMismatch { field: "checkpoint.root" });
        }
        Ok(note)
    }
}

impl v1::GetInclusionProofResponse {
    /// The wire form of `proof` for `record`, with the checkpoint it verifies against, if the
    /// node holds one of exactly `proof.tree_size`.
    pub fn from_proof(
        proof: &InclusionProof,
        record: Vec<u8>,
        checkpoint: Option<v1::SignedCheckpoint>,
    ) -> Self {
        Self {
            leaf_index: proof.leaf_index.0,
            tree_size: proof.tree_size.0,
            path: path_to_wire(&proof.path),
            record,
            checkpoint,
        }
    }
}

impl v1::GetConsistencyProofResponse {
    /// The wire form of `proof`, with the checkpoint of `proof.new_size`, if the node holds one.
    pub fn from_proof(proof: &ConsistencyProof, checkpoint: Option<v1::SignedCheckpoint>) -> Self {
        Self {
            old_size: proof.old_size.0,
            new_size: proof.new_size.0,
            path: path_to_wire(&proof.path),
            checkpoint,
        }
    }
}

/// Reads a proof path, refusing an over-long one before allocating for it.
fn path_from_wire(field: &'static str, path: &[Vec<u8>]) -> Result<Vec<Hash>, ConvertError> {
    if path.len() > PROOF_PATH_LEN_MAX {
        return Err(ConvertError::PathTooLong { field, len: path.len() });
    }
    path.iter()
        .enumerate()
        .map(|(index, bytes)| {
            Hash::try_from(bytes.as_slice()).map_err(|error| ConvertError::PathHashLength {
                field,
                index,
                len: error.len,
            })
        })
        .collect()
}

fn path_to_wire(path: &[Hash]) -> Vec<Vec<u8>> {
    path.iter().map(|hash| hash.0.to_vec()).collect()
}
