//! An unreachable or unresponsive collector never blocks span creation.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use telemetry::{OtlpProtocol, TracingConfig};
use tracing_subscriber::layer::SubscriberExt;

const SPANS: usize = 100_000;
/// Far above the time 100k spans take here, far below what a blocking queue would need.
const DEADLINE: Duration = Duration::from_secs(120);

fn config(protocol: OtlpProtocol, endpoint: String) -> TracingConfig {
    let mut config = TracingConfig::new("unreachable-test");
    config.protocol = protocol;
    config.endpoint = Some(endpoint);
    config.max_queue_size = Some(256);
    config.max_export_batch_size = Some(64);
    config.scheduled_delay = Some(Duration::from_millis(50));
    config.export_timeout = Some(Duration::from_secs(2));
    config.shutdown_timeout = Duration::from_secs(1);
    config
}

/// Creates `SPANS` spans (each with a child) on a plain thread and fails if that does not finish
/// before `DEADLINE`; then checks that shutdown is bounded too.
async fn spans_do_not_block(config: TracingConfig) {
    let (layer, guard) = telemetry::init(&config).expect("init");
    assert!(guard.is_enabled());
    let subscriber = tracing_subscriber::registry().with(layer);

    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..SPANS / 2 {
                let parent = tracing::info_span!("request", otel.kind = "server", i);
                let _entered = parent.enter();
                tracing::info_span!("child").in_scope(|| {});
            }
        });
        let _ = done_tx.send(start.elapsed());
    });
    let elapsed = tokio::task::spawn_blocking(move || done_rx.recv_timeout(DEADLINE))
        .await
        .expect("join")
        .expect("creating spans blocked on the exporter");
    eprintln!("{SPANS} spans in {elapsed:?}");

    let start = Instant::now();
    let result = tokio::task::spawn_blocking(move || guard.shutdown()).await.expect("join");
    let shutdown = start.elapsed();
    eprintln!("shutdown after {shutdown:?}: {result:?}");
    assert!(shutdown < Duration::from_secs(15), "shutdown took {shutdown:?}");
}

/// A local port with nothing listening on it: connections are refused.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// A collector that accepts connections and never answers: every export waits for its full
/// timeout. Abort the task to close it.
async fn black_hole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let hole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, hole)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_does_not_block() {
    let port = closed_port();
    spans_do_not_block(config(OtlpProtocol::Grpc, format!("http://127.0.0.1:{port}"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_collector_does_not_block() {
    let (addr, hole) = black_hole().await;
    spans_do_not_block(config(OtlpProtocol::Grpc, format!("http://{addr}"))).await;
    hole.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_does_not_block_http() {
    let port = closed_port();
    spans_do_not_block(config(OtlpProtocol::HttpProtobuf, format!("http://127.0.0.1:{port}/v1/traces")))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_collector_does_not_block_http() {
    let (addr, hole) = black_hole().await;
    spans_do_not_block(config(OtlpProtocol::HttpProtobuf, format!("http://{addr}/v1/traces"))).await;
    hole.abort();
}
