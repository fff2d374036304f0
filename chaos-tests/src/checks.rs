//! The oracle: what must hold after every chaos scenario, checked with `mmr` verification
//! against what the clients were told and what every node served during the run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mmr::{
    CheckpointVerifier, ConsistencyProof, Hash, InclusionProof, LeafIndex, MemStore, Mmr, NoteLimits,
    TreeSize, VerifierKey, VerifierPolicy, leaf_hash,
};
use prost::Message as _;
use proto::v1;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

use crate::cluster::{LedgerCluster, ORIGIN, channel};
use crate::rng::Rng;
use crate::workload::{Attempt, AuditMode, Outcome, Via};

/// A published checkpoint one node served during the run.
#[derive(Clone, Debug)]
pub struct Observation {
    pub node: usize,
    pub size: u64,
    pub root: Hash,
    pub note: String,
}

/// Polls every node's latest published checkpoint while a scenario runs.
pub struct Observer {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<Observation>>,
}

impl Observer {
    pub fn start(nodes: Vec<SocketAddr>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(observe(nodes, Arc::clone(&stop)));
        Self { stop, task }
    }

    pub async fn stop(self) -> Vec<Observation> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the observer task")
    }
}

async fn observe(nodes: Vec<SocketAddr>, stop: Arc<AtomicBool>) -> Vec<Observation> {
    let clients: Vec<proto::LedgerClient<Channel>> =
        nodes.iter().map(|&address| proto::LedgerClient::new(channel(address))).collect();
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        for (node, client) in clients.iter().enumerate() {
            let mut client = client.clone();
            let request = v1::GetCheckpointRequest { tree_size: None };
            if let Ok(Ok(response)) =
                tokio::time::timeout(Duration::from_millis(500), client.get_checkpoint(request)).await
                && let Some(checkpoint) = response.into_inner().checkpoint
            {
                let root = Hash::try_from(checkpoint.root.as_slice()).unwrap_or(Hash([0; 32]));
                seen.push(Observation { node, size: checkpoint.tree_size, root, note: checkpoint.note });
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    seen
}

/// What a scenario's run amounted to, and every violation found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub operations: usize,
    pub acknowledged: usize,
    pub unknown: usize,
    pub failed: usize,
    /// Acknowledged records missing from the final log.
    pub lost: Vec<String>,
    /// `async` records a SIGKILLed gateway had acknowledged but never delivered: that mode does
    /// not promise them (the response does not wait), so they are counted, not failed.
    pub async_missing: usize,
    /// Records in the final log more than once.
    pub duplicated: Vec<String>,
    pub tree_size: u64,
    pub checkpoints_seen: usize,
    /// Everything that must not happen, in words.
    pub violations: Vec<String>,
}

/// Which acknowledgements the final log must honour.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// A gateway was SIGKILLed: its `async` records in memory were never promised.
    pub async_may_be_lost: bool,
}

