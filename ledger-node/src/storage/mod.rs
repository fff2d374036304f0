//! Persistence on sled: the Raft log (the write-ahead log) and the ledger state machine share
//! one sled database in the node's data directory.

pub mod durable;
pub mod keys;
pub mod ledger;
pub mod log_store;
pub mod reader;
pub mod snapshot;
pub mod state_machine;
