//! OpenTelemetry export from a gateway backed by a three-process ledger, read back by a real
//! OTLP receiver: a streamed request joining the client's trace produces the SERVER span, one
//! INTERNAL span per policy stage and the upstream CLIENT span with the GenAI attributes; the
//! trace id is the client's, the one returned in `traceparent` and the one in the audit record;
//! a refused request has its SERVER span too. Its own test binary: the span exporter is
//! process-wide.

#[path = "../it/support.rs"]
#[allow(dead_code, unused_imports, reason = "shared with the main suite; this test uses part of it")]
mod support;

use std::time::{Duration, Instant};

use chaos_tests::otlp::{self, Receiver};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use proto::v1;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::support::{Gateway, KEY_ALPHA, LedgerCluster, config, post_with_headers};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Waits until the receiver holds a span named `name` in trace `trace_id` (hex).
async fn wait_for(receiver: &Receiver, trace_id: &str, name: &str) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans: Vec<Span> = receiver
            .spans()
            .into_iter()
            .map(|(_, span)| span)
            .filter(|span| hex(&span.trace_id) == trace_id)
            .collect();
        if spans.iter().any(|span| span.name == name) {
            return spans;
        }
        assert!(Instant::now() < deadline, "no span {name:?} in trace {trace_id}: {:?}", names(&spans));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn names(spans: &[Span]) -> Vec<String> {
    spans.iter().map(|span| span.name.clone()).collect()
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|span| span.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {:?}", names(spans)))
}

