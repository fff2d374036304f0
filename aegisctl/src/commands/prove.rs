//! `aegisctl prove` (fetch a record with its inclusion proof and verify both) and `aegisctl
//! verify` (check a proof bundle offline).

use std::path::Path;
use std::time::{Duration, Instant};

use mmr::{InclusionProof, VerifiedCheckpoint, leaf_hash};
use proto::v1;
use proto::v1::get_inclusion_proof_request::Leaf;
use serde_json::json;
use tonic::Code;

use crate::bundle::Bundle;
use crate::cli::{ProveArgs, VerifyArgs};
use crate::client::{Cluster, call_error};
use crate::commands::checkpoint;
use crate::failure::Failure;
use crate::record;
use crate::report::Report;
use crate::trust::Trust;

/// How often `prove` asks again while the record is not yet published.
const RETRY: Duration = Duration::from_millis(250);

pub async fn run(cluster: &Cluster, args: &ProveArgs) -> Result<Report, Failure> {
    let trust = args.trust.load()?;
    let leaf = match (&args.record_id, args.index) {
        (Some(id), _) => Leaf::RecordId(canonical_record_id(id)?),
        (None, Some(index)) => Leaf::LeafIndex(index),
        (None, None) => return Err(anyhow::anyhow!("give a record id or --index N").into()),
    };
    let (endpoint, mut client) = cluster.ledger().await?;
    let request = v1::GetInclusionProofRequest { leaf: Some(leaf.clone()), tree_size: None };
    let deadline = Instant::now() + Duration::from_millis(args.wait_ms);
    let response = loop {
        match client.get_inclusion_proof(request.clone()).await {
            Ok(response) => break response.into_inner(),
            // Not yet in a published checkpoint (records are published within seconds), or
            // nothing published yet, or an election under way: ask again until the deadline.
            Err(status)
                if matches!(status.code(), Code::NotFound | Code::OutOfRange | Code::Unavailable)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(RETRY).await;
            }
            Err(status) => return Err(call_error(&endpoint, "GetInclusionProof", &status).into()),
        }
    };
    let wire_checkpoint = response.checkpoint.as_ref().ok_or_else(|| {
        Failure::rejected(format!("{endpoint} sent a proof without the checkpoint it verifies against"))
    })?;
    let verified = trust.verify_wire(wire_checkpoint)?;
    let proof = InclusionProof::try_from(&response)
        .map_err(|error| Failure::rejected(format!("the proof is malformed: {error}")))?;
    check(&verified, &proof, &response.record)?;
    if let Leaf::RecordId(id) = &leaf {
        let (fields, _) = record::describe(&response.record);
        if fields["record_id"] != id.as_str() {
            return Err(Failure::rejected(format!(
                "{endpoint} proved leaf {} for record {id}, but that leaf is record {}",
                proof.leaf_index, fields["record_id"]
            )));
        }
    }
    if let Some(out) = &args.out {
        Bundle::new(&response.record, &proof, &verified.note.to_string()).write(out)?;
    }
    Ok(report(&trust, &verified, &proof, &response.record, &endpoint, args.out.as_deref()))
}

pub fn verify_bundle(args: &VerifyArgs) -> Result<Report, Failure> {
    let trust = args.trust.load()?;
    let bundle = Bundle::read(&args.bundle)?;
    let verified = trust.verify_note(&bundle.checkpoint)?;
    check(&verified, &bundle.proof, &bundle.record)?;
    let source = format!("bundle {}", args.bundle.display());
    Ok(report(&trust, &verified, &bundle.proof, &bundle.record, &source, None))
}

/// The proof is for the checkpoint's tree and leads from the record to its root.
fn check(verified: &VerifiedCheckpoint, proof: &InclusionProof, record: &[u8]) -> Result<(), Failure> {
    if proof.tree_size != verified.checkpoint.size {
        return Err(Failure::rejected(format!(
            "the proof is for a tree of {} leaves but the checkpoint is of {}",
            proof.tree_size, verified.checkpoint.size
        )));
    }
    proof.verify(&leaf_hash(record), &verified.checkpoint.root).map_err(|error| {
        Failure::rejected(format!(
            "the record is not leaf {} of the checkpoint's tree: {error}",
            proof.leaf_index
        ))
    })
}

fn report(
    trust: &Trust,
    verified: &VerifiedCheckpoint,
    proof: &InclusionProof,
    record_bytes: &[u8],
    source: &str,
    bundle: Option<&Path>,
) -> Report {
    let (fields, lines) = record::describe(record_bytes);
    let mut text = format!(
        "VERIFIED: leaf {} of {} is in the log {} (checkpoint signed by {} of the {} trusted keys, {} needed)\n",
        proof.leaf_index,
        verified.checkpoint.size,
        trust.origin(),
        verified.signed_by.len(),
        trust.keys().len(),
        trust.quorum()
    );
    text.push_str(&lines);
    text.push_str("checkpoint\n");
    text.push_str(&checkpoint::describe(verified));
    if let Some(bundle) = bundle {
        text.push_str(&format!(
            "proof bundle written to {} (check it with `aegisctl verify`)\n",
            bundle.display()
        ));
    }
    let json = json!({
        "verified": true,
        "source": source,
        "leaf_index": proof.leaf_index.0,
        "record": fields,
        "checkpoint": checkpoint::summary(verified),
        "bundle": bundle.map(|path| path.display().to_string()),
    });
    Report::new(text, json)
}

/// The canonical form of a UUIDv7 record id, or why `id` is not one.
fn canonical_record_id(id: &str) -> anyhow::Result<String> {
    let uuid = uuid::Uuid::try_parse(id.trim()).map_err(|_| {
        anyhow::anyhow!("{id:?} is not a record id (a UUID, as in the x-aegis-record-id header)")
    })?;
    if uuid.get_version_num() != 7 {
        anyhow::bail!("{id:?} is not a UUIDv7, so not an Aegis record id");
    }
    Ok(uuid.hyphenated().to_string())
}
