//! Cluster administration: `status`, `init`, `add-node`, `remove-node`, and `pin` (a trust file
//! from the cluster's own report).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use proto::v1;
use serde_json::{Value, json};

use crate::cli::{AddNodeArgs, InitArgs, PinArgs, RemoveNodeArgs};
use crate::client::{Cluster, call_error, normalize};
use crate::failure::Failure;
use crate::report::Report;
use crate::trust::Trust;

/// How long `init` waits for the new cluster to elect a leader.
const ELECTION_WAIT: Duration = Duration::from_secs(30);

pub async fn status(cluster: &Cluster) -> Result<Report, Failure> {
    let mut text = String::new();
    let mut nodes = Vec::new();
    let mut answered = 0;
    for endpoint in cluster.endpoints() {
        match node_status(cluster, endpoint).await {
            Ok(status) => {
                answered += 1;
                describe_status(&mut text, endpoint, &status);
                nodes.push(status_json(endpoint, &status));
            }
            Err(error) => {
                let _ = writeln!(text, "{endpoint}: UNREACHABLE: {error:#}");
                nodes.push(json!({ "endpoint": endpoint, "error": format!("{error:#}") }));
            }
        }
    }
    if answered == 0 {
        return Err(anyhow!("no node answered:\n{text}").into());
    }
    Ok(Report::new(text, json!({ "nodes": nodes })))
}

async fn node_status(cluster: &Cluster, endpoint: &str) -> anyhow::Result<v1::StatusResponse> {
    let mut admin = cluster.admin_at(endpoint).await?;
    let status =
        admin.status(v1::StatusRequest {}).await.map_err(|status| call_error(endpoint, "Status", &status))?;
    Ok(status.into_inner())
}

fn role_name(role: i32) -> &'static str {
    match v1::NodeRole::try_from(role) {
        Ok(v1::NodeRole::Leader) => "leader",
        Ok(v1::NodeRole::Follower) => "follower",
        Ok(v1::NodeRole::Candidate) => "candidate",
        Ok(v1::NodeRole::Learner) => "learner",
        Ok(v1::NodeRole::Shutdown) => "shutting down",
        _ => "unknown",
    }
}

fn is_voter(member: &v1::NodeReplication) -> bool {
    member.kind == v1::MemberKind::Voter as i32
}

fn describe_status(text: &mut String, endpoint: &str, status: &v1::StatusResponse) {
    let leader = status.leader_id.map_or_else(|| "none known".to_owned(), |id| format!("node {id}"));
    let health =
        if status.healthy { "healthy".to_owned() } else { format!("UNHEALTHY: {}", status.health_detail) };
    let _ = writeln!(
        text,
        "node {} at {endpoint}: {}, term {}, leader {leader}, {health}",
        status.node_id,
        role_name(status.role),
        status.term
    );
    let _ = writeln!(
        text,
        "  tree size  applied {}  committed {}  published {}   log index applied {}",
        status.applied_tree_size,
        status.committed_tree_size,
        status.published_tree_size,
        status.applied_log_index
    );
    for member in &status.nodes {
        let node = member.node.clone().unwrap_or_default();
        let kind = if is_voter(member) { "voter" } else { "learner" };
        let lag = member.lag_entries.map_or_else(String::new, |lag| format!("  lag {lag} entries"));
        let _ = writeln!(text, "  member {} {kind:<7} {}{lag}", node.node_id, node.client_addr);
    }
    let _ = writeln!(text, "  verifier key {}", status.verifier_key);
}

