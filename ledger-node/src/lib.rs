//! Aegis ledger node: a Raft group (openraft) that agrees on one append order for audit
//! records, keeps them in a Merkle Mountain Range on sled, signs checkpoints and serves
//! inclusion and consistency proofs over gRPC (tonic).
//!
//! openraft and sled live at the edges (`storage`, `network`); the ledger's domain logic
//! (apply a batch, build a proof, decide whether to cosign) is synchronous and testable
//! without a runtime.

pub mod admin_service;
pub mod batcher;
pub mod checkpoint_cache;
pub mod checkpointer;
pub mod config;
pub mod cosign;
pub mod ledger_service;
pub mod metrics;
pub mod network;
pub mod node;
pub mod peer_service;
pub mod read_pool;
pub mod storage;
pub mod telemetry;
pub mod types;

pub use crate::node::{LedgerNode, run};