/// Waits until the ledger settles (every node applied and published the same size, and gateway
/// spools drained: the size stopped growing), then checks everything.
///
/// # Panics
///
/// If the cluster does not settle within two minutes.
pub async fn verify(
    cluster: &LedgerCluster,
    attempts: &[Attempt],
    observations: &[Observation],
    expect: Expect,
    rng: &mut Rng,
) -> Verdict {
    let size = settle(cluster).await;
    let mut verdict = Verdict {
        operations: attempts.len(),
        tree_size: size,
        checkpoints_seen: observations.len(),
        ..Verdict::default()
    };
    for attempt in attempts {
        match attempt.outcome {
            Outcome::Acked => verdict.acknowledged += 1,
            Outcome::Unknown => verdict.unknown += 1,
            Outcome::Failed => verdict.failed += 1,
        }
    }

    let running: Vec<usize> =
        (0..cluster.nodes().len()).filter(|&index| cluster.nodes()[index].is_running()).collect();
    let policy = policy(cluster, running[0]).await;
    let verifier = CheckpointVerifier::new(ORIGIN, policy, NoteLimits::default());

    // Every node serves the same log, whose recomputed root is its published root.
    let mut tree: Option<(Mmr<MemStore>, Vec<Vec<u8>>)> = None;
    for &index in &running {
        let published = latest_published(cluster, index).await;
        let verified = verifier.open(published.note.as_bytes());
        let Ok(verified) = verified else {
            verdict
                .violations
                .push(format!("node {}: its latest checkpoint does not verify: {verified:?}", index + 1));
            continue;
        };
        if verified.checkpoint.size.0 != size {
            verdict.violations.push(format!(
                "node {}: published {} leaves, the cluster settled at {size}",
                index + 1,
                verified.checkpoint.size.0
            ));
            continue;
        }
        let leaves = entries(cluster, index, size).await;
        let mut mmr = Mmr::new(MemStore::default());
        for leaf in &leaves {
            mmr.append(leaf).expect("an in-memory append");
        }
        if mmr.root() != verified.checkpoint.root {
            verdict.violations.push(format!(
                "node {}: the root recomputed from its {size} entries is not its published root",
                index + 1
            ));
        }
        match &tree {
            None => tree = Some((mmr, leaves)),
            Some((first, _)) if first.root() != mmr.root() => verdict.violations.push(format!(
                "node {} holds a different log than node {}",
                index + 1,
                running[0] + 1
            )),
            Some(_) => {}
        }
    }
    let Some((mmr, leaves)) = tree else {
        verdict.violations.push("no node served a verifiable log".to_owned());
        return verdict;
    };
    let final_root = mmr.root();

    // Exactly once.
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (index, leaf) in leaves.iter().enumerate() {
        match v1::AuditRecord::decode(leaf.as_slice()) {
            Ok(record) => *counts.entry(record.record_id).or_default() += 1,
            Err(error) => verdict.violations.push(format!("leaf {index} is not an audit record: {error}")),
        }
    }
    verdict.duplicated = counts.iter().filter(|(_, count)| **count > 1).map(|(id, _)| id.clone()).collect();
    let mut required = HashSet::new();
    for attempt in attempts {
        let promised = match (attempt.outcome, attempt.via) {
            (Outcome::Acked, Via::Gateway(AuditMode::Async)) => !expect.async_may_be_lost,
            (Outcome::Acked, _) => true,
            (Outcome::Failed, _) => {
                for id in &attempt.record_ids {
                    if counts.contains_key(id) {
                        verdict
                            .violations
                            .push(format!("record {id} was refused for certain, yet it is in the log"));
                    }
                }
                false
            }
            (Outcome::Unknown, _) => false,
        };
        if promised {
            required.extend(attempt.record_ids.iter().cloned());
        }
    }
    verdict.lost = required.into_iter().filter(|id| !counts.contains_key(id)).collect();
    verdict.async_missing = attempts
        .iter()
        .filter(|attempt| attempt.outcome == Outcome::Acked && attempt.via == Via::Gateway(AuditMode::Async))
        .flat_map(|attempt| &attempt.record_ids)
        .filter(|id| !counts.contains_key(*id))
        .count();

    // Checkpoints seen during the run: signed by a majority, one root per size, never smaller
    // than a node served before, and each a prefix of the final log (recomputed, and by a
    // consistency proof from a node).
    let mut roots: BTreeMap<u64, Hash> = BTreeMap::new();
    let mut last_size: HashMap<usize, u64> = HashMap::new();
    for observation in observations {
        if let Err(error) = verifier.open(observation.note.as_bytes()) {
            verdict.violations.push(format!(
                "node {} served a checkpoint of {} leaves that does not verify: {error}",
                observation.node + 1,
                observation.size
            ));
        }
        if let Some(&root) = roots.get(&observation.size)
            && root != observation.root
        {
            verdict
                .violations
                .push(format!("two checkpoints of {} leaves have different roots", observation.size));
        }
        roots.insert(observation.size, observation.root);
        let last = last_size.entry(observation.node).or_default();
        if observation.size < *last {
            verdict.violations.push(format!(
                "node {} went back from a checkpoint of {} leaves to {}",
                observation.node + 1,
                *last,
                observation.size
            ));
        }
        *last = (*last).max(observation.size);
    }
    for (&old_size, old_root) in &roots {
        if old_size > size {
            verdict
                .violations
                .push(format!("a checkpoint of {old_size} leaves was seen; the final log has {size}"));
            continue;
        }
        if old_size == 0 {
            continue;
        }
        if mmr.root_at(TreeSize(old_size)).ok().as_ref() != Some(old_root) {
            verdict
                .violations
                .push(format!("the checkpoint of {old_size} leaves is not a prefix of the final log"));
        }
        let node = running[rng.below(running.len())];
        match consistency(cluster, node, old_size, size).await {
            Ok(proof) if proof.verify(old_root, &final_root).is_ok() => {}
            Ok(_) => verdict.violations.push(format!(
                "node {}: the consistency proof {old_size} -> {size} does not verify",
                node + 1
            )),
            Err(error) => verdict
                .violations
                .push(format!("node {}: no consistency proof {old_size} -> {size}: {error}", node + 1)),
        }
    }

    // Random inclusion proofs from every node.
    if size > 0 {
        for &index in &running {
            for _ in 0..20 {
                let position = rng.below(leaves.len());
                let leaf = position as u64;
                if let Err(problem) =
                    inclusion(cluster, index, leaf, &leaves[position], size, &final_root).await
                {
                    verdict.violations.push(format!("node {}: leaf {leaf}: {problem}", index + 1));
                }
            }
        }
    }
    verdict
}