fn status_json(endpoint: &str, status: &v1::StatusResponse) -> Value {
    let members: Vec<Value> = status
        .nodes
        .iter()
        .map(|member| {
            let node = member.node.clone().unwrap_or_default();
            json!({
                "node_id": node.node_id,
                "client_addr": node.client_addr,
                "peer_addr": node.peer_addr,
                "verifier_key": node.verifier_key,
                "voter": is_voter(member),
                "matched_log_index": member.matched_log_index,
                "lag_entries": member.lag_entries,
            })
        })
        .collect();
    json!({
        "endpoint": endpoint,
        "node_id": status.node_id,
        "role": role_name(status.role),
        "term": status.term,
        "leader_id": status.leader_id,
        "leader_client_addr": status.leader_client_addr,
        "origin": status.origin,
        "applied_tree_size": status.applied_tree_size,
        "committed_tree_size": status.committed_tree_size,
        "published_tree_size": status.published_tree_size,
        "applied_log_index": status.applied_log_index,
        "healthy": status.healthy,
        "health_detail": status.health_detail,
        "verifier_key": status.verifier_key,
        "verifier_keys": status.verifier_keys,
        "members": members,
    })
}

pub async fn init(cluster: &Cluster, args: &InitArgs) -> Result<Report, Failure> {
    let endpoints: Vec<String> = args.nodes.iter().map(|node| normalize(node.trim())).collect();
    let mut members = Vec::new();
    for endpoint in &endpoints {
        let status = node_status(cluster, endpoint).await?;
        let node = status
            .node
            .ok_or_else(|| anyhow!("{endpoint} does not report its identity: is it an Aegis ledger node?"))?;
        members.push(node);
    }
    let wanted: BTreeSet<u64> = members.iter().map(|node| node.node_id).collect();
    if wanted.len() != members.len() {
        return Err(anyhow!("two of the given nodes have the same node id: every node needs its own").into());
    }
    let first = &endpoints[0];
    let current = node_status(cluster, first).await?;
    let existing: BTreeSet<u64> =
        current.nodes.iter().filter_map(|member| member.node.as_ref().map(|node| node.node_id)).collect();
    let already = !existing.is_empty();
    if already {
        if existing != wanted {
            return Err(anyhow!(
                "{first} is already in a cluster of nodes {existing:?}, not {wanted:?}: use add-node and remove-node \
                 to change a running cluster"
            ).into());
        }
    } else {
        let mut admin = cluster.admin_at(first).await?;
        admin
            .init(v1::InitRequest { members: members.clone() })
            .await
            .map_err(|status| call_error(first, "Init", &status))?;
    }
    let leader = wait_for_leader(cluster, first).await?;
    let mut text = if already {
        format!("the cluster of nodes {wanted:?} was already initialised; its leader is node {leader}\n")
    } else {
        format!("initialised a cluster of {} nodes; node {leader} leads\n", members.len())
    };
    for node in &members {
        let _ = writeln!(
            text,
            "  node {}  client {}  peer {}\n    key {}",
            node.node_id, node.client_addr, node.peer_addr, node.verifier_key
        );
    }
    let json = json!({
        "already_initialised": already,
        "leader_id": leader,
        "members": members.iter().map(|node| json!({
            "node_id": node.node_id,
            "client_addr": node.client_addr,
            "peer_addr": node.peer_addr,
            "verifier_key": node.verifier_key,
        })).collect::<Vec<_>>(),
    });
    Ok(Report::new(text, json))
}

