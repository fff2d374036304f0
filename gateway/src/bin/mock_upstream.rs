//! `aegis-mock-upstream`: the gateway's built-in mock provider served on its own port, as an
//! OpenAI- and Anthropic-compatible upstream for demos and as the baseline of the gateway
//! benchmark (the same mock, hit directly and through the gateway).
//!
//!     aegis-mock-upstream --listen 127.0.0.1:9100 --chunk-count 8

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use clap::Parser;
use gateway::config::MockConfig;
use gateway::upstream::mock;

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
        let router = mock::router(config);
        let listener = tokio::net::TcpListener::bind(flags.listen)
            .await
            .with_context(|| format!("cannot listen on {}", flags.listen))?;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router).await.context("serving")
    })
}
