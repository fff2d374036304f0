//! `aegis-mock-upstream`: the gateway's built-in mock provider served on its own port, as an
//! OpenAI- and Anthropic-compatible upstream for demos and as the baseline of the gateway
//! benchmark (the same mock, hit directly and through the gateway).
//!
//!     aegis-mock-upstream --listen 127.0.0.1:9100 --chunk-count 8

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use clap::Parser;
use gateway::config::MockConfig;
use gateway::error::{ApiError, ErrorKind};
use gateway::policy::limits::parse_request;
use gateway::upstream::{Api, mock};
use http::header::CONTENT_TYPE;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "aegis-mock-upstream",
    about = "Deterministic mock LLM provider (OpenAI and Anthropic APIs)"
)]
struct Flags {
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Delay before the response or its first streamed chunk.
    #[arg(long, default_value_t = 0)]
    first_token_latency_ms: u64,
    /// Content chunks per streamed response (words per plain one).
    #[arg(long, default_value_t = 8)]
    chunk_count: u32,
    #[arg(long, default_value_t = 0)]
    chunk_interval_ms: u64,
    /// Worker threads of the runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let config = Arc::new(MockConfig {
        first_token_latency_ms: flags.first_token_latency_ms,
        chunk_count: flags.chunk_count.clamp(1, 100_000),
        chunk_interval_ms: flags.chunk_interval_ms,
        ..MockConfig::default()
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(flags.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let router = Router::new()
            .route("/v1/chat/completions", post(|state, body| answer(state, Api::ChatCompletions, body)))
            .route("/v1/completions", post(|state, body| answer(state, Api::Completions, body)))
            .route("/v1/embeddings", post(|state, body| answer(state, Api::Embeddings, body)))
            .route("/v1/messages", post(|state, body| answer(state, Api::Messages, body)))
            .route(
                "/v1/models",
                get(|| async {
                    ([(CONTENT_TYPE, "application/json")], mock::models(&["mock-1"]).to_string())
                }),
            )
            .with_state(config);
        let listener = tokio::net::TcpListener::bind(flags.listen)
            .await
            .with_context(|| format!("cannot listen on {}", flags.listen))?;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router).await.context("serving")
    })
}

async fn answer(State(config): State<Arc<MockConfig>>, api: Api, body: Bytes) -> Response {
    let request = match parse_request(body, 128, 100_000) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let mut response = mock::respond(&config, api, &request);
    let content_type = response.content_type;
    if !request.stream || api == Api::Embeddings {
        if !response.first_delay.is_zero() {
            tokio::time::sleep(response.first_delay).await;
        }
        let Some(body) = response.chunks.pop_front() else {
            return ApiError::new(ErrorKind::Internal, "the mock made no response").into_response();
        };
        return ([(CONTENT_TYPE, content_type)], body).into_response();
    }
    let (first_delay, interval) = (response.first_delay, response.interval);
    let chunks = response.chunks;
    let stream = tokio_stream_from(chunks, first_delay, interval);
    ([(CONTENT_TYPE, content_type)], Body::from_stream(stream)).into_response()
}

/// The chunks as a stream, with the mock's delays.
fn tokio_stream_from(
    chunks: std::collections::VecDeque<Bytes>,
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
