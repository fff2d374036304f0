//! Aegis's pure core: an RFC 9162-compatible Merkle Mountain Range, its inclusion and
//! consistency proofs, and C2SP signed checkpoints.
//!
//! **No I/O, no async, no clock.** The ledger persists nodes through [`NodeStore`]; the
//! verifier CLI and tests use [`MemStore`]. Proof verification lives here and nowhere else.
//!
//! Hashes follow RFC 9162 §2.1.1: `leaf = SHA-256(0x00 ‖ data)`, `node = SHA-256(0x01 ‖ l ‖ r)`.
//! The MMR's root bags its peaks right to left, which is exactly the RFC 9162 Merkle Tree Hash,
//! so its proofs verify with any RFC 9162 / RFC 6962 library.
//!
//! ```
//! use mmr::{LeafIndex, MemStore, Mmr, TreeSize, leaf_hash};
//!
//! let mut log = Mmr::new(MemStore::new());
//! for record in [&b"first"[..], b"second", b"third"] {
//!     log.append(record)?;
//! }
//! let old_root = log.root_at(TreeSize(2))?;
//! let inclusion = log.inclusion_proof(LeafIndex(1), TreeSize(3))?;
//! inclusion.verify(&leaf_hash(b"second"), &log.root())?;
//! let consistency = log.consistency_proof(TreeSize(2), TreeSize(3))?;
//! consistency.verify(&old_root, &log.root())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod checkpoint;
mod hash;
mod mmr;
mod note;
mod position;
mod proof;
mod store;

pub use crate::checkpoint::{Checkpoint, CheckpointError, CheckpointVerifier, VerifiedCheckpoint};
pub use crate::hash::{HASH_LEN, Hash, HashLengthError, empty_root, leaf_hash, node_hash};
pub use crate::mmr::{Mmr, MmrError, MmrView};
pub use crate::note::{
    KeyId, NoteError, NoteLimits, NoteSignature, NoteSigner, SignedNote, VerifierKey, VerifierPolicy,
};
pub use crate::position::{LeafIndex, NodePos, Subtree, TreeSize};
pub use crate::proof::{ConsistencyProof, InclusionProof, ProofError, verify_consistency, verify_inclusion};
pub use crate::store::{MemStore, NodeReader, NodeStore};
