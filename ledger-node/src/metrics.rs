//! The node's Prometheus metrics, its health flag, and the small HTTP server on the metrics port
//! that exposes both (`GET /metrics`, `GET /healthz`).

use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The content type of `/metrics`. prometheus-client encodes the OpenMetrics 1.0 text format
/// (`# EOF` terminator, `# UNIT` lines, `_total` counters), so that is what we declare; Prometheus
/// asks for and parses it natively. Labelling it as the 0.0.4 text format would misdescribe it.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets from 50 µs (an fsync on NVMe, a proof from cache) to 10 s (a stalled commit).
const LATENCY_BUCKETS_SECONDS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

/// The ledger node's metrics, all prefixed `aegis_ledger_`. Cloning is cheap and every clone
/// updates the same values. Each field is named after its metric without the prefix.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    health: Health,
    /// `aegis_ledger_append_latency_seconds`: from an Append request's arrival to its
    /// acknowledgement (committed on a quorum and applied), on the node that received it.
    pub append_latency_seconds: Histogram,
    /// `aegis_ledger_append_records_total`: records acknowledged to Append callers.
    pub append_records_total: Counter,
    /// `aegis_ledger_append_duplicates_total`: acknowledged records whose id was already in the
    /// log (idempotent retries); these appended nothing.
    pub append_duplicates_total: Counter,
    /// `aegis_ledger_entry_records`: records per Raft entry, i.e. how well group commit coalesces.
    pub entry_records: Histogram,
    /// `aegis_ledger_tree_size`: leaves in this node's MMR (applied).
    pub tree_size: Gauge<u64, AtomicU64>,
    /// `aegis_ledger_published_size`: tree size of the latest published (quorum-signed) checkpoint.
    pub published_size: Gauge<u64, AtomicU64>,
    /// `aegis_ledger_applied_index`: index of the last Raft log entry applied to the MMR.
    pub applied_index: Gauge<u64, AtomicU64>,
    /// `aegis_ledger_leader_changes_total`: times this node saw the leader change.
    pub leader_changes_total: Counter,
    /// `aegis_ledger_is_leader`: 1 while this node is the Raft leader, else 0.
    pub is_leader: Gauge,
    /// `aegis_ledger_log_flush_seconds`: duration of one durable write (flush + fsync) of the Raft log.
    pub log_flush_seconds: Histogram,
    proof_latency_seconds: Family<ProofLabels, Histogram, fn() -> Histogram>,
    requests_rejected_total: Family<RejectLabels, Counter>,
}

/// Whether the node may serve: healthy until something sets it unhealthy, e.g. the storage
/// layer when the root recomputed at start-up differs from the stored one. Clones share the flag.
/// It drives `/healthz` and the `aegis_ledger_healthy` gauge.
#[derive(Clone, Debug)]
pub struct Health {
    /// `None` while healthy; the first reason given to `set_unhealthy` otherwise.
    reason: Arc<Mutex<Option<String>>>,
    /// `aegis_ledger_healthy`, kept equal to `is_healthy()`.
    gauge: Gauge,
}

/// The `kind` label of `aegis_ledger_proof_latency_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProofKind {
    Inclusion,
    Consistency,
}

/// The `reason` label of `aegis_ledger_requests_rejected_total`: why a request was refused
/// before it changed anything. Mostly limits from `config::LimitsConfig` and `GroupCommitConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// A record over `limits.record_bytes_max`.
    RecordTooLarge,
    /// An Append over `limits.append_records_max` records.
    TooManyRecords,
    /// An Append over `limits.append_bytes_max` bytes.
    RequestTooLarge,
    /// Bytes that are not a valid audit record.
    MalformedRecord,
    /// `limits.concurrent_appends_max` Append calls already in flight.
    TooManyAppends,
    /// `group_commit.queue_records_max` records already waiting.
    QueueFull,
    /// A GetEntries range over `limits.entries_per_request_max`.
    TooManyEntries,
    /// `limits.watch_subscribers_max` WatchCheckpoints streams already open.
    TooManyWatchers,
    /// Other invalid arguments (ranges beyond the tree, unknown record ids, ...).
    InvalidArgument,
    /// A write reached a node that is not the leader and could not forward it.
    NotLeader,
    /// The node is unhealthy and refuses to serve.
    Unhealthy,
    /// An Admin call without a valid token, or not from loopback.
    Unauthenticated,
}

/// Serves `GET /metrics` and `GET /healthz` on `listener` until `shutdown` completes, then
/// finishes the requests in progress. Bind the listener yourself (port 0 in tests).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(get_healthz))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: try GET /metrics or GET /healthz\n") })
        .with_state(metrics);
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

