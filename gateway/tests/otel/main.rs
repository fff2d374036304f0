//! OpenTelemetry export from a gateway backed by a three-process ledger, read back by a real
//! OTLP receiver: a streamed request joining the client's trace produces the SERVER span, the
//! smuggling guard's span, one INTERNAL span per policy stage and the upstream CLIENT span with
//! the GenAI attributes; the trace id is the client's, the one returned in `traceparent` and the
//! one in the audit record; the ledger's commit span holds the Raft write, its replication and
//! its apply; a refused request has its SERVER span too, and so has a request the smuggling
//! guard refuses before it reaches the pipeline. Its own test binary: the span exporter is
//! process-wide.

#[path = "../it/support.rs"]
#[allow(dead_code, unused_imports, reason = "shared with the main suite; this test uses part of it")]
mod support;

use std::time::{Duration, Instant};

use chaos_tests::otlp::{self, Receiver};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message as _;
use proto::v1;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
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

/// The one span named `name` whose parent is `parent`.
fn child<'a>(spans: &'a [Span], parent: &Span, name: &str) -> &'a Span {
    let mut children: Vec<&Span> =
        spans.iter().filter(|span| span.name == name && span.parent_span_id == parent.span_id).collect();
    // `spans` may hold a span twice (the results of two waits put together).
    children.sort_by(|left, right| left.span_id.cmp(&right.span_id));
    children.dedup_by(|left, right| left.span_id == right.span_id);
    match children[..] {
        [child] => child,
        _ => panic!("{} spans {name:?} under {:?}: {:?}", children.len(), parent.name, names(spans)),
    }
}

