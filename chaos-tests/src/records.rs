//! Audit records for tests that append to the ledger directly.

use prost::Message as _;
use proto::v1;

/// A canonical UUIDv7 record id, unique per (`run`, `n`): `run` tells apart records of
/// different test runs or different logs, `n` numbers them.
pub fn record_id(run: u32, n: u64) -> String {
    // 48-bit "timestamp", version 7, 12 bits, variant 0b10, 62 bits.
    format!(
        "{:08x}-{:04x}-7{:03x}-8{:03x}-{:012x}",
        0x0190_0000 | (run & 0xffff),
        (n >> 48) & 0xffff,
        (n >> 36) & 0xfff,
        (n >> 24) & 0xfff,
        n & 0xff_ffff_ffff
    )
}

/// The encoding of a small audit record with id `record_id`, as a gateway would send it.
pub fn audit_record(record_id: &str, tenant: &str) -> Vec<u8> {
    v1::AuditRecord {
        record_id: record_id.to_owned(),
        gateway_id: "gw-test".to_owned(),
        tenant: tenant.to_owned(),
        credential_id: "cred-test".to_owned(),
        method: "POST".to_owned(),
        route: "/v1/chat/completions".to_owned(),
        model: "mock-1".to_owned(),
        upstream: "mock".to_owned(),
        status_code: 200,
        latency_us: 1234,
        trace_id: vec![0x4b; 16],
        span_id: vec![0x53; 8],
        ..Default::default()
    }
    .encode_to_vec()
}
