//! Spans created through `tracing` reach a real OTLP receiver with the right shape: gRPC (the
//! collector's `TraceService`) and HTTP/protobuf (`POST /v1/traces`).

use chaos_tests::otlp as common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use opentelemetry::KeyValue;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use telemetry::{OtlpProtocol, SamplerConfig, TracingConfig};
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_with_ids_kinds_attributes_links_and_resource() {
    let (addr, receiver) = common::start_receiver().await;
    let mut config = TracingConfig::new("aegis-test");
    config.endpoint = Some(format!("http://{addr}"));
    config.resource_attributes = vec![
        KeyValue::new("deployment.environment", "test"),
        // Overridden by `service_name`.
        KeyValue::new("service.name", "ignored"),
    ];
    config.sampler = SamplerConfig::AlwaysOn;
    config.export_timeout = Some(Duration::from_secs(5));
    let (layer, guard) = telemetry::init(&config).expect("init");
    assert!(layer.is_some() && guard.is_enabled());
    let subscriber = tracing_subscriber::registry().with(layer);

    let (request_ids, traceparent, other_sc) = {
        let _default = tracing::subscriber::set_default(subscriber);
        // A span in another trace, to be linked from the batch span.
        let other = tracing::info_span!("other_request", otel.kind = "server");
        let other_sc = telemetry::span_context(&other).expect("other span context");
        drop(other);

        let request = tracing::info_span!(
            "http_request",
            otel.kind = "server",
            otel.name = "POST /v1/chat/completions",
            gen_ai.operation.name = "chat",
            http.response.status_code = 200i64,
        );
        let (ids, traceparent) = request.in_scope(|| {
            let ids = telemetry::current_trace_ids().expect("current ids");
            let traceparent = telemetry::current_traceparent().expect("traceparent");
            tracing::info_span!(
                "upstream_call",
                otel.kind = "client",
                gen_ai.request.model = "model-x",
                gen_ai.usage.input_tokens = 42i64,
            )
            .in_scope(|| {});
            tracing::info_span!("waf_check").in_scope(|| {});
            (ids, traceparent)
        });
        let request_sc = telemetry::span_context(&request).expect("request span context");
        drop(request);

        let batch = tracing::info_span!("raft_append", entries = 2i64);
        telemetry::add_links(&batch, [request_sc, other_sc.clone()]);
        batch.in_scope(|| {});
        drop(batch);
        (ids, traceparent, other_sc)
    };

    let guard = tokio::task::spawn_blocking(move || guard.force_flush().map(|()| guard))
        .await
        .expect("join")
        .expect("flush");

    let spans = receiver.spans();
    let mut names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["POST /v1/chat/completions", "other_request", "raft_append", "upstream_call", "waf_check"],
        "exactly our spans, none from the exporter's own transport"
    );
    let find = |name: &str| {
        spans.iter().find(|(_, s)| s.name == name).map(|(r, s)| (r.clone(), s.clone())).expect(name)
    };
    let (resource, request) = find("POST /v1/chat/completions");
    let (_, client) = find("upstream_call");
    let (_, internal) = find("waf_check");
    let (_, batch) = find("raft_append");

    // Resource.
    let resource = resource.expect("resource");
    assert_eq!(common::str_attr(&resource.attributes, "service.name").as_deref(), Some("aegis-test"));
    assert_eq!(common::str_attr(&resource.attributes, "deployment.environment").as_deref(), Some("test"));
    assert_eq!(common::str_attr(&resource.attributes, "telemetry.sdk.language").as_deref(), Some("rust"));

    // Ids and parentage.
    assert_eq!(request.trace_id, request_ids.0.to_vec());
    assert_eq!(request.span_id, request_ids.1.to_vec());
    assert!(request.parent_span_id.is_empty(), "request span is a root");
    for child in [&client, &internal] {
        assert_eq!(child.trace_id, request.trace_id);
        assert_eq!(child.parent_span_id, request.span_id);
    }
    assert_ne!(batch.trace_id, request.trace_id, "the batch span starts its own trace");
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(traceparent, format!("00-{}-{}-01", hex(&request.trace_id), hex(&request.span_id)));

    // Kinds.
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(client.kind, SpanKind::Client as i32);
    assert_eq!(internal.kind, SpanKind::Internal as i32);

    // Attributes.
    assert_eq!(common::str_attr(&request.attributes, "gen_ai.operation.name").as_deref(), Some("chat"));
    assert_eq!(common::int_attr(&request.attributes, "http.response.status_code"), Some(200));
    assert_eq!(common::str_attr(&client.attributes, "gen_ai.request.model").as_deref(), Some("model-x"));
    assert_eq!(common::int_attr(&client.attributes, "gen_ai.usage.input_tokens"), Some(42));
    assert_eq!(common::int_attr(&batch.attributes, "entries"), Some(2));

    // Links.
    let links: Vec<(Vec<u8>, Vec<u8>)> =
        batch.links.iter().map(|l| (l.trace_id.clone(), l.span_id.clone())).collect();
    assert_eq!(
        links,
        [
            (request.trace_id.clone(), request.span_id.clone()),
            (other_sc.trace_id().to_bytes().to_vec(), other_sc.span_id().to_bytes().to_vec()),
        ]
    );

    tokio::task::spawn_blocking(move || guard.shutdown()).await.expect("join").expect("shutdown");
}

