//! The cost of handing an audit record to the sender on a request's hot path, with the sender
//! running against an in-process ledger that acknowledges everything (so the queue drains as it
//! would in production):
//!
//! - `handoff/finish`: what a handler pays: build the `AuditRecord` from the request's draft,
//!   encode it, and `try_send` it (`Draft::finish` in `async` mode);
//! - `handoff/submit`: the queue hand-off alone, for an already encoded record;
//! - `baseline/spool_fsync`: the naive alternative, writing the record durably (spool append +
//!   fdatasync) on the hot path. Our figures are reported as a ratio to it.
//!
//! Each timed batch submits `BATCH` records one by one, timing each, then waits (untimed) for the
//! sender to drain, so the queue never fills: the hand-off is measured in its normal regime.
//! After criterion's run, the bench prints the per-record p50/p99/p999 it observed.
//!
//! Run: `cargo bench -p gateway --bench audit_handoff`

// A benchmark: its printed percentiles are its output, and its statistics are floating point.
#![allow(clippy::print_stdout, clippy::cast_possible_truncation)]

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::audit::draft::{Draft, Outcome};
use gateway::audit::sender::{self, AuditSender};
use gateway::audit::spool::{Spool, SpoolConfig};
use gateway::config::{AuditModeConfig, Config};
use gateway::metrics::Metrics;
use parking_lot::Mutex;
use proto::v1;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Records submitted per timed batch.
const BATCH: u64 = 2_000;

/// A ledger that acknowledges every append at once.
struct AcknowledgingLedger;

type Entries = Pin<Box<dyn Stream<Item = Result<v1::GetEntriesResponse, Status>> + Send>>;
type Checkpoints = Pin<Box<dyn Stream<Item = Result<v1::WatchCheckpointsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl proto::Ledger for AcknowledgingLedger {
    async fn append(
        &self,
        request: Request<v1::AppendRequest>,
    ) -> Result<Response<v1::AppendResponse>, Status> {
        let count = request.into_inner().records.len() as u64;
        let results =
            (0..count).map(|leaf_index| v1::AppendResult { leaf_index, already_present: false }).collect();
        Ok(Response::new(v1::AppendResponse { results, tree_size: count }))
    }
    async fn get_checkpoint(
        &self,
        _: Request<v1::GetCheckpointRequest>,
    ) -> Result<Response<v1::GetCheckpointResponse>, Status> {
        Err(Status::unimplemented("bench ledger"))
    }
    type GetEntriesStream = Entries;
    async fn get_entries(&self, _: Request<v1::GetEntriesRequest>) -> Result<Response<Entries>, Status> {
        Err(Status::unimplemented("bench ledger"))
    }
    async fn get_inclusion_proof(
        &self,
        _: Request<v1::GetInclusionProofRequest>,
    ) -> Result<Response<v1::GetInclusionProofResponse>, Status> {
        Err(Status::unimplemented("bench ledger"))
    }
    async fn get_consistency_proof(
        &self,
        _: Request<v1::GetConsistencyProofRequest>,
    ) -> Result<Response<v1::GetConsistencyProofResponse>, Status> {
        Err(Status::unimplemented("bench ledger"))
    }
    type WatchCheckpointsStream = Checkpoints;
    async fn watch_checkpoints(
        &self,
        _: Request<v1::WatchCheckpointsRequest>,
    ) -> Result<Response<Checkpoints>, Status> {
        Err(Status::unimplemented("bench ledger"))
    }
}

/// Starts the acknowledging ledger and a sender pointed at it.
fn start(runtime: &tokio::runtime::Runtime, spool_dir: &std::path::Path) -> AuditSender {
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(proto::LedgerServer::new(AcknowledgingLedger))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let text = format!(
            r#"
gateway_id = "bench"
upstreams = []
tenants = []
credentials = []
[audit]
ledger_endpoints = ["http://{address}"]
spool_dir = "{}"
"#,
            spool_dir.display()
        );
        let config = Config::from_toml(&text, "bench").expect("config");
        let (sender, tasks) = sender::start(&config.audit, Metrics::new()).await.expect("sender");
        std::mem::forget(tasks);
        sender
    })
}

