//! Aegis's gRPC wire contract, package `aegis.ledger.v1`: the prost messages and tonic clients
//! and servers generated from `proto/aegis/ledger/v1/*.proto`, and the conversions between
//! them and `mmr` types.
//!
//! **Wire types and conversions live here and nowhere else.** The generated code is in [`v1`];
//! the services' clients, servers and traits are re-exported at the root. Every conversion
//! from the wire is in `convert.rs` and refuses bad input with a [`ConvertError`].

mod convert;

/// The code generated from the `.proto` files. Edit those, never this.
pub mod v1 {
    tonic::include_proto!("aegis.ledger.v1");
}

pub use crate::convert::{ConvertError, KEY_ID_LEN, PROOF_PATH_LEN_MAX, SIGNATURE_LEN, hash_from_wire};
pub use crate::v1::admin_client::AdminClient;
pub use crate::v1::admin_server::{Admin, AdminServer};
pub use crate::v1::ledger_client::LedgerClient;
pub use crate::v1::ledger_server::{Ledger, LedgerServer};
pub use crate::v1::raft_peer_client::RaftPeerClient;
pub use crate::v1::raft_peer_server::{RaftPeer, RaftPeerServer};

/// The encoded `google.protobuf.FileDescriptorSet` of every `aegis.ledger.v1` file, with
/// source info (comments), for gRPC reflection (`tonic-reflection`'s
/// `register_encoded_file_descriptor_set`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/aegis_ledger_v1_descriptor.bin"));
