//! OpenTelemetry trace export (OTLP over gRPC or HTTP/protobuf) and W3C trace-context propagation
//! for Aegis, and Prometheus exposition-format negotiation ([`exposition`]).
//!
//! # What this crate does
//!
//! * [`init`] builds an OpenTelemetry tracer provider that exports spans over OTLP (gRPC or
//!   HTTP/protobuf, see [`OtlpProtocol`]) through a bounded [`BatchSpanProcessor`] and returns a
//!   `tracing_subscriber` layer that turns `tracing` spans into OpenTelemetry spans. It does
//!   **not** install a global subscriber: the caller composes the layer with its own fmt/log
//!   layers. When no endpoint is configured, no layer is returned at all (`None` is a no-op
//!   layer), so tracing export costs nothing.
//! * [`extract_http`] / [`inject_http`] and [`extract_tonic`] / [`inject_tonic`] (plus
//!   [`TraceContextInterceptor`] and [`set_parent_from_tonic`]) carry W3C `traceparent` /
//!   `tracestate` across HTTP and gRPC hops.
//! * [`current_trace_ids`] / [`current_traceparent`] expose the current span's ids, e.g. to stamp
//!   them into an audit record or a response header.
//! * [`add_links`] attaches OpenTelemetry span links (e.g. a batch span linked to every request span
//!   it carries).
//! * [`export_finished`] / [`export_finished_root`] export a [`FinishedSpan`]: work measured
//!   outside any `tracing` span (the gateway's smuggling guard, the ledger's Raft write), with
//!   its own start and end times; [`set_start_time`] moves a span's start back to when its work
//!   began; [`exporting`] says whether any of this is on (see [`finished`]).
//!
//! # Composing the layer
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Inside the Tokio runtime (the exporter's connections run there).
//! let config = telemetry::TracingConfig::from_env("aegis-gateway")?;
//! let (otel_layer, guard) = telemetry::init(&config)?;
//! let fmt_layer = tracing_subscriber::fmt::layer();
//! tracing_subscriber::registry()
//!     .with(otel_layer) // `None` when no OTLP endpoint is configured: a no-op.
//!     .with(fmt_layer)
//!     .with(tracing_subscriber::EnvFilter::from_default_env())
//!     .init();
//!
//! // ... run the service ...
//!
//! // Flushes what is queued and shuts the exporter down, bounded by `config.shutdown_timeout`.
//! // This blocks the calling thread: call it outside async code, or from `spawn_blocking`.
//! tokio::task::spawn_blocking(move || guard.shutdown()).await??;
//! # Ok(())
//! # }
//! ```
//!
//! # Environment variables
//!
//! Read by [`TracingConfig::from_env`] (this crate):
//! `OTEL_SDK_DISABLED`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, the default, or
//! `http/protobuf`; `http/json` and anything else are an [`Error::InvalidEnv`]), `OTEL_SERVICE_NAME`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` (parsed strictly: a typo is an error at start-up,
//! where the SDK would silently fall back to `parentbased_always_on`).
//!
//! The endpoint follows the OTLP exporter specification: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
//! used as is; `OTEL_EXPORTER_OTLP_ENDPOINT` is used as is for gRPC and, for `http/protobuf`, is a
//! base URL to which `/v1/traces` is appended (`http://collector:4318` and `http://collector:4318/`
//! both give `http://collector:4318/v1/traces`). Neither set: export is off, whatever the protocol.
//!
//! Read by the OpenTelemetry crates themselves (this crate does not override them unless the
//! corresponding [`TracingConfig`] field is `Some`):
//! * `OTEL_RESOURCE_ATTRIBUTES`: parsed by the SDK's `EnvResourceDetector`, called from
//!   [`TracingConfig::from_env`]; values are not percent-decoded by the SDK.
//! * `OTEL_BSP_MAX_QUEUE_SIZE` (default 2048), `OTEL_BSP_SCHEDULE_DELAY` (5000 ms),
//!   `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512): read by the SDK's `BatchConfigBuilder`.
//!   `OTEL_BSP_EXPORT_TIMEOUT` is ignored by the thread-based batch processor; the export deadline is
//!   the exporter's timeout below.
//! * `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` / `OTEL_EXPORTER_OTLP_TIMEOUT` (default 10 s),
//!   `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`, `OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION` (needs the
//!   `gzip-*`/`zstd-*` features, not enabled): read by `opentelemetry-otlp`'s exporters (for
//!   `http/protobuf`, [`init`] resolves the timeout the same way, to give it to the HTTP client
//!   too). `OTEL_EXPORTER_OTLP_[TRACES_]INSECURE`: read by the gRPC exporter only.
//! * `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`, `OTEL_SPAN_EVENT_COUNT_LIMIT`, `OTEL_SPAN_LINK_COUNT_LIMIT`
//!   (default 128 links per span): read by the SDK's trace `Config`.
//!
//! # Runtime requirements
//!
//! [`init`] with an endpoint must run inside a Tokio runtime: the lazily connecting gRPC channel
//! spawns its worker task there, and the HTTP exporter's requests (hyper, which needs Tokio's
//! reactor and timers) are spawned onto it from the batch processor's thread. Use the
//! multi-threaded runtime, because flush and shutdown block the calling thread while the export
//! itself needs the runtime to make progress. An `https://` endpoint needs TLS features of
//! `opentelemetry-otlp` (e.g. `tls-ring`) or an HTTP client with TLS, not enabled here: [`init`]
//! refuses it.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod exposition;
pub mod finished;
pub mod subscriber;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::Key;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{Bytes, HttpClient, HttpError};
use opentelemetry_otlp::{
    ExporterBuildError, OTEL_EXPORTER_OTLP_TIMEOUT_DEFAULT, Protocol, SpanExporter, WithExportConfig,
    WithHttpConfig,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::{EnvResourceDetector, ResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{Filtered, LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;

pub use finished::{FinishedSpan, export_finished, export_finished_root, exporting, set_start_time};
pub use opentelemetry::trace::SpanKind;
pub use opentelemetry::{Context, KeyValue};
pub use tracing_opentelemetry::SetParentError;

/// The OpenTelemetry layer returned by [`init`]: `tracing-opentelemetry`'s layer behind a per-layer
/// filter that keeps the exporter's own transport stack (h2, hyper, tonic, tower, opentelemetry)
/// out of the exported spans, so exporting never produces more spans to export.
pub type OtelLayer<S> = Filtered<OpenTelemetryLayer<S, SdkTracer>, Targets, S>;

/// Instrumentation scope name given to the tracer.
const TRACER_NAME: &str = "aegis";

/// Default bound on [`TelemetryGuard::shutdown`] and on the guard's `Drop`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors from configuring or shutting down trace export.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An environment variable has a value that cannot be used.
    #[error("invalid {var}={value:?}: {reason}")]
    InvalidEnv {
        /// The variable that was read.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// [`init`] was called with an endpoint outside a Tokio runtime.
    #[error("OTLP trace export must be initialised inside a Tokio runtime")]
    NoTokioRuntime,
    /// The OTLP exporter could not be built (bad endpoint URI, https without TLS, ...).
    #[error("building the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Flushing or shutting down the tracer provider failed or timed out.
    #[error("OpenTelemetry SDK: {0}")]
    Sdk(#[from] opentelemetry_sdk::error::OTelSdkError),
}

/// Head sampler, as named by `OTEL_TRACES_SAMPLER`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum SamplerConfig {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio`, with the ratio in `[0, 1]`.
    TraceIdRatio(f64),
    /// `parentbased_always_on` (the specification's default).
    #[default]
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio`, with the ratio in `[0, 1]`.
    ParentBasedTraceIdRatio(f64),
}

impl SamplerConfig {
    /// Parses `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` values. The argument is only used by
    /// the ratio samplers; when it is absent they sample everything (ratio 1.0), as specified.
    pub fn parse(name: &str, arg: Option<&str>) -> Result<Self, Error> {
        let ratio = || -> Result<f64, Error> {
            let Some(arg) = arg.map(str::trim).filter(|a| !a.is_empty()) else {
                return Ok(1.0);
            };
            let invalid = || Error::InvalidEnv {
                var: "OTEL_TRACES_SAMPLER_ARG",
                value: arg.to_owned(),
                reason: "expected a number between 0 and 1",
            };
            let ratio: f64 = arg.parse().map_err(|_| invalid())?;
            if (0.0..=1.0).contains(&ratio) { Ok(ratio) } else { Err(invalid()) }
        };
        match name.trim() {
            "always_on" => Ok(SamplerConfig::AlwaysOn),
            "always_off" => Ok(SamplerConfig::AlwaysOff),
            "traceidratio" => Ok(SamplerConfig::TraceIdRatio(ratio()?)),
            "parentbased_always_on" => Ok(SamplerConfig::ParentBasedAlwaysOn),
            "parentbased_always_off" => Ok(SamplerConfig::ParentBasedAlwaysOff),
            "parentbased_traceidratio" => Ok(SamplerConfig::ParentBasedTraceIdRatio(ratio()?)),
            other => Err(Error::InvalidEnv {
                var: "OTEL_TRACES_SAMPLER",
                value: other.to_owned(),
                reason: "expected always_on, always_off, traceidratio, parentbased_always_on, \
                         parentbased_always_off or parentbased_traceidratio",
            }),
        }
    }

    fn to_sdk(self) -> Sampler {
        match self {
            SamplerConfig::AlwaysOn => Sampler::AlwaysOn,
            SamplerConfig::AlwaysOff => Sampler::AlwaysOff,
            SamplerConfig::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            SamplerConfig::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerConfig::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            SamplerConfig::ParentBasedTraceIdRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }
}

/// OTLP transport, as named by `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// `grpc`: the collector's `TraceService` over HTTP/2, conventionally on port 4317.
    #[default]
    Grpc,
    /// `http/protobuf`: protobuf-encoded `POST`s to the traces URL (`.../v1/traces`), over
    /// HTTP/1.1, conventionally on port 4318.
    HttpProtobuf,
}

impl OtlpProtocol {
    /// Parses the value of `var`, one of the two protocol variables.
    fn parse(var: &'static str, value: &str) -> Result<Self, Error> {
        match value {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            other => Err(Error::InvalidEnv {
                var,
                value: other.to_owned(),
                reason: "expected grpc or http/protobuf (http/json is not built in)",
            }),
        }
    }
}

/// Trace export settings. Build it with [`TracingConfig::from_env`] in services, or with
/// [`TracingConfig::new`] and field assignments in tests (no process environment involved).
#[derive(Debug, Clone)]
pub struct TracingConfig {
    /// Where spans are sent, used as is: for gRPC the collector's address, e.g.
    /// `http://127.0.0.1:4317`; for HTTP the full traces URL, e.g.
    /// `http://127.0.0.1:4318/v1/traces` ([`Self::from_env`] appends `/v1/traces` to
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` itself). `None`: export is off and [`init`] returns no layer.
    pub endpoint: Option<String>,
    /// How spans are sent to [`Self::endpoint`].
    pub protocol: OtlpProtocol,
    /// The resource's `service.name`.
    pub service_name: String,
    /// Further resource attributes (`service.name` here is overridden by [`Self::service_name`]).
    pub resource_attributes: Vec<KeyValue>,
    /// Head sampler.
    pub sampler: SamplerConfig,
    /// Bound of the span queue; spans ending while it is full are dropped. `None`: the SDK's value
    /// (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048).
    pub max_queue_size: Option<usize>,
    /// Spans per export request. `None`: `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default 512.
    pub max_export_batch_size: Option<usize>,
    /// Delay between periodic exports. `None`: `OTEL_BSP_SCHEDULE_DELAY`, default 5 s.
    pub scheduled_delay: Option<Duration>,
    /// Deadline of one export request, retries included. `None`: the exporter's value
    /// (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, `OTEL_EXPORTER_OTLP_TIMEOUT`, default 10 s).
    pub export_timeout: Option<Duration>,
    /// Bound on the final flush in [`TelemetryGuard::shutdown`] and the guard's `Drop`.
    pub shutdown_timeout: Duration,
}

impl TracingConfig {
    /// A configuration with export off, the given service name and SDK defaults elsewhere.
    pub fn new(service_name: impl Into<String>) -> Self {
        TracingConfig {
            endpoint: None,
            protocol: OtlpProtocol::Grpc,
            service_name: service_name.into(),
            resource_attributes: Vec::new(),
            sampler: SamplerConfig::default(),
            max_queue_size: None,
            max_export_batch_size: None,
            scheduled_delay: None,
            export_timeout: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }

    /// Reads the standard `OTEL_*` variables (see the crate documentation for the list).
    /// `service_name_default` is used when neither `OTEL_SERVICE_NAME` nor a `service.name` entry in
    /// `OTEL_RESOURCE_ATTRIBUTES` is set.
    pub fn from_env(service_name_default: &str) -> Result<Self, Error> {
        let resource = EnvResourceDetector::new().detect();
        let mut config = Self::from_lookup(service_name_default, |name| std::env::var(name).ok())?;
        let service_key = Key::from_static_str("service.name");
        if std::env::var("OTEL_SERVICE_NAME").ok().is_none_or(|v| v.trim().is_empty())
            && let Some(name) = resource.get(&service_key)
        {
            config.service_name = name.to_string();
        }
        config.resource_attributes = resource
            .iter()
            .filter(|(k, _)| **k != service_key)
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect();
        Ok(config)
    }

    /// [`Self::from_env`] without `OTEL_RESOURCE_ATTRIBUTES`, reading variables through `lookup`.
    fn from_lookup(
        service_name_default: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let mut config =
            TracingConfig::new(get("OTEL_SERVICE_NAME").unwrap_or_else(|| service_name_default.to_owned()));

        if let Some(disabled) = get("OTEL_SDK_DISABLED") {
            match disabled.to_ascii_lowercase().as_str() {
                "true" => return Ok(config),
                "false" => {}
                _ => {
                    return Err(Error::InvalidEnv {
                        var: "OTEL_SDK_DISABLED",
                        value: disabled,
                        reason: "expected true or false",
                    });
                }
            }
        }

        // The signal-specific variable takes precedence, even when the generic one is invalid.
        let protocol = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
            .into_iter()
            .find_map(|var| get(var).map(|value| (var, value)));
        if let Some((var, value)) = protocol {
            config.protocol = OtlpProtocol::parse(var, &value)?;
        }

        // The signal-specific endpoint is used as is. The generic one is the collector's address
        // for gRPC (whose paths come from the service definition) and, for OTLP/HTTP, the base URL
        // of all signals: the traces path is appended to it.
        let traces_endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        config.endpoint = match config.protocol {
            OtlpProtocol::Grpc => traces_endpoint.or(endpoint),
            OtlpProtocol::HttpProtobuf => {
                traces_endpoint.or_else(|| endpoint.map(|base| http_traces_url(&base)))
            }
        };

        if let Some(sampler) = get("OTEL_TRACES_SAMPLER") {
            config.sampler = SamplerConfig::parse(&sampler, get("OTEL_TRACES_SAMPLER_ARG").as_deref())?;
        }
        Ok(config)
    }
}

/// Owns the tracer provider. Dropping it (or calling [`Self::shutdown`]) flushes queued spans and
/// shuts the exporter down, waiting at most [`TracingConfig::shutdown_timeout`]. Both block the
/// calling thread; in async code call them from `spawn_blocking`.
#[must_use = "dropping the guard shuts trace export down"]
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    shutdown_timeout: Duration,
}

impl TelemetryGuard {
    /// Whether spans are being exported.
    pub fn is_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// The tracer provider, e.g. for `opentelemetry::global::set_tracer_provider`.
    pub fn provider(&self) -> Option<&SdkTracerProvider> {
        self.provider.as_ref()
    }

    /// Exports every span that has ended so far. Blocks; bounded by the SDK (5 s).
    pub fn force_flush(&self) -> Result<(), Error> {
        match &self.provider {
            Some(provider) => Ok(provider.force_flush()?),
            None => Ok(()),
        }
    }

    /// Flushes and shuts down, waiting at most the configured shutdown timeout.
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.shutdown_inner()
    }

    fn shutdown_inner(&mut self) -> Result<(), Error> {
        match self.provider.take() {
            Some(provider) => Ok(provider.shutdown_with_timeout(self.shutdown_timeout)?),
            None => Ok(()),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Errors (timeout, collector down) are reported by the SDK's internal logs; nothing to do.
        let _ = self.shutdown_inner();
    }
}

/// Targets whose spans never reach the OpenTelemetry layer: the exporter's own transport. Targets
/// match by prefix, so `hyper` also covers `hyper_util` (the HTTP exporter's client) and
/// `opentelemetry` covers `opentelemetry_http` and `opentelemetry_otlp`.
fn exporter_feedback_filter() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("h2", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("tonic::", LevelFilter::OFF)
        .with_target("tower::", LevelFilter::OFF)
        .with_target("opentelemetry", LevelFilter::OFF)
}

/// Sets the global text-map propagator to W3C TraceContext and, when `config.endpoint` is set,
/// builds the OTLP exporter (gRPC or HTTP/protobuf, per `config.protocol`), a bounded
/// [`BatchSpanProcessor`] and the tracer provider.
///
/// Returns the layer to add to the caller's subscriber (`None` when export is off: no
/// OpenTelemetry code runs per span then) and the guard that shuts export down. The global tracer
/// provider is left alone (see [`TelemetryGuard::provider`]).
///
/// An unreachable collector never blocks the application: spans are handed to the processor with
/// a non-blocking send and dropped when the queue is full; exports run on the processor's own
/// thread, each bounded by the export timeout (retries included).
pub fn init<S>(config: &TracingConfig) -> Result<(Option<OtelLayer<S>>, TelemetryGuard), Error>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let Some(endpoint) = config.endpoint.clone() else {
        return Ok((None, TelemetryGuard { provider: None, shutdown_timeout: config.shutdown_timeout }));
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Err(Error::NoTokioRuntime);
    };

    let exporter = match config.protocol {
        OtlpProtocol::Grpc => {
            let mut exporter = SpanExporter::builder().with_tonic().with_endpoint(endpoint);
            if let Some(timeout) = config.export_timeout {
                exporter = exporter.with_timeout(timeout);
            }
            exporter.build()?
        }
        OtlpProtocol::HttpProtobuf => {
            require_plain_http(&endpoint)?;
            // The exporter bounds the whole export (retries included) by this timeout, and the
            // client bounds each request by it: both get the same value.
            let timeout =
                config.export_timeout.unwrap_or_else(|| export_timeout_from(|name| std::env::var(name).ok()));
            let client =
                OnRuntime { client: Arc::new(HyperClient::with_default_connector(timeout, None)), runtime };
            // The protocol and endpoint are explicit, so the builder reads neither variable
            // again: it uses the endpoint as is and appends no `/v1/traces` of its own.
            SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .with_timeout(timeout)
                .with_http_client(client)
                .build()?
        }
    };
    let exporter = HealthTracking(exporter);

    // `BatchConfigBuilder::default()` reads OTEL_BSP_*; only explicit settings override them.
    let mut batch = BatchConfigBuilder::default();
    if let Some(size) = config.max_queue_size {
        batch = batch.with_max_queue_size(size);
    }
    if let Some(size) = config.max_export_batch_size {
        batch = batch.with_max_export_batch_size(size);
    }
    if let Some(delay) = config.scheduled_delay {
        batch = batch.with_scheduled_delay(delay);
    }
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch.build()).build();
    let processor = finished::StartTimeOverride(processor);

    let resource = Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(config.resource_attributes.iter().cloned())
        .with_service_name(config.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(config.sampler.to_sdk())
        .with_resource(resource)
        .build();

    // Spans measured outside `tracing` (see `finished`) go through the same provider.
    finished::install(provider.tracer(TRACER_NAME));

    // Per-span costs that buy nothing here are off: busy/idle timings (two clock reads on every
    // poll of an instrumented future), activating the OpenTelemetry context on every span entry
    // (propagation here is explicit, from the `tracing` span), thread, source-location and
    // target attributes.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(TRACER_NAME))
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_filter(exporter_feedback_filter());
    Ok((Some(layer), TelemetryGuard { provider: Some(provider), shutdown_timeout: config.shutdown_timeout }))
}

/// The OTLP/HTTP traces URL for the base URL of all signals, `OTEL_EXPORTER_OTLP_ENDPOINT`: the
/// signal's path appended, with a single slash between them (as `opentelemetry-otlp` does when it
/// reads the variable itself).
fn http_traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.strip_suffix('/').unwrap_or(base))
}

/// Refuses an OTLP/HTTP endpoint that the built-in client cannot reach (it speaks plain `http`
/// only), when building the exporter rather than on every export.
fn require_plain_http(endpoint: &str) -> Result<(), Error> {
    let scheme = endpoint.parse::<http::Uri>().ok().and_then(|uri| uri.scheme().cloned());
    if scheme == Some(http::uri::Scheme::HTTP) {
        return Ok(());
    }
    Err(Error::Exporter(ExporterBuildError::InvalidConfiguration(format!(
        "OTLP/HTTP endpoint {endpoint:?} is not an http:// URL (https needs TLS, which is not built in)"
    ))))
}

/// The exporter's timeout as `opentelemetry-otlp` resolves it when none is given:
/// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, then `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds; a value
/// that does not parse is skipped), then 10 s.
fn export_timeout_from(lookup: impl Fn(&str) -> Option<String>) -> Duration {
    ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"]
        .into_iter()
        .find_map(|name| lookup(name)?.parse().ok())
        .map_or(OTEL_EXPORTER_OTLP_TIMEOUT_DEFAULT, Duration::from_millis)
}

/// The OTLP/HTTP exporter's client: hyper, with each request spawned onto the Tokio runtime that
/// [`init`] ran in. The batch processor awaits exports on its own thread, outside any runtime,
/// where hyper's connector, its timeout and its connection tasks would panic for want of a
/// reactor; there the processor only waits for the spawned request (bounded by the client's
/// timeout). If the runtime is gone (shut down before the guard), the request fails instead.
#[derive(Debug)]
struct OnRuntime {
    client: Arc<HyperClient>,
    runtime: tokio::runtime::Handle,
}

// `HttpClient` is an `async_trait`; this is its expansion, written out.
impl HttpClient for OnRuntime {
    fn send_bytes<'client, 'future>(
        &'client self,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, HttpError>> + Send + 'future>>
    where
        'client: 'future,
        Self: 'future,
    {
        let client = Arc::clone(&self.client);
        let request = self.runtime.spawn(async move { client.send_bytes(request).await });
        Box::pin(async move { request.await? })
    }
}

// ---------------------------------------------------------------------------------------------
// Export health: while the collector is unreachable, spans nobody can receive are not made.
// ---------------------------------------------------------------------------------------------

/// Whether the last span export succeeded (or none was tried yet).
static EXPORT_HEALTHY: AtomicBool = AtomicBool::new(true);
/// Counts the requests asked about while exports fail, to let every [`PROBE_EVERY`]th through.
static PROBES: AtomicU64 = AtomicU64::new(0);
/// While exports fail, one request in this many is still traced: its spans keep the exporter
/// trying, and the first export that succeeds turns tracing fully back on.
pub const PROBE_EVERY: u64 = 64;

/// Whether to make spans for a new request. True while span export works (and when export is
/// off: then the spans are only for logs); while the collector is unreachable, only one request
/// in [`PROBE_EVERY`], so that an outage costs requests (almost) nothing.
pub fn should_trace() -> bool {
    EXPORT_HEALTHY.load(Ordering::Relaxed)
        || PROBES.fetch_add(1, Ordering::Relaxed).is_multiple_of(PROBE_EVERY)
}

/// Whether the last span export succeeded.
pub fn export_healthy() -> bool {
    EXPORT_HEALTHY.load(Ordering::Relaxed)
}

/// The OTLP exporter, recording whether its exports succeed for [`should_trace`].
#[derive(Debug)]
struct HealthTracking<E>(E);

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter for HealthTracking<E> {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let result = self.0.export(batch).await;
        EXPORT_HEALTHY.store(result.is_ok(), Ordering::Relaxed);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

// ---------------------------------------------------------------------------------------------
// W3C propagation.
//
// The helpers always use W3C TraceContext (`traceparent`, `tracestate`) whatever the global
// propagator is; `init` installs the same propagator globally for third-party instrumentation.
// ---------------------------------------------------------------------------------------------

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator only produces valid names and values; skip anything else rather than fail.
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Reads `traceparent` / `tracestate` from HTTP headers. Without a valid `traceparent` the result
/// holds no remote span (`cx.span().span_context().is_valid()` is false).
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes `traceparent` (and `tracestate` if any) for the span in `cx` into HTTP headers, replacing
/// existing values. Does nothing when `cx` holds no valid span (e.g. export is off).
pub fn inject_http(cx: &Context, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// Reads `traceparent` / `tracestate` from gRPC request metadata.
pub fn extract_tonic(metadata: &tonic::metadata::MetadataMap) -> Context {
    TraceContextPropagator::new().extract(&MetadataExtractor(metadata))
}

/// Writes `traceparent` (and `tracestate` if any) for the span in `cx` into gRPC metadata.
pub fn inject_tonic(cx: &Context, metadata: &mut tonic::metadata::MetadataMap) {
    TraceContextPropagator::new().inject_context(cx, &mut MetadataInjector(metadata));
}

/// Client-side tonic interceptor that injects the current `tracing` span's context, e.g.
/// `MyClient::with_interceptor(channel, TraceContextInterceptor)`. The call must run inside the
/// caller's span (`.instrument(span)` or an entered span) for there to be anything to inject.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        inject_tonic(&tracing::Span::current().context(), request.metadata_mut());
        Ok(request)
    }
}

/// Makes the remote span found in `cx` the OpenTelemetry parent of `span`.
///
/// Returns `Ok(false)` and leaves `span` alone when `cx` has no valid remote span (so it keeps its
/// local parent). Must be called before `span` is first entered. Errors: `LayerNotFound` when no
/// OpenTelemetry layer is installed (export off: harmless), `AlreadyStarted`, `SpanDisabled`.
pub fn set_remote_parent(span: &tracing::Span, cx: Context) -> Result<bool, SetParentError> {
    if !cx.span().span_context().is_valid() {
        return Ok(false);
    }
    span.set_parent(cx)?;
    Ok(true)
}

/// Server side of a gRPC hop: [`set_remote_parent`] with the context found in `request`'s metadata.
pub fn set_parent_from_tonic<T>(
    span: &tracing::Span,
    request: &tonic::Request<T>,
) -> Result<bool, SetParentError> {
    set_remote_parent(span, extract_tonic(request.metadata()))
}

/// Server side of an HTTP hop: [`set_remote_parent`] with the context found in `headers`.
pub fn set_parent_from_http(span: &tracing::Span, headers: &http::HeaderMap) -> Result<bool, SetParentError> {
    set_remote_parent(span, extract_http(headers))
}

/// The OpenTelemetry span context of a `tracing` span, if it has a valid one (export on, span
/// enabled). Starts the OpenTelemetry span if it was not started yet.
pub fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    let cx = span.context();
    let otel_span = cx.span();
    let sc = otel_span.span_context();
    sc.is_valid().then(|| sc.clone())
}

/// Trace id (16 bytes) and span id (8 bytes) of the current `tracing` span, or `None` when there is
/// no current span or export is off.
pub fn current_trace_ids() -> Option<([u8; 16], [u8; 8])> {
    span_context(&tracing::Span::current()).map(|sc| (sc.trace_id().to_bytes(), sc.span_id().to_bytes()))
}

/// The W3C `traceparent` value of the current span (`00-<trace id>-<span id>-<flags>`), or `None`.
pub fn current_traceparent() -> Option<String> {
    span_context(&tracing::Span::current())
        .map(|sc| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

/// Trace id, span id and trace flags of a `tracing` span, when it has a valid OpenTelemetry
/// span context (export on, span enabled).
pub fn span_ids(span: &tracing::Span) -> Option<([u8; 16], [u8; 8], u8)> {
    span_context(span).map(|sc| (sc.trace_id().to_bytes(), sc.span_id().to_bytes(), sc.trace_flags().to_u8()))
}

/// Sets an attribute on the exported span, also after the span was started (which
/// [`span_context`] and [`span_ids`] do): `tracing` fields recorded later are not exported
/// then. A no-op when export is off.
pub fn set_attribute(span: &tracing::Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    span.set_attribute(key, value);
}

/// Injects the current `tracing` span's context into outgoing gRPC metadata (nothing when
/// export is off).
pub fn inject_current_tonic(metadata: &mut tonic::metadata::MetadataMap) {
    inject_tonic(&tracing::Span::current().context(), metadata);
}

/// Links `span` to the spans named by (trace id, span id) pairs, e.g. a batch span to the
/// requests whose records it carries. Invalid (all-zero) ids are skipped.
pub fn add_links_by_id(span: &tracing::Span, ids: impl IntoIterator<Item = ([u8; 16], [u8; 8])>) {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
    let contexts = ids.into_iter().map(|(trace_id, span_id)| {
        SpanContext::new(
            TraceId::from_bytes(trace_id),
            SpanId::from_bytes(span_id),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )
    });
    add_links(span, contexts.filter(SpanContext::is_valid));
}

/// Marks the exported span as failed, with `description`. A no-op when export is off.
pub fn set_error(span: &tracing::Span, description: String) {
    span.set_status(opentelemetry::trace::Status::error(description));
}

/// Sets a string-array attribute (e.g. `gen_ai.response.finish_reasons`), which `tracing`
/// fields cannot express. A no-op when export is off.
pub fn set_string_array(span: &tracing::Span, key: &'static str, values: Vec<String>) {
    let values = values.into_iter().map(opentelemetry::StringValue::from).collect();
    span.set_attribute(key, opentelemetry::Value::Array(opentelemetry::Array::String(values)));
}

/// Adds an OpenTelemetry link from `span` to each of `linked` (invalid contexts are skipped).
///
/// Typical use: a Raft batch/append span linked to every request span whose entry it carries,
/// collected with [`span_context`] when each request was enqueued. Links added before the span is
/// first entered go into its start data (visible to samplers); later ones are added to the live
/// span. The SDK keeps at most 128 links per span by default (`OTEL_SPAN_LINK_COUNT_LIMIT`).
pub fn add_links(span: &tracing::Span, linked: impl IntoIterator<Item = SpanContext>) {
    for sc in linked {
        span.add_link(sc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exporter that fails or succeeds as told.
    #[derive(Debug)]
    struct Scripted(bool);

    impl opentelemetry_sdk::trace::SpanExporter for Scripted {
        async fn export(
            &self,
            _: Vec<opentelemetry_sdk::trace::SpanData>,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            if self.0 {
                Ok(())
            } else {
                Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure("down".into()))
            }
        }
    }

    #[tokio::test]
    async fn a_failing_exporter_turns_tracing_down_to_probes_and_a_success_turns_it_back_on() {
        use opentelemetry_sdk::trace::SpanExporter as _;
        assert!(HealthTracking(Scripted(false)).export(Vec::new()).await.is_err());
        assert!(!export_healthy());
        let traced = (0..PROBE_EVERY * 10).filter(|_| should_trace()).count();
        assert_eq!(traced, 10, "one request in PROBE_EVERY while the collector is down");
        assert!(HealthTracking(Scripted(true)).export(Vec::new()).await.is_ok());
        assert!(export_healthy());
        assert!((0..100).all(|_| should_trace()));
    }
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<TracingConfig, Error> {
        let map: HashMap<String, String> =
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        TracingConfig::from_lookup("default-svc", |name| map.get(name).cloned())
    }

    #[test]
    fn no_endpoint_means_off() {
        let c = config(&[]).expect("valid");
        assert_eq!(c.endpoint, None);
        assert_eq!(c.service_name, "default-svc");
        assert_eq!(c.sampler, SamplerConfig::ParentBasedAlwaysOn);
    }

    #[test]
    fn traces_endpoint_wins_and_service_name_is_read() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ("OTEL_SERVICE_NAME", "gw"),
        ])
        .expect("valid");
        assert_eq!(c.endpoint.as_deref(), Some("http://traces:4317"));
        assert_eq!(c.service_name, "gw");
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317")]).expect("valid");
        assert_eq!(c.endpoint.as_deref(), Some("http://generic:4317"));
    }

    #[test]
    fn sdk_disabled_turns_export_off() {
        let c = config(&[("OTEL_SDK_DISABLED", "TRUE"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4317")])
            .expect("valid");
        assert_eq!(c.endpoint, None);
        assert!(config(&[("OTEL_SDK_DISABLED", "yes")]).is_err());
    }

    /// The protocol [`TracingConfig::from_lookup`] picks from `vars`, or the variable and value
    /// it refuses.
    fn check_protocol(vars: &[(&str, &str)], expected: Result<OtlpProtocol, (&str, &str)>) {
        match (config(vars), expected) {
            (Ok(c), Ok(protocol)) => assert_eq!(c.protocol, protocol, "{vars:?}"),
            (Err(Error::InvalidEnv { var, value, reason }), Err((expected_var, expected_value))) => {
                assert_eq!((var, value.as_str()), (expected_var, expected_value), "{vars:?}");
                let message = Error::InvalidEnv { var, value: value.clone(), reason }.to_string();
                assert!(
                    message.contains(var)
                        && message.contains(&value)
                        && message.contains("grpc or http/protobuf"),
                    "the message names the variable, the value and the supported protocols: {message}"
                );
            }
            (got, expected) => panic!("{vars:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn protocol_is_grpc_or_http_protobuf_and_the_traces_variable_wins() {
        const TRACES: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
        const GENERIC: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
        check_protocol(&[], Ok(OtlpProtocol::Grpc));
        check_protocol(&[(GENERIC, "grpc")], Ok(OtlpProtocol::Grpc));
        check_protocol(&[(GENERIC, "http/protobuf")], Ok(OtlpProtocol::HttpProtobuf));
        check_protocol(&[(TRACES, " http/protobuf ")], Ok(OtlpProtocol::HttpProtobuf));
        check_protocol(&[(TRACES, "http/protobuf"), (GENERIC, "grpc")], Ok(OtlpProtocol::HttpProtobuf));
        check_protocol(&[(TRACES, "grpc"), (GENERIC, "http/protobuf")], Ok(OtlpProtocol::Grpc));
        // The signal-specific variable decides, even when the generic one would be refused.
        check_protocol(&[(TRACES, "grpc"), (GENERIC, "http/json")], Ok(OtlpProtocol::Grpc));
        // An empty variable counts as unset.
        check_protocol(&[(TRACES, ""), (GENERIC, "http/protobuf")], Ok(OtlpProtocol::HttpProtobuf));
        check_protocol(&[(GENERIC, "http/json")], Err((GENERIC, "http/json")));
        check_protocol(&[(TRACES, "http/json"), (GENERIC, "grpc")], Err((TRACES, "http/json")));
        check_protocol(&[(TRACES, "thrift")], Err((TRACES, "thrift")));
        check_protocol(&[(GENERIC, "HTTP/PROTOBUF")], Err((GENERIC, "HTTP/PROTOBUF")));
    }

    /// The endpoint [`TracingConfig::from_lookup`] derives from the protocol and the two
    /// endpoint variables.
    fn check_endpoint(protocol: &str, traces: Option<&str>, generic: Option<&str>, expected: Option<&str>) {
        let mut vars = vec![("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)];
        vars.extend(traces.map(|v| ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", v)));
        vars.extend(generic.map(|v| ("OTEL_EXPORTER_OTLP_ENDPOINT", v)));
        let c = config(&vars).expect("valid");
        assert_eq!(c.endpoint.as_deref(), expected, "{vars:?}");
    }

    #[test]
    fn endpoints_follow_the_otlp_exporter_specification() {
        // gRPC: either variable as is, as before HTTP existed.
        check_endpoint("grpc", None, Some("http://c:4317"), Some("http://c:4317"));
        check_endpoint("grpc", None, Some("http://c:4317/"), Some("http://c:4317/"));
        check_endpoint("grpc", Some("http://t:4317"), Some("http://c:4317"), Some("http://t:4317"));
        // HTTP: the generic variable is a base URL, the traces path goes after one slash.
        check_endpoint("http/protobuf", None, Some("http://c:4318"), Some("http://c:4318/v1/traces"));
        check_endpoint("http/protobuf", None, Some("http://c:4318/"), Some("http://c:4318/v1/traces"));
        check_endpoint(
            "http/protobuf",
            None,
            Some("https://c:4318/otlp"),
            Some("https://c:4318/otlp/v1/traces"),
        );
        check_endpoint(
            "http/protobuf",
            None,
            Some("http://c:4318/otlp/"),
            Some("http://c:4318/otlp/v1/traces"),
        );
        // HTTP: the traces variable is the full URL, used as is (no path appended, slash kept).
        check_endpoint(
            "http/protobuf",
            Some("http://t:4318/custom"),
            Some("http://c:4318"),
            Some("http://t:4318/custom"),
        );
        check_endpoint("http/protobuf", Some("http://t:4318/"), None, Some("http://t:4318/"));
        check_endpoint(
            "http/protobuf",
            Some("http://t:4318/v1/traces"),
            None,
            Some("http://t:4318/v1/traces"),
        );
        // No endpoint: export stays off, there is no default collector.
        check_endpoint("http/protobuf", None, None, None);
        check_endpoint("grpc", None, None, None);
    }

    #[test]
    fn export_timeout_is_resolved_like_the_exporter_does() {
        let check = |vars: &[(&str, &str)], expected: Duration| {
            let map: HashMap<&str, &str> = vars.iter().copied().collect();
            let timeout = export_timeout_from(|name| map.get(name).map(|v| (*v).to_owned()));
            assert_eq!(timeout, expected, "{vars:?}");
        };
        check(&[], Duration::from_secs(10));
        check(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")], Duration::from_millis(2500));
        check(
            &[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "300"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")],
            Duration::from_millis(300),
        );
        check(
            &[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")],
            Duration::from_millis(2500),
        );
    }

    #[test]
    fn http_export_needs_a_plain_http_endpoint() {
        assert!(require_plain_http("http://collector:4318/v1/traces").is_ok());
        for endpoint in ["https://collector:4318/v1/traces", "collector:4318/v1/traces", "not a url"] {
            let err = require_plain_http(endpoint).expect_err(endpoint);
            assert!(err.to_string().contains(endpoint), "{err}");
        }
    }

    #[test]
    fn samplers_parse() {
        let cases = [
            ("always_on", None, SamplerConfig::AlwaysOn),
            ("always_off", None, SamplerConfig::AlwaysOff),
            ("traceidratio", Some("0.25"), SamplerConfig::TraceIdRatio(0.25)),
            ("traceidratio", None, SamplerConfig::TraceIdRatio(1.0)),
            ("parentbased_always_on", None, SamplerConfig::ParentBasedAlwaysOn),
            ("parentbased_always_off", None, SamplerConfig::ParentBasedAlwaysOff),
            ("parentbased_traceidratio", Some("0.5"), SamplerConfig::ParentBasedTraceIdRatio(0.5)),
        ];
        for (name, arg, want) in cases {
            assert_eq!(SamplerConfig::parse(name, arg).expect(name), want);
        }
        assert!(SamplerConfig::parse("traceidratio", Some("1.5")).is_err());
        assert!(SamplerConfig::parse("traceidratio", Some("half")).is_err());
        assert!(SamplerConfig::parse("jaeger_remote", None).is_err());
        let c = config(&[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.1")])
            .expect("valid");
        assert_eq!(c.sampler, SamplerConfig::TraceIdRatio(0.1));
    }

    #[test]
    fn http_header_round_trip_without_layer_carries_remote_context() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        let cx = extract_http(&headers);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(format!("{}", sc.trace_id()), "0af7651916cd43dd8448eb211c80319c");
        let mut out = http::HeaderMap::new();
        inject_http(&cx, &mut out);
        assert_eq!(
            out.get("traceparent").and_then(|v| v.to_str().ok()),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        // No current span without a subscriber.
        assert_eq!(current_trace_ids(), None);
        assert_eq!(current_traceparent(), None);
    }
}