fn string_attribute(span: &Span, key: &str) -> Option<String> {
    otlp::str_attr(&span.attributes, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_and_a_refused_request_are_traced_with_genai_attributes() {
    let (receiver_address, receiver) = otlp::start_receiver().await;
    let mut tracing_config = telemetry::TracingConfig::new("aegis-gateway-test");
    tracing_config.endpoint = Some(format!("http://{receiver_address}"));
    tracing_config.scheduled_delay = Some(Duration::from_millis(100));
    let (layer, guard) = telemetry::init(&tracing_config).expect("telemetry");
    tracing_subscriber::registry().with(layer).init();

    // The ledger nodes export to the same receiver.
    let ledger = LedgerCluster::start_with(chaos_tests::ClusterOptions {
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), format!("http://{receiver_address}")),
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
        ],
        ..chaos_tests::ClusterOptions::default()
    })
    .await;
    let spool = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(config(&ledger.endpoints(), spool.path())).await;

    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let stream = post_with_headers(
        &gateway.url("/v1/chat/completions"),
        Some(KEY_ALPHA),
        r#"{"model":"mock-1","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#,
        &[("traceparent", &traceparent)],
    )
    .await;
    assert_eq!(stream.status, 200);
    let returned =
        stream.headers.get("traceparent").expect("the gateway returns traceparent").to_str().unwrap();

    let spans = wait_for(&receiver, TRACE_ID, "chat mock-1").await;
    let spans = wait_for(&receiver, TRACE_ID, "POST /v1/chat/completions")
        .await
        .into_iter()
        .chain(spans)
        .collect::<Vec<_>>();
    let server = named(&spans, "POST /v1/chat/completions");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN, "the SERVER span continues the client's trace");
    assert_eq!(otlp::int_attr(&server.attributes, "http.response.status_code"), Some(200));
    assert_eq!(string_attribute(server, "http.route").as_deref(), Some("/v1/chat/completions"));
    assert_eq!(
        returned,
        format!("00-{TRACE_ID}-{}-01", hex(&server.span_id)),
        "traceparent names the SERVER span"
    );

    for stage in ["aegis.limits", "aegis.auth", "aegis.waf", "aegis.rate_limit", "aegis.adapter"] {
        let span = named(&spans, stage);
        assert_eq!(span.kind, SpanKind::Internal as i32, "{stage}");
        assert_eq!(span.parent_span_id, server.span_id, "{stage} is a child of the SERVER span");
    }
    let client = named(&spans, "chat mock-1");
    assert_eq!(client.kind, SpanKind::Client as i32);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(string_attribute(client, "gen_ai.operation.name").as_deref(), Some("chat"));
    assert_eq!(string_attribute(client, "gen_ai.provider.name").as_deref(), Some("aegis.mock"));
    assert_eq!(string_attribute(client, "gen_ai.request.model").as_deref(), Some("mock-1"));
    assert_eq!(string_attribute(client, "gen_ai.response.model").as_deref(), Some("mock-1"));
    assert!(otlp::int_attr(&client.attributes, "gen_ai.usage.input_tokens").is_some_and(|tokens| tokens > 0));
    assert!(
        otlp::int_attr(&client.attributes, "gen_ai.usage.output_tokens").is_some_and(|tokens| tokens > 0)
    );
    assert!(
        matches!(
            otlp::attr(&client.attributes, "gen_ai.request.stream"),
            Some(any_value::Value::BoolValue(true))
        ),
        "gen_ai.request.stream"
    );
    match otlp::attr(&client.attributes, "gen_ai.response.finish_reasons") {
        Some(any_value::Value::ArrayValue(array)) => assert_eq!(array.values.len(), 1),
        other => panic!("gen_ai.response.finish_reasons is not an array: {other:?}"),
    }
    for deprecated in ["gen_ai.system", "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens"] {
        assert!(otlp::attr(&client.attributes, deprecated).is_none(), "{deprecated} is deprecated");
    }
    assert!(client.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(
        client.end_time_unix_nano <= server.end_time_unix_nano,
        "the SERVER span covers the whole stream"
    );

    // The audit record names the same trace and the SERVER span.
    let proof = ledger.proof(&stream.record_id()).await;
    let record = v1::AuditRecord::decode(proof.record.as_slice()).unwrap();
    assert_eq!(hex(&record.trace_id), TRACE_ID);
    assert_eq!(record.span_id, server.span_id);

    // The audit batch that carried the record links to the request's SERVER span, and the
    // ledger's Append and commit spans are in the batch's trace.
    let deadline = Instant::now() + Duration::from_secs(20);
    let batch = loop {
        let found = receiver.spans().into_iter().map(|(_, span)| span).find(|span| {
            span.name == "aegis.audit.append"
                && span
                    .links
                    .iter()
                    .any(|link| hex(&link.trace_id) == TRACE_ID && link.span_id == server.span_id)
        });
        if let Some(batch) = found {
            break batch;
        }
        assert!(Instant::now() < deadline, "no audit batch span links to the request");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(batch.kind, SpanKind::Client as i32);
    let batch_trace = hex(&batch.trace_id);
    let ledger_spans = wait_for(&receiver, &batch_trace, "aegis.ledger.commit").await;
    let append = ledger_spans
        .iter()
        .find(|span| span.name == "aegis.ledger.v1.Ledger/Append" && span.parent_span_id == batch.span_id)
        .unwrap_or_else(|| panic!("no ledger Append span under the batch span: {:?}", names(&ledger_spans)));
    assert_eq!(append.kind, SpanKind::Server as i32);
    let resources: Vec<String> = receiver
        .spans()
        .into_iter()
        .filter(|(_, span)| span.span_id == append.span_id)
        .filter_map(|(resource, _)| {
            resource.and_then(|resource| otlp::str_attr(&resource.attributes, "service.name"))
        })
        .collect();
    assert_eq!(resources, ["aegis-ledger"], "the Append span comes from a ledger process");

    // A refused request (no key) is traced too, in a trace of its own.
    let refused = post_with_headers(
        &gateway.url("/v1/chat/completions"),
        None,
        r#"{"model":"mock-1","messages":[]}"#,
        &[("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
    )
    .await;
    assert_eq!(refused.status, 401);
    let spans = wait_for(&receiver, "0af7651916cd43dd8448eb211c80319c", "POST /v1/chat/completions").await;
    let server = named(&spans, "POST /v1/chat/completions");
    assert_eq!(otlp::int_attr(&server.attributes, "http.response.status_code"), Some(401));
    assert!(spans.iter().any(|span| span.name == "aegis.auth"), "{:?}", names(&spans));
    assert!(
        !spans.iter().any(|span| span.name.starts_with("chat ")),
        "a refused request never reaches the upstream"
    );

    gateway.stop().await;
    tokio::task::spawn_blocking(move || guard.shutdown()).await.unwrap().unwrap();
}
