//! The server side of the peer (Raft) service: hands the other ledger nodes' Raft RPCs to this
//! node's openraft instance and answers the leader's cosign requests.
//!
//! Served on the peer port only, never on the client port. The wire contract is described in
//! `network`, the client side: postcard of an openraft request in, postcard of
//! `Result<response, RaftError>` out. A gRPC status is returned only when the call itself
//! fails (a payload that does not decode, a reply that cannot be encoded), never for a Raft
//! error.

use std::sync::Arc;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use proto::v1::{self, CosignRequest, CosignResponse, RaftMessage, cosign_response};
use proto::{RaftPeer, RaftPeerServer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use crate::cosign::Cosign;
use crate::network::{decode_payload, encode_payload, refusal_to_wire};
use crate::types::{NodeId, Raft, TypeConfig};

/// The `RaftPeer` gRPC service of one ledger node.
#[derive(Clone)]
pub struct PeerService {
    raft: Raft,
    /// Decides whether to cosign a checkpoint body, and signs it: the node's checkpoint signer.
    cosigner: Arc<dyn Cosign>,
}

impl PeerService {
    pub fn new(raft: Raft, cosigner: Arc<dyn Cosign>) -> Self {
        Self { raft, cosigner }
    }

    /// The tonic service, accepting and sending messages of at most `message_bytes_max` bytes
    /// (the peers' `PeerNetworkSettings::message_bytes_max`): a larger request is refused with
    /// `OUT_OF_RANGE` before it is buffered whole.
    pub fn into_server(self, message_bytes_max: usize) -> RaftPeerServer<Self> {
        RaftPeerServer::new(self)
            .max_decoding_message_size(message_bytes_max)
            .max_encoding_message_size(message_bytes_max)
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode_request("AppendEntries", request)?;
        encode_reply("AppendEntries", &self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<NodeId> = decode_request("Vote", request)?;
        encode_reply("Vote", &self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_request("InstallSnapshot", request)?;
        // Run to completion on a task of its own, even if the caller gives up and tonic drops
        // this handler: openraft's chunk receiver is not cancel-safe (a chunk's write cut short
        // leaves the file position past the offset openraft recorded, so a retried chunk would
        // land in the wrong place).
        let raft = self.raft.clone();
        let result = tokio::spawn(async move { raft.install_snapshot(rpc).await })
            .await
            .map_err(|error| Status::internal(format!("InstallSnapshot handler failed: {error}")))?;
        encode_reply("InstallSnapshot", &result)
    }

    async fn cosign(&self, request: Request<CosignRequest>) -> Result<Response<CosignResponse>, Status> {
        let body = request.into_inner().body;
        // Off the async workers: deciding may read the tree's nodes from sled, which can block
        // on disk. Cosign calls come once per checkpoint, so the thread hop costs nothing.
        let cosigner = Arc::clone(&self.cosigner);
        let result = tokio::task::spawn_blocking(move || cosigner.cosign(&body))
            .await
            .map_err(|error| Status::internal(format!("Cosign handler failed: {error}")))?;
        let outcome = match result {
            Ok(signature) => cosign_response::Outcome::Signature(v1::CosignSignature::from(&signature)),
            Err(refusal) => cosign_response::Outcome::Refusal(refusal_to_wire(&refusal)),
        };
        Ok(Response::new(CosignResponse { outcome: Some(outcome) }))
    }
}

/// Decodes the openraft request in a peer's message. A payload that does not decode comes from
/// a peer running an incompatible version (or not a peer at all): refused, never a panic.
fn decode_request<T: DeserializeOwned>(rpc: &str, request: Request<RaftMessage>) -> Result<T, Status> {
    let remote_addr = request.remote_addr();
    decode_payload(&request.into_inner().payload).map_err(|error| {
        tracing::warn!(rpc, ?remote_addr, %error, "refused a peer message that does not decode");
        Status::invalid_argument(format!("{rpc} payload is not a postcard-encoded openraft request: {error}"))
    })
}

/// Encodes openraft's result of handling a request, error included, for the caller.
fn encode_reply<T: Serialize>(rpc: &str, result: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = encode_payload(result).map_err(|error| {
        tracing::error!(rpc, %error, "could not encode a Raft reply");
        Status::internal(format!("{rpc} reply could not be encoded"))
    })?;
    Ok(Response::new(RaftMessage { payload }))
}