impl Metrics {
    /// Registers every metric, healthy and at zero.
    pub fn new() -> Self {
        let latency = || Histogram::new(LATENCY_BUCKETS_SECONDS);
        let mut metrics = Self {
            registry: Arc::default(),
            health: Health::default(),
            append_latency_seconds: latency(),
            append_records_total: Counter::default(),
            append_duplicates_total: Counter::default(),
            // 1, 2, 4, ... 65536 records.
            entry_records: Histogram::new(exponential_buckets(1.0, 2.0, 17)),
            tree_size: Gauge::default(),
            published_size: Gauge::default(),
            applied_index: Gauge::default(),
            leader_changes_total: Counter::default(),
            is_leader: Gauge::default(),
            log_flush_seconds: latency(),
            proof_latency_seconds: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS_SECONDS)),
            requests_rejected_total: Family::default(),
        };
        let mut registry = Registry::with_prefix("aegis_ledger");
        metrics.register(&mut registry);
        metrics.registry = Arc::new(registry);
        metrics
    }

    /// `aegis_ledger_proof_latency_seconds{kind}`: time to build one proof of `kind`.
    pub fn proof_latency_seconds(&self, kind: ProofKind) -> Histogram {
        self.proof_latency_seconds.get_or_create_owned(&ProofLabels { kind })
    }

    /// `aegis_ledger_requests_rejected_total{reason}`: requests refused for `reason`.
    pub fn requests_rejected_total(&self, reason: RejectReason) -> Counter {
        self.requests_rejected_total.get_or_create_owned(&RejectLabels { reason })
    }

    /// The node's health flag, shared with `/healthz`. Clone it into whatever may find the node unfit.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The metrics in the OpenMetrics text format ([`METRICS_CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            // Writing to a String cannot fail; an encoder error is a bug in a metric.
            let _ = writeln!(text, "# encoding failed: {error}");
        }
        text
    }
    fn register(&self, registry: &mut Registry) {
        // Counter names omit `_total` and timing names omit `_seconds`: the encoder appends them.
        registry.register_with_unit(
            "append_latency",
            "Time from an Append request's arrival to its acknowledgement",
            Unit::Seconds,
            self.append_latency_seconds.clone(),
        );
        registry.register(
            "append_records",
            "Records acknowledged to Append callers",
            self.append_records_total.clone(),
        );
        registry.register(
            "append_duplicates",
            "Acknowledged records that were already in the log (idempotent retries)",
            self.append_duplicates_total.clone(),
        );
        registry.register(
            "entry_records",
            "Records per Raft entry (group-commit efficiency)",
            self.entry_records.clone(),
        );
        registry.register("tree_size", "Leaves in this node's tree", self.tree_size.clone());
        registry.register(
            "published_size",
            "Tree size of the latest published checkpoint",
            self.published_size.clone(),
        );
        registry.register(
            "applied_index",
            "Index of the last applied Raft log entry",
            self.applied_index.clone(),
        );
        registry.register(
            "leader_changes",
            "Times this node saw the Raft leader change",
            self.leader_changes_total.clone(),
        );
        registry.register("is_leader", "1 while this node is the Raft leader", self.is_leader.clone());
        registry.register_with_unit(
            "proof_latency",
            "Time to build an inclusion or consistency proof",
            Unit::Seconds,
            self.proof_latency_seconds.clone(),
        );
        registry.register(
            "requests_rejected",
            "Requests refused before they changed anything, by reason",
            self.requests_rejected_total.clone(),
        );
        registry.register("healthy", "1 while the node is healthy and serving", self.health.gauge.clone());
        registry.register_with_unit(
            "log_flush",
            "Time of one durable write (flush and fsync) of the Raft log",
            Unit::Seconds,
            self.log_flush_seconds.clone(),
        );
        // Every labelled series exists from the start, so rates over them work from the first scrape.
        for kind in ProofKind::ALL {
            drop(self.proof_latency_seconds.get_or_create(&ProofLabels { kind }));
        }
        for reason in RejectReason::ALL {
            drop(self.requests_rejected_total.get_or_create(&RejectLabels { reason }));
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for Health {
    fn default() -> Self {
        let gauge = Gauge::default();
        gauge.set(1);
        Self { reason: Arc::default(), gauge }
    }
}

impl Health {
    /// Marks the node unhealthy for `reason`. The first reason is kept: later failures are
    /// usually consequences of it. There is no way back; restart the node once it is fixed.
    pub fn set_unhealthy(&self, reason: impl Into<String>) {
        let mut current = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        if current.is_none() {
            *current = Some(reason.into());
        }
        self.gauge.set(0);
    }

    pub fn is_healthy(&self) -> bool {
        self.reason().is_none()
    }

    /// Why the node is unhealthy, `None` while it is healthy.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl ProofKind {
    pub const ALL: [Self; 2] = [Self::Inclusion, Self::Consistency];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inclusion => "inclusion",
            Self::Consistency => "consistency",
        }
    }
}

impl RejectReason {
    pub const ALL: [Self; 12] = [
        Self::RecordTooLarge,
        Self::TooManyRecords,
        Self::RequestTooLarge,
        Self::MalformedRecord,
        Self::TooManyAppends,
        Self::QueueFull,
        Self::TooManyEntries,
        Self::TooManyWatchers,
        Self::InvalidArgument,
        Self::NotLeader,
        Self::Unhealthy,
        Self::Unauthenticated,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RecordTooLarge => "record_too_large",
            Self::TooManyRecords => "too_many_records",
            Self::RequestTooLarge => "request_too_large",
            Self::MalformedRecord => "malformed_record",
            Self::TooManyAppends => "too_many_appends",
            Self::QueueFull => "queue_full",
            Self::TooManyEntries => "too_many_entries",
            Self::TooManyWatchers => "too_many_watchers",
            Self::InvalidArgument => "invalid_argument",
            Self::NotLeader => "not_leader",
            Self::Unhealthy => "unhealthy",
            Self::Unauthenticated => "unauthenticated",
        }
    }
}

impl EncodeLabelValue for ProofKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for RejectReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProofLabels {
    kind: ProofKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectLabels {
    reason: RejectReason,
}

/// OpenMetrics for Prometheus (which asks for it), the classic text format for anyone else.
async fn get_metrics(State(metrics): State<Metrics>, headers: axum::http::HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|value| value.to_str().ok());
    let (content_type, body) = telemetry::exposition::negotiate(accept, metrics.encode());
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn get_healthz(State(metrics): State<Metrics>) -> Response {
    match metrics.health.reason() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {reason}\n")).into_response(),
    }
}
