//! Audit delivery under failure: `durable` and `strict` tenants while the ledger is down, a
//! full spool, client disconnects, and a gateway restarted on a spool that still holds records.

use std::time::{Duration, Instant};

use gateway::config::{AuditModeConfig, FailureMode};
use http_body_util::BodyExt as _;

use crate::gateway::proven_record;
use crate::support::{Gateway, KEY_ALPHA, KEY_BETA, LedgerCluster, config, post};

const CHAT: &str = r#"{"model":"mock-1","messages":[{"role":"user","content":"hello"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_fails_with_503_and_durable_succeeds_while_the_ledger_is_down_and_nothing_is_lost() {
    let mut ledger = LedgerCluster::start().await;
    let spool = tempfile::tempdir().expect("spool dir");
    let mut config = config(&ledger.endpoints(), spool.path());
    config.tenants[0].audit_mode = AuditModeConfig::Strict; // alpha
    config.tenants[1].audit_mode = AuditModeConfig::Durable; // beta
    config.audit.strict_timeout_ms = 1_500;
    let gateway = Gateway::start(config).await;
    let url = gateway.url("/v1/chat/completions");

    // Ledger up: strict waits for the acknowledgement and succeeds.
    let strict_up = post(&url, Some(KEY_ALPHA), CHAT).await;
    assert_eq!(strict_up.status, 200, "{}", String::from_utf8_lossy(&strict_up.body));

    ledger.kill_all();
    let started = Instant::now();
    let strict_down = post(&url, Some(KEY_ALPHA), CHAT).await;
    assert_eq!(strict_down.status, 503, "strict cannot be acknowledged without a ledger");
    assert_eq!(strict_down.json()["error"]["code"], "audit_unavailable");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded by strict_timeout_ms");
    let durable_down = post(&url, Some(KEY_BETA), CHAT).await;
    assert_eq!(durable_down.status, 200, "durable only needs the local spool");

    ledger.restart_all().await;
    for reply in [&strict_up, &strict_down, &durable_down] {
        let record = proven_record(&ledger, &reply.record_id()).await;
        assert_eq!(record.record_id, reply.record_id());
    }
    assert_eq!(gateway.metric("aegis_gateway_audit_records_dropped_total").await, 0.0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_fail_closed_tenants_and_flags_fail_open_ones() {
    let mut ledger = LedgerCluster::start().await;
    let spool = tempfile::tempdir().expect("spool dir");
    let mut config = config(&ledger.endpoints(), spool.path());
    config.tenants[1].on_audit_failure = FailureMode::Open; // beta
    config.audit.record_bytes_max = 2_048;
    config.audit.spool_segment_bytes_max = 4_096;
    config.audit.spool_bytes_max = 8_192;
    config.validate().expect("valid");
    let gateway = Gateway::start(config).await;
    let url = gateway.url("/v1/chat/completions");
    ledger.kill_all();

    // Fill the spool: each record is a few hundred bytes, the spool holds 8 KiB.
    let mut accepted = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = loop {
        let reply = post(&url, Some(KEY_ALPHA), CHAT).await;
        if reply.status == 503 {
            break reply;
        }
        assert_eq!(reply.status, 200);
        accepted.push(reply.record_id());
        assert!(Instant::now() < deadline, "the spool never filled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused.json()["error"]["code"], "audit_unavailable");
    let ready = crate::support::get(&gateway.url("/readyz"), None).await;
    assert_eq!(ready.status, 503, "not ready while records cannot be kept");
    let open = post(&url, Some(KEY_BETA), CHAT).await;
    assert_eq!(open.status, 200, "a fail-open tenant is still served");

    ledger.restart_all().await;
    for record_id in accepted.iter().chain([&refused.record_id(), &open.record_id()]) {
        proven_record(&ledger, record_id).await;
    }
    let flagged = proven_record(&ledger, &open.record_id()).await;
    assert!(flagged.policy.expect("policy").fail_open, "served unaudited-risk requests are flagged");
    let deadline = Instant::now() + Duration::from_secs(30);
    while post(&url, Some(KEY_ALPHA), CHAT).await.status != 200 {
        assert!(Instant::now() < deadline, "the gateway did not accept again after the spool drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gateway.metric("aegis_gateway_audit_records_dropped_total").await, 0.0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_is_recorded_with_status_499() {
    let ledger = LedgerCluster::start().await;
    let spool = tempfile::tempdir().expect("spool dir");
    let mut config = config(&ledger.endpoints(), spool.path());
    config.upstreams[0].mock.chunk_count = 50;
    config.upstreams[0].mock.chunk_interval_ms = 50;
    let gateway = Gateway::start(config).await;
    let body = r#"{"model":"mock-1","stream":true,"messages":[{"role":"user","content":"hello"}]}"#;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let request = http::Request::post(gateway.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY_ALPHA}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())))
        .expect("request");
    let response = client.request(request).await.expect("response");
    let record_id = response.headers()["x-aegis-record-id"].to_str().expect("ascii").to_owned();
    let mut body = response.into_body();
    let first = body.frame().await.expect("a first chunk").expect("ok");
    assert!(first.is_data());
    drop(body);
    drop(client);
    let record = proven_record(&ledger, &record_id).await;
    assert_eq!(record.status_code, 499);
    assert!(record.streamed);
    let full_stream_bytes = 50 * 150;
    assert!(
        record.response_bytes < full_stream_bytes,
        "the upstream stream was cut short: {}",
        record.response_bytes
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_replays_the_spool_its_predecessor_left() {
    let mut ledger = LedgerCluster::start().await;
    let spool = tempfile::tempdir().expect("spool dir");
    let gateway = Gateway::start(config(&ledger.endpoints(), spool.path())).await;
    let url = gateway.url("/v1/chat/completions");
    ledger.kill_all();
    let mut record_ids = Vec::new();
    for _ in 0..10 {
        let reply = post(&url, Some(KEY_ALPHA), CHAT).await;
        assert_eq!(reply.status, 200);
        record_ids.push(reply.record_id());
    }
    // Shutting down flushes whatever is in memory into the spool.
    gateway.stop().await;

    ledger.restart_all().await;
    let gateway = Gateway::start(config(&ledger.endpoints(), spool.path())).await;
    for record_id in &record_ids {
        proven_record(&ledger, record_id).await;
    }
    gateway.stop().await;
}