async fn wait_for_leader(cluster: &Cluster, endpoint: &str) -> anyhow::Result<u64> {
    let deadline = Instant::now() + ELECTION_WAIT;
    loop {
        if let Ok(status) = node_status(cluster, endpoint).await
            && let Some(leader) = status.leader_id
        {
            return Ok(leader);
        }
        if Instant::now() > deadline {
            bail!(
                "no leader elected within {} s: check the nodes' logs and that they reach each other's peer ports",
                ELECTION_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader's client endpoint, as the first node that answers knows it.
async fn leader_endpoint(cluster: &Cluster) -> anyhow::Result<String> {
    let mut errors = Vec::new();
    for endpoint in cluster.endpoints() {
        match node_status(cluster, endpoint).await {
            Ok(status) if !status.leader_client_addr.is_empty() => {
                return Ok(normalize(&status.leader_client_addr));
            }
            Ok(_) => errors.push(format!("{endpoint} knows no leader")),
            Err(error) => errors.push(format!("{error:#}")),
        }
    }
    Err(anyhow!("cannot find the leader: {}", errors.join("; ")))
}

pub async fn add_node(cluster: &Cluster, args: &AddNodeArgs) -> Result<Report, Failure> {
    let endpoint = normalize(args.node.trim());
    let node = node_status(cluster, &endpoint)
        .await?
        .node
        .ok_or_else(|| anyhow!("{endpoint} does not report its identity: is it an Aegis ledger node?"))?;
    let leader = leader_endpoint(cluster).await?;
    let started = Instant::now();
    // Adding waits for the node to catch up (through a snapshot for a long log): no call timeout.
    let mut admin = cluster.admin_at(&leader).await?;
    let mut request =
        tonic::Request::new(v1::AddNodeRequest { node: Some(node.clone()), learner_only: args.learner });
    request.set_timeout(Duration::from_secs(3600));
    admin.add_node(request).await.map_err(|status| call_error(&leader, "AddNode", &status))?;
    let kind = if args.learner { "learner" } else { "voter" };
    let seconds = started.elapsed().as_secs_f64();
    let text = format!(
        "node {} ({}) added as a {kind} in {seconds:.1} s\n  its verifier key: {}\n  add it to the auditors' trust policy\n",
        node.node_id, node.client_addr, node.verifier_key
    );
    let json = json!({ "node_id": node.node_id, "kind": kind, "seconds": seconds, "verifier_key": node.verifier_key });
    Ok(Report::new(text, json))
}

pub async fn remove_node(cluster: &Cluster, args: &RemoveNodeArgs) -> Result<Report, Failure> {
    let leader = leader_endpoint(cluster).await?;
    let mut admin = cluster.admin_at(&leader).await?;
    admin
        .remove_node(v1::RemoveNodeRequest { node_id: args.node_id })
        .await
        .map_err(|status| call_error(&leader, "RemoveNode", &status))?;
    let text = format!(
        "node {} removed from the cluster; stop it now. Never wipe it and add it back under the same id.\n",
        args.node_id
    );
    Ok(Report::new(text, json!({ "removed": args.node_id })))
}

pub async fn pin(cluster: &Cluster, args: &PinArgs) -> Result<Report, Failure> {
    let mut last_error = None;
    let mut status = None;
    for endpoint in cluster.endpoints() {
        match node_status(cluster, endpoint).await {
            Ok(found) => {
                status = Some(found);
                break;
            }
            Err(error) => last_error = Some(error),
        }
    }
    let status = status.ok_or_else(|| last_error.unwrap_or_else(|| anyhow!("no endpoint")))?;
    let keys: Vec<String> = status
        .nodes
        .iter()
        .filter(|member| is_voter(member))
        .filter_map(|member| member.node.as_ref().map(|node| node.verifier_key.clone()))
        .collect();
    if keys.is_empty() {
        return Err(anyhow!("the node reports no voters: initialise the cluster first").into());
    }
    let trust = Trust::new(status.origin.clone(), &keys, args.quorum)?;
    let mut text = String::from(
        "# Aegis ledger trust policy, written by `aegisctl pin` from the cluster's own report.\n\
         # Check these keys against the ones your operator published before relying on them.\n",
    );
    let _ = writeln!(text, "origin = {:?}", trust.origin());
    let _ = writeln!(text, "quorum = {}", trust.quorum());
    text.push_str("keys = [\n");
    for key in trust.keys() {
        let _ = writeln!(text, "  {:?},", key.to_string());
    }
    text.push_str("]\n");
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).open(&args.out).with_context(|| {
            format!("creating {} (an existing trust file is never overwritten)", args.out.display())
        })?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", args.out.display()))?;
    let report = format!(
        "wrote {}: origin {}, {} of {} keys\n{}",
        args.out.display(),
        trust.origin(),
        trust.quorum(),
        trust.keys().len(),
        trust.keys().iter().map(|key| format!("  {key}\n")).collect::<String>()
    );
    let json = json!({
        "trust_file": args.out.display().to_string(),
        "origin": trust.origin(),
        "quorum": trust.quorum(),
        "keys": trust.keys().iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    Ok(Report::new(report, json))
}