/// Waits until every running node applied and published the same tree size and it stayed so for
/// two seconds; returns that size.
async fn settle(cluster: &LedgerCluster) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stable_since: Option<(u64, Instant)> = None;
    loop {
        let mut sizes = HashSet::new();
        let mut seen = Vec::new();
        for (index, node) in cluster.nodes().iter().enumerate() {
            if !node.is_running() {
                continue;
            }
            let applied = cluster.try_status(index).await;
            let published =
                tokio::time::timeout(Duration::from_secs(2), try_latest_published(cluster, index)).await;
            match (applied, published) {
                (Some(status), Ok(Some(published))) => {
                    sizes.insert(status.applied_tree_size);
                    sizes.insert(published.tree_size);
                    seen.push(format!(
                        "node {}: applied {}, published {}",
                        node.id, status.applied_tree_size, published.tree_size
                    ));
                }
                _ => {
                    sizes.insert(u64::MAX);
                    seen.push(format!("node {}: no answer", node.id));
                }
            }
        }
        let now = Instant::now();
        if sizes.len() == 1 && !sizes.contains(&u64::MAX) {
            let size = *sizes.iter().next().expect("one size");
            match stable_since {
                Some((stable, since)) if stable == size && now - since >= Duration::from_secs(2) => {
                    return size;
                }
                Some((stable, _)) if stable == size => {}
                _ => stable_since = Some((size, now)),
            }
        } else {
            stable_since = None;
        }
        assert!(
            now < deadline,
            "the ledger did not settle within 120 s: {}\n{}",
            seen.join("; "),
            log_tails(cluster)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The last lines of every node's log, for failure messages.
fn log_tails(cluster: &LedgerCluster) -> String {
    let mut text = String::new();
    for node in cluster.nodes() {
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(15)..];
        text.push_str(&format!("--- node {} ({}):\n{}\n", node.id, node.log.display(), tail.join("\n")));
    }
    text
}

async fn policy(cluster: &LedgerCluster, index: usize) -> VerifierPolicy {
    let keys: Vec<VerifierKey> = cluster
        .status(index)
        .await
        .verifier_keys
        .iter()
        .map(|key| key.parse().expect("a verifier key from Status"))
        .collect();
    let majority = keys.len() / 2 + 1;
    VerifierPolicy::new(keys, majority).expect("a verifier policy")
}

async fn try_latest_published(cluster: &LedgerCluster, index: usize) -> Option<v1::SignedCheckpoint> {
    let request = v1::GetCheckpointRequest { tree_size: None };
    cluster.ledger(index).get_checkpoint(request).await.ok()?.into_inner().checkpoint
}

async fn latest_published(cluster: &LedgerCluster, index: usize) -> v1::SignedCheckpoint {
    try_latest_published(cluster, index).await.expect("a settled node serves its latest checkpoint")
}

/// Every leaf in `0..size`, as node `index` streams them.
async fn entries(cluster: &LedgerCluster, index: usize, size: u64) -> Vec<Vec<u8>> {
    const PAGE: u64 = 10_000;
    let mut leaves = Vec::with_capacity(usize::try_from(size).expect("a small tree"));
    let mut client = cluster.ledger(index);
    while (leaves.len() as u64) < size {
        let start = leaves.len() as u64;
        let end = (start + PAGE).min(size);
        let mut stream = client
            .get_entries(v1::GetEntriesRequest { start, end })
            .await
            .expect("GetEntries on a settled node")
            .into_inner();
        while let Some(entry) = stream.next().await {
            let entry = entry.expect("an entry");
            assert_eq!(entry.leaf_index, leaves.len() as u64, "entries come in order");
            leaves.push(entry.record);
        }
    }
    leaves
}

async fn consistency(
    cluster: &LedgerCluster,
    index: usize,
    old_size: u64,
    new_size: u64,
) -> Result<ConsistencyProof, String> {
    let response = cluster
        .ledger(index)
        .get_consistency_proof(v1::GetConsistencyProofRequest { old_size, new_size: Some(new_size) })
        .await
        .map_err(|status| status.to_string())?
        .into_inner();
    ConsistencyProof::try_from(&response).map_err(|error| error.to_string())
}

async fn inclusion(
    cluster: &LedgerCluster,
    index: usize,
    leaf: u64,
    data: &[u8],
    size: u64,
    root: &Hash,
) -> Result<(), String> {
    let request = v1::GetInclusionProofRequest {
        leaf: Some(v1::get_inclusion_proof_request::Leaf::LeafIndex(leaf)),
        tree_size: Some(size),
    };
    let response = cluster
        .ledger(index)
        .get_inclusion_proof(request)
        .await
        .map_err(|status| status.to_string())?
        .into_inner();
    if response.record != data {
        return Err("the proof's record is not the leaf the node streamed".to_owned());
    }
    let proof = InclusionProof::try_from(&response).map_err(|error| error.to_string())?;
    if proof.leaf_index != LeafIndex(leaf) || proof.tree_size != TreeSize(size) {
        return Err(format!("a proof for another leaf or size: {proof:?}"));
    }
    proof
        .verify(&leaf_hash(data), root)
        .map_err(|error| format!("the inclusion proof does not verify: {error}"))
}
