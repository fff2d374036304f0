//! The peer transport (`network`, `peer_service`): openraft's messages survive the postcard
//! encoding, every way a call can fail maps to the `RPCError` or `CosignError` the table in
//! `network.rs` promises, and real Raft nodes elect, replicate and install chunked snapshots
//! through it.

mod mem_raft;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ledger_node::cosign::{Cosign, CosignRefusal};
use ledger_node::network::{CosignError, PeerClient, PeerNetwork, PeerNetworkSettings};
use ledger_node::storage::durable::{SyncMode, Syncer};
use ledger_node::storage::ledger::AppliedState;
use ledger_node::storage::log_store::LogStore;
use ledger_node::storage::reader::LedgerReader;
use ledger_node::storage::state_machine::StateMachineStore;
use ledger_node::types::{
    AppendBatch, AppendOutcome, AppendedLeaf, ApplyTimes, Command, Entry, LogId, NodeId, NodeInfo,
    PublishCheckpoint, Record, RecordId, SnapshotMeta, StoredMembership, TypeConfig, Vote,
};
use mmr::{Checkpoint, Hash, NoteSignature, NoteSigner, SignedNote, TreeSize, VerifierPolicy};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, SnapshotMismatch};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork as _, RaftNetworkFactory as _};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{EntryPayload, Membership, SnapshotSegmentId};
use proto::v1::{self, CosignRefusalReason, CosignRequest, CosignResponse, RaftMessage, cosign_response};
use proto::{RaftPeer, RaftPeerClient, RaftPeerServer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

use self::mem_raft::{TestNode, WAIT, test_config};

const ORIGIN: &str = "aegis.example.com/ledger/test";

/// Generous for one host: a call that needs this long has hung.
const TTL: Duration = Duration::from_secs(5);

// ----- Payload encoding -------------------------------------------------------------------

/// Encodes `value` as the peer transport does, decodes it, and checks the bytes are stable.
fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> T {
    let bytes = postcard::to_stdvec(value).expect("encodes");
    let decoded: T = postcard::from_bytes(&bytes).expect("decodes");
    assert_eq!(postcard::to_stdvec(&decoded).expect("encodes again"), bytes);
    decoded
}

fn record(index: u8) -> Record {
    Record { id: RecordId([index; 16]), bytes: vec![index; usize::from(index) + 1] }
}

fn batch(records: impl IntoIterator<Item = u8>) -> AppendBatch {
    AppendBatch { records: records.into_iter().map(record).collect() }
}

fn log_id(term: u64, node_id: NodeId, index: u64) -> LogId {
    LogId::new(openraft::CommittedLeaderId::new(term, node_id), index)
}

fn node(port: u16) -> NodeInfo {
    NodeInfo {
        peer_addr: format!("127.0.0.1:{port}"),
        client_addr: format!("127.0.0.1:{}", port + 1),
        verifier_key: "ledger-1+01020304+AAAA".to_owned(),
    }
}

fn membership() -> Membership<NodeId, NodeInfo> {
    let voters = BTreeSet::from([1, 2]);
    let nodes = BTreeMap::from([(1, node(7001)), (2, node(7003)), (3, node(7005))]);
    Membership::new(vec![voters], nodes)
}

fn snapshot_meta() -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: Some(log_id(3, 1, 41)),
        last_membership: StoredMembership::new(Some(log_id(2, 1, 7)), membership()),
        snapshot_id: "3-41-7".to_owned(),
    }
}

