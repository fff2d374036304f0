//! `aegis-ledger-loadgen`: drives a ledger cluster over gRPC, as gateways and auditors would
//! (cluster administration is `aegisctl`'s).
//!
//! - `append`: appends audit records of a given size, either as fast as the cluster takes
//!   them (closed loop) or at an offered rate (open loop, latency measured from the scheduled
//!   send time so a slow cluster cannot hide its queueing), and reports records/s and
//!   acknowledgement latency percentiles.
//! - `proofs`: fetches inclusion proofs of random leaves against the latest published
//!   checkpoint, verifies a sample, and reports proofs/s and latency percentiles.

// A command-line tool: its output is its interface, and its statistics are floating point.
#![allow(clippy::print_stdout, clippy::cast_possible_truncation)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use prost::Message as _;
use proto::v1;
use tokio::sync::{Mutex, Semaphore};
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(name = "aegis-ledger-loadgen", about = "Load generator for an Aegis ledger cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Append records and report throughput and acknowledgement latency.
    Append {
        /// Client addresses (host:port) to spread requests over; followers forward to the leader.
        #[arg(long, value_delimiter = ',', required = true)]
        targets: Vec<String>,
        /// Records to append in total.
        #[arg(long, default_value_t = 200_000)]
        records: u64,
        /// Encoded size of each AuditRecord, in bytes (a typical audit record is ~512).
        #[arg(long, default_value_t = 512)]
        record_bytes: usize,
        /// Records per Append call (a gateway's audit batch).
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Append calls in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Offered load in records/s (open loop); omit to go as fast as the cluster allows.
        #[arg(long)]
        rate: Option<u64>,
    },
    /// Fetch and verify inclusion proofs of random leaves.
    Proofs {
        #[arg(long, value_delimiter = ',', required = true)]
        targets: Vec<String>,
        #[arg(long, default_value_t = 100_000)]
        requests: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// HTTP/2 connections to open to each target. One connection is read and written by
        /// one task on each side, so a single one can serialize a fast server on one core.
        #[arg(long, default_value_t = 1)]
        connections_per_target: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Append { targets, records, record_bytes, batch, concurrency, rate } => {
            append(&targets, records, record_bytes, batch, concurrency, rate).await
        }
        Command::Proofs { targets, requests, concurrency, connections_per_target } => {
            proofs(&targets, requests, concurrency, connections_per_target).await
        }
    }
}

fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect_lazy())
}

/// Encoded AuditRecords of about `size` bytes, with fresh UUIDv7 ids.
struct RecordFactory {
    size: usize,
    counter: AtomicU64,
    /// Distinguishes runs, so a second run appends new records instead of duplicates.
    run: u64,
}

impl RecordFactory {
    fn record(&self) -> Vec<u8> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut random = [0u8; 10];
        random[..2].copy_from_slice(&self.run.to_be_bytes()[6..]);
        random[2..].copy_from_slice(&n.to_be_bytes());
        let millis = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(0);
        let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
        let mut record = v1::AuditRecord {
            record_id: id.hyphenated().to_string(),
            gateway_id: "loadgen".to_owned(),
            tenant: "bench".to_owned(),
            credential_id: "cred-bench".to_owned(),
            method: "POST".to_owned(),
            route: "/v1/chat/completions".to_owned(),
            model: "mock-1".to_owned(),
            upstream: "mock".to_owned(),
            status_code: 200,
            request_sha256: vec![7; 32],
            response_sha256: vec![9; 32],
            ..Default::default()
        };
        let padding = self.size.saturating_sub(record.encoded_len() + 3);
        record.gateway_id.push_str(&"x".repeat(padding));
        record.encode_to_vec()
    }
}

