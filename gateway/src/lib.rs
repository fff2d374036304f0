//! Aegis gateway: an OpenAI-compatible (and Anthropic `/v1/messages`) governance proxy. Every
//! request passes one policy pipeline (`pipeline.rs`), is forwarded to its upstream
//! (`proxy.rs`, `upstream/`), and leaves exactly one audit record that reaches the Aegis
//! ledger without delaying the client (`audit/`).
//!
//! The gateway keeps no state another gateway would need: run any number behind any load
//! balancer.

pub mod analysis;
pub mod app;
pub mod audit;
pub mod config;
pub mod error;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod spans;
pub mod telemetry;
pub mod trace_context;
pub mod upstream;
pub mod waf;

pub use crate::server::{run, serve};
