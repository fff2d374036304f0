//! The adapter and forwarder: picks the upstream that serves the request's model, forwards the
//! body as received, and relays the answer. Plain responses are read whole (bounded), analysed
//! and returned; streams are relayed chunk by chunk by a stream task that also finishes the
//! request's audit record when the stream ends, however it ends.

use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use sha2::{Digest as _, Sha256};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument as _;

use crate::analysis::ResponseAnalyzer;
use crate::app::App;
use crate::audit::draft::{Draft, Outcome, STATUS_CLIENT_CLOSED};
use crate::config::AuditModeConfig;
use crate::error::{ApiError, ErrorKind, Flavor};
use crate::pipeline::{ReservationSlot, StreamAudited};
use crate::policy::limits::ParsedRequest;
use crate::spans;
use crate::upstream::{Api, ResponseBody, Upstream};

/// The `: ping` comment sent while a stream waits for its first chunk.
const PING: &[u8] = b": ping\n\n";

type ProxyState = State<Arc<App>>;

/// The handler of every model API route; which API it is follows from the route.
pub async fn forward(
    State(app): ProxyState,
    Extension(draft): Extension<Arc<Draft>>,
    Extension(parsed): Extension<ParsedRequest>,
    Extension(slot): Extension<ReservationSlot>,
    headers: HeaderMap,
) -> Response {
    let route = draft.update(|fields| fields.route);
    let Some(api) = Api::of_route(route) else {
        return ApiError::new(ErrorKind::Internal, format!("no model API is served at {route:?}"))
            .into_response();
    };
    proxy(app, api, draft, parsed, slot, headers).await
}