async fn append(
    targets: &[String],
    records: u64,
    record_bytes: usize,
    batch: usize,
    concurrency: usize,
    rate: Option<u64>,
) -> anyhow::Result<()> {
    let clients: Vec<_> =
        targets.iter().map(|addr| channel(addr).map(proto::LedgerClient::new)).collect::<Result<_, _>>()?;
    let run = u64::from(std::process::id()) ^ u64::try_from(Instant::now().elapsed().as_nanos()).unwrap_or(0);
    let factory = Arc::new(RecordFactory { size: record_bytes, counter: AtomicU64::new(0), run });
    let calls = records.div_ceil(batch as u64);
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(usize::try_from(calls).unwrap_or(0))));
    let failures = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(Semaphore::new(concurrency));
    let period = rate.map(|rate| Duration::from_secs_f64(batch as f64 / rate as f64));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for call in 0..calls {
        // Open loop: the call is due at its slot, and its latency counts from there.
        let due = period.map_or_else(Instant::now, |period| started + period.mul_f64(call as f64));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let permit = Arc::clone(&in_flight).acquire_owned().await?;
        let mut client = clients[usize::try_from(call).unwrap_or(0) % clients.len()].clone();
        let (factory, latencies, failures) = (factory.clone(), latencies.clone(), failures.clone());
        tasks.spawn(async move {
            let request = v1::AppendRequest { records: (0..batch).map(|_| factory.record()).collect() };
            match client.append(request).await {
                Ok(_) => latencies.lock().await.push(due.elapsed()),
                Err(status) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("append failed: {} {}", status.code(), status.message());
                }
            }
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let latencies = latencies.lock().await;
    let acknowledged = latencies.len() as u64 * batch as u64;
    println!(
        "append: {acknowledged} records of {record_bytes} B in {:.2} s = {:.0} records/s ({} calls of {batch}, concurrency {concurrency}, offered {}); failed calls: {}",
        elapsed.as_secs_f64(),
        acknowledged as f64 / elapsed.as_secs_f64(),
        latencies.len(),
        rate.map_or_else(|| "max".to_owned(), |rate| format!("{rate}/s")),
        failures.load(Ordering::Relaxed)
    );
    print_percentiles("ack latency", &latencies);
    Ok(())
}

async fn proofs(
    targets: &[String],
    requests: u64,
    concurrency: usize,
    connections_per_target: usize,
) -> anyhow::Result<()> {
    // Targets interleaved, so consecutive requests still go round the targets.
    let clients: Vec<_> = (0..connections_per_target.max(1))
        .flat_map(|_| targets.iter())
        .map(|addr| channel(addr).map(proto::LedgerClient::new))
        .collect::<Result<_, _>>()?;
    let checkpoint = clients[0]
        .clone()
        .get_checkpoint(v1::GetCheckpointRequest { tree_size: None })
        .await?
        .into_inner()
        .checkpoint
        .context("no checkpoint")?;
    let size = checkpoint.tree_size;
    let root = mmr::Hash::try_from(checkpoint.root.as_slice()).context("root")?;
    println!("proofs: against the published checkpoint of {size} leaves");
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let in_flight = Arc::new(Semaphore::new(concurrency));
    let next = Arc::new(AtomicU64::new(0x9e37_79b9_7f4a_7c15));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for request in 0..requests {
        let permit = Arc::clone(&in_flight).acquire_owned().await?;
        let mut client = clients[usize::try_from(request).unwrap_or(0) % clients.len()].clone();
        let (latencies, next) = (latencies.clone(), next.clone());
        tasks.spawn(async move {
            // xorshift over a shared state: cheap, spread over the whole tree.
            let mut x = next.fetch_add(0x9e37_79b9, Ordering::Relaxed);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let index = x % size;
            let sent = Instant::now();
            let response = client
                .get_inclusion_proof(v1::GetInclusionProofRequest {
                    leaf: Some(v1::get_inclusion_proof_request::Leaf::LeafIndex(index)),
                    tree_size: Some(size),
                })
                .await;
            let elapsed = sent.elapsed();
            drop(permit);
            let response = response.map_err(|status| anyhow::anyhow!("{status}"))?.into_inner();
            if request % 100 == 0 {
                let proof = mmr::InclusionProof::try_from(&response)?;
                proof.verify(&mmr::leaf_hash(&response.record), &root)?;
            }
            latencies.lock().await.push(elapsed);
            Ok::<_, anyhow::Error>(())
        });
    }
    let mut failures = 0;
    while let Some(result) = tasks.join_next().await {
        if !matches!(result, Ok(Ok(()))) {
            failures += 1;
        }
    }
    let elapsed = started.elapsed();
    let latencies = latencies.lock().await;
    println!(
        "proofs: {} in {:.2} s = {:.0} proofs/s (concurrency {concurrency}, {} connections, 1 in 100 verified); failed: {failures}",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        clients.len()
    );
    print_percentiles("proof latency", &latencies);
    Ok(())
}

fn print_percentiles(what: &str, latencies: &[Duration]) {
    if latencies.is_empty() {
        println!("{what}: no samples");
        return;
    }
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    // Nearest-rank percentile: index ⌈q·n⌉ − 1.
    let at = |quantile: f64| {
        let rank = (sorted.len() as f64 * quantile).ceil() as u64;
        sorted[usize::try_from(rank.saturating_sub(1)).unwrap_or(0).min(sorted.len() - 1)]
    };
    println!(
        "{what}: p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(0.999).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    );
}
