//! Persistence on sled: the Raft log (the write-ahead log) and the ledger state machine share
//! one sled database in the node's data directory.

pub mod log_store;
