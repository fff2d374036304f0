//! `GET /v1/audit/records/{record_id}`: a record, its inclusion proof and the published
//! checkpoint the proof verifies against, as JSON, so a user without gRPC tooling can check
//! it. A tenant sees only its own records (another tenant's look absent); `admin` sees all.
//! The gateway checks the proof itself before answering, but the answer is self-contained:
//! clients verify it against the signed checkpoint with any RFC 9162 library.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::header::CONTENT_TYPE;
use mmr::{Checkpoint, InclusionProof, NoteLimits, SignedNote};
use prost::Message as _;
use proto::v1;
use serde_json::{Value, json};
use tonic::Code;

use crate::app::App;
use crate::config::Scope;
use crate::error::{ApiError, ErrorKind};
use crate::policy::auth::Credential;

pub async fn get_record(
    State(app): State<Arc<App>>,
    Extension(credential): Extension<Arc<Credential>>,
    Path(record_id): Path<String>,
) -> Response {
    match lookup(&app, &credential, &record_id).await {
        Ok(body) => ([(CONTENT_TYPE, "application/json")], body.to_string()).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn lookup(app: &App, credential: &Credential, record_id: &str) -> Result<Value, ApiError> {
    let canonical = uuid::Uuid::try_parse(record_id)
        .ok()
        .filter(|uuid| uuid.get_version_num() == 7 && uuid.hyphenated().to_string() == record_id);
    if canonical.is_none() {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "a record id is a UUIDv7 in canonical form (lowercase, hyphenated), as in x-aegis-record-id",
        ));
    }
    let not_found = || {
        ApiError::new(
            ErrorKind::NotFound,
            format!(
                "no record {record_id} in the ledger's latest published checkpoint; records are published \
                 within seconds of the request, so retry shortly"
            ),
        )
    };
    let proof = match app.ledger.inclusion_proof(record_id).await {
        Ok(proof) => proof,
        Err(status) if matches!(status.code(), Code::NotFound | Code::OutOfRange) => return Err(not_found()),
        Err(status) => {
            tracing::warn!(%status, "the ledger could not serve an inclusion proof");
            return Err(ApiError::new(
                ErrorKind::UpstreamUnavailable,
                "the audit ledger is unreachable; retry later",
            ));
        }
    };
    let record = v1::AuditRecord::decode(proof.record.as_slice()).map_err(|_| {
        ApiError::new(ErrorKind::Internal, "the ledger returned a record that is not an AuditRecord")
    })?;
    if record.tenant != credential.tenant.id && !credential.has_scope(Scope::Admin) {
        return Err(not_found());
    }
    let checkpoint = proof.checkpoint.as_ref().ok_or_else(|| {
        ApiError::new(ErrorKind::Internal, "the ledger returned a proof without its checkpoint")
    })?;
    verify(&proof, &checkpoint.note)?;
    let path: Vec<String> = proof.path.iter().map(|hash| BASE64.encode(hash)).collect();
    Ok(json!({
        "record_id": record.record_id,
        "leaf_index": proof.leaf_index,
        "tree_size": proof.tree_size,
        "record": record_json(&record),
        "record_base64": BASE64.encode(&proof.record),
        "inclusion_proof": path,
        "checkpoint": checkpoint.note,
        "verification": "RFC 9162 inclusion of SHA-256(0x00 || record) at leaf_index in a tree of tree_size, \
                         against the root in the checkpoint; check the checkpoint's signatures with the \
                         ledger nodes' verifier keys",
    }))
}

/// Checks the proof against the checkpoint's root: the gateway never hands out a proof that
/// does not verify.
fn verify(proof: &v1::GetInclusionProofResponse, note: &str) -> Result<(), ApiError> {
    let broken = |what: String| {
        tracing::error!(what, "the ledger served an inclusion proof that does not verify");
        ApiError::new(
            ErrorKind::UpstreamUnavailable,
            "the ledger served a proof that does not verify; retry later",
        )
    };
    let note = SignedNote::parse(note.as_bytes(), &NoteLimits::default())
        .map_err(|error| broken(error.to_string()))?;
    let checkpoint = Checkpoint::from_body(note.text()).map_err(|error| broken(error.to_string()))?;
    let inclusion = InclusionProof::try_from(proof).map_err(|error| broken(error.to_string()))?;
    if inclusion.tree_size != checkpoint.size {
        return Err(broken(format!(
            "proof size {} but checkpoint size {}",
            inclusion.tree_size, checkpoint.size
        )));
    }
    inclusion
        .verify(&mmr::leaf_hash(&proof.record), &checkpoint.root)
        .map_err(|error| broken(error.to_string()))
}

/// The record's fields as JSON (hashes in hex).
fn record_json(record: &v1::AuditRecord) -> Value {
    let hex = |bytes: &[u8]| bytes.iter().map(|byte| format!("{byte:02x}")).collect::<String>();
    let policy = record.policy.as_ref();
    json!({
        "gateway_id": record.gateway_id,
        "tenant": record.tenant,
        "credential_id": record.credential_id,
        "received_at_unix_nanos": record.received_at_unix_nanos,
        "finished_at_unix_nanos": record.finished_at_unix_nanos,
        "method": record.method,
        "route": record.route,
        "model": record.model,
        "upstream": record.upstream,
        "status_code": record.status_code,
        "latency_us": record.latency_us,
        "upstream_latency_us": record.upstream_latency_us,
        "usage": record.usage.map(|usage| json!({
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        })),
        "request_sha256": hex(&record.request_sha256),
        "response_sha256": hex(&record.response_sha256),
        "request_bytes": record.request_bytes,
        "response_bytes": record.response_bytes,
        "streamed": record.streamed,
        "policy": policy.map(|policy| json!({
            "audit_mode": policy.audit_mode().as_str_name(),
            "refusal_reason": policy.refusal_reason,
            "fail_open": policy.fail_open,
            "rate_limit": policy.rate_limit.map(|decision| json!({
                "outcome": decision.outcome().as_str_name(),
                "requests_remaining": decision.requests_remaining,
                "tokens_remaining": decision.tokens_remaining,
            })),
        })),
        "analysis": record.analysis.as_ref().map(|analysis| json!({
            "token_count": analysis.token_count,
            "entropy_token_count": analysis.entropy_token_count,
            "token_entropy_mean_bits": analysis.token_entropy_mean_bits,
            "finish_reason": analysis.finish_reason,
        })),
    })
}
