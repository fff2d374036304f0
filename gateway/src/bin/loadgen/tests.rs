use super::*;
use crate::test_server;

const BODY: &str = r#"{"model":"mock","messages":[]}"#;

fn opts(args: &[&str]) -> anyhow::Result<Opts> {
    let argv = std::iter::once("aegis-gateway-loadgen").chain(args.iter().copied());
    Opts::try_from(Cli::try_parse_from(argv)?)
}

async fn server() -> (String, Arc<test_server::ServerStats>) {
    let (addr, stats) = test_server::spawn(0).await.expect("bind test server");
    (format!("http://{addr}"), stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completes_n_requests_without_errors() {
    let (base, stats) = server().await;
    let url = format!("{base}/ok");
    let args =
        ["--url", &url, "--body", BODY, "--concurrency", "4", "--requests", "200", "--warmup-secs", "0"];
    let report = run(opts(&args).expect("valid opts")).await;
    assert_eq!(report.requests, 200);
    assert_eq!(report.errors, 0, "first error: {:?}", report.first_error);
    assert_eq!(stats.requests.load(Ordering::Relaxed), 200);
    assert_eq!(stats.json_bodies.load(Ordering::Relaxed), 200, "body sent as application/json");
    assert!(report.latency_us.p50 > 0 && report.latency_us.max >= report.latency_us.p999);
    assert!(report.requests_per_sec > 0.0);
    assert!(report.ttfb_us.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_status_counts_as_error() {
    let (base, _) = server().await;
    let url = format!("{base}/status/503");
    let args = ["--url", &url, "--concurrency", "2", "--requests", "20", "--warmup-secs", "0"];
    let report = run(opts(&args).expect("valid opts")).await;
    assert_eq!((report.requests, report.errors), (20, 20));
    assert!(report.first_error.as_deref().is_some_and(|e| e.contains("503")));
    assert_eq!(report.latency_us, LatencySummary::default(), "failed requests are not in the latency");

    let expecting_503 = [&args[..], &["--expect-status", "503"]].concat();
    let report = run(opts(&expecting_503).expect("valid opts")).await;
    assert_eq!((report.requests, report.errors), (20, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_ttfb_is_before_last_byte() {
    let (base, _) = server().await;
    let url = format!("{base}/sse?chunks=3&delay_ms=50");
    let args = ["--url", &url, "--stream", "--concurrency", "2", "--requests", "6", "--warmup-secs", "0"];
    let report = run(opts(&args).expect("valid opts")).await;
    assert_eq!((report.requests, report.errors), (6, 0), "first error: {:?}", report.first_error);
    let ttfb = report.ttfb_us.expect("ttfb reported with --stream");
    let total = report.latency_us;
    assert!(total.p50 >= 100_000, "two 50 ms gaps before the last byte: {total:?}");
    assert!(ttfb.max < total.p50 && ttfb.p50 < 50_000, "ttfb {ttfb:?} vs total {total:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_when_server_closes_without_counting_errors() {
    let (base, stats) = server().await;
    let url = format!("{base}/close");
    let args =
        ["--url", &url, "--method", "get", "--concurrency", "3", "--requests", "30", "--warmup-secs", "0"];
    let report = run(opts(&args).expect("valid opts")).await;
    assert_eq!((report.requests, report.errors), (30, 0), "first error: {:?}", report.first_error);
    assert_eq!(stats.requests.load(Ordering::Relaxed), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_mode_measures_after_warmup() {
    let (base, stats) = server().await;
    let url = format!("{base}/ok");
    let args = ["--url", &url, "--concurrency", "2", "--duration-secs", "0.5", "--warmup-secs", "0.2"];
    let report = run(opts(&args).expect("valid opts")).await;
    assert!(report.requests > 0 && report.errors == 0);
    assert!(stats.requests.load(Ordering::Relaxed) > report.requests, "warm-up requests are not measured");
    assert!((0.5..1.5).contains(&report.duration_secs), "duration {}", report.duration_secs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_errors() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/ok", listener.local_addr().expect("addr"));
    drop(listener);
    let args = ["--url", &url, "--concurrency", "2", "--requests", "6", "--warmup-secs", "0"];
    let report = run(opts(&args).expect("valid opts")).await;
    assert_eq!((report.requests, report.errors), (6, 6));
    assert!(report.first_error.as_deref().is_some_and(|e| e.starts_with("connect")));
}

#[test]
fn rejects_invalid_flags() {
    let bad: &[&[&str]] = &[
        &["--url", "http://127.0.0.1:1/x", "--concurrency", "0"],
        &["--url", "http://127.0.0.1:1/x", "--concurrency", "10001"],
        &["--url", "https://127.0.0.1:1/x", "--concurrency", "1"],
        &["--url", "127.0.0.1:1/x", "--concurrency", "1"],
        &["--url", "http://127.0.0.1:1/x", "--concurrency", "1", "--header", "no-colon"],
        &["--url", "http://127.0.0.1:1/x", "--concurrency", "1", "--requests", "5", "--duration-secs", "2"],
        &["--url", "http://127.0.0.1:1/x", "--concurrency", "1", "--body", "{}", "--body-file", "/dev/null"],
        &["--url", "http://127.0.0.1:1/x", "--concurrency", "1", "--duration-secs", "0"],
        &["--url", "http://127.0.0.1:1/x", "--concurrency", "1", "--warmup-secs", "-1"],
        &["--url", "http://127.0.0.1:1/x"],
    ];
    for args in bad {
        assert!(opts(args).is_err(), "accepted {args:?}");
    }
}

#[test]
fn builds_headers() {
    let o = opts(&[
        "--url",
        "http://127.0.0.1:9/v1/x?a=b",
        "--concurrency",
        "1",
        "--header",
        "Authorization: Bearer a:b",
        "--header",
        "content-type: text/plain",
        "--body",
        "hi",
    ])
    .expect("valid opts");
    assert_eq!(o.headers["authorization"], "Bearer a:b");
    assert_eq!(o.headers["content-type"], "text/plain");
    assert_eq!(o.headers["host"], "127.0.0.1:9");
    assert_eq!(o.path_and_query, "/v1/x?a=b");
    assert_eq!(o.stop, StopAfter::Duration(Duration::from_secs(10)));
}

#[test]
fn percentiles_use_nearest_rank() {
    let mut samples: Vec<u32> = (1..=1000).rev().collect();
    let s = LatencySummary::from_samples(&mut samples);
    assert_eq!((s.p50, s.p90, s.p99, s.p999, s.max), (500, 900, 990, 999, 1000));
    assert!((s.mean - 500.5).abs() < 1e-9);
    assert_eq!(percentile(&[7], 999), 7);
    assert_eq!(LatencySummary::from_samples(&mut []), LatencySummary::default());
}
