//! `aegisctl monitor`: keeps a trusted checkpoint per trust policy and checks that every
//! checkpoint the nodes serve is consistent with it: the same root at the same size, a proven
//! extension when larger, a proven prefix when smaller, and never smaller than what the same
//! node served before. On any inconsistency it writes both signed checkpoints (and the failed
//! proof) to an evidence file and exits with status 4.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mmr::{ConsistencyProof, TreeSize, VerifiedCheckpoint};
use proto::v1;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cli::MonitorArgs;
use crate::client::{Cluster, call_error, read_limited};
use crate::commands::checkpoint;
use crate::failure::Failure;
use crate::record::rfc3339;
use crate::report::Report;
use crate::trust::Trust;

/// Largest state file read.
const STATE_BYTES_MAX: u64 = 1024 * 1024;
/// Most endpoints remembered in the state.
const ENDPOINTS_MAX: usize = 256;

/// The trusted state for one trust policy.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    origin: String,
    quorum: usize,
    keys: Vec<String>,
    /// The signed note of the largest checkpoint verified consistent so far.
    checkpoint: Option<String>,
    /// The largest tree size each endpoint has served: a node never goes backwards.
    seen: BTreeMap<String, u64>,
    updated_at: String,
}

/// A checkpoint one endpoint served.
struct Observation {
    endpoint: String,
    checkpoint: VerifiedCheckpoint,
}

/// What was wrong, for the evidence file.
struct Inconsistency {
    kind: &'static str,
    explanation: String,
    endpoint: String,
    trusted: String,
    observed: String,
    proof: Option<ConsistencyProof>,
}

pub async fn run(cluster: &Cluster, args: &MonitorArgs, json_output: bool) -> Result<Report, Failure> {
    let trust = args.trust.load()?;
    let state_dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => default_state_dir()?,
    };
    let evidence_dir = args.evidence_dir.clone().unwrap_or_else(|| state_dir.clone());
    let state_path = state_dir.join(format!("monitor-{}.json", trust.id()));
    loop {
        let round = check_round(cluster, &trust, &state_path, &evidence_dir).await;
        if !args.follow {
            return round;
        }
        match round {
            Ok(report) => report.print(json_output),
            Err(failure @ Failure::Inconsistent { .. }) => return Err(failure),
            // A node that is down or slow is not evidence of anything: say so and go on.
            Err(failure) => failure.print(json_output),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(args.interval_ms)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(Report::new("monitor stopped\n", json!({ "stopped": true }))),
        }
    }
}

