//! The built-in `mock` provider: deterministic OpenAI and Anthropic responses (the same request
//! always gets the same text), with configurable latency and streamed chunk count, for demos,
//! tests and benchmarks. Served in-process as an upstream, and on its own port by
//! `aegis-mock-upstream` as the benchmark's baseline.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::Api;
use crate::config::MockConfig;
use crate::policy::limits::ParsedRequest;

/// Words the mock's answers are made of.
const WORDS: [&str; 16] = [
    "audit",
    "ledger",
    "merkle",
    "proof",
    "gateway",
    "record",
    "policy",
    "tenant",
    "token",
    "stream",
    "quorum",
    "commit",
    "root",
    "leaf",
    "checkpoint",
    "verify",
];

/// Top log-probabilities sent per token when the request asks for them: a fixed distribution
/// over three candidates, so token entropy is known exactly (1.5 bits).
const TOP_LOGPROBS: [f64; 3] =
    [-std::f64::consts::LN_2, -2.0 * std::f64::consts::LN_2, -2.0 * std::f64::consts::LN_2];

/// A response the mock made: its body, whole or as timed chunks.
#[derive(Debug)]
pub struct MockResponse {
    pub content_type: &'static str,
    pub first_delay: Duration,
    pub interval: Duration,
    pub chunks: VecDeque<Bytes>,
}

/// Makes the mock's response to `api` for `request`.
pub fn respond(config: &MockConfig, api: Api, request: &ParsedRequest) -> MockResponse {
    let seed = Sha256::digest(&request.body);
    let seed = usize::from(seed[0]) | usize::from(seed[1]) << 8;
    let completion_tokens = config.chunk_count as usize;
    let words: Vec<&str> = (0..completion_tokens).map(|index| WORDS[(seed + index) % WORDS.len()]).collect();
    let prompt_tokens = (request.body.len() / 4).max(1);
    let first_delay = Duration::from_millis(config.first_token_latency_ms);
    let interval = Duration::from_millis(config.chunk_interval_ms);
    let id = format!("mock-{seed:04x}");
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let model = request.model.as_str();
    let logprobs = |word: &str| {
        json!({"content": [{
            "token": word,
            "logprob": TOP_LOGPROBS[0],
            "top_logprobs": TOP_LOGPROBS.iter().enumerate()
                .map(|(rank, logprob)| json!({"token": format!("{word}{rank}"), "logprob": logprob}))
                .collect::<Vec<_>>(),
        }]})
    };
    let mut chunks = VecDeque::new();
    let sse = |value: Value| Bytes::from(format!("data: {value}\n\n"));
    let event = |name: &str, value: Value| Bytes::from(format!("event: {name}\ndata: {value}\n\n"));
    let content_type = if request.stream { "text/event-stream" } else { "application/json" };
    match (api, request.stream) {
        (Api::ChatCompletions, false) => {
            let content = words.join(" ");
            let all_logprobs = request.logprobs.then(|| {
                let content: Vec<Value> =
                    words.iter().map(|word| logprobs(word)["content"][0].clone()).collect();
                json!({"content": content})
            });
            chunks.push_back(Bytes::from(
                json!({
                    "id": format!("chatcmpl-{id}"), "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "logprobs": all_logprobs, "finish_reason": "stop"}],
                    "usage": usage,
                })
                .to_string(),
            ));
        }
        (Api::ChatCompletions, true) => {
            let chunk = |delta: Value, logprobs: Option<Value>, finish: Option<&str>| {
                json!({
                    "id": format!("chatcmpl-{id}"), "object": "chat.completion.chunk", "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
                })
            };
            chunks.push_back(sse(chunk(json!({"role": "assistant", "content": ""}), None, None)));
            for (index, word) in words.iter().enumerate() {
                let text = if index == 0 { (*word).to_owned() } else { format!(" {word}") };
                let logprobs = request.logprobs.then(|| logprobs(word));
                chunks.push_back(sse(chunk(json!({"content": text}), logprobs, None)));
            }
            chunks.push_back(sse(chunk(json!({}), None, Some("stop"))));
            if request.include_usage {
                chunks.push_back(sse(json!({
                    "id": format!("chatcmpl-{id}"), "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [], "usage": usage,
                })));
            }
            chunks.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        (Api::Completions, false) => {
            chunks.push_back(Bytes::from(
                json!({
                    "id": format!("cmpl-{id}"), "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": words.join(" "), "logprobs": null, "finish_reason": "stop"}],
                    "usage": usage,
                })
                .to_string(),
            ));
        }
        (Api::Completions, true) => {
            for (index, word) in words.iter().enumerate() {
                let text = if index == 0 { (*word).to_owned() } else { format!(" {word}") };
                let finish = (index + 1 == words.len()).then_some("stop");
                chunks.push_back(sse(json!({
                    "id": format!("cmpl-{id}"), "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
                })));
            }
            if request.include_usage {
                chunks.push_back(sse(json!({
                    "id": format!("cmpl-{id}"), "object": "text_completion", "created": created, "model": model,
                    "choices": [], "usage": usage,
                })));
            }
            chunks.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        (Api::Embeddings, _) => {
            let inputs = embedding_inputs(&request.body);
            let dimensions = config.embedding_dimensions as usize;
            let data: Vec<Value> = (0..inputs)
                .map(|index| {
                    let vector: Vec<f64> = (0..dimensions)
                        .map(|d| {
                            f64::from(u8::try_from((seed + index * 31 + d * 7) % 200).unwrap_or(0)) / 100.0
                                - 1.0
                        })
                        .collect();
                    json!({"object": "embedding", "index": index, "embedding": vector})
                })
                .collect();
            chunks.push_back(Bytes::from(
                json!({
                    "object": "list", "data": data, "model": model,
                    "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
                })
                .to_string(),
            ));
            return MockResponse { content_type: "application/json", first_delay, interval, chunks };
        }
        (Api::Messages, false) => {
            chunks.push_back(Bytes::from(
                json!({
                    "id": format!("msg_{id}"), "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": words.join(" ")}],
                    "stop_reason": "end_turn", "stop_sequence": null,
                    "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
                })
                .to_string(),
            ));
        }
        (Api::Messages, true) => {
            chunks.push_back(event("message_start", json!({"type": "message_start", "message": {
                "id": format!("msg_{id}"), "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": 1},
            }})));
            chunks.push_back(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            for (index, word) in words.iter().enumerate() {
                let text = if index == 0 { (*word).to_owned() } else { format!(" {word}") };
                chunks.push_back(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
                ));
            }
            chunks.push_back(event("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
            chunks.push_back(event(
                "message_delta",
                json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": completion_tokens}}),
            ));
            chunks.push_back(event("message_stop", json!({"type": "message_stop"})));
        }
    }
    MockResponse { content_type, first_delay, interval, chunks }
}

