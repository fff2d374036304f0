//! The gateway's spans, named and attributed per the OpenTelemetry semantic conventions: a
//! SERVER span per request, an INTERNAL span per policy stage, and a CLIENT span per upstream
//! call with the GenAI attributes (`gen_ai.*`; message contents are never recorded). Exported
//! when OTLP export is on (see `telemetry.rs`); otherwise they are ordinary `tracing` spans.
//!
//! The smuggling guard's span (`aegis.guard`) is measured on the connection before the request
//! exists and exported afterwards with those times (`telemetry::export_finished`); the SERVER
//! span then starts when the request's first bytes arrived. A request the guard refuses never
//! reaches the pipeline: its SERVER span and guard span are exported as a trace of their own.
//!
//! The SERVER and CLIENT spans are started early, because their ids go into the audit record
//! and the upstream's `traceparent`; what is learnt later is set on the exported span directly
//! (`telemetry::set_attribute`), since `tracing` fields recorded after the start are not
//! exported.

use std::time::SystemTime;

use http::{HeaderValue, Method};
use telemetry::{FinishedSpan, KeyValue, SpanKind};
use tracing::Span;

use crate::analysis::ResponseAnalyzer;
use crate::config::UpstreamKind;
use crate::policy::head_checks::HeadCheck;
use crate::policy::smuggling::{Framing, Violation};
use crate::trace_context::TraceContext;
use crate::upstream::{Api, Upstream};

/// The name of the smuggling guard's INTERNAL span.
pub const GUARD: &str = "aegis.guard";

/// The SERVER span of one request, named `METHOD route` (the route template, e.g.
/// `/v1/audit/records/{record_id}`; the method alone for unknown paths).
pub fn request(method: &Method, route: Option<&str>) -> Span {
    // While the span collector is unreachable only probe requests are traced: spans nobody can
    // receive would cost every request for nothing.
    if !telemetry::should_trace() {
        return Span::none();
    }
    // Field values are evaluated only when the span is enabled: no allocation otherwise.
    tracing::info_span!(
        "request",
        otel.name = match route {
            Some(route) => format!("{method} {route}"),
            None => method.to_string(),
        },
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
    )
}

/// Records the response status (and a server error as the span's error).
pub fn finish_request(span: &Span, status: u16) {
    telemetry::set_attribute(span, "http.response.status_code", i64::from(status));
    if status >= 500 {
        telemetry::set_attribute(span, "error.type", status.to_string());
        telemetry::set_error(span, format!("HTTP {status}"));
    }
}

/// Records the request's audit record id.
pub fn record_id(span: &Span, record_id: &str) {
    telemetry::set_attribute(span, "aegis.record_id", record_id.to_owned());
}

/// The guard's check of the request's head as an INTERNAL child of its SERVER span `request`,
/// which is moved back to start when the head's first bytes arrived.
pub fn guard(request: &Span, check: &HeadCheck) {
    if !telemetry::exporting() || request.is_none() {
        return;
    }
    telemetry::set_start_time(request, check.started);
    let mut guard = FinishedSpan::new(GUARD, SpanKind::Internal, check.started, check.finished);
    let head_bytes = i64::try_from(check.head_bytes).unwrap_or(i64::MAX);
    guard.attributes.push(KeyValue::new("aegis.guard.head_bytes", head_bytes));
    match check.framing {
        Framing::Length(0) => guard.attributes.push(KeyValue::new("aegis.guard.framing", "none")),
        Framing::Length(length) => {
            guard.attributes.push(KeyValue::new("aegis.guard.framing", "content-length"));
            let length = i64::try_from(length).unwrap_or(i64::MAX);
            guard.attributes.push(KeyValue::new("aegis.guard.content_length", length));
        }
        Framing::Chunked => guard.attributes.push(KeyValue::new("aegis.guard.framing", "chunked")),
    }
    telemetry::export_finished(request, guard);
}

