//! The client side of the peer (Raft) service: how this node sends openraft's RPCs and the
//! leader's cosign requests to the other ledger nodes, over tonic.
//!
//! Wire contract (the server side is `peer_service`): each Raft call carries the postcard
//! encoding of an openraft request in `RaftMessage.payload`, and the reply carries the postcard
//! encoding of `Result<response, RaftError>`, so the peer's Raft errors come back typed. A gRPC
//! status never stands for a Raft error; it always means the call itself failed. Failures map
//! to openraft's `RPCError` so that openraft picks the right retry policy:
//!
//! | failure                                                        | `RPCError`                 |
//! |----------------------------------------------------------------|----------------------------|
//! | the peer answered with a Raft error                            | `RemoteError`, typed       |
//! | no reply within `RPCOption::hard_ttl()`; `DEADLINE_EXCEEDED`   | `Timeout`                  |
//! | `UNAVAILABLE` (connection refused or lost, connect timeout);   | `Unreachable`: openraft    |
//! | a peer address that is not `host:port`                         | backs off                  |
//! | AppendEntries of 2+ entries over our `message_bytes_max`, or   | `PayloadTooLarge`: openraft|
//! | refused by the peer's (`OUT_OF_RANGE`)                         | sends half as many         |
//! | a single entry, a snapshot chunk or a vote too large; any      | `Network`: openraft retries|
//! | other status; a reply payload that does not decode exactly     | on its next tick           |
//!
//! The cosign call maps the same failures to [`CosignError`].

use std::collections::HashMap;
use std::error::Error;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mmr::NoteSignature;
use openraft::AnyError;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use prost::Message as _;
use proto::RaftPeerClient;
use proto::v1::{self, CosignRefusalReason, CosignRequest, RaftMessage, cosign_response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::cosign::CosignRefusal;
use crate::types::{NodeId, NodeInfo, TypeConfig, Vote};

/// Default for [`PeerNetworkSettings::connect_timeout`]: peers sit on one network, so a TCP
/// handshake that takes longer means the peer is down or partitioned.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);

/// Default for [`PeerNetworkSettings::message_bytes_max`]: room for openraft's default 3 MiB
/// snapshot chunk and for AppendEntries of many batches, while a peer never makes this node
/// buffer more than this per call.
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;

/// How the peer transport connects and what it accepts. Both ends of a cluster SHOULD use the
/// same values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerNetworkSettings {
    /// Longest wait for a TCP connection to a peer. A peer that does not accept within it is
    /// reported unreachable, and openraft backs off instead of stalling on it.
    pub connect_timeout: Duration,
    /// Largest protobuf message sent or accepted on the peer port, in either direction. MUST
    /// exceed openraft's `snapshot_max_chunk_size` plus a few hundred bytes of metadata, and
    /// the largest single Raft entry: an AppendEntries with several entries over it is split,
    /// but a single entry or a snapshot chunk over it cannot be sent at all.
    pub message_bytes_max: usize,
    /// The local IP outgoing connections are bound to (`peer_source_ip`); `None`: the OS picks.
    pub source_ip: Option<std::net::IpAddr>,
}

/// openraft's [`RaftNetworkFactory`] for Aegis: makes a [`PeerClient`] for each peer openraft
/// (or the leader's checkpoint task) talks to. Clones share one connection per peer.
#[derive(Clone, Debug)]
pub struct PeerNetwork {
    settings: PeerNetworkSettings,
    /// One lazily connected channel per peer, reused by every client for that peer: openraft
    /// makes a new client per election and per replication stream, and reconnecting each time
    /// would cost a handshake on the election's critical path. Holds at most one entry per node
    /// id this node has been asked to reach, so it is bounded by the cluster's history.
    channels: Arc<Mutex<HashMap<NodeId, PeerChannel>>>,
}

/// A connection to one peer: openraft's [`RaftNetwork`] for that peer, and its
/// [`cosign`](PeerClient::cosign) call. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PeerClient {
    target: NodeId,
    target_node: NodeInfo,
    /// `Err` if the peer's address cannot be made into a URI: every call then fails as
    /// unreachable, since retrying at once cannot help but a membership change can.
    client: Result<RaftPeerClient<Channel>, InvalidPeerAddress>,
    message_bytes_max: usize,
}

