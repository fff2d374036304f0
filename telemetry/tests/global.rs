//! With a process-wide subscriber and no level filter, exporting must not export (and so feed
//! back) the exporter's own transport spans (h2, hyper, tonic, tower). Own binary: global state.

use chaos_tests::otlp as common;

use std::time::Duration;

use telemetry::TracingConfig;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_transport_spans_are_not_exported() {
    let (addr, receiver) = common::start_receiver().await;
    let mut config = TracingConfig::new("global-test");
    config.endpoint = Some(format!("http://{addr}"));
    config.scheduled_delay = Some(Duration::from_millis(20));
    let (layer, guard) = telemetry::init(&config).expect("init");
    tracing_subscriber::registry().with(layer).try_init().expect("global subscriber");

    for round in 0..3 {
        tracing::info_span!("app_span", round).in_scope(|| {});
        // Let the periodic export run (its transport would emit spans here).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let guard = tokio::task::spawn_blocking(move || guard.force_flush().map(|()| guard))
        .await
        .expect("join")
        .expect("flush");

    let names: Vec<String> = receiver.spans().into_iter().map(|(_, s)| s.name).collect();
    let foreign: Vec<&String> = names.iter().filter(|n| *n != "app_span").collect();
    assert!(
        foreign.is_empty(),
        "{} transport spans were exported, e.g. {:?}",
        foreign.len(),
        &foreign[..foreign.len().min(5)]
    );
    assert_eq!(names.len(), 3, "the three application spans");
    tokio::task::spawn_blocking(move || guard.shutdown()).await.expect("join").expect("shutdown");
}
