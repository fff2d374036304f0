//! Spans for work that happened outside any `tracing` span and is exported afterwards, with the
//! times it was measured at: the gateway's smuggling guard (it validates a request's head on the
//! connection, before the request exists) and the ledger's Raft write (replication, commit and
//! apply run in openraft's tasks, not in the caller's). A [`FinishedSpan`] is built once its end
//! is known and exported as a child of a `tracing` span ([`export_finished`]) or as the root of
//! a new trace ([`export_finished_root`]).
//!
//! [`set_start_time`] moves an exported `tracing` span's start back, e.g. to when a request's
//! first bytes arrived, so that such children nest inside it.
//!
//! With export off there is no tracer: [`exporting`] is one relaxed atomic load, and callers
//! check it before they read clocks or build attributes.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracer, SpanData, SpanProcessor};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// A span whose work is over: name, kind, times and attributes as measured, and its children
/// (which the exporter makes children of this span, in the same trace).
#[derive(Clone, Debug)]
pub struct FinishedSpan {
    /// The span's name, e.g. `aegis.guard`.
    pub name: &'static str,
    /// Its kind (mostly [`SpanKind::Internal`]).
    pub kind: SpanKind,
    /// When the work started (wall clock).
    pub start: SystemTime,
    /// When it ended; not before `start`.
    pub end: SystemTime,
    /// Attributes, as they are exported.
    pub attributes: Vec<KeyValue>,
    /// `Some(description)` marks the span failed (status error).
    pub error: Option<String>,
    /// Spans of parts of this work.
    pub children: Vec<FinishedSpan>,
}

impl FinishedSpan {
    /// A span with no attributes, no error and no children.
    pub fn new(name: &'static str, kind: SpanKind, start: SystemTime, end: SystemTime) -> Self {
        Self { name, kind, start, end, attributes: Vec::new(), error: None, children: Vec::new() }
    }
}

/// Whether spans are exported (an OTLP endpoint was configured and [`crate::init`] ran). One
/// relaxed atomic load: check it before reading clocks or building attributes for spans.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Exports `span` (and its children) as a child of the `tracing` span `parent`. Does nothing
/// when export is off or `parent` has no OpenTelemetry context (disabled, `Span::none()`, or not
/// sampled). Reading `parent`'s context starts it if it was not started yet.
pub fn export_finished(parent: &tracing::Span, span: FinishedSpan) {
    if !exporting() || parent.is_none() {
        return;
    }
    let parent_cx = parent.context();
    if !parent_cx.span().span_context().is_valid() {
        return;
    }
    with_tracer(|tracer| {
        export_under(tracer, &parent_cx, span);
    });
}

/// Exports `span` (and its children) as the root of a new trace, e.g. for a request refused
/// before it became a request. Returns its trace id, span id and trace flags, or `None` when
/// export is off.
pub fn export_finished_root(span: FinishedSpan) -> Option<([u8; 16], [u8; 8], u8)> {
    if !exporting() {
        return None;
    }
    with_tracer(|tracer| export_under(tracer, &Context::new(), span))
        .flatten()
        .map(|sc| (sc.trace_id().to_bytes(), sc.span_id().to_bytes(), sc.trace_flags().to_u8()))
}

/// Moves the start of `span`'s exported span to `start`, e.g. back to when a request's first
/// bytes arrived, before the `tracing` span could be created. A no-op when export is off.
///
/// Carried as an attribute that the export pipeline removes when the span ends (see
/// `StartTimeOverride`): `tracing` spans take their start time at creation, and
/// `tracing-opentelemetry` offers no way to change it.
pub fn set_start_time(span: &tracing::Span, start: SystemTime) {
    if !exporting() {
        return;
    }
    span.set_attribute(START_TIME_ATTRIBUTE, unix_nanos(start));
}

/// Installs the tracer [`export_finished`] uses, replacing an earlier one (a process that
/// initialises export twice, as tests do, exports to the latest).
pub(crate) fn install(tracer: SdkTracer) {
    *TRACER.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tracer);
    EXPORTING.store(true, Ordering::Relaxed);
}

