//! A harness that runs Aegis as its operators do: the real `aegis-ledger`, `aegis-gateway` and
//! `aegisctl` binaries as separate processes on loopback, each with its own data directory and
//! log file, which tests can kill, restart and put load balancers in front of. It links none of
//! the binaries' internals: everything goes through their command lines, ports and files.

mod binaries;
pub mod checks;
mod cluster;
mod disk;
mod gateway;
pub mod otlp;
mod ports;
mod process;
mod records;
pub mod relay;
mod rng;
pub mod workload;

pub use crate::binaries::binary;
pub use crate::cluster::{ClusterOptions, LedgerCluster, LedgerNode, ORIGIN};
pub use crate::disk::Tmpfs;
pub use crate::gateway::GatewayProcess;
pub use crate::ports::free_port;
pub use crate::process::{Process, wait_for_port};
pub use crate::records::{audit_record, record_id};
pub use crate::rng::Rng;
