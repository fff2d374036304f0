//! The gateway's Prometheus metrics (`aegis_gateway_*`), served on `/metrics`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Latency buckets from 25 µs (a policy stage) to 60 s (a long completion).
const LATENCY_BUCKETS_SECONDS: [f64; 20] = [
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Every metric of the gateway. Clones share the values. Fields are named after their metric
/// without the `aegis_gateway_` prefix.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// From receiving a request to handing its response to the connection, by route and status.
    request_duration_seconds: Family<RequestLabels, Histogram, fn() -> Histogram>,
    /// Time spent in each policy stage before the upstream call.
    stage_duration_seconds: Family<StageLabels, Histogram, fn() -> Histogram>,
    /// From sending a request upstream to its response headers, by upstream.
    upstream_duration_seconds: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    /// Requests refused by the rate limiter, by dimension (`requests`, `tokens`).
    rate_limit_rejections_total: Family<DimensionLabels, Counter>,
    /// Streaming responses open now.
    pub streams_open: Gauge,
    /// Connections the smuggling guard closed with 400.
    pub smuggling_refusals_total: Counter,
    /// WAF rule matches by action (`block`, `redact`, `log`, and `shadow` for shadow mode).
    waf_decisions_total: Family<ActionLabels, Counter>,
    /// Bodies the WAF could not inspect (over budget, unreadable).
    pub waf_errors_total: Counter,
    pub audit_records_submitted_total: Counter,
    /// Records the ledger acknowledged (directly or from the spool).
    pub audit_records_acknowledged_total: Counter,
    /// Records written to the spool.
    pub audit_records_spooled_total: Counter,
    /// Records lost. Must stay 0; it can only grow for fail-open tenants when the spool is full.
    pub audit_records_dropped_total: Counter,
    /// Records the ledger refused for good, kept in the dead-letter directory.
    pub audit_records_rejected_total: Counter,
    /// Append calls to the ledger that failed and were retried or spooled.
    pub audit_append_failures_total: Counter,
    /// Records per Append batch.
    pub audit_batch_records: Histogram,
    /// Records waiting in memory for the sender.
    pub audit_queue_depth: Gauge<u64, AtomicU64>,
    pub audit_spool_bytes: Gauge,
    pub audit_spool_records: Gauge,
    /// OpenTelemetry GenAI client metrics, in Prometheus form: tokens per call by type.
    gen_ai_client_token_usage: Family<GenAiTokenLabels, Histogram, fn() -> Histogram>,
    /// Duration of upstream calls (to the end of the response or stream).
    gen_ai_client_operation_duration_seconds: Family<GenAiLabels, Histogram, fn() -> Histogram>,
    /// Time from sending a streamed request to its first chunk.
    gen_ai_client_time_to_first_chunk_seconds: Family<GenAiLabels, Histogram, fn() -> Histogram>,
}

/// The GenAI metrics' attributes, as Prometheus labels. The model is left out: clients choose
/// it, and wildcard upstreams accept any name (unbounded cardinality); the upstream stands in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GenAiLabels {
    pub gen_ai_operation_name: &'static str,
    pub gen_ai_provider_name: &'static str,
    pub aegis_upstream: String,
    /// Empty on success.
    pub error_type: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GenAiTokenLabels {
    gen_ai_operation_name: &'static str,
    gen_ai_provider_name: &'static str,
    aegis_upstream: String,
    gen_ai_token_type: &'static str,
}

/// The semantic conventions' buckets for `gen_ai.client.token.usage`.
fn token_histogram() -> Histogram {
    Histogram::new([
        1.0,
        4.0,
        16.0,
        64.0,
        256.0,
        1024.0,
        4096.0,
        16384.0,
        65536.0,
        262_144.0,
        1_048_576.0,
        4_194_304.0,
        16_777_216.0,
        67_108_864.0,
    ])
}