/// Exports the spans of a request the guard refused, whose bytes began to arrive at `started`:
/// a SERVER span named `HTTP` (the method is not trusted, so unknown) answered 400, with the
/// failed `aegis.guard` span under it. Returns its trace for the audit record and the
/// response's `traceparent`; `None` when it is not traced.
pub fn refused(violation: Violation, started: SystemTime, record_id: &HeaderValue) -> Option<TraceContext> {
    if !telemetry::exporting() || !telemetry::should_trace() {
        return None;
    }
    let finished = SystemTime::now();
    let mut guard = FinishedSpan::new(GUARD, SpanKind::Internal, started, finished);
    guard.attributes.push(KeyValue::new("error.type", violation.code()));
    guard.error = Some(violation.to_string());
    let mut server = FinishedSpan::new("HTTP", SpanKind::Server, started, finished);
    server.attributes = vec![
        KeyValue::new("http.request.method", "_OTHER"),
        KeyValue::new("http.response.status_code", 400_i64),
        KeyValue::new("aegis.record_id", record_id.to_str().unwrap_or_default().to_owned()),
    ];
    server.children.push(guard);
    let (trace_id, span_id, flags) = telemetry::export_finished_root(server)?;
    Some(TraceContext { trace_id, span_id, flags })
}

/// An INTERNAL span for one policy stage (`aegis.limits`, `aegis.auth`, `aegis.waf`,
/// `aegis.rate_limit`, `aegis.adapter`). It lasts from its creation to its drop: stages drop it
/// when their own work is done, before the next stage runs.
pub fn stage(name: &'static str) -> Span {
    // Never a root of its own: untraced requests have no stage spans.
    if Span::current().is_none() {
        return Span::none();
    }
    tracing::info_span!("stage", otel.name = name, otel.kind = "internal")
}

/// The GenAI operation an API performs.
pub fn operation(api: Api) -> &'static str {
    match api {
        Api::ChatCompletions | Api::Messages => "chat",
        Api::Completions => "text_completion",
        Api::Embeddings => "embeddings",
    }
}

/// The `gen_ai.provider.name` of an upstream.
pub fn provider(upstream: &Upstream) -> &'static str {
    match upstream.kind {
        UpstreamKind::Openai => "openai",
        UpstreamKind::Anthropic => "anthropic",
        UpstreamKind::Mock => "aegis.mock",
    }
}

/// The labels of the GenAI metrics for a call to `upstream`; `error_type` empty on success.
pub fn metric_labels(api: Api, upstream: &Upstream, error_type: String) -> crate::metrics::GenAiLabels {
    crate::metrics::GenAiLabels {
        gen_ai_operation_name: operation(api),
        gen_ai_provider_name: provider(upstream),
        aegis_upstream: upstream.name.to_string(),
        error_type,
    }
}

/// The CLIENT span of one call to an upstream provider, named `{operation} {model}`.
pub fn upstream(api: Api, upstream: &Upstream, model: &str, stream: bool) -> Span {
    if Span::current().is_none() {
        return Span::none();
    }
    let operation = operation(api);
    let provider = provider(upstream);
    let span = tracing::info_span!(
        "upstream",
        otel.name = format!("{operation} {model}"),
        otel.kind = "client",
        gen_ai.operation.name = operation,
        gen_ai.provider.name = provider,
        gen_ai.request.model = model,
        gen_ai.request.stream = stream,
        aegis.upstream = %upstream.name,
    );
    if let Some((address, port)) = &upstream.server {
        telemetry::set_attribute(&span, "server.address", address.clone());
        telemetry::set_attribute(&span, "server.port", i64::from(*port));
    }
    span
}

/// Records what the upstream answered: the model, token usage, finish reasons, and the error
/// type of a failed call (an HTTP status, or the gateway's refusal reason).
pub fn finish_upstream(span: &Span, analyzer: &ResponseAnalyzer, error: Option<&str>) {
    if let Some(model) = analyzer.response_model() {
        telemetry::set_attribute(span, "gen_ai.response.model", model.to_owned());
    }
    if let Some(usage) = analyzer.usage() {
        telemetry::set_attribute(span, "gen_ai.usage.input_tokens", saturating_i64(usage.prompt_tokens));
        telemetry::set_attribute(span, "gen_ai.usage.output_tokens", saturating_i64(usage.completion_tokens));
    }
    if let Some(reason) = analyzer.finish_reason() {
        telemetry::set_string_array(span, "gen_ai.response.finish_reasons", vec![reason.to_owned()]);
    }
    if let Some(error) = error {
        telemetry::set_attribute(span, "error.type", error.to_owned());
        telemetry::set_error(span, error.to_owned());
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
