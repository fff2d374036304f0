//! The official `openai` Python SDK, unchanged, against the gateway (mock upstream, real
//! ledger). Needs `python3` with `openai` installed; runs when `AEGIS_SDK_TESTS=1`, which
//! `.ci/run` sets after installing it.

use std::process::Command;

use crate::support::{Gateway, KEY_ALPHA, KEY_LIMITED, KEY_NO_PROXY_SCOPE, LedgerCluster, config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_through_the_gateway_and_every_request_is_proven() {
    if std::env::var("AEGIS_SDK_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: set AEGIS_SDK_TESTS=1 (with `pip install openai`) to run the SDK test");
        return;
    }
    let ledger = LedgerCluster::start().await;
    let spool = tempfile::tempdir().expect("spool dir");
    let gateway = Gateway::start(config(&ledger.endpoints(), spool.path())).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_sdk.py");
    let url = gateway.url("/v1");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .env("AEGIS_GATEWAY_URL", url)
            .env("AEGIS_KEY", KEY_ALPHA)
            .env("AEGIS_KEY_NO_PROXY", KEY_NO_PROXY_SCOPE)
            .env("AEGIS_KEY_LIMITED", KEY_LIMITED)
            .output()
            .expect("run python3")
    })
    .await
    .expect("join");
    assert!(
        output.status.success(),
        "the SDK script failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let records: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("the script prints its record ids as JSON");
    for case in [
        "chat",
        "chat_stream",
        "completion",
        "embeddings",
        "unauthenticated",
        "permission_denied",
        "rate_limited",
    ] {
        let record_id = records[case].as_str().unwrap_or_else(|| panic!("no record id for {case}"));
        let record = crate::gateway::proven_record(&ledger, record_id).await;
        assert_eq!(record.record_id, record_id);
        let expected_status = match case {
            "unauthenticated" => 401,
            "permission_denied" => 403,
            "rate_limited" => 429,
            _ => 200,
        };
        assert_eq!(record.status_code, expected_status, "{case}");
    }
    gateway.stop().await;
}