/// The semantic conventions' buckets for `gen_ai.client.operation.duration`, from 10 ms.
fn operation_histogram() -> Histogram {
    Histogram::new([0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92])
}

/// A policy stage, for `stage_duration_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    Limits,
    Auth,
    Waf,
    RateLimit,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DimensionLabels {
    dimension: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_SECONDS)
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aegis_gateway");
        let request_duration_seconds = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let stage_duration_seconds = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let upstream_duration_seconds = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let metrics = Self {
            registry: Arc::new(Registry::default()),
            request_duration_seconds,
            stage_duration_seconds,
            upstream_duration_seconds,
            rate_limit_rejections_total: Family::default(),
            streams_open: Gauge::default(),
            smuggling_refusals_total: Counter::default(),
            waf_decisions_total: Family::default(),
            waf_errors_total: Counter::default(),
            audit_records_submitted_total: Counter::default(),
            audit_records_acknowledged_total: Counter::default(),
            audit_records_spooled_total: Counter::default(),
            audit_records_dropped_total: Counter::default(),
            audit_records_rejected_total: Counter::default(),
            audit_append_failures_total: Counter::default(),
            audit_batch_records: Histogram::new([
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ]),
            audit_queue_depth: Gauge::default(),
            audit_spool_bytes: Gauge::default(),
            audit_spool_records: Gauge::default(),
            gen_ai_client_token_usage: Family::new_with_constructor(token_histogram as fn() -> Histogram),
            gen_ai_client_operation_duration_seconds: Family::new_with_constructor(
                operation_histogram as fn() -> Histogram,
            ),
            gen_ai_client_time_to_first_chunk_seconds: Family::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            ),
        };
        registry.register_with_unit(
            "request_duration",
            "Time from receiving a request to handing over its response, by route and status",
            Unit::Seconds,
            metrics.request_duration_seconds.clone(),
        );
        registry.register_with_unit(
            "stage_duration",
            "Time spent in each policy stage",
            Unit::Seconds,
            metrics.stage_duration_seconds.clone(),
        );
        registry.register_with_unit(
            "upstream_duration",
            "Time from sending a request upstream to receiving its response headers",
            Unit::Seconds,
            metrics.upstream_duration_seconds.clone(),
        );
        registry.register(
            "rate_limit_rejections",
            "Requests refused by the rate limiter",
            metrics.rate_limit_rejections_total.clone(),
        );
        registry.register("streams_open", "Streaming responses open now", metrics.streams_open.clone());
        registry.register("waf_decisions", "WAF rule matches by action", metrics.waf_decisions_total.clone());
        registry.register("waf_errors", "Bodies the WAF could not inspect", metrics.waf_errors_total.clone());
        registry.register(
            "smuggling_refusals",
            "Requests the smuggling guard refused (400, connection closed)",
            metrics.smuggling_refusals_total.clone(),
        );
        for (name, help, counter) in [
            (
                "audit_records_submitted",
                "Audit records handed to the sender",
                &metrics.audit_records_submitted_total,
            ),
            (
                "audit_records_acknowledged",
                "Audit records the ledger acknowledged",
                &metrics.audit_records_acknowledged_total,
            ),
            (
                "audit_records_spooled",
                "Audit records written to the on-disk spool",
                &metrics.audit_records_spooled_total,
            ),
            (
                "audit_records_dropped",
                "Audit records lost (must stay 0)",
                &metrics.audit_records_dropped_total,
            ),
            (
                "audit_records_rejected",
                "Audit records the ledger refused, kept in the dead-letter directory",
                &metrics.audit_records_rejected_total,
            ),
            (
                "audit_append_failures",
                "Failed Append calls to the ledger",
                &metrics.audit_append_failures_total,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "audit_batch_records",
            "Records per Append batch",
            metrics.audit_batch_records.clone(),
        );
        registry.register(
            "audit_queue_depth",
            "Audit records waiting in memory for the sender",
            metrics.audit_queue_depth.clone(),
        );
        registry.register_with_unit(
            "audit_spool",
            "Bytes of audit records waiting in the spool",
            Unit::Bytes,
            metrics.audit_spool_bytes.clone(),
        );
        registry.register(
            "audit_spool_records",
            "Audit records waiting in the spool",
            metrics.audit_spool_records.clone(),
        );
        registry.register(
            "gen_ai_client_token_usage",
            "Tokens used per upstream call, by token type (OpenTelemetry gen_ai.client.token.usage)",
            metrics.gen_ai_client_token_usage.clone(),
        );
        registry.register_with_unit(
            "gen_ai_client_operation_duration",
            "Duration of upstream calls to the end of the response (OpenTelemetry gen_ai.client.operation.duration)",
            Unit::Seconds,
            metrics.gen_ai_client_operation_duration_seconds.clone(),
        );
        registry.register_with_unit(
            "gen_ai_client_time_to_first_chunk",
            "Time from sending a streamed request upstream to its first chunk",
            Unit::Seconds,
            metrics.gen_ai_client_time_to_first_chunk_seconds.clone(),
        );
        // Counters a dashboard rates are exported at 0 from the start, not from their first event.
        for dimension in ["requests", "tokens"] {
            drop(metrics.rate_limit_rejections_total.get_or_create(&DimensionLabels { dimension }));
        }
        for action in ["block", "redact", "log", "shadow"] {
            drop(metrics.waf_decisions_total.get_or_create(&ActionLabels { action }));
        }
        Self { registry: Arc::new(registry), ..metrics }
    }

    /// Records one finished upstream call: its duration and, when reported, its token usage.
    pub fn observe_gen_ai(&self, labels: &GenAiLabels, seconds: f64, usage: Option<(u64, u64)>) {
        self.gen_ai_client_operation_duration_seconds.get_or_create(labels).observe(seconds);
        if let Some((input, output)) = usage {
            for (token_type, tokens) in [("input", input), ("output", output)] {
                let token_labels = GenAiTokenLabels {
                    gen_ai_operation_name: labels.gen_ai_operation_name,
                    gen_ai_provider_name: labels.gen_ai_provider_name,
                    aegis_upstream: labels.aegis_upstream.clone(),
                    gen_ai_token_type: token_type,
                };
                #[allow(clippy::cast_precision_loss, reason = "token counts are far below 2^52")]
                self.gen_ai_client_token_usage.get_or_create(&token_labels).observe(tokens as f64);
            }
        }
    }

    /// Records the time to the first chunk of a stream.
    pub fn observe_first_chunk(&self, labels: &GenAiLabels, seconds: f64) {
        self.gen_ai_client_time_to_first_chunk_seconds.get_or_create(labels).observe(seconds);
    }

    pub fn observe_request(&self, route: &'static str, status: u16, seconds: f64) {
        self.request_duration_seconds.get_or_create(&RequestLabels { route, status }).observe(seconds);
    }

    pub fn observe_stage(&self, stage: Stage, seconds: f64) {
        let stage = match stage {
            Stage::Limits => "limits",
            Stage::Auth => "auth",
            Stage::Waf => "waf",
            Stage::RateLimit => "rate_limit",
        };
        self.stage_duration_seconds.get_or_create(&StageLabels { stage }).observe(seconds);
    }

    /// The upstream-latency histogram of one upstream, fetched once at start-up so the hot path
    /// builds no label.
    pub fn upstream_histogram(&self, upstream: &str) -> Histogram {
        self.upstream_duration_seconds
            .get_or_create(&UpstreamLabels { upstream: upstream.to_owned() })
            .clone()
    }

    pub fn waf_decision(&self, action: &'static str) {
        self.waf_decisions_total.get_or_create(&ActionLabels { action }).inc();
    }

    pub fn rate_limited(&self, dimension: &'static str) {
        self.rate_limit_rejections_total.get_or_create(&DimensionLabels { dimension }).inc();
    }

    /// The metrics in OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