async fn check_round(
    cluster: &Cluster,
    trust: &Trust,
    state_path: &Path,
    evidence_dir: &Path,
) -> Result<Report, Failure> {
    let mut state = load_state(state_path, trust)?;
    let mut trusted = match &state.checkpoint {
        Some(note) => Some(trust.verify_note(note).map_err(|failure| {
            anyhow!(
                "the trusted checkpoint in {} no longer verifies ({failure}): was the file altered?",
                state_path.display()
            )
        })?),
        None => None,
    };
    let mut observations = Vec::new();
    let mut text = String::new();
    let mut unreachable = Vec::new();
    for endpoint in cluster.endpoints() {
        let fetched = async {
            let mut client = cluster.ledger_at(endpoint).await.map_err(Failure::from)?;
            checkpoint::latest(endpoint, &mut client, trust).await
        }
        .await;
        match fetched {
            Ok(checkpoint) => observations.push(Observation { endpoint: endpoint.clone(), checkpoint }),
            Err(Failure::Error(error)) => {
                let _ = writeln!(text, "{endpoint}: unreachable: {error:#}");
                unreachable.push(json!({ "endpoint": endpoint, "error": format!("{error:#}") }));
            }
            // A checkpoint that does not verify against the policy proves nothing either way
            // (anyone can send bytes), but a node serving one is broken or impersonated.
            Err(failure) => return Err(failure),
        }
    }
    if observations.is_empty() {
        return Err(anyhow!("no node served a checkpoint:\n{text}").into());
    }
    // Smallest first, each checked against the largest trusted so far: two nodes that serve
    // different trees are caught against each other as well as against the state.
    observations.sort_by_key(|observation| observation.checkpoint.checkpoint.size);
    let mut checked = Vec::new();
    for observation in &observations {
        let size = observation.checkpoint.checkpoint.size.0;
        let outcome = match &trusted {
            None => {
                trusted = Some(observation.checkpoint.clone());
                format!("trusted on first use at size {size}")
            }
            Some(current) => match compare(cluster, &state, current, observation).await? {
                Ok(outcome) => {
                    if size > current.checkpoint.size.0 {
                        trusted = Some(observation.checkpoint.clone());
                    }
                    outcome
                }
                Err(inconsistency) => {
                    let evidence = write_evidence(evidence_dir, trust, &inconsistency)?;
                    return Err(Failure::Inconsistent { message: inconsistency.explanation, evidence });
                }
            },
        };
        let _ = writeln!(text, "{}: size {size}: {outcome}", observation.endpoint);
        checked.push(json!({ "endpoint": observation.endpoint, "tree_size": size, "outcome": outcome }));
        let seen = state.seen.entry(observation.endpoint.clone()).or_default();
        *seen = (*seen).max(size);
    }
    let trusted = trusted.expect("at least one observation was made");
    state.checkpoint = Some(trusted.note.to_string());
    state.updated_at = now_rfc3339();
    while state.seen.len() > ENDPOINTS_MAX {
        state.seen.pop_first();
    }
    save_state(state_path, &state)?;
    let _ = write!(
        text,
        "trusted checkpoint (kept in {}):\n{}",
        state_path.display(),
        checkpoint::describe(&trusted)
    );
    let json = json!({
        "consistent": true,
        "state_file": state_path.display().to_string(),
        "trusted": checkpoint::summary(&trusted),
        "observations": checked,
        "unreachable": unreachable,
    });
    Ok(Report::new(text, json))
}

/// Checks one observation against the trusted checkpoint. The outer error is operational (a
/// proof could not be fetched); the inner one is an inconsistency.
async fn compare(
    cluster: &Cluster,
    state: &State,
    trusted: &VerifiedCheckpoint,
    observation: &Observation,
) -> Result<Result<String, Inconsistency>, Failure> {
    let old = &trusted.checkpoint;
    let new = &observation.checkpoint.checkpoint;
    let inconsistency = |kind, explanation: String, proof| Inconsistency {
        kind,
        explanation,
        endpoint: observation.endpoint.clone(),
        trusted: trusted.note.to_string(),
        observed: observation.checkpoint.note.to_string(),
        proof,
    };
    if let Some(&seen) = state.seen.get(&observation.endpoint)
        && new.size.0 < seen
    {
        return Ok(Err(inconsistency(
            "rollback",
            format!(
                "{} served a tree of {seen} leaves before and now one of {}",
                observation.endpoint, new.size
            ),
            None,
        )));
    }
    if new.size == old.size {
        if new.root == old.root {
            return Ok(Ok("same as trusted".to_owned()));
        }
        return Ok(Err(inconsistency(
            "fork",
            format!("two checkpoints of {} leaves with different roots, both validly signed", new.size),
            None,
        )));
    }
    if new.size > old.size {
        let proof = consistency_proof(cluster, &observation.endpoint, old.size, new.size).await?;
        return Ok(match proof.verify(&old.root, &new.root) {
            Ok(()) => Ok(format!("consistent extension of {} (proof verified)", old.size)),
            Err(error) => Err(inconsistency(
                "fork",
                format!(
                    "the tree of {} leaves does not extend the trusted tree of {}: {error}",
                    new.size, old.size
                ),
                Some(proof),
            )),
        });
    }
    // Smaller than trusted: fine only if some node proves it a prefix of the trusted tree.
    for endpoint in cluster.endpoints() {
        let Ok(proof) = consistency_proof(cluster, endpoint, new.size, old.size).await else { continue };
        return Ok(match proof.verify(&new.root, &old.root) {
            Ok(()) => Ok(format!("stale: a proven prefix of the trusted {} leaves", old.size)),
            Err(error) => Err(inconsistency(
                "fork",
                format!(
                    "the tree of {} leaves is not a prefix of the trusted tree of {}: {error}",
                    new.size, old.size
                ),
                Some(proof),
            )),
        });
    }
    Ok(Err(inconsistency(
        "rollback",
        format!(
            "{} serves a tree of {} leaves, smaller than the trusted {}, and no node proves it a prefix",
            observation.endpoint, new.size, old.size
        ),
        None,
    )))
}

