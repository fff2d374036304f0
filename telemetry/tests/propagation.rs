//! W3C trace-context round trips through HTTP headers and real gRPC metadata.

use chaos_tests::otlp as common;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use telemetry::{OtelLayer, SetParentError, TraceContextInterceptor, TracingConfig};
use tracing::Instrument;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::SubscriberExt;

type Ids = ([u8; 16], [u8; 8]);

fn ids_of(span: &tracing::Span) -> Ids {
    let sc = telemetry::span_context(span).expect("span context");
    (sc.trace_id().to_bytes(), sc.span_id().to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_round_trips_through_http_headers_and_tonic_metadata() {
    let (addr, receiver) = common::start_receiver().await;
    let mut config = TracingConfig::new("propagation-test");
    config.endpoint = Some(format!("http://{addr}"));
    let (layer, guard) = telemetry::init(&config).expect("init");
    let subscriber = tracing_subscriber::registry().with(layer);
    let _default = tracing::subscriber::set_default(subscriber);

    // --- HTTP: client span injects, a fresh server span extracts. ---
    let client = tracing::info_span!("http_client", otel.kind = "client");
    let mut headers = http::HeaderMap::new();
    client.in_scope(|| telemetry::inject_http(&tracing::Span::current().context_ext(), &mut headers));
    let client_ids = ids_of(&client);
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok()).expect("traceparent");
    assert_eq!(traceparent, client.in_scope(telemetry::current_traceparent).expect("current"));

    let server = tracing::info_span!("http_server", otel.kind = "server");
    assert!(matches!(telemetry::set_parent_from_http(&server, &headers), Ok(true)));
    let server_ids = server.in_scope(telemetry::current_trace_ids).expect("server ids");
    assert_eq!(server_ids.0, client_ids.0, "same trace id across the HTTP hop");
    assert_ne!(server_ids.1, client_ids.1, "the server span is a new span");

    // No traceparent: the span keeps its local parent (here: none, a new trace).
    let orphan = tracing::info_span!("http_server_no_header");
    assert!(matches!(telemetry::set_parent_from_http(&orphan, &http::HeaderMap::new()), Ok(false)));
    assert_ne!(ids_of(&orphan).0, client_ids.0);

    // Setting the parent after the span started is reported, not silently ignored.
    let started = tracing::info_span!("started");
    assert!(telemetry::span_context(&started).is_some(), "reading the context starts the span");
    assert!(matches!(
        telemetry::set_parent_from_http(&started, &headers),
        Err(SetParentError::AlreadyStarted)
    ));

    // --- gRPC: a real tonic call with the interceptor; the server side reads the metadata. ---
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = TraceServiceClient::with_interceptor(channel, TraceContextInterceptor);
    let grpc_client = tracing::info_span!("grpc_client", otel.kind = "client");
    let grpc_client_ids = ids_of(&grpc_client);
    grpc.export(ExportTraceServiceRequest::default())
        .instrument(grpc_client.clone())
        .await
        .expect("grpc call");

    let received = receiver
        .metadata
        .lock()
        .expect("metadata lock")
        .iter()
        .find(|m| m.get("traceparent").is_some())
        .cloned()
        .expect("a request carried traceparent");
    let request = tonic::Request::from_parts(received, Default::default(), ());
    let grpc_server = tracing::info_span!("grpc_server", otel.kind = "server");
    assert!(matches!(telemetry::set_parent_from_tonic(&grpc_server, &request), Ok(true)));
    let grpc_server_ids = ids_of(&grpc_server);
    assert_eq!(grpc_server_ids.0, grpc_client_ids.0, "same trace id across the gRPC hop");

    // inject_tonic / extract_tonic directly.
    let mut metadata = tonic::metadata::MetadataMap::new();
    grpc_client.in_scope(|| telemetry::inject_tonic(&tracing::Span::current().context_ext(), &mut metadata));
    let extracted = telemetry::extract_tonic(&metadata);
    use opentelemetry::trace::TraceContextExt;
    assert_eq!(extracted.span().span_context().trace_id().to_bytes(), grpc_client_ids.0);
    assert_eq!(extracted.span().span_context().span_id().to_bytes(), grpc_client_ids.1);

    drop(_default);
    drop(guard);
}

/// Helper so the test reads like application code: the OpenTelemetry context of a span.
trait ContextExt {
    fn context_ext(&self) -> opentelemetry::Context;
}

impl ContextExt for tracing::Span {
    fn context_ext(&self) -> opentelemetry::Context {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        self.context()
    }
}

#[test]
fn export_off_installs_no_layer_and_helpers_degrade() {
    let (layer, guard): (Option<OtelLayer<Registry>>, _) =
        telemetry::init(&TracingConfig::new("off")).expect("init without endpoint");
    assert!(layer.is_none());
    assert!(!guard.is_enabled());
    // As in a service: the (absent) OpenTelemetry layer next to a log layer.
    let subscriber = tracing_subscriber::registry()
        .with(layer)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink));
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("request");
        span.in_scope(|| {
            assert_eq!(telemetry::current_trace_ids(), None);
            assert_eq!(telemetry::current_traceparent(), None);
            let mut headers = http::HeaderMap::new();
            telemetry::inject_http(&tracing::Span::current().context_ext(), &mut headers);
            assert!(headers.is_empty());
        });
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        let server = tracing::info_span!("server");
        assert!(matches!(
            telemetry::set_parent_from_http(&server, &headers),
            Err(SetParentError::LayerNotFound)
        ));
    });
    guard.shutdown().expect("shutdown of a disabled guard");
}

#[test]
fn init_with_endpoint_outside_tokio_is_an_error() {
    for (protocol, endpoint) in [
        (telemetry::OtlpProtocol::Grpc, "http://127.0.0.1:4317"),
        (telemetry::OtlpProtocol::HttpProtobuf, "http://127.0.0.1:4318/v1/traces"),
    ] {
        let mut config = TracingConfig::new("no-runtime");
        config.protocol = protocol;
        config.endpoint = Some(endpoint.to_owned());
        let result = telemetry::init::<Registry>(&config);
        assert!(matches!(result, Err(telemetry::Error::NoTokioRuntime)), "{protocol:?}");
    }
}
