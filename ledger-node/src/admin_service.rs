//! The `aegis.ledger.v1.Admin` service: initialise the cluster, change membership, report status.
//! Authenticated by a bearer token, or reachable from loopback only when no token is configured.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use proto::v1;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::metrics::Health;
use crate::storage::ledger::AppliedState;
use crate::storage::reader::LedgerReader;
use crate::types::{NodeId, NodeInfo, Raft};

/// How long AddNode waits for a new learner to catch up before promoting it: long enough to
/// stream and install a snapshot of a large ledger.
const LEARNER_CATCH_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// The `Admin` service of one node.
#[derive(Clone)]
pub struct AdminService {
    node_id: NodeId,
    /// This node's own address and key, filled in when `Init` leaves them out.
    own: NodeInfo,
    origin: String,
    raft: Raft,
    reader: LedgerReader,
    applied: watch::Receiver<AppliedState>,
    health: Health,
    /// `Bearer <token>` expected in `authorization`; `None` admits loopback callers only.
    token: Option<Arc<str>>,
}

impl AdminService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: NodeId,
        own: NodeInfo,
        origin: String,
        raft: Raft,
        reader: LedgerReader,
        applied: watch::Receiver<AppliedState>,
        health: Health,
        token: Option<String>,
    ) -> Self {
        Self { node_id, own, origin, raft, reader, applied, health, token: token.map(Arc::from) }
    }

    pub fn into_server(self) -> proto::AdminServer<Self> {
        proto::AdminServer::new(self)
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match &self.token {
            Some(token) => {
                let expected = format!("Bearer {token}");
                let given = request.metadata().get("authorization").and_then(|value| value.to_str().ok());
                // Constant-time comparison: the token is a secret.
                let matches = given.is_some_and(|given| {
                    given.len() == expected.len()
                        && given.bytes().zip(expected.bytes()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
                });
                if matches {
                    Ok(())
                } else {
                    Err(Status::unauthenticated("Admin needs `authorization: Bearer <token>`"))
                }
            }
            None if request.remote_addr().is_some_and(|addr| addr.ip().is_loopback()) => Ok(()),
            None => Err(Status::permission_denied(
                "Admin is open to loopback callers only: configure admin_token_file to administer remotely",
            )),
        }
    }

    fn node_info(&self, node: Option<v1::Node>) -> Result<(NodeId, NodeInfo), Status> {
        let node = node.ok_or_else(|| Status::invalid_argument("node is required"))?;
        if node.node_id == 0 {
            return Err(Status::invalid_argument("node_id 0 is reserved"));
        }
        let mut info = NodeInfo {
            peer_addr: node.peer_addr,
            client_addr: node.client_addr,
            verifier_key: node.verifier_key,
        };
        if node.node_id == self.node_id {
            info = self.own.clone();
        }
        if info.peer_addr.is_empty() || info.client_addr.is_empty() {
            return Err(Status::invalid_argument(format!(
                "node {} needs peer_addr and client_addr",
                node.node_id
            )));
        }
        if info.verifier_key.parse::<mmr::VerifierKey>().is_err() {
            return Err(Status::invalid_argument(format!(
                "node {} needs its verifier_key (as its Admin.Status reports it)",
                node.node_id
            )));
        }
        Ok((node.node_id, info))
    }
}

#[tonic::async_trait]
impl proto::Admin for AdminService {
    async fn init(&self, request: Request<v1::InitRequest>) -> Result<Response<v1::InitResponse>, Status> {
        self.authorize(&request)?;
        let members = request.into_inner().members;
        let mut nodes = BTreeMap::new();
        if members.is_empty() {
            nodes.insert(self.node_id, self.own.clone());
        }
        for member in members {
            let (id, info) = self.node_info(Some(member))?;
            nodes.insert(id, info);
        }
        if !nodes.contains_key(&self.node_id) {
            return Err(Status::invalid_argument("Init must include the node it is sent to"));
        }
        self.raft.initialize(nodes).await.map_err(|error| Status::failed_precondition(error.to_string()))?;
        Ok(Response::new(v1::InitResponse {}))
    }