/// Why the leader did not get a cosignature from a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CosignError {
    /// The peer could not be reached: down, refusing connections, or a bad address. Retry later.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// No reply in time. The peer may or may not have signed; asking again is harmless, since a
    /// node never signs two roots for one size.
    #[error("no cosign reply within {timeout:?}")]
    Timeout { timeout: Duration },
    /// The peer answered and refused to sign.
    #[error("peer refused to cosign: {0}")]
    Refused(CosignRefusal),
    /// The peer's reply is not a well-formed signature or refusal (for example a signature of
    /// the wrong length, or a refusal reason this node does not know).
    #[error("malformed cosign reply: {0}")]
    MalformedReply(String),
    /// The call failed with another gRPC status (for example the request was too large, or the
    /// peer runs a version without cosigning).
    #[error("cosign call failed: {code:?}: {message}")]
    Failed { code: Code, message: String },
}

/// A peer address that is not `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer address {peer_addr:?} is not a valid host:port: {reason}")]
pub struct InvalidPeerAddress {
    pub peer_addr: String,
    pub reason: String,
}

/// HTTP/2 PING interval on idle and busy peer connections. Without pings, a connection to a
/// peer that vanished without closing it would stay "open" for the kernel's TCP timeout
/// (minutes), and every RPC on it would time out instead of reconnecting.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How long a PING may go unanswered before the connection is dropped and reopened.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

type RaftRpcError<E = openraft::error::Infallible> = RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>;

impl Default for PeerNetworkSettings {
    fn default() -> Self {
        Self {
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            source_ip: None,
        }
    }
}

impl PeerNetwork {
    pub fn new(settings: PeerNetworkSettings) -> Self {
        Self { settings, channels: Arc::default() }
    }

    /// A client for `target` at `node.peer_addr`. Does not connect: the first call does, and
    /// a failed connection is retried by the next call.
    ///
    /// Must be called within a tokio runtime (tonic spawns the channel's worker).
    pub fn client(&self, target: NodeId, node: &NodeInfo) -> PeerClient {
        let client = self.channel(target, &node.peer_addr).map(|channel| {
            RaftPeerClient::new(channel)
                .max_decoding_message_size(self.settings.message_bytes_max)
                .max_encoding_message_size(self.settings.message_bytes_max)
        });
        PeerClient {
            target,
            target_node: node.clone(),
            client,
            message_bytes_max: self.settings.message_bytes_max,
        }
    }

    /// The shared channel to `target`, made anew if `target` moved to another address.
    fn channel(&self, target: NodeId, peer_addr: &str) -> Result<Channel, InvalidPeerAddress> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = channels.get(&target)
            && cached.peer_addr == peer_addr
        {
            return Ok(cached.channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{peer_addr}")).map_err(|error| {
            InvalidPeerAddress { peer_addr: peer_addr.to_owned(), reason: error_chain(&error) }
        })?;
        let channel = endpoint
            .connect_timeout(self.settings.connect_timeout)
            .local_address(self.settings.source_ip)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_lazy();
        channels.insert(target, PeerChannel { peer_addr: peer_addr.to_owned(), channel: channel.clone() });
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        self.client(target, node)
    }
}

impl PeerClient {
    /// The node this client talks to.
    pub fn target(&self) -> NodeId {
        self.target
    }

