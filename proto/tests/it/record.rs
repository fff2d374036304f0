//! `AuditRecord` encodings: field numbers are pinned, and encoding is stable, because the
//! bytes a gateway produced are the leaf data that proofs hash.

use prost::Message as _;
use proto::v1::{
    AuditMode, AuditRecord, CapturedBodies, PolicyDecisions, RateLimitDecision, RateLimitOutcome,
    ResponseAnalysis, TokenUsage, WafAction, WafHit,
};

const RECORD_ID: &str = "0190f3a2-7b1c-7d4e-8f00-0123456789ab";

/// A record with every field set, so that a change to any field's encoding shows.
fn full_record() -> AuditRecord {
    AuditRecord {
        record_id: RECORD_ID.to_owned(),
        gateway_id: "gateway-eu-1".to_owned(),
        tenant: "acme".to_owned(),
        credential_id: "key_01HZX".to_owned(),
        received_at_unix_nanos: 1_719_000_000_123_456_789,
        finished_at_unix_nanos: 1_719_000_001_987_654_321,
        method: "POST".to_owned(),
        route: "/v1/chat/completions".to_owned(),
        model: "gpt-4o-mini".to_owned(),
        upstream: "openai".to_owned(),
        status_code: 200,
        latency_us: 1_864_197,
        upstream_latency_us: 1_800_000,
        usage: Some(TokenUsage { prompt_tokens: 42, completion_tokens: 128, total_tokens: 170 }),
        request_sha256: vec![0xab; 32],
        response_sha256: vec![0xcd; 32],
        request_bytes: 512,
        response_bytes: 4096,
        streamed: true,
        policy: Some(PolicyDecisions {
            waf_hits: vec![WafHit {
                rule_id: "pii-email-001".to_owned(),
                category: "pii".to_owned(),
                action: WafAction::Redact.into(),
                count: 2,
                location: "request:messages[0].content".to_owned(),
                shadow: false,
            }],
            rate_limit: Some(RateLimitDecision {
                outcome: RateLimitOutcome::Allowed.into(),
                requests_limit: 600,
                requests_remaining: 599,
                requests_reset_ms: 100,
                tokens_limit: 150_000,
                tokens_remaining: 149_830,
                tokens_reset_ms: 24,
            }),
            audit_mode: AuditMode::Strict.into(),
            refusal_reason: String::new(),
            fail_open: false,
        }),
        analysis: Some(ResponseAnalysis {
            token_count: 128,
            entropy_token_count: 120,
            token_entropy_mean_bits: 1.75,
            token_entropy_min_bits: 0.015625,
            token_entropy_max_bits: 6.5,
            finish_reason: "stop".to_owned(),
        }),
        trace_id: (1..=16).collect(),
        span_id: (1..=8).collect(),
        captured: Some(CapturedBodies {
            request_redacted: r#"{"messages":[{"role":"user","content":"mail [REDACTED]"}]}"#.to_owned(),
            response_redacted: "data: [DONE]\n\n".to_owned(),
            truncated: false,
        }),
    }
}

#[test]
fn field_numbers_and_wire_types_are_pinned() {
    let record = AuditRecord {
        record_id: RECORD_ID.to_owned(),
        status_code: 200,
        request_sha256: vec![0xab; 32],
        streamed: true,
        ..AuditRecord::default()
    };
    let mut expected = vec![0x0a, 36]; // field 1 (record_id), length-delimited, 36 bytes
    expected.extend_from_slice(RECORD_ID.as_bytes());
    expected.extend_from_slice(&[0x58, 0xc8, 0x01]); // field 11 (status_code), varint 200
    expected.extend_from_slice(&[0x7a, 32]); // field 15 (request_sha256), length-delimited, 32 bytes
    expected.extend_from_slice(&[0xab; 32]);
    expected.extend_from_slice(&[0x98, 0x01, 0x01]); // field 19 (streamed), varint 1
    assert_eq!(record.encode_to_vec(), expected);
}

#[test]
fn full_record_round_trips_to_the_same_bytes() {
    let record = full_record();
    let bytes = record.encode_to_vec();
    let decoded = AuditRecord::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(decoded, record);
    assert_eq!(decoded.encode_to_vec(), bytes);
    // Encoding is a pure function of the message: twice gives the same bytes.
    assert_eq!(full_record().encode_to_vec(), bytes);
    assert_eq!(decoded.policy.expect("policy").audit_mode(), AuditMode::Strict);
}

#[test]
fn empty_record_encodes_to_nothing() {
    // proto3 leaves default values out: an all-default record is zero bytes.
    assert_eq!(AuditRecord::default().encode_to_vec(), Vec::<u8>::new());
    assert_eq!(AuditRecord::decode(&[][..]).expect("decodes"), AuditRecord::default());
}

#[test]
fn enums_have_stable_numbers_and_names() {
    let actual = [
        (AuditMode::Unspecified.as_str_name(), AuditMode::Unspecified as i32),
        (AuditMode::Async.as_str_name(), AuditMode::Async as i32),
        (AuditMode::Durable.as_str_name(), AuditMode::Durable as i32),
        (AuditMode::Strict.as_str_name(), AuditMode::Strict as i32),
        (WafAction::Log.as_str_name(), WafAction::Log as i32),
        (WafAction::Block.as_str_name(), WafAction::Block as i32),
        (RateLimitOutcome::Allowed.as_str_name(), RateLimitOutcome::Allowed as i32),
        (RateLimitOutcome::LimitedRequests.as_str_name(), RateLimitOutcome::LimitedRequests as i32),
        (RateLimitOutcome::LimitedTokens.as_str_name(), RateLimitOutcome::LimitedTokens as i32),
    ];
    assert_eq!(
        actual,
        [
            ("AUDIT_MODE_UNSPECIFIED", 0),
            ("AUDIT_MODE_ASYNC", 1),
            ("AUDIT_MODE_DURABLE", 2),
            ("AUDIT_MODE_STRICT", 3),
            ("WAF_ACTION_LOG", 1),
            ("WAF_ACTION_BLOCK", 2),
            ("RATE_LIMIT_OUTCOME_ALLOWED", 1),
            ("RATE_LIMIT_OUTCOME_LIMITED_REQUESTS", 2),
            ("RATE_LIMIT_OUTCOME_LIMITED_TOKENS", 3),
        ]
    );
}