    async fn add_node(
        &self,
        request: Request<v1::AddNodeRequest>,
    ) -> Result<Response<v1::AddNodeResponse>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let (id, info) = self.node_info(request.node)?;
        let response = self.raft.add_learner(id, info, false).await.map_err(raft_status)?;
        if !request.learner_only {
            // Promote only once the learner holds everything the leader had when it was added
            // (through a snapshot, for a long log): a voter that lags would count toward the
            // majority without helping it, and the next failure could stall commits.
            let target = response.log_id.index;
            let caught_up = |metrics: &openraft::RaftMetrics<NodeId, NodeInfo>| {
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|replication| replication.get(&id).copied().flatten());
                matched.is_some_and(|log_id| log_id.index >= target)
            };
            self.raft.wait(Some(LEARNER_CATCH_UP_TIMEOUT)).metrics(caught_up, "the learner catches up").await.map_err(
                |error| {
                    Status::deadline_exceeded(format!(
                        "node {id} was added as a learner but did not catch up ({error}); it stays a learner: \
                         check its logs, then call AddNode again to promote it"
                    ))
                },
            )?;
            let voters = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
            self.raft.change_membership(voters, false).await.map_err(raft_status)?;
        }
        Ok(Response::new(v1::AddNodeResponse {}))
    }

    async fn remove_node(
        &self,
        request: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::RemoveNodeResponse>, Status> {
        self.authorize(&request)?;
        let id = request.into_inner().node_id;
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let change = if membership.membership().voter_ids().any(|voter| voter == id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft.change_membership(change, false).await.map_err(raft_status)?;
        Ok(Response::new(v1::RemoveNodeResponse {}))
    }

    async fn status(
        &self,
        request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        self.authorize(&request)?;
        let metrics = self.raft.metrics().borrow().clone();
        let applied = self.applied.borrow().clone();
        let published = self.reader.latest_published().ok().flatten().map_or(0, |(size, _)| size);
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let replication = metrics.replication.clone().unwrap_or_default();
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let nodes = membership
            .nodes()
            .map(|(id, info)| {
                let matched = if *id == self.node_id {
                    metrics.last_log_index
                } else {
                    replication.get(id).and_then(|log_id| log_id.map(|log_id| log_id.index))
                };
                v1::NodeReplication {
                    node: Some(v1::Node {
                        node_id: *id,
                        peer_addr: info.peer_addr.clone(),
                        client_addr: info.client_addr.clone(),
                        verifier_key: info.verifier_key.clone(),
                    }),
                    kind: if voters.contains(id) { v1::MemberKind::Voter } else { v1::MemberKind::Learner }
                        as i32,
                    matched_log_index: matched,
                    lag_entries: matched.map(|index| last_log_index.saturating_sub(index)),
                }
            })
            .collect();
        let role = match metrics.state {
            ServerState::Leader => v1::NodeRole::Leader,
            ServerState::Follower => v1::NodeRole::Follower,
            ServerState::Candidate => v1::NodeRole::Candidate,
            ServerState::Learner => v1::NodeRole::Learner,
            ServerState::Shutdown => v1::NodeRole::Shutdown,
        };
        let leader_client_addr = metrics
            .current_leader
            .and_then(|leader| membership.get_node(&leader))
            .map(|node| node.client_addr.clone())
            .unwrap_or_default();
        Ok(Response::new(v1::StatusResponse {
            node_id: self.node_id,
            role: role as i32,
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            leader_client_addr,
            origin: self.origin.clone(),
            applied_tree_size: applied.size.0,
            committed_tree_size: applied.size.0,
            published_tree_size: published,
            // openraft 0.9 does not report its commit index; the applied index is a lower bound.
            committed_log_index: metrics.last_applied.map_or(0, |log_id| log_id.index),
            applied_log_index: metrics.last_applied.map_or(0, |log_id| log_id.index),
            nodes,
            verifier_key: self.own.verifier_key.clone(),
            verifier_keys: membership.nodes().map(|(_, info)| info.verifier_key.clone()).collect(),
            node: Some(v1::Node {
                node_id: self.node_id,
                peer_addr: self.own.peer_addr.clone(),
                client_addr: self.own.client_addr.clone(),
                verifier_key: self.own.verifier_key.clone(),
            }),
            healthy: self.health.is_healthy(),
            health_detail: self.health.reason().unwrap_or_default(),
        }))
    }
}

fn raft_status(error: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> Status {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            let leader = forward.leader_node.map(|node| format!(" (the leader is at {})", node.client_addr));
            Status::failed_precondition(format!(
                "this node is not the leader{}: send membership changes to the leader",
                leader.unwrap_or_default()
            ))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(error)) => {
            Status::failed_precondition(error.to_string())
        }
        RaftError::Fatal(fatal) => Status::unavailable(fatal.to_string()),
    }
}