/// A record as the gateway writes one for a typical chat completion.
fn typical_record() -> Vec<u8> {
    use prost::Message as _;
    v1::AuditRecord {
        record_id: uuid::Uuid::now_v7().hyphenated().to_string(),
        gateway_id: "gw-1".into(),
        tenant: "acme".into(),
        credential_id: "acme-app".into(),
        received_at_unix_nanos: 1_790_000_000_000_000_000,
        finished_at_unix_nanos: 1_790_000_000_100_000_000,
        method: "POST".into(),
        route: "/v1/chat/completions".into(),
        model: "gpt-4o-mini".into(),
        upstream: "openai".into(),
        status_code: 200,
        latency_us: 100_000,
        upstream_latency_us: 99_000,
        usage: Some(v1::TokenUsage { prompt_tokens: 120, completion_tokens: 80, total_tokens: 200 }),
        request_sha256: vec![7; 32],
        response_sha256: vec![9; 32],
        request_bytes: 900,
        response_bytes: 1_400,
        policy: Some(v1::PolicyDecisions { audit_mode: v1::AuditMode::Async.into(), ..Default::default() }),
        analysis: Some(v1::ResponseAnalysis {
            token_count: 80,
            finish_reason: "stop".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Waits until the sender's queue is empty.
fn drain(sender: &AuditSender) {
    while sender.queue_depth() > 0 {
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn percentiles(label: &str, samples: &mut [u64]) {
    samples.sort_unstable();
    let at = |quantile: f64| samples[((samples.len() as f64 - 1.0) * quantile) as usize];
    println!(
        "{label}: {} samples, p50 {} ns, p99 {} ns, p999 {} ns",
        samples.len(),
        at(0.50),
        at(0.99),
        at(0.999)
    );
}

fn handoff(criterion: &mut Criterion) {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let spool_dir = tempfile::tempdir().expect("spool dir");
    let sender = start(&runtime, spool_dir.path());
    let _guard = runtime.enter();
    let gateway_id: Arc<str> = Arc::from("gw-bench");
    let record = typical_record();
    let finish_samples = Arc::new(Mutex::new(Vec::new()));
    let submit_samples = Arc::new(Mutex::new(Vec::new()));

    let mut group = criterion.benchmark_group("handoff");
    group.throughput(criterion::Throughput::Elements(1));
    group.bench_function("finish", |bench| {
        bench.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iterations {
                let batch = BATCH.min(iterations - done);
                let drafts: Vec<_> = (0..batch)
                    .map(|_| {
                        let draft = Draft::begin(&http::Method::POST, gateway_id.clone(), sender.clone());
                        draft.update(|fields| {
                            fields.route = "/v1/chat/completions";
                            fields.model = "gpt-4o-mini".into();
                            fields.request_sha256 = vec![7; 32];
                            fields.request_bytes = 900;
                        });
                        draft
                    })
                    .collect();
                let mut samples = finish_samples.lock();
                for draft in &drafts {
                    let started = Instant::now();
                    let wait = draft.finish(&Outcome {
                        status: 200,
                        refusal: None,
                        response_sha256: &[9; 32],
                        response_bytes: 1_400,
                    });
                    let elapsed = started.elapsed();
                    assert!(wait.is_none(), "async mode waits for nothing");
                    total += elapsed;
                    samples.push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
                }
                drop(samples);
                drop(drafts);
                drain(&sender);
                done += batch;
            }
            total
        });
    });
    group.bench_function("submit", |bench| {
        bench.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iterations {
                let batch = BATCH.min(iterations - done);
                let records: Vec<Vec<u8>> = (0..batch).map(|_| record.clone()).collect();
                let mut samples = submit_samples.lock();
                for record in records {
                    let started = Instant::now();
                    let wait = sender.submit(record, AuditModeConfig::Async, Some(([7; 16], [9; 8])));
                    let elapsed = started.elapsed();
                    assert!(wait.is_none());
                    total += elapsed;
                    samples.push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
                }
                drop(samples);
                drain(&sender);
                done += batch;
            }
            total
        });
    });
    group.finish();

    let mut group = criterion.benchmark_group("baseline");
    group.throughput(criterion::Throughput::Elements(1));
    group.sample_size(20);
    let baseline_dir = tempfile::tempdir().expect("baseline spool dir");
    let (mut spool, _) = Spool::open(SpoolConfig {
        dir: baseline_dir.path().to_owned(),
        segment_bytes_max: 64 * 1024 * 1024,
        spool_bytes_max: 1 << 40,
        record_bytes_max: 16 * 1024,
    })
    .expect("spool");
    group.bench_function("spool_fsync", |bench| {
        bench.iter(|| spool.append(&[record.as_slice()]).expect("append"));
    });
    group.finish();

    percentiles("handoff/finish per record", &mut finish_samples.lock());
    percentiles("handoff/submit per record", &mut submit_samples.lock());
}

criterion_group!(benches, handoff);
criterion_main!(benches);