#[test]
fn every_raft_message_round_trips_through_postcard() {
    let entries = vec![
        Entry { log_id: log_id(3, 1, 5), payload: EntryPayload::Blank },
        Entry { log_id: log_id(3, 1, 6), payload: EntryPayload::Normal(Command::Append(batch([1, 2, 250]))) },
        Entry { log_id: log_id(3, 1, 7), payload: EntryPayload::Membership(membership()) },
        Entry {
            log_id: log_id(3, 1, 8),
            payload: EntryPayload::Normal(Command::Append(AppendBatch::default())),
        },
        Entry {
            log_id: log_id(3, 1, 9),
            payload: EntryPayload::Normal(Command::Publish(PublishCheckpoint {
                note: format!("{}\n— ledger-1 AQIDBA==\n", checkpoint_body(3)),
            })),
        },
    ];
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(log_id(2, 2, 4)),
        entries,
        leader_commit: Some(log_id(2, 2, 3)),
    };
    let decoded = round_trip(&append);
    assert_eq!(decoded.vote, append.vote);
    assert_eq!(decoded.prev_log_id, append.prev_log_id);
    assert_eq!(decoded.leader_commit, append.leader_commit);
    assert_eq!(decoded.entries, append.entries);
    let heartbeat = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new(1, 2),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    assert!(round_trip(&heartbeat).entries.is_empty());

    type AppendResult = Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>;
    for result in [
        Ok(AppendEntriesResponse::Success),
        Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(3, 1, 6)))),
        Ok(AppendEntriesResponse::PartialSuccess(None)),
        Ok(AppendEntriesResponse::Conflict),
        Ok(AppendEntriesResponse::HigherVote(Vote::new(4, 2))),
        Err(RaftError::Fatal(openraft::error::Fatal::Stopped)),
        Err(RaftError::Fatal(openraft::error::Fatal::Panicked)),
    ] {
        let result: AppendResult = result;
        assert_eq!(round_trip(&result), result);
    }

    let vote = VoteRequest { vote: Vote::new(5, 2), last_log_id: Some(log_id(4, 1, 99)) };
    assert_eq!(round_trip(&vote), vote);
    let vote = VoteRequest { vote: Vote::new(1, 3), last_log_id: None };
    assert_eq!(round_trip(&vote), vote);
    type VoteResult = Result<VoteResponse<NodeId>, RaftError<NodeId>>;
    for result in [
        Ok(VoteResponse { vote: Vote::new(5, 2), vote_granted: true, last_log_id: Some(log_id(4, 1, 99)) }),
        Ok(VoteResponse { vote: Vote::new_committed(6, 1), vote_granted: false, last_log_id: None }),
        Err(RaftError::Fatal(openraft::error::Fatal::Stopped)),
    ] {
        let result: VoteResult = result;
        assert_eq!(round_trip(&result), result);
    }

    let chunk = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        meta: snapshot_meta(),
        offset: 4096,
        data: (0..=255).collect(),
        done: false,
    };
    assert_eq!(round_trip(&chunk), chunk);
    let last = InstallSnapshotRequest { offset: 8192, data: Vec::new(), done: true, ..chunk };
    assert_eq!(round_trip(&last), last);
    type SnapshotResult = Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;
    for result in [
        Ok(InstallSnapshotResponse { vote: Vote::new_committed(3, 1) }),
        Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
            expect: SnapshotSegmentId { id: "3-41-7".to_owned(), offset: 0 },
            got: SnapshotSegmentId { id: "3-41-7".to_owned(), offset: 4096 },
        }))),
        Err(RaftError::Fatal(openraft::error::Fatal::Stopped)),
    ] {
        let result: SnapshotResult = result;
        assert_eq!(round_trip(&result), result);
    }

    let outcome = AppendOutcome {
        leaves: vec![AppendedLeaf { leaf_index: 7, already_present: true }],
        tree_size: 8,
        applied: None,
    };
    assert_eq!(round_trip(&outcome), outcome);
    // The apply times are for the leader's own spans: never encoded.
    let now = std::time::SystemTime::now();
    let timed =
        AppendOutcome { applied: Some(ApplyTimes { started: now, finished: now }), ..outcome.clone() };
    assert_eq!(round_trip(&timed), outcome);
}

// ----- Test servers -----------------------------------------------------------------------

/// Serves `service` on a fresh port of 127.0.0.1, returning `host:port` and the server task.
async fn serve<S>(service: RaftPeerServer<S>) -> (String, JoinHandle<()>)
where
    S: RaftPeer,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .expect("server runs");
    });
    (addr, server)
}

fn settings(message_bytes_max: usize) -> PeerNetworkSettings {
    PeerNetworkSettings { connect_timeout: Duration::from_secs(1), message_bytes_max, source_ip: None }
}

fn peer_info(peer_addr: &str) -> NodeInfo {
    NodeInfo { peer_addr: peer_addr.to_owned(), ..NodeInfo::default() }
}

