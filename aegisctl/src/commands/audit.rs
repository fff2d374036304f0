//! `aegisctl audit`: downloads every entry up to the latest published checkpoint, recomputes the
//! tree independently and compares its root with the checkpoint's. On a mismatch it finds the
//! first divergent leaf by bisection over consistency proofs (the predicate "our first m leaves
//! are a prefix of the published tree" holds up to the divergence and fails after it). It also
//! checks that every leaf is an audit record and that no record id appears twice.

use std::collections::HashSet;
use std::time::Instant;

use anyhow::anyhow;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mmr::{ConsistencyProof, MemStore, Mmr, TreeSize, VerifiedCheckpoint};
use prost::Message as _;
use proto::v1;
use serde_json::json;

use crate::cli::AuditArgs;
use crate::client::{Cluster, LedgerClient, call_error};
use crate::commands::checkpoint;
use crate::failure::Failure;
use crate::progress::{Progress, rate};
use crate::report::Report;

/// Most findings of each kind listed (all are counted).
const FINDINGS_LISTED_MAX: usize = 20;

pub async fn run(cluster: &Cluster, args: &AuditArgs, show_progress: bool) -> Result<Report, Failure> {
    let trust = args.trust.load()?;
    if args.page == 0 {
        return Err(anyhow!("--page must be at least 1").into());
    }
    let (endpoint, mut client) = cluster.ledger().await?;
    let verified = checkpoint::latest(&endpoint, &mut client, &trust).await?;
    let size = verified.checkpoint.size.0;
    let started = Instant::now();
    let mut progress = Progress::new("entries", size, show_progress);
    // Every node of the recomputed tree (64 bytes per leaf), so that the root of any prefix is
    // at hand for the bisection.
    let mut tree = Mmr::new(MemStore::with_leaf_capacity(usize::try_from(size).unwrap_or(0)));
    let mut ids = HashSet::new();
    let mut undecodable = Vec::new();
    let mut undecodable_count = 0u64;
    let mut duplicates = Vec::new();
    let mut duplicate_count = 0u64;
    let mut bytes = 0u64;
    while tree.size().0 < size {
        let start = tree.size().0;
        let end = size.min(start.saturating_add(args.page));
        let mut stream = client
            .get_entries(v1::GetEntriesRequest { start, end })
            .await
            .map_err(|status| call_error(&endpoint, "GetEntries", &status))?
            .into_inner();
        let mut received = 0u64;
        while let Some(entry) =
            stream.message().await.map_err(|status| call_error(&endpoint, "GetEntries", &status))?
        {
            let expected = tree.size().0;
            if entry.leaf_index != expected {
                return Err(Failure::rejected(format!(
                    "{endpoint} sent leaf {} where leaf {expected} was due: the stream has a gap or is out of order",
                    entry.leaf_index
                )));
            }
            if expected >= end {
                return Err(Failure::rejected(format!(
                    "{endpoint} sent leaves beyond the requested {start}..{end}"
                )));
            }
            tree.append(&entry.record).map_err(|error| anyhow!("recomputing the tree: {error}"))?;
            bytes += entry.record.len() as u64;
            received += 1;
            match v1::AuditRecord::decode(entry.record.as_slice()) {
                Ok(record) => {
                    if !ids.insert(record.record_id.clone()) {
                        duplicate_count += 1;
                        if duplicates.len() < FINDINGS_LISTED_MAX {
                            duplicates.push(json!({ "leaf_index": expected, "record_id": record.record_id }));
                        }
                    }
                }
                Err(_) => {
                    undecodable_count += 1;
                    if undecodable.len() < FINDINGS_LISTED_MAX {
                        undecodable.push(expected);
                    }
                }
            }
            progress.set(tree.size().0);
        }
        if received == 0 {
            return Err(
                anyhow!("{endpoint} ended GetEntries({start}..{end}) without sending any entry").into()
            );
        }
    }
    progress.finish();
    let elapsed = started.elapsed();
    let root = tree.root();
    let mut text = format!(
        "downloaded {size} entries ({bytes} bytes) from {endpoint} in {:.1} s ({:.0} entries/s)\n",
        elapsed.as_secs_f64(),
        rate(size, elapsed)
    );
    let mut json = json!({
        "endpoint": endpoint,
        "entries": size,
        "bytes": bytes,
        "seconds": elapsed.as_secs_f64(),
        "checkpoint": checkpoint::summary(&verified),
        "recomputed_root": BASE64.encode(root.0),
        "duplicate_record_ids": duplicate_count,
        "duplicates": duplicates,
        "undecodable_records": undecodable_count,
        "undecodable_leaves": undecodable,
    });
    if root != verified.checkpoint.root {
        let first = first_divergence(&endpoint, &mut client, &tree, &verified).await?;
        json["verified"] = false.into();
        json["first_divergent_leaf"] = first.into();
        return Err(Failure::rejected(format!(
            "the recomputed root {} differs from the checkpoint's {}: the entries served diverge from the signed \
             tree first at leaf {first}",
            BASE64.encode(root.0),
            BASE64.encode(verified.checkpoint.root.0)
        )));
    }
    text.push_str(&format!("recomputed root {} equals the checkpoint's\n", BASE64.encode(root.0)));
    text.push_str(&checkpoint::describe(&verified));
    let _ = std::fmt::Write::write_fmt(
        &mut text,
        format_args!(
            "{duplicate_count} duplicate record ids, {undecodable_count} leaves that are not audit records\n"
        ),
    );
    if duplicate_count > 0 || undecodable_count > 0 {
        return Err(Failure::rejected(format!(
            "the tree matches its checkpoint, but {duplicate_count} record ids appear twice and {undecodable_count} \
             leaves are not audit records (first ones: {})",
            json!({ "duplicates": json["duplicates"], "undecodable_leaves": json["undecodable_leaves"] })
        )));
    }
    json["verified"] = true.into();
    Ok(Report::new(text, json))
}

/// The first leaf whose downloaded bytes are not the signed tree's: the smallest m such that
/// our first m leaves are not a prefix of the checkpoint's tree, minus one.
async fn first_divergence(
    endpoint: &str,
    client: &mut LedgerClient,
    tree: &Mmr<MemStore>,
    verified: &VerifiedCheckpoint,
) -> Result<u64, Failure> {
    let size = verified.checkpoint.size;
    // Invariant: prefix(good) holds, prefix(bad) fails. prefix(0) holds; prefix(size) failed.
    let (mut good, mut bad) = (0u64, size.0);
    while bad - good > 1 {
        let middle = good + (bad - good) / 2;
        let response = client
            .get_consistency_proof(v1::GetConsistencyProofRequest {
                old_size: middle,
                new_size: Some(size.0),
            })
            .await
            .map_err(|status| call_error(endpoint, "GetConsistencyProof", &status))?
            .into_inner();
        let proof = ConsistencyProof::try_from(&response)
            .map_err(|error| Failure::rejected(format!("{endpoint}: {error}")))?;
        if proof.old_size != TreeSize(middle) || proof.new_size != size {
            return Err(Failure::rejected(format!(
                "{endpoint} answered a consistency proof for other sizes"
            )));
        }
        let ours =
            tree.root_at(TreeSize(middle)).map_err(|error| anyhow!("recomputing a prefix root: {error}"))?;
        if proof.verify(&ours, &verified.checkpoint.root).is_ok() {
            good = middle;
        } else {
            bad = middle;
        }
    }
    Ok(good)
}
