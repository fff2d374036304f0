//! Whole nodes in one process, talking gRPC over loopback: commits, forwarding, proofs that
//! verify against quorum-signed checkpoints, a killed leader, a node that catches up, a node
//! that joins through a snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use ledger_node::LedgerNode;
use ledger_node::config::Config;
use mmr::{
    CheckpointVerifier, ConsistencyProof, Hash, InclusionProof, NoteLimits, TreeSize, VerifierPolicy,
    leaf_hash,
};
use proto::v1;
use tonic::transport::Channel;

use crate::support::{record_bytes, record_id};

const ORIGIN: &str = "aegis.test/ledger";
const WAIT: Duration = Duration::from_secs(30);

pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) nodes: BTreeMap<u64, LedgerNode>,
    pub(crate) configs: BTreeMap<u64, Config>,
    /// Every node's verifier key, kept after the node stops: auditors keep them too.
    keys: BTreeMap<u64, String>,
}

impl Cluster {
    /// Starts `count` nodes and initialises them as one cluster through node 1's Admin service.
    pub(crate) async fn start(count: u64, tune: impl Fn(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster =
            Cluster { dir, nodes: BTreeMap::new(), configs: BTreeMap::new(), keys: BTreeMap::new() };
        for id in 1..=count {
            let mut config = Config::for_test(id, cluster.dir.path().join(format!("node-{id}")));
            tune(&mut config);
            cluster.start_node(config).await;
        }
        let members = cluster.nodes.values().map(member).collect();
        admin(&cluster.nodes[&1]).await.init(v1::InitRequest { members }).await.expect("init");
        cluster.leader().await;
        cluster
    }

    /// Starts a node; remembers its bound addresses so a restart reuses them.
    pub(crate) async fn start_node(&mut self, mut config: Config) -> &LedgerNode {
        let node = LedgerNode::start(&config).await.expect("node starts");
        config.client_listen = node.client_addr;
        config.peer_listen = node.peer_addr;
        config.metrics_listen = node.metrics_addr;
        let id = node.node_id;
        self.keys.insert(id, node.info.verifier_key.clone());
        self.configs.insert(id, config);
        self.nodes.insert(id, node);
        &self.nodes[&id]
    }

    pub(crate) async fn stop(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("node is running");
        node.shutdown().await.expect("clean shutdown");
    }

    pub(crate) async fn restart(&mut self, id: u64) {
        let config = self.configs[&id].clone();
        self.start_node(config).await;
    }

    /// The id of the leader the running nodes agree on.
    pub(crate) async fn leader(&self) -> u64 {
        eventually("a leader is elected", || async {
            let leaders: BTreeSet<Option<u64>> =
                self.nodes.values().map(|node| node.raft.metrics().borrow().current_leader).collect();
            match leaders.into_iter().collect::<Vec<_>>().as_slice() {
                [Some(leader)] if self.nodes.contains_key(leader) => Some(*leader),
                _ => None,
            }
        })
        .await
    }

    /// The verifier an auditor would build: a majority of the initial voters' keys.
    pub(crate) fn verifier(&self, voters: &[u64]) -> CheckpointVerifier {
        let keys = voters.iter().map(|id| self.keys[id].parse().expect("verifier key")).collect::<Vec<_>>();
        let majority = keys.len() / 2 + 1;
        CheckpointVerifier::new(
            ORIGIN,
            VerifierPolicy::new(keys, majority).expect("policy"),
            NoteLimits::default(),
        )
    }
}

pub(crate) fn member(node: &LedgerNode) -> v1::Node {
    v1::Node {
        node_id: node.node_id,
        peer_addr: node.info.peer_addr.clone(),
        client_addr: node.info.client_addr.clone(),
        verifier_key: node.info.verifier_key.clone(),
    }
}

pub(crate) async fn channel(node: &LedgerNode) -> Channel {
    Channel::from_shared(format!("http://{}", node.client_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connects")
}

pub(crate) async fn client(node: &LedgerNode) -> proto::LedgerClient<Channel> {
    proto::LedgerClient::new(channel(node).await)
}

pub(crate) async fn admin(node: &LedgerNode) -> proto::AdminClient<Channel> {
    proto::AdminClient::new(channel(node).await)
}

/// Polls `check` until it returns `Some`, for at most [`WAIT`].
pub(crate) async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn append(
    client: &mut proto::LedgerClient<Channel>,
    numbers: impl IntoIterator<Item = u64>,
) -> v1::AppendResponse {
    let records = numbers.into_iter().map(record_bytes).collect();
    client.append(v1::AppendRequest { records }).await.expect("append").into_inner()
}

/// Waits until `node` serves a published checkpoint of at least `size` leaves; returns it
/// verified.
pub(crate) async fn published(
    node: &LedgerNode,
    verifier: &CheckpointVerifier,
    size: u64,
) -> mmr::VerifiedCheckpoint {
    let mut client = client(node).await;
    eventually(&format!("node {} publishes a checkpoint of size {size}", node.node_id), || {
        let mut client = client.clone();
        async move {
            let response = client.get_checkpoint(v1::GetCheckpointRequest { tree_size: None }).await.ok()?;
            let checkpoint = response.into_inner().checkpoint?;
            // Earlier checkpoints may be signed under an earlier membership: judge only the
            // one that covers `size`.
            (checkpoint.tree_size >= size).then_some(())
        }
    })
    .await;
    let response =
        client.get_checkpoint(v1::GetCheckpointRequest { tree_size: None }).await.expect("checkpoint");
    verifier.open(response.into_inner().checkpoint.expect("checkpoint").note.as_bytes()).expect("verifies")
}

/// Fetches record `n`'s inclusion proof from `node` by record id and checks it against the
/// node's latest published checkpoint, as an auditor would. Returns the leaf index.
pub(crate) async fn check_inclusion(node: &LedgerNode, verifier: &CheckpointVerifier, n: u64) -> u64 {
    let mut client = client(node).await;
    let request = v1::GetInclusionProofRequest {
        leaf: Some(v1::get_inclusion_proof_request::Leaf::RecordId(record_id(n))),
        tree_size: None,
    };
    let response = client.get_inclusion_proof(request).await.expect("inclusion proof").into_inner();
    assert_eq!(response.record, record_bytes(n), "the served record is the exact bytes appended");
    let checkpoint = response.checkpoint.as_ref().expect("the proof comes with its checkpoint");
    let verified = verifier.open(checkpoint.note.as_bytes()).expect("the checkpoint verifies");
    let proof = InclusionProof::try_from(&response).expect("well-formed proof");
    assert_eq!(proof.tree_size, verified.checkpoint.size);
    proof.verify(&leaf_hash(&response.record), &verified.checkpoint.root).expect("the proof verifies");
    response.leaf_index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_commit_and_every_node_serves_proofs_that_verify() {
    let cluster = Cluster::start(3, |_| {}).await;
    let verifier = cluster.verifier(&[1, 2, 3]);
    // Appends through every node: followers forward to the leader.
    let mut indexes = BTreeMap::new();
    for (batch, id) in (0..6u64).zip([1, 2, 3].into_iter().cycle()) {
        let numbers: Vec<u64> = (batch * 10..batch * 10 + 10).collect();
        let response = append(&mut client(&cluster.nodes[&id]).await, numbers.clone()).await;
        for (n, result) in numbers.into_iter().zip(&response.results) {
            assert!(!result.already_present);
            indexes.insert(n, result.leaf_index);
        }
    }
    let distinct: BTreeSet<u64> = indexes.values().copied().collect();
    assert_eq!(distinct, (0..60).collect(), "indexes are contiguous from 0 and never reused");

    // Retried records are not appended again: they answer with their index.
    let retry = append(&mut client(&cluster.nodes[&2]).await, [3, 17, 59]).await;
    let retried: Vec<(u64, bool)> = retry.results.iter().map(|r| (r.leaf_index, r.already_present)).collect();
    assert_eq!(retried, vec![(indexes[&3], true), (indexes[&17], true), (indexes[&59], true)]);
    assert_eq!(retry.tree_size, 60);

    let mut roots = BTreeSet::new();
    for node in cluster.nodes.values() {
        let checkpoint = published(node, &verifier, 60).await;
        assert_eq!(checkpoint.checkpoint.size, TreeSize(60));
        assert!(checkpoint.signed_by.len() >= 2, "published means a majority signed");
        roots.insert(checkpoint.checkpoint.root);
        for n in [0, 1, 31, 59] {
            assert_eq!(check_inclusion(node, &verifier, n).await, indexes[&n]);
        }
        // Consistency from an early size to the checkpoint.
        let mut client = client(node).await;
        let response = client
            .get_consistency_proof(v1::GetConsistencyProofRequest { old_size: 7, new_size: None })
            .await
            .expect("consistency proof")
            .into_inner();
        let proof = ConsistencyProof::try_from(&response).expect("well-formed");
        let old_root = node.reader.view(TreeSize(7)).root().expect("root at 7");
        proof.verify(&old_root, &checkpoint.checkpoint.root).expect("consistency verifies");
    }
    assert_eq!(roots.len(), 1, "every node reports the same root at the same size");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let cluster = Cluster::start(3, |_| {}).await;
    let node = &cluster.nodes[&cluster.leader().await];
    let mut client = client(node).await;
    append(&mut client, [1, 2]).await;
    let before = node.applied.borrow().size;
    let cases: Vec<(Vec<Vec<u8>>, tonic::Code)> = vec![
        (vec![], tonic::Code::InvalidArgument),
        (vec![record_bytes(3), b"not a protobuf".to_vec()], tonic::Code::InvalidArgument),
        (vec![record_bytes(4), vec![0u8; 70_000]], tonic::Code::InvalidArgument),
        (vec![record_bytes(5); 5000], tonic::Code::InvalidArgument),
    ];
    for (records, code) in cases {
        let status = client.append(v1::AppendRequest { records }).await.expect_err("refused");
        assert_eq!(status.code(), code, "{}", status.message());
    }
    let beyond = client
        .get_inclusion_proof(v1::GetInclusionProofRequest {
            leaf: Some(v1::get_inclusion_proof_request::Leaf::LeafIndex(0)),
            tree_size: Some(1_000),
        })
        .await
        .expect_err("beyond the tree");
    assert_eq!(beyond.code(), tonic::Code::OutOfRange);
    let unknown = client
        .get_inclusion_proof(v1::GetInclusionProofRequest {
            leaf: Some(v1::get_inclusion_proof_request::Leaf::RecordId(record_id(999))),
            tree_size: None,
        })
        .await
        .expect_err("unknown id");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let shrinking = client
        .get_consistency_proof(v1::GetConsistencyProofRequest { old_size: 2, new_size: Some(1) })
        .await
        .expect_err("old > new");
    assert_eq!(shrinking.code(), tonic::Code::InvalidArgument);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node.applied.borrow().size, before, "refused requests appended nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_loses_no_acknowledged_record() {
    let mut cluster = Cluster::start(3, |_| {}).await;
    let leader = cluster.leader().await;
    let entry = *cluster.nodes.keys().find(|&&id| id != leader).expect("a follower");
    let writer = client(&cluster.nodes[&entry]).await;
    let mut acknowledged: BTreeMap<u64, u64> = BTreeMap::new();
    let mut next = 0u64;
    for round in 0..40 {
        if round == 10 {
            cluster.stop(leader).await;
        }
        let numbers: Vec<u64> = (next..next + 5).collect();
        // A failed append has an unknown outcome: retry the same ids until acknowledged.
        let response = eventually("the append is acknowledged", || {
            let (mut writer, numbers) = (writer.clone(), numbers.clone());
            async move {
                let records = numbers.into_iter().map(record_bytes).collect();
                writer.append(v1::AppendRequest { records }).await.ok().map(tonic::Response::into_inner)
            }
        })
        .await;
        for (n, result) in numbers.iter().zip(&response.results) {
            acknowledged.insert(*n, result.leaf_index);
        }
        next += 5;
    }
    let survivors: Vec<u64> = cluster.nodes.keys().copied().collect();
    assert_ne!(cluster.leader().await, leader, "a new leader took over");
    let verifier = cluster.verifier(&[1, 2, 3]);
    let distinct: BTreeSet<u64> = acknowledged.values().copied().collect();
    assert_eq!(distinct.len(), acknowledged.len(), "no index was given twice");
    for id in survivors {
        let node = &cluster.nodes[&id];
        published(node, &verifier, next).await;
        for (&n, &index) in &acknowledged {
            assert_eq!(check_inclusion(node, &verifier, n).await, index, "record {n} on node {id}");
        }
    }
}

/// Waits until `node` applied all 400 records of the test below; returns its root.
async fn caught_up(node: &LedgerNode) -> Hash {
    let applied = node.applied.clone();
    eventually("the node applied all 400 records", move || {
        let state = applied.borrow().clone();
        async move { (state.size == TreeSize(400)).then_some(state.root) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_and_a_new_node_joins_through_a_snapshot() {
    // Snapshot and purge often, so the joining node cannot be sent the log from the start.
    let mut cluster = Cluster::start(3, |config| {
        config.raft.snapshot_after_entries = 10;
        config.raft.max_payload_entries = 8;
    })
    .await;
    let leader = cluster.leader().await;
    let follower = *cluster.nodes.keys().find(|&&id| id != leader).expect("a follower");
    let mut writer = client(&cluster.nodes[&leader]).await;
    for batch in 0..20u64 {
        append(&mut writer, batch * 10..batch * 10 + 10).await;
    }
    cluster.stop(follower).await;
    for batch in 20..40u64 {
        append(&mut writer, batch * 10..batch * 10 + 10).await;
    }
    cluster.restart(follower).await;
    let root = cluster.nodes[&leader].applied.borrow().root;
    assert_eq!(caught_up(&cluster.nodes[&follower]).await, root, "the restarted follower has the same tree");

    let mut config = Config::for_test(4, cluster.dir.path().join("node-4"));
    config.raft = cluster.configs[&1].raft.clone();
    let joining = member(cluster.start_node(config).await);
    admin(&cluster.nodes[&leader])
        .await
        .add_node(v1::AddNodeRequest { node: Some(joining), learner_only: false })
        .await
        .expect("node 4 joins");
    assert_eq!(caught_up(&cluster.nodes[&4]).await, root, "the new node has the same tree");
    let snapshots = std::fs::read_dir(cluster.dir.path().join("node-4/snapshots")).expect("snapshot dir");
    assert!(
        snapshots.flatten().any(|entry| entry.file_name().to_string_lossy().ends_with(".snap")),
        "node 4 was brought up through a snapshot"
    );
    // The new voter signs too: a checkpoint covering all records is published and node 4 serves it.
    let verifier = cluster.verifier(&[1, 2, 3, 4]);
    append(&mut writer, 400..410).await;
    published(&cluster.nodes[&4], &verifier, 410).await;
    assert_eq!(check_inclusion(&cluster.nodes[&4], &verifier, 405).await, 405);
}