/// An OTLP/HTTP trace receiver: answers `POST /v1/traces` with `content-type:
/// application/x-protobuf` by decoding the body and replying 200 with an empty
/// `ExportTraceServiceResponse`, and anything else with an error status.
#[derive(Clone, Default)]
struct HttpReceiver {
    /// The decoded export requests.
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    /// Method, path and content type of every request that was refused.
    refused: Arc<Mutex<Vec<String>>>,
}

impl HttpReceiver {
    /// Serves on 127.0.0.1 on an ephemeral port.
    async fn start() -> (SocketAddr, HttpReceiver) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let receiver = HttpReceiver::default();
        let serving = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let receiver = serving.clone();
                let service = hyper::service::service_fn(move |request| {
                    let receiver = receiver.clone();
                    async move { Ok::<_, Infallible>(receiver.handle(request).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        (addr, receiver)
    }

    async fn handle(&self, request: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let status = |code: u16| {
            hyper::Response::builder().status(code).body(Full::default()).expect("error response")
        };
        let content_type = request.headers().get(http::header::CONTENT_TYPE).cloned();
        if request.method() != http::Method::POST
            || request.uri().path() != "/v1/traces"
            || content_type.as_ref().map(|v| v.as_bytes()) != Some(b"application/x-protobuf")
        {
            let seen = format!("{} {} {content_type:?}", request.method(), request.uri());
            self.refused.lock().expect("refused lock").push(seen);
            return status(404);
        }
        let Ok(body) = request.into_body().collect().await else { return status(400) };
        let Ok(export) = ExportTraceServiceRequest::decode(body.to_bytes()) else {
            self.refused.lock().expect("refused lock").push("undecodable body".to_owned());
            return status(400);
        };
        self.requests.lock().expect("requests lock").push(export);
        let response = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
        hyper::Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(response)))
            .expect("export response")
    }

    /// Every received span's name with the resource's `service.name`.
    fn spans(&self) -> Vec<(Option<String>, String)> {
        let requests = self.requests.lock().expect("requests lock");
        requests
            .iter()
            .flat_map(|r| r.resource_spans.iter())
            .flat_map(|rs| {
                let service =
                    rs.resource.as_ref().and_then(|r| common::str_attr(&r.attributes, "service.name"));
                rs.scope_spans
                    .iter()
                    .flat_map(|ss| ss.spans.iter())
                    .map(move |s| (service.clone(), s.name.clone()))
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_http_receiver_as_protobuf() {
    let (addr, receiver) = HttpReceiver::start().await;
    let mut config = TracingConfig::new("aegis-http-test");
    config.protocol = OtlpProtocol::HttpProtobuf;
    config.endpoint = Some(format!("http://{addr}/v1/traces"));
    config.sampler = SamplerConfig::AlwaysOn;
    config.export_timeout = Some(Duration::from_secs(5));
    let (layer, guard) = telemetry::init(&config).expect("init");
    assert!(layer.is_some() && guard.is_enabled());
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        tracing::info_span!("http_request", otel.kind = "server").in_scope(|| {
            tracing::info_span!("upstream_call", otel.kind = "client").in_scope(|| {});
        });
    });

    // The batch processor exports on its own thread, outside the runtime: the flush only
    // succeeds if the HTTP client's requests run on the runtime all the same.
    let guard = tokio::task::spawn_blocking(move || guard.force_flush().map(|()| guard))
        .await
        .expect("join")
        .expect("flush");

    assert_eq!(*receiver.refused.lock().expect("refused lock"), Vec::<String>::new());
    let mut spans = receiver.spans();
    spans.sort();
    let service = Some("aegis-http-test".to_owned());
    assert_eq!(
        spans,
        [(service.clone(), "http_request".to_owned()), (service, "upstream_call".to_owned())],
        "exactly our spans, under our service name"
    );
    assert!(telemetry::export_healthy());
    tokio::task::spawn_blocking(move || guard.shutdown()).await.expect("join").expect("shutdown");
}
