//! The follower's side of checkpoint cosigning: what a node answers when the leader asks it to
//! sign a checkpoint body.

use mmr::NoteSignature;

/// Why a node refused to cosign. A node signs only a (size, root) it has applied itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CosignRefusal {
    #[error("not a checkpoint of this log: {0}")]
    Malformed(String),
    #[error("this node has applied {applied} leaves, the checkpoint claims {requested}")]
    NotApplied { applied: u64, requested: u64 },
    #[error("the checkpoint's root differs from this node's root at size {size}")]
    RootMismatch { size: u64 },
    #[error("this node is not healthy: {0}")]
    Unhealthy(String),
}

/// Signs checkpoint bodies on request. Implemented by the node's checkpoint signer; the peer
/// service calls it for `RaftPeer.Cosign`.
pub trait Cosign: Send + Sync + 'static {
    /// Signs `body` (a C2SP tlog-checkpoint body) if this node applied exactly that state.
    fn cosign(&self, body: &str) -> Result<NoteSignature, CosignRefusal>;
}