/// Asserts that `inner` lies within `outer` in time.
fn assert_within(inner: &Span, outer: &Span) {
    assert!(inner.start_time_unix_nano <= inner.end_time_unix_nano, "{} ends before it starts", inner.name);
    assert!(
        outer.start_time_unix_nano <= inner.start_time_unix_nano
            && inner.end_time_unix_nano <= outer.end_time_unix_nano,
        "{} [{}, {}] is not within {} [{}, {}]",
        inner.name,
        inner.start_time_unix_nano,
        inner.end_time_unix_nano,
        outer.name,
        outer.start_time_unix_nano,
        outer.end_time_unix_nano,
    );
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
    let body = r#"{"model":"mock-1","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let stream = post_with_headers(
        &gateway.url("/v1/chat/completions"),
        Some(KEY_ALPHA),
        body,
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

    // The smuggling guard checked the head on the connection before the request existed; the
    // SERVER span starts when the head's first bytes arrived, so the guard's span nests in it
    // and ends before the first stage starts.
    let guard_span = child(&spans, server, "aegis.guard");
    assert_eq!(guard_span.kind, SpanKind::Internal as i32);
    assert_within(guard_span, server);
    assert!(guard_span.end_time_unix_nano <= named(&spans, "aegis.limits").start_time_unix_nano);
    assert_eq!(string_attribute(guard_span, "aegis.guard.framing").as_deref(), Some("content-length"));
    assert_eq!(otlp::int_attr(&guard_span.attributes, "aegis.guard.content_length"), Some(body.len() as i64));
    assert!(
        otlp::int_attr(&guard_span.attributes, "aegis.guard.head_bytes")
            .is_some_and(|bytes| bytes > 100 && bytes < 1000),
        "aegis.guard.head_bytes"
    );
    assert!(
        otlp::attr(&guard_span.attributes, "aegis.internal.start_time_unix_nano").is_none()
            && otlp::attr(&server.attributes, "aegis.internal.start_time_unix_nano").is_none(),
        "the start-time carrier is not exported"
    );
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

    // Under the leader's commit span: the Raft write of the entry that carried the batch, its
    // replication until the state machine took it, and its apply.
    let ledger_spans = wait_for(&receiver, &batch_trace, "aegis.ledger.apply").await;
    let write = ledger_spans
        .iter()
        .find(|span| span.name == "aegis.ledger.raft.client_write")
        .unwrap_or_else(|| panic!("no client_write span: {:?}", names(&ledger_spans)));
    let commit = ledger_spans
        .iter()
        .find(|span| span.name == "aegis.ledger.commit" && span.span_id == write.parent_span_id)
        .unwrap_or_else(|| panic!("client_write is not under a commit span: {:?}", names(&ledger_spans)));
    let replicate = child(&ledger_spans, write, "aegis.ledger.raft.replicate");
    let apply = child(&ledger_spans, write, "aegis.ledger.apply");
    for span in [write, replicate, apply] {
        assert_eq!(span.kind, SpanKind::Internal as i32, "{}", span.name);
        assert_eq!(span.trace_id, batch.trace_id, "{} is in the batch's trace", span.name);
    }
    assert_within(write, commit);
    assert_within(replicate, write);
    assert_within(apply, write);
    assert_eq!(
        replicate.start_time_unix_nano, write.start_time_unix_nano,
        "replication starts at the proposal"
    );
    assert_eq!(replicate.end_time_unix_nano, apply.start_time_unix_nano, "apply starts once committed");
    assert!(apply.end_time_unix_nano <= write.end_time_unix_nano);
    assert!(otlp::int_attr(&write.attributes, "aegis.raft.log_index").is_some_and(|index| index > 0));
    assert!(otlp::int_attr(&write.attributes, "aegis.raft.term").is_some_and(|term| term > 0));
    assert!(otlp::int_attr(&write.attributes, "aegis.ledger.entry_records").is_some_and(|count| count >= 1));
    assert!(
        otlp::int_attr(&write.attributes, "aegis.ledger.tree_size")
            .is_some_and(|size| u64::try_from(size).unwrap() > proof.leaf_index),
        "the tree after the entry holds the record"
    );

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

    // A request the smuggling guard refuses (Content-Length with Transfer-Encoding) never
    // becomes a request: it gets a SERVER span of its own, with the failed guard span under it,
    // named by the 400's traceparent and by its audit record.
    let response = raw_exchange(
        gateway.address,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    let header = |name: &str| {
        response
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
            .unwrap_or_else(|| panic!("no {name} in {response}"))
            .to_owned()
    };
    let traceparent = header("traceparent");
    let [version, trace_id, span_id, flags] = traceparent.split('-').collect::<Vec<_>>()[..] else {
        panic!("traceparent {traceparent:?}");
    };
    assert_eq!((version, flags), ("00", "01"), "{traceparent}");
    let spans = wait_for(&receiver, trace_id, "HTTP").await;
    let server = named(&spans, "HTTP");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert!(server.parent_span_id.is_empty(), "a trace of its own");
    assert_eq!(hex(&server.span_id), span_id, "traceparent names the SERVER span");
    assert_eq!(otlp::int_attr(&server.attributes, "http.response.status_code"), Some(400));
    assert_eq!(string_attribute(server, "http.request.method").as_deref(), Some("_OTHER"));
    let record_id = header("x-aegis-record-id");
    assert_eq!(string_attribute(server, "aegis.record_id").as_deref(), Some(record_id.as_str()));
    let refusal = child(&spans, server, "aegis.guard");
    assert_within(refusal, server);
    assert_eq!(
        string_attribute(refusal, "error.type").as_deref(),
        Some("content_length_with_transfer_encoding")
    );
    let status = refusal.status.as_ref().expect("the guard span has a status");
    assert_eq!(status.code, StatusCode::Error as i32);
    assert!(status.message.contains("Content-Length and Transfer-Encoding"), "{}", status.message);
    let proof = ledger.proof(&record_id).await;
    let record = v1::AuditRecord::decode(proof.record.as_slice()).unwrap();
    assert_eq!(record.status_code, 400);
    assert_eq!(hex(&record.trace_id), trace_id, "the audit record names the refusal's trace");
    assert_eq!(record.span_id, server.span_id);

    gateway.stop().await;
    tokio::task::spawn_blocking(move || guard.shutdown()).await.unwrap().unwrap();
}

/// Sends `bytes` on a new connection and reads the answer until the gateway closes it.
async fn raw_exchange(address: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the gateway closes a refused connection")
        .expect("read");
    String::from_utf8(response).expect("an ASCII response")
}