async fn client(peer_addr: &str, message_bytes_max: usize) -> PeerClient {
    PeerNetwork::new(settings(message_bytes_max)).new_client(2, &peer_info(peer_addr)).await
}

/// A cosigner that signs every body, or refuses with the refusal the test set.
struct FakeCosigner {
    signer: NoteSigner,
    refusal: Mutex<Option<CosignRefusal>>,
    bodies: Mutex<Vec<String>>,
}

impl FakeCosigner {
    fn new() -> Arc<Self> {
        let signer = NoteSigner::from_seed("ledger-2", &[2; 32]).expect("valid key name");
        Arc::new(Self { signer, refusal: Mutex::new(None), bodies: Mutex::new(Vec::new()) })
    }
}

impl Cosign for FakeCosigner {
    fn cosign(&self, body: &str) -> Result<NoteSignature, CosignRefusal> {
        self.bodies.lock().expect("lock").push(body.to_owned());
        match self.refusal.lock().expect("lock").clone() {
            Some(refusal) => Err(refusal),
            None => Ok(self.signer.sign(body)),
        }
    }
}

/// A single, uninitialized node: enough to serve cosigning and to refuse bad Raft messages.
async fn lone_node(message_bytes_max: usize, cosigner: Arc<dyn Cosign>) -> TestNode {
    TestNode::start(1, test_config(64 * 1024), settings(message_bytes_max), cosigner).await
}

/// A scripted reply to a Raft call: a payload, or a status code and message.
type ScriptedReply = Result<Vec<u8>, (Code, String)>;

/// A peer that answers every call with what the test scripted, for replies a real
/// `PeerService` never sends.
#[derive(Default)]
struct ScriptedPeer {
    raft_reply: Mutex<Option<ScriptedReply>>,
    cosign_reply: Mutex<Option<CosignResponse>>,
}

impl ScriptedPeer {
    fn raft_reply(&self) -> Result<Response<RaftMessage>, Status> {
        match self.raft_reply.lock().expect("lock").clone().expect("a scripted reply") {
            Ok(payload) => Ok(Response::new(RaftMessage { payload })),
            Err((code, message)) => Err(Status::new(code, message)),
        }
    }
}

#[tonic::async_trait]
impl RaftPeer for ScriptedPeer {
    async fn append_entries(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.raft_reply()
    }

    async fn vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.raft_reply()
    }

    async fn install_snapshot(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.raft_reply()
    }

    async fn cosign(&self, _: Request<CosignRequest>) -> Result<Response<CosignResponse>, Status> {
        Ok(Response::new(self.cosign_reply.lock().expect("lock").clone().expect("a scripted reply")))
    }
}

fn option(ttl: Duration) -> RPCOption {
    RPCOption::new(ttl)
}

fn vote_request() -> VoteRequest<NodeId> {
    VoteRequest { vote: Vote::new(7, 1), last_log_id: None }
}

/// An AppendEntries from leader 1 carrying `count` batches of one record of `record_bytes`.
fn append_request(count: u64, record_bytes: usize) -> AppendEntriesRequest<TypeConfig> {
    let entries = (1..=count)
        .map(|index| Entry {
            log_id: log_id(7, 1, index),
            payload: EntryPayload::Normal(Command::Append(AppendBatch {
                records: vec![Record { id: RecordId([1; 16]), bytes: vec![0xa5; record_bytes] }],
            })),
        })
        .collect();
    AppendEntriesRequest { vote: Vote::new_committed(7, 1), prev_log_id: None, entries, leader_commit: None }
}

fn snapshot_chunk(offset: u64, data_bytes: usize) -> InstallSnapshotRequest<TypeConfig> {
    InstallSnapshotRequest {
        vote: Vote::new_committed(7, 1),
        meta: snapshot_meta(),
        offset,
        data: vec![0x5a; data_bytes],
        done: false,
    }
}

// ----- Cosign -----------------------------------------------------------------------------