    /// Asks the peer to cosign the checkpoint `body`, waiting at most `timeout` for its answer.
    ///
    /// The signature is checked for shape only; the caller verifies it against the peer's
    /// verifier key before counting it.
    pub async fn cosign(&self, body: &str, timeout: Duration) -> Result<NoteSignature, CosignError> {
        let mut client = self.client.clone().map_err(|error| CosignError::Unreachable(error.to_string()))?;
        let mut request = tonic::Request::new(CosignRequest { body: body.to_owned() });
        request.set_timeout(timeout);
        let reply = match tokio::time::timeout(timeout, client.cosign(request)).await {
            Err(_elapsed) => return Err(CosignError::Timeout { timeout }),
            Ok(Err(status)) => {
                return Err(match Failure::from_status(&status) {
                    Failure::Unreachable(message) => CosignError::Unreachable(message),
                    Failure::Timeout => CosignError::Timeout { timeout },
                    Failure::TooLarge(_) | Failure::Other(_) => {
                        CosignError::Failed { code: status.code(), message: status.message().to_owned() }
                    }
                });
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        match reply.outcome {
            Some(cosign_response::Outcome::Signature(signature)) => NoteSignature::try_from(&signature)
                .map_err(|error| CosignError::MalformedReply(error.to_string())),
            Some(cosign_response::Outcome::Refusal(refusal)) => match refusal_from_wire(&refusal) {
                Ok(refusal) => Err(CosignError::Refused(refusal)),
                Err(error) => Err(CosignError::MalformedReply(error)),
            },
            None => Err(CosignError::MalformedReply("neither a signature nor a refusal".to_owned())),
        }
    }

    /// Sends one Raft RPC and decodes the peer's `Result`: the outer error is a failure of the
    /// call, the inner one the peer's Raft error.
    async fn call<Request, Response, E>(
        &self,
        action: RPCTypes,
        request: &Request,
        ttl: Duration,
    ) -> Result<Result<Response, RaftError<NodeId, E>>, Failure>
    where
        Request: Serialize,
        Response: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let client = self.client.as_ref().map_err(|error| Failure::Unreachable(error.to_string()))?;
        let payload = encode_payload(request)
            .map_err(|error| Failure::Other(format!("{action} request could not be encoded: {error}")))?;
        let message = RaftMessage { payload };
        // Checked here rather than left to tonic so that an oversized AppendEntries becomes
        // PayloadTooLarge, which makes openraft send fewer entries.
        let message_bytes = message.encoded_len();
        if message_bytes > self.message_bytes_max {
            return Err(Failure::TooLarge(format!(
                "{action} request of {message_bytes} bytes exceeds message_bytes_max of {} bytes",
                self.message_bytes_max
            )));
        }
        let mut request = tonic::Request::new(message);
        // tonic enforces the deadline here, and sends it along so that the peer stops working
        // on a call nobody waits for any more.
        request.set_timeout(ttl);
        let mut client = client.clone();
        let send = async move {
            match action {
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        // Bounded here too, so that no layer beneath can make openraft wait past its deadline.
        let reply = match tokio::time::timeout(ttl, send).await {
            Err(_elapsed) => return Err(Failure::Timeout),
            Ok(Err(status)) => return Err(Failure::from_status(&status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        decode_payload(&reply.payload)
            .map_err(|error| Failure::Other(format!("undecodable {action} reply: {error}")))
    }

    /// The `RPCError` openraft expects for `failure` of `action`. `sender_vote` names the
    /// sending node (a candidate or the leader), and `entries` is the number of log entries
    /// the request carried.
    fn rpc_error<E: Error>(
        &self,
        failure: Failure,
        action: RPCTypes,
        sender_vote: &Vote,
        ttl: Duration,
        entries: usize,
    ) -> RaftRpcError<E> {
        let context =
            |message: String| AnyError::error(format!("{action} to node {}: {message}", self.target));
        match failure {
            Failure::Timeout => RPCError::Timeout(Timeout {
                action,
                id: sender_vote.leader_id().voted_for().unwrap_or_default(),
                target: self.target,
                timeout: ttl,
            }),
            Failure::Unreachable(message) => RPCError::Unreachable(Unreachable::from(context(message))),
            // Halving lets openraft shrink the batch until it fits. A single entry cannot be
            // split, and openraft cannot resize a snapshot chunk (it gives up on the snapshot
            // and retries later), so those are plain network errors.
            Failure::TooLarge(_) if action == RPCTypes::AppendEntries && entries > 1 => {
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(entries_hint(entries)))
            }
            Failure::TooLarge(message) | Failure::Other(message) => {
                RPCError::Network(NetworkError::from(context(message)))
            }
        }
    }

    fn remote_error<E: Error>(&self, error: RaftError<NodeId, E>) -> RaftRpcError<E> {
        RPCError::RemoteError(RemoteError::new_with_node(self.target, self.target_node.clone(), error))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RaftRpcError> {
        let ttl = option.hard_ttl();
        match self.call(RPCTypes::AppendEntries, &rpc, ttl).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(self.remote_error(error)),
            Err(failure) => {
                Err(self.rpc_error(failure, RPCTypes::AppendEntries, &rpc.vote, ttl, rpc.entries.len()))
            }
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RaftRpcError<InstallSnapshotError>> {
        let ttl = option.hard_ttl();
        match self.call(RPCTypes::InstallSnapshot, &rpc, ttl).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(self.remote_error(error)),
            Err(failure) => Err(self.rpc_error(failure, RPCTypes::InstallSnapshot, &rpc.vote, ttl, 0)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RaftRpcError> {
        let ttl = option.hard_ttl();
        match self.call(RPCTypes::Vote, &rpc, ttl).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(self.remote_error(error)),
            Err(failure) => Err(self.rpc_error(failure, RPCTypes::Vote, &rpc.vote, ttl, 0)),
        }
    }
}

/// A cached channel and the address it was made for.
#[derive(Clone, Debug)]
struct PeerChannel {
    peer_addr: String,
    channel: Channel,
}

/// The wire form of a refusal. Lossless: [`refusal_from_wire`] gives back `refusal`.
pub(crate) fn refusal_to_wire(refusal: &CosignRefusal) -> v1::CosignRefusal {
    let (reason, applied_tree_size, tree_size) = match *refusal {
        CosignRefusal::Malformed(_) => (CosignRefusalReason::Malformed, 0, 0),
        CosignRefusal::NotApplied { applied, requested } => {
            (CosignRefusalReason::NotApplied, applied, requested)
        }
        CosignRefusal::RootMismatch { size } => (CosignRefusalReason::RootMismatch, 0, size),
        CosignRefusal::Unhealthy(_) => (CosignRefusalReason::Unhealthy, 0, 0),
    };
    let detail = match refusal {
        CosignRefusal::Malformed(detail) | CosignRefusal::Unhealthy(detail) => detail.clone(),
        CosignRefusal::NotApplied { .. } | CosignRefusal::RootMismatch { .. } => refusal.to_string(),
    };
    v1::CosignRefusal { reason: reason.into(), detail, applied_tree_size, tree_size }
}

/// Reads a refusal from a peer's reply; `Err` says why it is not one this node understands.
pub(crate) fn refusal_from_wire(refusal: &v1::CosignRefusal) -> Result<CosignRefusal, String> {
    match CosignRefusalReason::try_from(refusal.reason) {
        Ok(CosignRefusalReason::Malformed) => Ok(CosignRefusal::Malformed(refusal.detail.clone())),
        Ok(CosignRefusalReason::NotApplied) => {
            Ok(CosignRefusal::NotApplied { applied: refusal.applied_tree_size, requested: refusal.tree_size })
        }
        Ok(CosignRefusalReason::RootMismatch) => Ok(CosignRefusal::RootMismatch { size: refusal.tree_size }),
        Ok(CosignRefusalReason::Unhealthy) => Ok(CosignRefusal::Unhealthy(refusal.detail.clone())),
        Ok(CosignRefusalReason::Unspecified) | Err(_) => {
            Err(format!("refusal with unknown reason {}: {}", refusal.reason, refusal.detail))
        }
    }
}

/// Encodes a Raft request or result into a `RaftMessage` payload.
pub(crate) fn encode_payload<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(value)
}

/// Decodes a `RaftMessage` payload that MUST be exactly one `T`. Trailing bytes mean the
/// sender encodes another version of the type, so they are refused rather than ignored.
pub(crate) fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes(payload) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} trailing bytes", rest.len())),
        Err(error) => Err(error.to_string()),
    }
}

/// Why a call to a peer got no usable reply, sorted by what the caller should do about it.
/// The strings say what happened, for logs.
enum Failure {
    /// No reply within the deadline, ours or (`DEADLINE_EXCEEDED`) the peer's.
    Timeout,
    /// The peer is down, refuses connections, or its address is invalid: back off.
    Unreachable(String),
    /// A message exceeded our or the peer's `message_bytes_max`.
    TooLarge(String),
    /// Anything else: another status, or a reply that does not decode.
    Other(String),
}

impl Failure {
    /// tonic reports failures to connect (refused, connect timeout, name resolution) as
    /// `UNAVAILABLE`, the request's own deadline passing as `CANCELLED` caused by
    /// `TimeoutExpired`, and message size limits, ours or the peer's, as `OUT_OF_RANGE`.
    fn from_status(status: &Status) -> Self {
        if caused_by::<tonic::TimeoutExpired>(status) {
            return Self::Timeout;
        }
        match status.code() {
            Code::Unavailable => Self::Unreachable(status_text(status)),
            Code::DeadlineExceeded => Self::Timeout,
            Code::OutOfRange => Self::TooLarge(status_text(status)),
            _ => Self::Other(status_text(status)),
        }
    }
}

/// Whether an `E` is among the errors beneath `status`.
fn caused_by<E: Error + 'static>(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(error) = source {
        if error.is::<E>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// The number of entries to try next after `entries` were too large: half, at least one.
fn entries_hint(entries: usize) -> u64 {
    u64::try_from(entries / 2).unwrap_or(u64::MAX).max(1)
}

/// A status as one line: code, message, and the innermost error beneath it (such as
/// "Connection refused"), which tonic's message often leaves out.
fn status_text(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut root = None;
    let mut source = status.source();
    while let Some(error) = source {
        root = Some(error);
        source = error.source();
    }
    if let Some(root) = root.map(ToString::to_string)
        && !text.contains(&root)
    {
        text.push_str(": ");
        text.push_str(&root);
    }
    text
}

/// An error and its sources, joined by ": ".
fn error_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        text.push_str(": ");
        text.push_str(&error.to_string());
        source = error.source();
    }
    text
}