/// The span processor in front of the batch processor: applies [`set_start_time`] to a span as
/// it ends, removing the carrier attribute so it is never exported.
#[derive(Debug)]
pub(crate) struct StartTimeOverride<P>(pub(crate) P);

impl<P: SpanProcessor> SpanProcessor for StartTimeOverride<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, mut span: SpanData) {
        if let Some(position) = span.attributes.iter().position(|kv| kv.key.as_str() == START_TIME_ATTRIBUTE)
        {
            let carrier = span.attributes.remove(position);
            if let Value::I64(nanos) = carrier.value
                && let Ok(nanos) = u64::try_from(nanos)
            {
                span.start_time = UNIX_EPOCH + Duration::from_nanos(nanos);
            }
        }
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// The attribute that carries [`set_start_time`]'s value to [`StartTimeOverride`].
const START_TIME_ATTRIBUTE: &str = "aegis.internal.start_time_unix_nano";

/// Set by [`install`]: read on every request, so an atomic rather than the lock.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The tracer of the export pipeline (a clone of the one in the `tracing` layer); `None` while
/// export is off. The global OpenTelemetry tracer provider is not used (see [`crate::init`]).
static TRACER: RwLock<Option<SdkTracer>> = RwLock::new(None);

fn with_tracer<T>(export: impl FnOnce(&SdkTracer) -> T) -> Option<T> {
    let tracer = TRACER.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    tracer.as_ref().map(export)
}

/// Starts `span` under `parent_cx` at its start time, exports its children under it, and ends
/// it at its end time. Returns its span context (`None` when the provider was shut down; a
/// span the sampler dropped has a context, without the sampled flag).
pub(crate) fn export_under(
    tracer: &SdkTracer,
    parent_cx: &Context,
    span: FinishedSpan,
) -> Option<SpanContext> {
    let FinishedSpan { name, kind, start, end, attributes, error, children } = span;
    let mut builder = tracer.span_builder(name).with_kind(kind).with_start_time(start);
    if !attributes.is_empty() {
        builder = builder.with_attributes(attributes);
    }
    let started = tracer.build_with_context(builder, parent_cx);
    let span_context = started.span_context().clone();
    if !span_context.is_valid() {
        return None;
    }
    let cx = parent_cx.with_span(started);
    let exported = cx.span();
    if let Some(description) = error {
        exported.set_status(Status::error(description));
    }
    for child in children {
        export_under(tracer, &cx, child);
    }
    exported.end_with_timestamp(end);
    Some(span_context)
}

fn unix_nanos(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| i64::try_from(since.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanId, TracerProvider as _};
    use opentelemetry_sdk::trace::{SdkTracerProvider, SimpleSpanProcessor};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Keeps what it is asked to export.
    #[derive(Clone, Debug, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl opentelemetry_sdk::trace::SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().expect("lock").extend(batch);
            Ok(())
        }
    }

    impl Collect {
        fn named(&self, name: &str) -> SpanData {
            let spans = self.0.lock().expect("lock");
            spans.iter().find(|span| span.name == name).cloned().unwrap_or_else(|| {
                panic!("no span {name}: {:?}", spans.iter().map(|span| &span.name).collect::<Vec<_>>())
            })
        }
    }

    /// A provider exporting into `collect` through the same start-time processor as `init`.
    fn provider(collect: &Collect) -> SdkTracerProvider {
        SdkTracerProvider::builder()
            .with_span_processor(StartTimeOverride(SimpleSpanProcessor::new(collect.clone())))
            .build()
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    fn int(span: &SpanData, key: &str) -> Option<i64> {
        span.attributes.iter().find(|kv| kv.key.as_str() == key).and_then(|kv| match kv.value {
            Value::I64(value) => Some(value),
            _ => None,
        })
    }

    #[test]
    fn a_finished_span_is_exported_under_its_parent_with_its_times_attributes_and_children() {
        let collect = Collect::default();
        let provider = provider(&collect);
        let tracer = provider.tracer("test");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let parent = tracing::info_span!("parent");
            let parent_cx = parent.context();
            let mut write = FinishedSpan::new("write", SpanKind::Internal, at(1), at(9));
            write.attributes.push(KeyValue::new("log_index", 42_i64));
            write.children.push(FinishedSpan::new("replicate", SpanKind::Internal, at(1), at(5)));
            let mut apply = FinishedSpan::new("apply", SpanKind::Internal, at(5), at(8));
            apply.error = Some("disk full".to_owned());
            write.children.push(apply);
            let returned = export_under(&tracer, &parent_cx, write).expect("recorded");
            assert_eq!(returned.trace_id(), parent_cx.span().span_context().trace_id());
            drop(parent);
        });

        let parent = collect.named("parent");
        let write = collect.named("write");
        let replicate = collect.named("replicate");
        let apply = collect.named("apply");
        assert_eq!(write.parent_span_id, parent.span_context.span_id());
        assert_eq!(write.span_context.trace_id(), parent.span_context.trace_id());
        for child in [&replicate, &apply] {
            assert_eq!(child.parent_span_id, write.span_context.span_id());
            assert_eq!(child.span_context.trace_id(), parent.span_context.trace_id());
            assert!(!child.parent_span_is_remote);
        }
        assert_eq!((write.start_time, write.end_time), (at(1), at(9)));
        assert_eq!((replicate.start_time, replicate.end_time), (at(1), at(5)));
        assert_eq!((apply.start_time, apply.end_time), (at(5), at(8)));
        assert_eq!(int(&write, "log_index"), Some(42));
        assert_eq!(write.span_kind, SpanKind::Internal);
        assert_eq!(apply.status, Status::error("disk full"));
        assert_eq!(replicate.status, Status::Unset);
    }

    #[test]
    fn a_finished_root_starts_a_trace_of_its_own() {
        let collect = Collect::default();
        let provider = provider(&collect);
        let tracer = provider.tracer("test");
        let mut root = FinishedSpan::new("HTTP", SpanKind::Server, at(1), at(2));
        root.children.push(FinishedSpan::new("guard", SpanKind::Internal, at(1), at(2)));
        let returned = export_under(&tracer, &Context::new(), root).expect("recorded");
        let root = collect.named("HTTP");
        let guard = collect.named("guard");
        assert_eq!(root.span_context, returned);
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert_eq!(root.span_kind, SpanKind::Server);
        assert_eq!(guard.parent_span_id, root.span_context.span_id());
    }

    #[test]
    fn the_start_time_carrier_moves_the_start_and_is_not_exported() {
        let collect = Collect::default();
        let provider = provider(&collect);
        let tracer = provider.tracer("test");
        let span = tracer.span_builder("request").with_start_time(at(5)).start(&tracer);
        let cx = Context::new().with_span(span);
        cx.span().set_attribute(KeyValue::new(START_TIME_ATTRIBUTE, unix_nanos(at(3))));
        cx.span().end_with_timestamp(at(9));
        let request = collect.named("request");
        assert_eq!((request.start_time, request.end_time), (at(3), at(9)));
        assert!(request.attributes.is_empty(), "{:?}", request.attributes);
    }

    #[test]
    fn without_a_tracer_nothing_is_exported() {
        // No test in this binary calls `init` with an endpoint: there is no tracer.
        assert!(!exporting());
        let collect = Collect::default();
        let provider = provider(&collect);
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let parent = tracing::info_span!("parent");
            export_finished(&parent, FinishedSpan::new("child", SpanKind::Internal, at(1), at(2)));
            set_start_time(&parent, at(0));
            assert_eq!(export_finished_root(FinishedSpan::new("root", SpanKind::Server, at(1), at(2))), None);
        });
        let spans = collect.0.lock().expect("lock");
        let names: Vec<&str> = spans.iter().map(|span| span.name.as_ref()).collect();
        assert_eq!(names, ["parent"]);
        assert!(!spans[0].attributes.iter().any(|kv| kv.key.as_str() == START_TIME_ATTRIBUTE));
    }
}
