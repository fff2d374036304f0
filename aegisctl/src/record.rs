//! An audit record, shown to a person or a script.

use std::fmt::Write as _;

use prost::Message as _;
use proto::v1;
use serde_json::{Value, json};

use crate::trust::hex;

/// The record's fields as JSON and as aligned text lines. Bytes that do not decode as an
/// `AuditRecord` are still the proven leaf; they are shown as such.
pub fn describe(bytes: &[u8]) -> (Value, String) {
    let Ok(record) = v1::AuditRecord::decode(bytes) else {
        let text = format!("  (the {} leaf bytes are not an Aegis audit record)\n", bytes.len());
        return (json!({ "decoded": false, "bytes": bytes.len() }), text);
    };
    let usage = record.usage.unwrap_or_default();
    let policy = record.policy.unwrap_or_default();
    let waf: Vec<Value> = policy
        .waf_hits
        .iter()
        .map(|hit| {
            json!({
                "rule_id": hit.rule_id,
                "category": hit.category,
                "action": waf_action(hit.action),
                "count": hit.count,
                "location": hit.location,
                "shadow": hit.shadow,
            })
        })
        .collect();
    let value = json!({
        "decoded": true,
        "record_id": record.record_id,
        "gateway_id": record.gateway_id,
        "tenant": record.tenant,
        "credential_id": record.credential_id,
        "received_at": rfc3339(record.received_at_unix_nanos),
        "finished_at": rfc3339(record.finished_at_unix_nanos),
        "method": record.method,
        "route": record.route,
        "model": record.model,
        "upstream": record.upstream,
        "status_code": record.status_code,
        "latency_us": record.latency_us,
        "streamed": record.streamed,
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
        "request_sha256": hex(&record.request_sha256),
        "response_sha256": hex(&record.response_sha256),
        "audit_mode": audit_mode(policy.audit_mode),
        "refusal_reason": policy.refusal_reason,
        "waf_hits": waf,
        "trace_id": hex(&record.trace_id),
        "span_id": hex(&record.span_id),
    });
    let mut text = String::new();
    let mut line = |name: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(text, "  {name:<16}{value}");
    };
    line("record id", &record.record_id);
    line("gateway", &record.gateway_id);
    line("tenant", &record.tenant);
    line("credential", &record.credential_id);
    line("received", &rfc3339(record.received_at_unix_nanos));
    line("request", &format!("{} {}", record.method, record.route));
    line("model", &format!("{} via {}", record.model, record.upstream));
    line(
        "status",
        &format!("{} in {} µs{}", record.status_code, record.latency_us, streamed(record.streamed)),
    );
    line(
        "tokens",
        &format!(
            "{} prompt + {} completion = {}",
            usage.prompt_tokens, usage.completion_tokens, usage.total_tokens
        ),
    );
    if !policy.refusal_reason.is_empty() {
        line("refused", &policy.refusal_reason);
    }
    for hit in &policy.waf_hits {
        line(
            "waf",
            &format!("{} ({}) {} in {}", hit.rule_id, hit.category, waf_action(hit.action), hit.location),
        );
    }
    line("audit mode", &audit_mode(policy.audit_mode));
    line("request sha256", &hex(&record.request_sha256));
    line("response sha256", &hex(&record.response_sha256));
    let trace_id = if record.trace_id.is_empty() { "(none)".to_owned() } else { hex(&record.trace_id) };
    line("trace id", &trace_id);
    (value, text)
}

fn streamed(streamed: bool) -> &'static str {
    if streamed { ", streamed" } else { "" }
}

fn waf_action(action: i32) -> &'static str {
    match v1::WafAction::try_from(action) {
        Ok(v1::WafAction::Log) => "log",
        Ok(v1::WafAction::Block) => "block",
        Ok(v1::WafAction::Redact) => "redact",
        _ => "unspecified",
    }
}

fn audit_mode(mode: i32) -> String {
    match v1::AuditMode::try_from(mode) {
        Ok(v1::AuditMode::Async) => "async".to_owned(),
        Ok(v1::AuditMode::Durable) => "durable".to_owned(),
        Ok(v1::AuditMode::Strict) => "strict".to_owned(),
        _ => "unspecified".to_owned(),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` for nanoseconds since the Unix epoch (UTC).
pub fn rfc3339(unix_nanos: i64) -> String {
    let seconds = unix_nanos.div_euclid(1_000_000_000);
    let nanos = unix_nanos.rem_euclid(1_000_000_000);
    let days = seconds.div_euclid(86_400);
    let time = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_795_775_696_123_456_789), "2026-11-27T10:34:56.123456789Z");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000000000Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn records_are_described_and_garbage_is_named() {
        let record = v1::AuditRecord {
            record_id: "0192f0c1-0000-7000-8000-000000000001".to_owned(),
            tenant: "acme".to_owned(),
            status_code: 200,
            trace_id: vec![0xab; 16],
            ..Default::default()
        };
        let (json, text) = describe(&record.encode_to_vec());
        assert_eq!(json["record_id"], "0192f0c1-0000-7000-8000-000000000001");
        assert_eq!(json["tenant"], "acme");
        assert_eq!(json["trace_id"], "ab".repeat(16));
        assert!(text.contains("trace id        abababab"), "{text}");
        let (json, _) = describe(&[0xff, 0xff, 0xff]);
        assert_eq!(json["decoded"], false);
    }
}
