//! Persistence on sled: the Raft log (the write-ahead log) and the ledger state machine share
//! one sled database in the node's data directory.

mod blocks;
pub mod durable;
mod id_index;
pub mod keys;
pub mod ledger;
pub mod log_store;
mod node_cache;
pub mod reader;
pub mod snapshot;
pub mod state_machine;
pub mod watermark;

/// sled's segment size. sled stores any value larger than a quarter of a segment as a file of
/// its own ("blob"), created and fsynced apart from its log; with the default 512 KiB segments
/// a Raft entry of a few hundred records would be a blob. 8 MiB segments keep entries up to
/// 2 MiB in the log. Fixed when the database is created: changing it needs a new database.
pub const SLED_SEGMENT_BYTES: usize = 8 * 1024 * 1024;