async fn consistency_proof(
    cluster: &Cluster,
    endpoint: &str,
    old_size: TreeSize,
    new_size: TreeSize,
) -> Result<ConsistencyProof, Failure> {
    let mut client = cluster.ledger_at(endpoint).await?;
    let response = client
        .get_consistency_proof(v1::GetConsistencyProofRequest {
            old_size: old_size.0,
            new_size: Some(new_size.0),
        })
        .await
        .map_err(|status| call_error(endpoint, "GetConsistencyProof", &status))?
        .into_inner();
    if response.old_size != old_size.0 || response.new_size != new_size.0 {
        return Err(Failure::rejected(format!(
            "{endpoint} answered a consistency proof {} → {} for {old_size} → {new_size}",
            response.old_size, response.new_size
        )));
    }
    ConsistencyProof::try_from(&response).map_err(|error| Failure::rejected(format!("{endpoint}: {error}")))
}

fn write_evidence(dir: &Path, trust: &Trust, inconsistency: &Inconsistency) -> Result<PathBuf, Failure> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the evidence directory {}", dir.display()))?;
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
    let path = dir.join(format!("evidence-{seconds}-{}.json", inconsistency.kind));
    let proof = inconsistency.proof.as_ref().map(|proof| {
        json!({
            "old_size": proof.old_size.0,
            "new_size": proof.new_size.0,
            "path": proof.path.iter().map(|hash| BASE64.encode(hash.0)).collect::<Vec<_>>(),
        })
    });
    let evidence: Value = json!({
        "kind": inconsistency.kind,
        "detected_at": now_rfc3339(),
        "origin": trust.origin(),
        "quorum": trust.quorum(),
        "keys": trust.keys().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "explanation": inconsistency.explanation,
        "endpoint": inconsistency.endpoint,
        "trusted_checkpoint": inconsistency.trusted,
        "observed_checkpoint": inconsistency.observed,
        "consistency_proof": proof,
    });
    write_atomically(&path, &(serde_json::to_string_pretty(&evidence)? + "\n"))?;
    Ok(path)
}

fn load_state(path: &Path, trust: &Trust) -> Result<State, Failure> {
    let fresh = || State {
        origin: trust.origin().to_owned(),
        quorum: trust.quorum(),
        keys: trust.keys().iter().map(ToString::to_string).collect(),
        ..State::default()
    };
    match std::fs::metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(fresh()),
        Err(error) => return Err(anyhow!("reading {}: {error}", path.display()).into()),
        Ok(_) => {}
    }
    let text = read_limited(path, STATE_BYTES_MAX).with_context(|| format!("reading {}", path.display()))?;
    let state: State = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a monitor state file", path.display()))?;
    let expected = fresh();
    if state.origin != expected.origin
        || state.quorum != expected.quorum
        || sorted(&state.keys) != sorted(&expected.keys)
    {
        return Err(
            anyhow!("{} belongs to another trust policy: was it copied or edited?", path.display()).into()
        );
    }
    Ok(state)
}

fn sorted(keys: &[String]) -> Vec<&String> {
    let mut keys: Vec<&String> = keys.iter().collect();
    keys.sort();
    keys
}

fn save_state(path: &Path, state: &State) -> Result<(), Failure> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_atomically(path, &(serde_json::to_string_pretty(state)? + "\n"))
}

/// Writes `text` to a temporary file, syncs it and renames it over `path`.
fn write_atomically(path: &Path, text: &str) -> Result<(), Failure> {
    let partial = path.with_extension("partial");
    let mut file =
        std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", partial.display()))?;
    file.sync_all().with_context(|| format!("syncing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("renaming {} into place", partial.display()))?;
    Ok(())
}

fn default_state_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir).join("aegisctl"));
    }
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .ok_or_else(|| anyhow!("no HOME: give --state-dir"))?;
    Ok(PathBuf::from(home).join(".local/state/aegisctl"))
}

fn now_rfc3339() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos());
    rfc3339(i64::try_from(nanos).unwrap_or(i64::MAX))
}
