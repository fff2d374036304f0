//! Integration tests of the ledger node.

// openraft's StorageError (224 bytes) is what its storage traits return; test doubles must too.
#![allow(clippy::result_large_err)]

mod cluster;
mod cluster_reads;
mod config;
mod ledger;
mod log_store;
mod support;

mod network;
