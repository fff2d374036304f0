//! The built-in `mock` provider: deterministic OpenAI and Anthropic responses (the same request
//! always gets the same text), with configurable latency and streamed chunk count, for demos,
//! tests and benchmarks. Served in-process as an upstream, and on its own port by
//! `aegis-mock-upstream` as the benchmark's baseline.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
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
