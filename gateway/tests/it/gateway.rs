//! End to end: the gateway with the mock upstream in front of a real three-process ledger.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mmr::{Checkpoint, InclusionProof, NoteLimits, SignedNote};
use prost::Message as _;
use proto::v1;
use sha2::{Digest as _, Sha256};

use crate::support::{
    Gateway, KEY_ALPHA, KEY_BETA, KEY_LIMITED, KEY_NO_PROXY_SCOPE, LedgerCluster, config, get, post,
};

const CHAT: &str = r#"{"model":"mock-1","messages":[{"role":"user","content":"hello"}]}"#;
const CHAT_STREAM: &str = r#"{"model":"mock-1","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hello"}]}"#;

/// Checks the ledger's proof of `record_id` against its checkpoint and returns the record.
pub(crate) async fn proven_record(ledger: &LedgerCluster, record_id: &str) -> v1::AuditRecord {
    let proof = ledger.proof(record_id).await;
    let note = proof.checkpoint.as_ref().expect("the proof comes with its checkpoint");
    let note = SignedNote::parse(note.note.as_bytes(), &NoteLimits::default()).expect("signed note");
    let checkpoint = Checkpoint::from_body(note.text()).expect("checkpoint");
    InclusionProof::try_from(&proof)
        .expect("well-formed proof")
        .verify(&mmr::leaf_hash(&proof.record), &checkpoint.root)
        .expect("the inclusion proof verifies against the published checkpoint");
    v1::AuditRecord::decode(proof.record.as_slice()).expect("an AuditRecord")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_allowed_and_refused_each_land_in_the_ledger_with_a_verifying_proof() {
    let ledger = LedgerCluster::start().await;
    let spool = tempfile::tempdir().expect("spool dir");
    let gateway = Gateway::start(config(&ledger.endpoints(), spool.path())).await;
    let url = gateway.url("/v1/chat/completions");

    // Allowed, plain JSON.
    let reply = post(&url, Some(KEY_ALPHA), CHAT).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(
        reply.headers.contains_key("x-ratelimit-remaining-requests")
            || reply.headers.get("x-ratelimit-limit-requests").is_none()
    );
    let allowed = reply.record_id();

    // Refused: no key, a key without the proxy scope, unknown model, too deep, too large.
    let cases: Vec<(Option<&str>, String, u16, &str, &str)> = vec![
        (None, CHAT.to_owned(), 401, "invalid_request_error", "unauthenticated"),
        (Some(KEY_NO_PROXY_SCOPE), CHAT.to_owned(), 403, "permission_error", "permission_denied"),
        (Some(KEY_ALPHA), CHAT.replace("mock-1", "gpt-unknown"), 404, "invalid_request_error", ""),
        (
            Some(KEY_ALPHA),
            format!(r#"{{"model":"mock-1","x":{}{}}}"#, "[".repeat(20), "]".repeat(20)),
            400,
            "invalid_request_error",
            "invalid_request",
        ),
        (
            Some(KEY_ALPHA),
            format!(r#"{{"model":"mock-1","x":"{}"}}"#, "a".repeat(70_000)),
            413,
            "invalid_request_error",
            "body_too_large",
        ),
    ];
    let mut refused = Vec::new();
    for (key, body, status, error_type, reason) in cases {
        let reply = post(&url, key, &body).await;
        assert_eq!(reply.status.as_u16(), status, "{}", String::from_utf8_lossy(&reply.body));
        let error = &reply.json()["error"];
        assert_eq!(error["type"], error_type, "{error}");
        assert!(error["message"].as_str().is_some_and(|message| !message.is_empty()));
        refused.push((reply.record_id(), status, reason));
    }

    // An extension method thousands of bytes long: refused, recorded with its first 16 bytes.
    let long_method = "A".repeat(3_000);
    let mut stream = tokio::net::TcpStream::connect(gateway.address).await.expect("connect");
    let raw = format!("{long_method} /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stream, raw.as_bytes()).await.expect("write");
    let mut response = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    let long_method_record = response
        .lines()
        .find_map(|line| line.strip_prefix("x-aegis-record-id: "))
        .expect("record id")
        .trim()
        .to_owned();

    let record = proven_record(&ledger, &allowed).await;
    assert_eq!((record.tenant.as_str(), record.credential_id.as_str()), ("alpha", "alpha-app"));
    assert_eq!(
        (record.route.as_str(), record.model.as_str(), record.upstream.as_str()),
        ("/v1/chat/completions", "mock-1", "mock")
    );
    assert_eq!(record.status_code, 200);
    assert_eq!(record.request_sha256, Sha256::digest(CHAT.as_bytes()).to_vec());
    assert_eq!(
        record.response_sha256,
        Sha256::digest(&reply.body).to_vec(),
        "hash of the body the client received"
    );
    let usage = record.usage.expect("usage reported by the mock");
    assert_eq!(usage.completion_tokens, 6);
    assert_eq!(record.policy.expect("policy").refusal_reason, "");
    for (record_id, status, reason) in refused {
        let record = proven_record(&ledger, &record_id).await;
        assert_eq!(record.status_code, u32::from(status));
        if !reason.is_empty() {
            assert_eq!(record.policy.expect("policy").refusal_reason, reason, "status {status}");
        }
        assert!(record.tenant.is_empty() || record.tenant == "alpha");
    }

    let record = proven_record(&ledger, &long_method_record).await;
    assert_eq!(record.method, "A".repeat(16));
    assert_eq!(record.status_code, 405);

    // The gateway's own lookup returns the record with a proof that verifies.
    let lookup = get(&gateway.url(&format!("/v1/audit/records/{allowed}")), Some(KEY_ALPHA)).await;
    assert_eq!(lookup.status, 200, "{}", String::from_utf8_lossy(&lookup.body));
    let lookup = lookup.json();
    let record_bytes = BASE64.decode(lookup["record_base64"].as_str().expect("record")).expect("base64");
    let path: Vec<mmr::Hash> = lookup["inclusion_proof"]
        .as_array()
        .expect("path")
        .iter()
        .map(|hash| {
            mmr::Hash::try_from(BASE64.decode(hash.as_str().expect("string")).expect("base64").as_slice())
                .expect("32 bytes")
        })
        .collect();
    let note =
        SignedNote::parse(lookup["checkpoint"].as_str().expect("note").as_bytes(), &NoteLimits::default())
            .expect("note");
    let checkpoint = Checkpoint::from_body(note.text()).expect("checkpoint");
    mmr::verify_inclusion(
        mmr::LeafIndex(lookup["leaf_index"].as_u64().expect("index")),
        checkpoint.size,
        &mmr::leaf_hash(&record_bytes),
        &path,
        &checkpoint.root,
    )
    .expect("the lookup's proof verifies");
    // Another tenant cannot see it; a key without audit:read cannot look.
    let other = get(&gateway.url(&format!("/v1/audit/records/{allowed}")), Some(KEY_BETA)).await;
    assert_eq!(other.status, 404);
    assert_eq!(gateway.metric("aegis_gateway_audit_records_dropped_total").await, 0.0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_pass_through_and_their_record_hashes_what_the_client_received() {
    let ledger = LedgerCluster::start().await;
    let spool = tempfile::tempdir().expect("spool dir");
    let mut config = config(&ledger.endpoints(), spool.path());
    config.upstreams[0].mock.first_token_latency_ms = 350;
    let gateway = Gateway::start(config).await;
    let reply = post(&gateway.url("/v1/chat/completions"), Some(KEY_ALPHA), CHAT_STREAM).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    assert!(text.starts_with(": ping\n\n"), "keepalive pings precede a slow first token: {text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let contents = text
        .lines()
        .filter(|line| line.contains("\"content\":\"") && !line.contains("\"content\":\"\""))
        .count();
    assert_eq!(contents, 6, "one event per mock chunk: {text}");
    let record = proven_record(&ledger, &reply.record_id()).await;
    assert!(record.streamed);
    assert_eq!(record.response_sha256, Sha256::digest(&reply.body).to_vec());
    assert_eq!(record.response_bytes, reply.body.len() as u64);
    assert_eq!(record.usage.expect("include_usage chunk").completion_tokens, 6);
    let analysis = record.analysis.expect("analysis");
    assert_eq!((analysis.token_count, analysis.finish_reason.as_str()), (6, "stop"));

    // Anthropic's Messages API, streamed, and its error shape.
    let messages = r#"{"model":"claude-mock","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let reply = post(&gateway.url("/v1/messages"), Some(KEY_ALPHA), messages).await;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    assert!(text.contains("event: message_stop"), "{text}");
    let record = proven_record(&ledger, &reply.record_id()).await;
    assert_eq!(record.usage.expect("usage").completion_tokens, 6);
    let refused = post(&gateway.url("/v1/messages"), None, messages).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["type"], "error");
    assert_eq!(refused.json()["error"]["type"], "authentication_error");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_openai_headers() {
    let ledger = LedgerCluster::start().await;
    let spool = tempfile::tempdir().expect("spool dir");
    let gateway = Gateway::start(config(&ledger.endpoints(), spool.path())).await;
    let url = gateway.url("/v1/chat/completions");
    let first = post(&url, Some(KEY_LIMITED), CHAT).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["x-ratelimit-limit-requests"], "1");
    assert_eq!(first.headers["x-ratelimit-remaining-requests"], "0");
    let second = post(&url, Some(KEY_LIMITED), CHAT).await;
    assert_eq!(second.status, 429);
    assert_eq!(second.json()["error"]["code"], "rate_limit_exceeded");
    let retry_after: u64 = second.headers["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(second.headers.contains_key("retry-after-ms"));
    assert!(second.headers.contains_key("x-ratelimit-reset-requests"));
    let record = proven_record(&ledger, &second.record_id()).await;
    let policy = record.policy.expect("policy");
    assert_eq!(policy.refusal_reason, "rate_limited");
    assert_eq!(policy.rate_limit.expect("decision").outcome(), v1::RateLimitOutcome::LimitedRequests);
    // Other credentials are not affected.
    assert_eq!(post(&url, Some(KEY_BETA), CHAT).await.status, 200);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_while_the_ledger_is_down_arrive_exactly_once_after_it_returns() {
    let mut ledger = LedgerCluster::start().await;
    let spool = tempfile::tempdir().expect("spool dir");
    let gateway = Gateway::start(config(&ledger.endpoints(), spool.path())).await;
    let url = gateway.url("/v1/chat/completions");
    let before = post(&url, Some(KEY_ALPHA), CHAT).await.record_id();
    proven_record(&ledger, &before).await;
    let size_before = ledger.tree_size().await;

    ledger.kill_all();
    let mut record_ids = Vec::new();
    for _ in 0..40 {
        let reply = post(&url, Some(KEY_ALPHA), CHAT).await;
        assert_eq!(reply.status, 200, "async audit never delays or fails the client");
        record_ids.push(reply.record_id());
    }
    // The records reach the spool once the ledger is found unreachable.
    let deadline = Instant::now() + Duration::from_secs(30);
    while gateway.metric("aegis_gateway_audit_records_spooled_total").await < 40.0 {
        assert!(Instant::now() < deadline, "records were not spooled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    ledger.restart_all().await;
    for record_id in &record_ids {
        let record = proven_record(&ledger, record_id).await;
        assert_eq!(&record.record_id, record_id);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while gateway.metric("aegis_gateway_audit_spool_records").await > 0.0 {
        assert!(Instant::now() < deadline, "the spool did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ledger.tree_size().await, size_before + 40, "each record appended exactly once");
    assert_eq!(gateway.metric("aegis_gateway_audit_records_dropped_total").await, 0.0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn genai_metrics_count_calls_tokens_and_time_to_first_chunk() {
    let spool = tempfile::tempdir().unwrap();
    // No ledger needed: the records go to the spool.
    let gateway = Gateway::start(config(&["http://127.0.0.1:1".to_owned()], spool.path())).await;
    assert_eq!(post(&gateway.url("/v1/chat/completions"), Some(KEY_ALPHA), CHAT).await.status, 200);
    assert_eq!(post(&gateway.url("/v1/chat/completions"), Some(KEY_ALPHA), CHAT_STREAM).await.status, 200);
    let labels = r#"gen_ai_operation_name="chat",gen_ai_provider_name="aegis.mock",aegis_upstream="mock""#;
    let calls = gateway
        .metric(&format!(
            "aegis_gateway_gen_ai_client_operation_duration_seconds_count{{{labels},error_type=\"\"}}"
        ))
        .await;
    assert_eq!(calls, 2.0);
    let first_chunks = gateway
        .metric(&format!(
            "aegis_gateway_gen_ai_client_time_to_first_chunk_seconds_count{{{labels},error_type=\"\"}}"
        ))
        .await;
    assert_eq!(first_chunks, 1.0, "only the stream has a first chunk");
    for token_type in ["input", "output"] {
        let name = format!(
            "aegis_gateway_gen_ai_client_token_usage_count{{{labels},gen_ai_token_type=\"{token_type}\"}}"
        );
        assert_eq!(gateway.metric(&name).await, 2.0, "{token_type} tokens of both calls");
        let sum = format!(
            "aegis_gateway_gen_ai_client_token_usage_sum{{{labels},gen_ai_token_type=\"{token_type}\"}}"
        );
        assert!(gateway.metric(&sum).await > 0.0);
    }
    gateway.stop().await;
}