fn checkpoint_body(size: u64) -> String {
    Checkpoint::new(ORIGIN, TreeSize(size), Hash([7; 32])).to_body()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cosignature_comes_back_and_verifies() {
    let cosigner = FakeCosigner::new();
    let node = lone_node(1 << 20, cosigner.clone()).await;
    let client = client(&node.info.peer_addr, 1 << 20).await;

    let body = checkpoint_body(42);
    let signature = client.cosign(&body, TTL).await.expect("cosigned");
    assert_eq!(*cosigner.bodies.lock().expect("lock"), std::slice::from_ref(&body));
    assert_eq!(signature, cosigner.signer.sign(&body));

    // The leader adds it to its own signature; a 2-of-2 policy accepts the note.
    let leader = NoteSigner::from_seed("ledger-1", &[1; 32]).expect("valid key name");
    let mut note = SignedNote::new(body).expect("body");
    note.sign(&leader).expect("sign");
    note.add_signature(signature).expect("cosignature");
    let policy =
        VerifierPolicy::new(vec![leader.verifier_key(), cosigner.signer.verifier_key()], 2).expect("policy");
    assert_eq!(policy.verify(&note).map(|keys| keys.len()), Ok(2));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_cosign_refusal_comes_back_as_the_peer_gave_it() {
    let cosigner = FakeCosigner::new();
    let node = lone_node(1 << 20, cosigner.clone()).await;
    let client = client(&node.info.peer_addr, 1 << 20).await;

    for refusal in [
        CosignRefusal::Malformed("origin is not aegis.example.com/ledger/test".to_owned()),
        CosignRefusal::NotApplied { applied: 40, requested: 42 },
        CosignRefusal::RootMismatch { size: 42 },
        CosignRefusal::Unhealthy("stored root differs from the recomputed root".to_owned()),
    ] {
        *cosigner.refusal.lock().expect("lock") = Some(refusal.clone());
        assert_eq!(client.cosign(&checkpoint_body(42), TTL).await, Err(CosignError::Refused(refusal)));
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cosign_replies_that_are_neither_signature_nor_refusal_are_malformed() {
    let peer = Arc::new(ScriptedPeer::default());
    let (addr, server) = serve(RaftPeerServer::from_arc(peer.clone())).await;
    let client = client(&addr, 1 << 20).await;

    let check = |reply: CosignResponse, expected: &str| {
        *peer.cosign_reply.lock().expect("lock") = Some(reply);
        let client = client.clone();
        let expected = expected.to_owned();
        async move {
            assert_eq!(client.cosign("body\n", TTL).await, Err(CosignError::MalformedReply(expected)));
        }
    };
    check(CosignResponse { outcome: None }, "neither a signature nor a refusal").await;
    let short_key_id =
        v1::CosignSignature { key_name: "ledger-2".to_owned(), key_id: vec![1; 3], signature: vec![2; 64] };
    check(
        CosignResponse { outcome: Some(cosign_response::Outcome::Signature(short_key_id)) },
        "key_id must be 4 bytes, got 3",
    )
    .await;
    for reason in [CosignRefusalReason::Unspecified as i32, 99] {
        let refusal = v1::CosignRefusal { reason, detail: "why".to_owned(), ..Default::default() };
        check(
            CosignResponse { outcome: Some(cosign_response::Outcome::Refusal(refusal)) },
            &format!("refusal with unknown reason {reason}: why"),
        )
        .await;
    }
    server.abort();
}

// ----- Failures of calls ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn malformed_raft_payloads_are_invalid_argument() {
    let node = lone_node(1 << 20, FakeCosigner::new()).await;
    let mut raw = RaftPeerClient::connect(format!("http://{}", node.info.peer_addr)).await.expect("connect");

    let mut vote_and_more = postcard::to_stdvec(&vote_request()).expect("encodes");
    vote_and_more.push(0);
    for payload in [Vec::new(), vec![0xff; 16], vote_and_more] {
        let request = || Request::new(RaftMessage { payload: payload.clone() });
        for (rpc, result) in [
            ("AppendEntries", raw.append_entries(request()).await),
            ("Vote", raw.vote(request()).await),
            ("InstallSnapshot", raw.install_snapshot(request()).await),
        ] {
            let status = result.expect_err("refused");
            assert_eq!(status.code(), Code::InvalidArgument, "{rpc} {payload:?}: {status:?}");
            let prefix = format!("{rpc} payload is not a postcard-encoded openraft request: ");
            assert!(status.message().starts_with(&prefix), "{rpc}: {status:?}");
        }
    }
    // The server still serves well-formed requests afterwards.
    let reply = raw
        .vote(Request::new(RaftMessage { payload: postcard::to_stdvec(&vote_request()).expect("encodes") }));
    let reply = reply.await.expect("vote handled").into_inner();
    let result: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
        postcard::from_bytes(&reply.payload).expect("decodes");
    assert!(result.expect("vote answered").vote_granted);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_nobody_listens_for_is_unreachable_at_once() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("local addr").port()
    };
    let mut client = client(&format!("127.0.0.1:{port}"), 1 << 20).await;

    let started = Instant::now();
    let error = client.vote(vote_request(), option(TTL)).await.expect_err("nobody listens");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    let error = client.append_entries(append_request(1, 8), option(TTL)).await.expect_err("nobody listens");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    let error = client.install_snapshot(snapshot_chunk(0, 8), option(TTL)).await.expect_err("nobody listens");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    let error = client.cosign("body\n", TTL).await.expect_err("nobody listens");
    assert!(matches!(error, CosignError::Unreachable(_)), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_address_that_is_not_host_port_is_unreachable() {
    let mut client = client("not a host:port", 1 << 20).await;
    let error = client.vote(vote_request(), option(TTL)).await.expect_err("bad address");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    assert!(error.to_string().contains("not a host:port"), "{error}");
    let error = client.cosign("body\n", TTL).await.expect_err("bad address");
    assert!(matches!(error, CosignError::Unreachable(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn outgoing_peer_connections_leave_from_the_configured_source_ip() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let source: std::net::IpAddr = "127.0.0.7".parse().expect("an IP");
    let mut network = PeerNetwork::new(PeerNetworkSettings { source_ip: Some(source), ..settings(1 << 20) });
    let mut client = network.new_client(2, &peer_info(&addr)).await;

    let call = tokio::spawn(async move { client.vote(vote_request(), option(TTL)).await });
    let (_stream, remote) =
        tokio::time::timeout(TTL, listener.accept()).await.expect("a connection").expect("accepted");
    assert_eq!(remote.ip(), source, "the connection's source address");
    call.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_never_answers_times_out() {
    // Accepted by the kernel's backlog, never read: the TCP connection opens, no reply comes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let mut client = client(&addr, 1 << 20).await;
    let ttl = Duration::from_millis(300);

    let started = Instant::now();
    let error = client.vote(vote_request(), option(ttl)).await.expect_err("no answer");
    let RPCError::Timeout(timeout) = error else { panic!("expected a timeout, got {error:?}") };
    assert_eq!((timeout.action, timeout.id, timeout.target, timeout.timeout), (RPCTypes::Vote, 1, 2, ttl));
    assert!(started.elapsed() < ttl * 3, "took {:?}", started.elapsed());
    assert_eq!(client.cosign("body\n", ttl).await, Err(CosignError::Timeout { timeout: ttl }));
    drop(listener);
}

#[tokio::test(flavor = "multi_thread")]
async fn statuses_and_bad_replies_map_to_the_promised_rpc_errors() {
    let peer = Arc::new(ScriptedPeer::default());
    let (addr, server) = serve(RaftPeerServer::from_arc(peer.clone())).await;
    let mut client = client(&addr, 1 << 20).await;
    let script = |reply: Result<Vec<u8>, (Code, &str)>| {
        *peer.raft_reply.lock().expect("lock") =
            Some(reply.map_err(|(code, message)| (code, message.to_owned())));
    };

    script(Err((Code::Unavailable, "shedding load")));
    let error = client.vote(vote_request(), option(TTL)).await.expect_err("unavailable");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    assert!(error.to_string().contains("shedding load"), "{error}");

    script(Err((Code::DeadlineExceeded, "too slow")));
    let error = client.append_entries(append_request(2, 8), option(TTL)).await.expect_err("deadline");
    assert!(matches!(error, RPCError::Timeout(_)), "{error:?}");

    // The peer's size limit is below ours: openraft is asked to send half as many entries.
    script(Err((Code::OutOfRange, "decoded message length too large")));
    let error = client.append_entries(append_request(6, 8), option(TTL)).await.expect_err("too large");
    let RPCError::PayloadTooLarge(too_large) = error else {
        panic!("expected PayloadTooLarge, got {error:?}")
    };
    assert_eq!((too_large.action(), too_large.entries_hint()), (RPCTypes::AppendEntries, 3));
    let error = client.append_entries(append_request(1, 8), option(TTL)).await.expect_err("too large");
    assert!(matches!(error, RPCError::Network(_)), "{error:?}");
    let error = client.install_snapshot(snapshot_chunk(0, 8), option(TTL)).await.expect_err("too large");
    assert!(matches!(error, RPCError::Network(_)), "{error:?}");

    for code in [Code::Internal, Code::InvalidArgument, Code::Unimplemented, Code::Unknown, Code::Cancelled] {
        script(Err((code, "failed")));
        let error = client.vote(vote_request(), option(TTL)).await.expect_err("failed");
        assert!(matches!(error, RPCError::Network(_)), "{code:?}: {error:?}");
    }

    // Replies that are not a postcard Result of the right types, exactly.
    let mut granted_and_more = postcard::to_stdvec(&Ok::<_, RaftError<NodeId>>(VoteResponse {
        vote: Vote::new(7, 1),
        vote_granted: true,
        last_log_id: None,
    }))
    .expect("encodes");
    script(Ok(granted_and_more.clone()));
    let response = client.vote(vote_request(), option(TTL)).await.expect("well-formed reply");
    assert!(response.vote_granted);
    granted_and_more.push(0);
    for payload in [Vec::new(), vec![0xff; 8], granted_and_more] {
        script(Ok(payload.clone()));
        let error = client.vote(vote_request(), option(TTL)).await.expect_err("undecodable");
        assert!(matches!(error, RPCError::Network(_)), "{payload:?}: {error:?}");
        assert!(error.to_string().contains("undecodable Vote reply"), "{error}");
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_messages_are_refused_by_either_end() {
    const LIMIT: usize = 4096;
    let node = lone_node(LIMIT, FakeCosigner::new()).await;

    // The server refuses a message over its limit before handing it to Raft.
    let mut raw = RaftPeerClient::connect(format!("http://{}", node.info.peer_addr))
        .await
        .expect("connect")
        .max_encoding_message_size(1 << 20);
    let status = raw
        .append_entries(Request::new(RaftMessage { payload: vec![0; LIMIT] }))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // A client with the same limit does not send it: it asks openraft for fewer entries, and
    // gives up on what cannot be split.
    let mut client = client(&node.info.peer_addr, LIMIT).await;
    let error = client.append_entries(append_request(8, 1024), option(TTL)).await.expect_err("too large");
    let RPCError::PayloadTooLarge(too_large) = error else {
        panic!("expected PayloadTooLarge, got {error:?}")
    };
    assert_eq!(too_large.entries_hint(), 4);
    let error = client.append_entries(append_request(1, LIMIT), option(TTL)).await.expect_err("too large");
    assert!(matches!(error, RPCError::Network(_)), "{error:?}");
    assert!(error.to_string().contains("exceeds message_bytes_max of 4096 bytes"), "{error}");
    let error = client.install_snapshot(snapshot_chunk(0, LIMIT), option(TTL)).await.expect_err("too large");
    assert!(matches!(error, RPCError::Network(_)), "{error:?}");

    // A client with a larger limit sends it, and reads the server's refusal the same way.
    let mut client = self::client(&node.info.peer_addr, 1 << 20).await;
    let error = client.append_entries(append_request(8, 1024), option(TTL)).await.expect_err("too large");
    let RPCError::PayloadTooLarge(too_large) = error else {
        panic!("expected PayloadTooLarge, got {error:?}")
    };
    assert_eq!(too_large.entries_hint(), 4);
    let body = "x".repeat(LIMIT);
    let error = client.cosign(&body, TTL).await.expect_err("too large");
    assert!(matches!(error, CosignError::Failed { code: Code::OutOfRange, .. }), "{error:?}");
    node.stop().await;
}

// ----- Real Raft nodes --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn remote_raft_errors_come_back_typed() {
    let node = lone_node(1 << 20, FakeCosigner::new()).await;
    let mut client = client(&node.info.peer_addr, 1 << 20).await;

    // A chunk from the middle of a snapshot the node never saw the start of.
    let error = client.install_snapshot(snapshot_chunk(4096, 8), option(TTL)).await.expect_err("mismatch");
    let RPCError::RemoteError(RemoteError { target, target_node, source }) = error else {
        panic!("expected a remote error, got {error:?}")
    };
    assert_eq!((target, target_node), (2, Some(peer_info(&node.info.peer_addr))));
    assert_eq!(
        source,
        RaftError::APIError(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
            expect: SnapshotSegmentId { id: "3-41-7".to_owned(), offset: 0 },
            got: SnapshotSegmentId { id: "3-41-7".to_owned(), offset: 4096 },
        }))
    );

    node.raft.shutdown().await.expect("raft shuts down");
    let error = client.vote(vote_request(), option(TTL)).await.expect_err("stopped");
    let RPCError::RemoteError(RemoteError { source, .. }) = error else {
        panic!("expected a remote error, got {error:?}")
    };
    assert_eq!(source, RaftError::Fatal(openraft::error::Fatal::Stopped));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_elect_a_leader_and_replicate_through_the_network() {
    let config = test_config(64 * 1024);
    let node_1 = TestNode::start(1, config.clone(), settings(1 << 20), FakeCosigner::new()).await;
    let node_2 = TestNode::start(2, config, settings(1 << 20), FakeCosigner::new()).await;
    let members = BTreeMap::from([(1, node_1.info.clone()), (2, node_2.info.clone())]);
    node_1.raft.initialize(members).await.expect("initialize");

    // Election: node 1 needs node 2's vote, which only the network can bring.
    let metrics = node_1.raft.wait(WAIT).metrics(|m| m.current_leader.is_some(), "a leader").await;
    let leader_id = metrics.expect("a leader is elected").current_leader.expect("leader");
    let (leader, follower) = if leader_id == 1 { (&node_1, &node_2) } else { (&node_2, &node_1) };

    let mut last_index = 0;
    for first in [10, 20, 30] {
        let written =
            leader.raft.client_write(Command::Append(batch(first..first + 3))).await.expect("write");
        assert_eq!(written.data.leaves.len(), 3);
        last_index = written.log_id.index;
    }
    follower
        .raft
        .wait(WAIT)
        .applied_index_at_least(Some(last_index), "replicated")
        .await
        .expect("replicated");
    let expected: Vec<Record> = [10, 11, 12, 20, 21, 22, 30, 31, 32].into_iter().map(record).collect();
    assert_eq!(follower.state.records(), expected);
    assert_eq!(leader.state.records(), expected);

    // A stale candidate asking the follower for its vote learns the current, higher vote.
    let mut client = PeerNetwork::new(settings(1 << 20)).new_client(follower.id, &follower.info).await;
    let stale = VoteRequest { vote: Vote::new(0, 9), last_log_id: None };
    let response = client.vote(stale, option(TTL)).await.expect("vote answered");
    assert!(!response.vote_granted);
    assert_eq!(response.vote.leader_id().voted_for(), Some(leader_id));

    node_1.stop().await;
    node_2.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_learner_catches_up_from_a_chunked_snapshot() {
    // Chunks far smaller than the snapshot, so that it takes many InstallSnapshot calls.
    let config = test_config(256);
    let leader = TestNode::start(1, config.clone(), settings(1 << 20), FakeCosigner::new()).await;
    leader.raft.initialize(BTreeMap::from([(1, leader.info.clone())])).await.expect("initialize");
    leader.raft.wait(WAIT).current_leader(1, "leader").await.expect("node 1 leads");

    let mut last = None;
    for first in (0..200).step_by(4) {
        last = Some(
            leader.raft.client_write(Command::Append(batch(first..first + 4))).await.expect("write").log_id,
        );
    }
    let last = last.expect("written");
    leader.raft.trigger().snapshot().await.expect("snapshot");
    leader.raft.wait(WAIT).snapshot(last, "snapshot built").await.expect("snapshot built");
    leader.raft.trigger().purge_log(last.index).await.expect("purge");
    leader.raft.wait(WAIT).purged(Some(last), "log purged").await.expect("log purged");

    // The learner's log can only come from the snapshot now.
    let learner = TestNode::start(2, config, settings(1 << 20), FakeCosigner::new()).await;
    leader.raft.add_learner(2, learner.info.clone(), true).await.expect("learner added");
    learner.raft.wait(WAIT).snapshot(last, "snapshot installed").await.expect("snapshot installed");
    learner.raft.wait(WAIT).applied_index_at_least(Some(last.index), "applied").await.expect("applied");
    let expected: Vec<Record> = (0..200).map(record).collect();
    assert_eq!(learner.state.records(), expected);
    assert!(postcard::to_stdvec(&expected).expect("encodes").len() > 256 * 10, "snapshot spans many chunks");

    leader.stop().await;
    learner.stop().await;
}

// ----- Real Raft nodes on the sled storage ------------------------------------------------

/// What a test reads of a node on sled; holds the node's directory until the test ends.
struct SledState {
    applied: watch::Receiver<AppliedState>,
    reader: LedgerReader,
    _dir: tempfile::TempDir,
}

async fn sled_node(id: NodeId, config: Arc<openraft::Config>) -> TestNode<SledState> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("sled");
    let db = sled::Config::new().path(&path).open().expect("sled opens");
    // Durability is not under test here, and fdatasync would only slow the test down.
    let syncer = Syncer::new(&db, &path, SyncMode::SledFlushOnly).expect("syncer starts");
    let (watermark, _) =
        ledger_node::storage::watermark::Watermark::open(dir.path()).expect("the watermark opens");
    let log = LogStore::open(&db, syncer.clone(), watermark).expect("log store opens");
    let state_machine = StateMachineStore::open(&db, &dir.path().join("snapshots"), ORIGIN, syncer)
        .expect("state machine opens");
    let state = SledState { applied: state_machine.subscribe(), reader: state_machine.reader(), _dir: dir };
    TestNode::start_on(id, config, settings(1 << 20), FakeCosigner::new(), log, state_machine, state).await
}

/// The tree size and root a node has applied.
fn applied(node: &TestNode<SledState>) -> (TreeSize, Hash) {
    let state = node.state.applied.borrow();
    (state.size, state.root)
}

#[tokio::test(flavor = "multi_thread")]
async fn sled_nodes_elect_and_replicate_through_the_network() {
    let config = test_config(64 * 1024);
    let node_1 = sled_node(1, config.clone()).await;
    let node_2 = sled_node(2, config).await;
    let members = BTreeMap::from([(1, node_1.info.clone()), (2, node_2.info.clone())]);
    node_1.raft.initialize(members).await.expect("initialize");
    let metrics = node_1.raft.wait(WAIT).metrics(|m| m.current_leader.is_some(), "a leader").await;
    let leader_id = metrics.expect("a leader is elected").current_leader.expect("leader");
    let (leader, follower) = if leader_id == 1 { (&node_1, &node_2) } else { (&node_2, &node_1) };

    let append = |numbers: std::ops::Range<u64>| {
        Command::Append(AppendBatch { records: numbers.map(crate::support::record).collect() })
    };
    let mut last_index = 0;
    for first in (0..200).step_by(8) {
        let written = leader.raft.client_write(append(first..first + 8)).await.expect("write");
        assert_eq!(written.data.tree_size, first + 8);
        last_index = written.log_id.index;
    }
    follower
        .raft
        .wait(WAIT)
        .applied_index_at_least(Some(last_index), "replicated")
        .await
        .expect("replicated");
    assert_eq!(applied(follower), applied(leader));
    assert_eq!(applied(follower).0, TreeSize(200));
    for leaf_index in [0, 100, 199] {
        let leaf = follower.state.reader.leaf(leaf_index).expect("readable").expect("present");
        assert_eq!(leaf, crate::support::record_bytes(leaf_index), "leaf {leaf_index}");
    }

    node_1.stop().await;
    node_2.stop().await;
}
