//! Spans created through `tracing` reach a real OTLP/gRPC receiver with the right shape.

use chaos_tests::otlp as common;

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use telemetry::{SamplerConfig, TracingConfig};
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
