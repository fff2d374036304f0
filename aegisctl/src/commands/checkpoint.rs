//! `aegisctl checkpoint`: the latest published checkpoint, verified.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mmr::VerifiedCheckpoint;
use proto::v1;
use serde_json::{Value, json};

use crate::client::{Cluster, LedgerClient, call_error};
use crate::failure::Failure;
use crate::report::Report;
use crate::trust::{Trust, signer_names};

pub async fn run(cluster: &Cluster, trust: &Trust) -> Result<Report, Failure> {
    let (endpoint, mut client) = cluster.ledger().await?;
    let verified = latest(&endpoint, &mut client, trust).await?;
    let text = format!(
        "checkpoint of {} verified ({} of {} trusted keys needed)\n{}",
        trust.origin(),
        trust.quorum(),
        trust.keys().len(),
        describe(&verified)
    );
    let mut json = summary(&verified);
    json["endpoint"] = endpoint.into();
    json["verified"] = true.into();
    Ok(Report::new(text, json))
}

/// The latest published checkpoint `endpoint` serves, verified against `trust`.
pub async fn latest(
    endpoint: &str,
    client: &mut LedgerClient,
    trust: &Trust,
) -> Result<VerifiedCheckpoint, Failure> {
    let response = client
        .get_checkpoint(v1::GetCheckpointRequest { tree_size: None })
        .await
        .map_err(|status| call_error(endpoint, "GetCheckpoint", &status))?
        .into_inner();
    let checkpoint = response
        .checkpoint
        .ok_or_else(|| Failure::rejected(format!("{endpoint} answered without a checkpoint")))?;
    trust.verify_wire(&checkpoint)
}

/// Size, root and signers, one per line.
pub fn describe(verified: &VerifiedCheckpoint) -> String {
    format!(
        "  size    {}\n  root    {}\n  signers {}\n",
        verified.checkpoint.size.0,
        BASE64.encode(verified.checkpoint.root.0),
        signer_names(verified).join(", ")
    )
}

/// Size, root, signers and the note, as JSON.
pub fn summary(verified: &VerifiedCheckpoint) -> Value {
    json!({
        "origin": verified.checkpoint.origin,
        "tree_size": verified.checkpoint.size.0,
        "root": BASE64.encode(verified.checkpoint.root.0),
        "signers": signer_names(verified),
        "note": verified.note.to_string(),
    })
}