/// The model list the mock serves: its configured exact model names.
pub fn models(names: &[&str]) -> Value {
    let data: Vec<Value> = names
        .iter()
        .map(|name| json!({"id": name, "object": "model", "created": 0, "owned_by": "aegis-mock"}))
        .collect();
    json!({"object": "list", "data": data})
}

/// How many inputs an embeddings request carries (`input` is a string or an array).
fn embedding_inputs(body: &[u8]) -> usize {
    #[derive(serde::Deserialize)]
    struct Input {
        input: Value,
    }
    match serde_json::from_slice::<Input>(body) {
        Ok(Input { input: Value::Array(items) }) if !items.is_empty() => {
            // An array of token ids is one input; an array of strings or of arrays is many.
            if items.iter().all(Value::is_number) { 1 } else { items.len() }
        }
        _ => 1,
    }
}

/// The mock as an HTTP server's routes (`/v1/chat/completions`, `/v1/completions`,
/// `/v1/embeddings`, `/v1/messages`, `/v1/models`), as `aegis-mock-upstream` serves them.
pub fn router(config: Arc<MockConfig>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(|state, body| answer(state, Api::ChatCompletions, body)))
        .route("/v1/completions", post(|state, body| answer(state, Api::Completions, body)))
        .route("/v1/embeddings", post(|state, body| answer(state, Api::Embeddings, body)))
        .route("/v1/messages", post(|state, body| answer(state, Api::Messages, body)))
        .route(
            "/v1/models",
            get(|| async { ([(CONTENT_TYPE, "application/json")], models(&["mock-1"]).to_string()) }),
        )
        .with_state(config)
}

async fn answer(State(config): State<Arc<MockConfig>>, api: Api, body: Bytes) -> Response {
    let request = match crate::policy::limits::parse_request(body, 128, 100_000) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let mut response = respond(&config, api, &request);
    let content_type = response.content_type;
    if !request.stream || api == Api::Embeddings {
        if !response.first_delay.is_zero() {
            tokio::time::sleep(response.first_delay).await;
        }
        let Some(body) = response.chunks.pop_front() else {
            return crate::error::ApiError::new(
                crate::error::ErrorKind::Internal,
                "the mock made no response",
            )
            .into_response();
        };
        return ([(CONTENT_TYPE, content_type)], body).into_response();
    }
    let (first_delay, interval) = (response.first_delay, response.interval);
    let chunks = response.chunks;
    let stream = timed_stream(chunks, first_delay, interval);
    ([(CONTENT_TYPE, content_type)], Body::from_stream(stream)).into_response()
}

/// The chunks as a stream, with the mock's delays.
fn timed_stream(
    chunks: VecDeque<Bytes>,
    first_delay: std::time::Duration,
    interval: std::time::Duration,
) -> tokio_stream::wrappers::ReceiverStream<Result<Bytes, std::io::Error>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut delay = first_delay;
        for chunk in chunks {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            delay = interval;
            if sender.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}