/// `GET /v1/models`: every upstream's models, once each.
pub async fn models(State(app): ProxyState) -> Response {
    let mut names: Vec<String> = Vec::new();
    for upstream in app.upstreams.iter() {
        for name in upstream.models().await {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let body = crate::upstream::mock::models(&names).to_string();
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

async fn proxy(
    app: Arc<App>,
    api: Api,
    draft: Arc<Draft>,
    parsed: ParsedRequest,
    slot: ReservationSlot,
    mut headers: HeaderMap,
) -> Response {
    let adapter = spans::stage("aegis.adapter");
    let flavor = if api == Api::Messages { Flavor::Anthropic } else { Flavor::OpenAi };
    // A request refused or failed from here on used no tokens: give its reservation back.
    let refuse = |error: ApiError| {
        slot.settle(&app, 0);
        error.into_response_for(flavor)
    };
    let Some(upstream) = app.upstreams.route(&parsed.model).cloned() else {
        return refuse(
            ApiError::new(
                ErrorKind::NotFound,
                format!("the model `{}` does not exist or you do not have access to it", parsed.model),
            )
            .with_param("model"),
        );
    };
    if !upstream.speaks(api) {
        let hint = if api == Api::Messages {
            "an OpenAI route such as /v1/chat/completions"
        } else {
            "/v1/messages"
        };
        return ApiError::new(
            ErrorKind::InvalidRequest,
            format!(
                "the model `{}` is served by an upstream that does not speak this API; call {hint}",
                parsed.model
            ),
        )
        .with_param("model")
        .into_response_for(flavor);
    }
    draft.update(|fields| fields.upstream = Some(upstream.name.clone()));
    let permits = if parsed.stream {
        match admit_stream(&app, &draft) {
            Ok(permits) => Some(permits),
            Err(error) => return refuse(error),
        }
    } else {
        None
    };
    drop(adapter);
    let call = spans::upstream(api, &upstream, &parsed.model, parsed.stream);
    if let Some((trace_id, span_id, flags)) = telemetry::span_ids(&call) {
        // The provider's spans, if it traces, hang under this call.
        let context = crate::trace_context::TraceContext { trace_id, span_id, flags };
        headers.insert(crate::trace_context::TRACEPARENT, context.traceparent());
    }
    let sent = Instant::now();
    let deadline = tokio::time::Instant::now() + upstream.response_timeout;
    let mut response = match upstream.send(api, &parsed, &headers).instrument(call.clone()).await {
        Ok(response) => response,
        Err(error) => {
            spans::finish_upstream(&call, &ResponseAnalyzer::default(), Some(error.kind.refusal_reason()));
            let labels = spans::metric_labels(api, &upstream, error.kind.refusal_reason().to_owned());
            app.metrics.observe_gen_ai(&labels, sent.elapsed().as_secs_f64(), None);
            return refuse(error);
        }
    };
    upstream.latency.observe(sent.elapsed().as_secs_f64());
    let is_event_stream = response
        .content_type
        .as_ref()
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
    if let (Some(permits), true, true) = (permits, response.status.is_success(), is_event_stream) {
        let labels = spans::metric_labels(api, &upstream, String::new());
        return stream(
            app,
            draft,
            slot,
            parsed,
            upstream,
            response.body,
            sent,
            deadline,
            permits,
            flavor,
            call,
            labels,
        );
    }
    let body = match tokio::time::timeout_at(deadline, response.body.read_all(upstream.response_bytes_max))
        .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(error)) => {
            spans::finish_upstream(&call, &ResponseAnalyzer::default(), Some(error.kind.refusal_reason()));
            let labels = spans::metric_labels(api, &upstream, error.kind.refusal_reason().to_owned());
            app.metrics.observe_gen_ai(&labels, sent.elapsed().as_secs_f64(), None);
            return refuse(error);
        }
        Err(_) => {
            let error = ApiError::new(ErrorKind::UpstreamTimeout, "the upstream's response took too long");
            spans::finish_upstream(&call, &ResponseAnalyzer::default(), Some(error.kind.refusal_reason()));
            let labels = spans::metric_labels(api, &upstream, error.kind.refusal_reason().to_owned());
            app.metrics.observe_gen_ai(&labels, sent.elapsed().as_secs_f64(), None);
            return refuse(error);
        }
    };
    let mut analyzer = ResponseAnalyzer::default();
    if response.status.is_success() {
        analyzer.feed_json(&body);
    }
    let status_error = (!response.status.is_success()).then(|| response.status.as_str().to_owned());
    spans::finish_upstream(&call, &analyzer, status_error.as_deref());
    drop(call);
    let labels = spans::metric_labels(api, &upstream, status_error.unwrap_or_default());
    app.metrics.observe_gen_ai(&labels, sent.elapsed().as_secs_f64(), token_counts(&analyzer));
    let body = if response.status.is_success() && api != Api::Embeddings {
        redact_response(&app, &draft, api, body)
    } else {
        body
    };
    let upstream_latency_us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
    settle(&app, &slot, &analyzer, &parsed);
    draft.update(|fields| {
        fields.upstream_latency_us = upstream_latency_us;
        fields.usage = analyzer.usage();
        if response.status.is_success() && api != Api::Embeddings {
            fields.analysis = Some(analyzer.analysis());
        }
    });
    let content_type = response.content_type.unwrap_or(HeaderValue::from_static("application/json"));
    let mut reply = Response::new(Body::from(body));
    *reply.status_mut() = response.status;
    reply.headers_mut().insert(CONTENT_TYPE, content_type);
    reply
}

/// Input and output tokens, when the upstream reported usage.
fn token_counts(analyzer: &ResponseAnalyzer) -> Option<(u64, u64)> {
    analyzer.usage().map(|usage| (usage.prompt_tokens, usage.completion_tokens))
}

/// Applies the tenant's WAF redactions to a whole response; an uninspectable response goes
/// out unchanged (counted), since what it says was already generated.
fn redact_response(app: &App, draft: &Draft, api: Api, body: Bytes) -> Bytes {
    let tenant =
        draft.update(|fields| fields.credential.as_ref().map(|credential| credential.tenant.clone()));
    let Some(tenant) = tenant else { return body };
    match app.waf.inspect_response(api, &body, &tenant.waf) {
        Ok(inspection) => {
            crate::pipeline::record_hits(app, draft, &inspection);
            match inspection.verdict {
                crate::waf::Verdict::Redacted(redacted) => redacted,
                _ => body,
            }
        }
        Err(error) => {
            app.metrics.waf_errors_total.inc();
            tracing::debug!(%error, "the WAF could not inspect a response");
            body
        }
    }
}

/// Takes a stream permit of the gateway and of the tenant, or refuses with 429.
fn admit_stream(app: &App, draft: &Draft) -> Result<[OwnedSemaphorePermit; 2], ApiError> {
    let tenant =
        draft.update(|fields| fields.credential.as_ref().map(|credential| credential.tenant.clone()));
    let Some(tenant) = tenant else {
        return Err(ApiError::new(ErrorKind::Internal, "stream admission before authentication"));
    };
    let gateway = app.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            ErrorKind::TooManyStreams,
            "this gateway has as many streams open as it allows; retry shortly",
        )
    })?;
    let tenant_permit = tenant.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            ErrorKind::TooManyStreams,
            format!(
                "your organization has {} streams open, its limit; retry when one finishes",
                tenant.streams_max
            ),
        )
    })?;
    Ok([gateway, tenant_permit])
}

/// Settles the token reservation with the upstream's reported usage or, when it reported none
/// (OpenAI streams without `include_usage`), with the prompt estimate plus the completion
/// tokens the gateway counted itself.
fn settle(app: &App, slot: &ReservationSlot, analyzer: &ResponseAnalyzer, parsed: &ParsedRequest) {
    let total_tokens = analyzer.total_tokens().unwrap_or_else(|| {
        crate::pipeline::prompt_tokens_estimate(parsed).saturating_add(analyzer.token_count())
    });
    slot.settle(app, total_tokens);
}

/// Starts the stream task and answers with the stream it feeds.
#[allow(clippy::too_many_arguments)]
fn stream(
    app: Arc<App>,
    draft: Arc<Draft>,
    slot: ReservationSlot,
    parsed: ParsedRequest,
    upstream: Arc<Upstream>,
    body: ResponseBody,
    sent: Instant,
    deadline: tokio::time::Instant,
    permits: [OwnedSemaphorePermit; 2],
    flavor: Flavor,
    call: tracing::Span,
    labels: crate::metrics::GenAiLabels,
) -> Response {
    // One chunk in flight: back-pressure from a slow client reaches the upstream at once.
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    app.metrics.streams_open.inc();
    let task = StreamTask {
        app: app.clone(),
        draft,
        slot,
        parsed,
        upstream,
        sent,
        deadline,
        flavor,
        sender,
        permits,
        call: call.clone(),
        labels,
    };
    // An exported span ends when it is last exited: the request's SERVER span (current here) is
    // entered once more when the stream is over, so that it covers the whole response.
    let request_span = tracing::Span::current();
    app.spawn_stream(async move {
        task.run(body).instrument(call).await;
        request_span.in_scope(|| {});
    });
    let mut response = Response::new(Body::from_stream(ReceiverStream::new(receiver)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response.extensions_mut().insert(StreamAudited);
    *response.status_mut() = StatusCode::OK;
    response
}

/// Relays one stream and records it.
struct StreamTask {
    app: Arc<App>,
    draft: Arc<Draft>,
    slot: ReservationSlot,
    /// The request: its size feeds the token settlement when the upstream reports no usage.
    parsed: ParsedRequest,
    upstream: Arc<Upstream>,
    sent: Instant,
    deadline: tokio::time::Instant,
    flavor: Flavor,
    sender: mpsc::Sender<Result<Bytes, std::io::Error>>,
    /// Held until the stream ends: the gateway's and the tenant's stream slots.
    permits: [OwnedSemaphorePermit; 2],
    /// The upstream call's CLIENT span, open until the stream ends.
    call: tracing::Span,
    /// The call's GenAI metric labels (no error type).
    labels: crate::metrics::GenAiLabels,
}

impl StreamTask {
    async fn run(self, mut body: ResponseBody) {
        let mut hasher = Sha256::new();
        let mut response_bytes = 0u64;
        let mut analyzer = ResponseAnalyzer::default();
        // In `durable` and `strict` mode the stream's terminal event waits for the record.
        let gated = self.draft.audit_mode() != AuditModeConfig::Async;
        let mut held: Vec<Bytes> = Vec::new();
        let mut status = StatusCode::OK.as_u16();
        let mut failure: Option<ApiError> = None;
        let mut first_chunk = true;
        let keepalive = self.app.stream_keepalive;
        // The end of the previous chunk, so a terminal marker split across chunks is found.
        let mut tail: Vec<u8> = Vec::new();
        // Sensitive data in the model's text is redacted over a sliding window when the
        // tenant's WAF policy redacts responses.
        let policy = self
            .draft
            .update(|fields| fields.credential.as_ref().map(|credential| credential.tenant.waf.clone()));
        let mut redactor = policy
            .filter(|policy| self.app.waf.redacts_responses(policy))
            .map(|policy| crate::waf::stream::StreamRedactor::new(self.app.waf.clone(), policy, self.flavor));
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(self.deadline, body.next_chunk()) => next,
                // The client went away: stop now, not at the next chunk, so the upstream
                // (dropped with `body`) stops generating at once.
                () = self.sender.closed() => {
                    status = STATUS_CLIENT_CLOSED;
                    break;
                }
                () = tokio::time::sleep(keepalive), if first_chunk => {
                    hasher.update(PING);
                    response_bytes += PING.len() as u64;
                    if self.sender.send(Ok(Bytes::from_static(PING))).await.is_err() {
                        status = STATUS_CLIENT_CLOSED;
                        break;
                    }
                    continue;
                }
            };
            let chunk = match next {
                Ok(Some(Ok(chunk))) => chunk,
                Ok(None) => break,
                Ok(Some(Err(error))) => {
                    failure = Some(error);
                    break;
                }
                Err(_) => {
                    failure = Some(ApiError::new(
                        ErrorKind::UpstreamTimeout,
                        "the upstream's stream took too long",
                    ));
                    break;
                }
            };
            if first_chunk {
                self.app.metrics.observe_first_chunk(&self.labels, self.sent.elapsed().as_secs_f64());
            }
            first_chunk = false;
            analyzer.feed_sse(&chunk);
            let outgoing = match &mut redactor {
                Some(redactor) => redactor.push(&chunk),
                None => vec![chunk],
            };
            if !self.relay(outgoing, gated, &mut held, &mut tail, &mut hasher, &mut response_bytes).await {
                // The client went away: dropping the upstream body cancels the upstream request.
                status = STATUS_CLIENT_CLOSED;
                break;
            }
        }
        if let Some(redactor) = &mut redactor {
            let rest = redactor.finish();
            if status != STATUS_CLIENT_CLOSED
                && !self.relay(rest, gated, &mut held, &mut tail, &mut hasher, &mut response_bytes).await
            {
                status = STATUS_CLIENT_CLOSED;
            }
            let hits = redactor.hits();
            if !hits.is_empty() {
                let inspection =
                    crate::waf::Inspection { hits, verdict: crate::waf::Verdict::Allow, shadow: false };
                crate::pipeline::record_hits(&self.app, &self.draft, &inspection);
            }
        }
        drop(body);
        if let Some(error) = &failure {
            tracing::warn!(upstream = %self.upstream.name, %error, "the upstream stream failed");
            let event = error.sse_event(self.flavor);
            hasher.update(&event);
            response_bytes += event.len() as u64;
            held.push(event);
        }
        let upstream_latency_us = u64::try_from(self.sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        let error_type = failure.as_ref().map(|error| error.kind.refusal_reason());
        spans::finish_upstream(&self.call, &analyzer, error_type);
        let labels = crate::metrics::GenAiLabels {
            error_type: error_type.unwrap_or_default().to_owned(),
            ..self.labels.clone()
        };
        self.app.metrics.observe_gen_ai(&labels, self.sent.elapsed().as_secs_f64(), token_counts(&analyzer));
        settle(&self.app, &self.slot, &analyzer, &self.parsed);
        self.draft.update(|fields| {
            fields.upstream_latency_us = upstream_latency_us;
            fields.usage = analyzer.usage();
            fields.analysis = Some(analyzer.analysis());
        });
        let response_sha256: [u8; 32] = hasher.finalize().into();
        let wait = self.draft.finish(&Outcome {
            status,
            refusal: failure.as_ref().map(|error| error.kind),
            response_sha256: &response_sha256,
            response_bytes,
        });
        if let Some(delivered) = wait {
            let outcome = tokio::time::timeout(self.app.strict_timeout, delivered).await;
            if !matches!(outcome, Ok(Ok(Ok(())))) {
                held = vec![
                    ApiError::new(
                        ErrorKind::AuditUnavailable,
                        "the audit record of this stream could not be made durable in time; its end is withheld",
                    )
                    .sse_event(self.flavor),
                ];
            }
        }
        for chunk in held {
            if self.sender.send(Ok(chunk)).await.is_err() {
                break;
            }
        }
        self.app.metrics.streams_open.dec();
        drop(self.permits);
    }
}

impl StreamTask {
    /// Sends chunks to the client, hashing what it receives; in `durable`/`strict` mode the
    /// terminal event and everything after it is held. Returns false when the client is gone.
    async fn relay(
        &self,
        chunks: Vec<Bytes>,
        gated: bool,
        held: &mut Vec<Bytes>,
        tail: &mut Vec<u8>,
        hasher: &mut Sha256,
        response_bytes: &mut u64,
    ) -> bool {
        for chunk in chunks {
            hasher.update(&chunk);
            *response_bytes += chunk.len() as u64;
            if gated && (!held.is_empty() || is_terminal(tail, &chunk, self.flavor)) {
                held.push(chunk);
                continue;
            }
            keep_tail(tail, &chunk);
            if self.sender.send(Ok(chunk)).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// The markers of the event that ends a stream: `data: [DONE]` (OpenAI), `message_stop`
/// (Anthropic).
const OPENAI_END: &[u8] = b"data: [DONE]";
const ANTHROPIC_END: &[u8] = b"event: message_stop";

/// Whether `chunk` completes the marker of the event that ends a stream, at the start of a line
/// (so the model writing "data: [DONE]" inside its text does not count), counting a marker that
/// began in `tail` (the end of the previous chunk; empty at the start of the stream). Holding
/// back the chunk that completes it is enough: until then the client has not seen the event.
fn is_terminal(tail: &[u8], chunk: &[u8], flavor: Flavor) -> bool {
    let marker = match flavor {
        Flavor::OpenAi => OPENAI_END,
        Flavor::Anthropic => ANTHROPIC_END,
    };
    let mut joined = Vec::with_capacity(1 + tail.len() + chunk.len());
    joined.push(b'\n');
    joined.extend_from_slice(tail);
    joined.extend_from_slice(chunk);
    let skip = tail.len().saturating_sub(marker.len());
    joined[skip..].windows(marker.len() + 1).any(|window| window[0] == b'\n' && &window[1..] == marker)
}

/// Keeps the last bytes of `chunk` (fewer than the longest marker) for the next check.
fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    let keep = ANTHROPIC_END.len().max(OPENAI_END.len()) - 1;
    tail.extend_from_slice(&chunk[chunk.len().saturating_sub(keep)..]);
    let excess = tail.len().saturating_sub(keep);
    tail.drain(..excess);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_markers_are_found_whole_or_split_between_chunks() {
        let stream = b"data: {\"x\":1}\n\ndata: [DONE]\n\n";
        for split in 1..stream.len() {
            let (first, second) = stream.split_at(split);
            let mut tail = Vec::new();
            let first_terminal = is_terminal(&tail, first, Flavor::OpenAi);
            keep_tail(&mut tail, first);
            let second_terminal = is_terminal(&tail, second, Flavor::OpenAi);
            let marker_complete_in_first = split >= stream.len() - 2;
            assert_eq!(first_terminal, marker_complete_in_first, "split at {split}");
            assert!(first_terminal || second_terminal, "split at {split}: the terminal event escaped");
        }
        assert!(!is_terminal(b"", b"data: {\"text\":\"[DONE]\"}", Flavor::OpenAi));
        assert!(
            !is_terminal(b"", b"data: {\"content\":\"data: [DONE]\"}\n\n", Flavor::OpenAi),
            "inside the text"
        );
        assert!(is_terminal(b"event: message_", b"stop\ndata: {}", Flavor::Anthropic));
    }
}
