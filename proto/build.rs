//! Compiles `proto/aegis/ledger/v1/*.proto` with protox (pure Rust, no `protoc`), generates the
//! prost messages and tonic clients and servers, and writes the encoded `FileDescriptorSet`
//! that the crate exposes as `FILE_DESCRIPTOR_SET` for gRPC reflection.

use std::env;
use std::error::Error;
use std::fs;
use std::path::PathBuf;

use prost::Message as _;

/// The include root: files are named relative to it, as `aegis/ledger/v1/ledger.proto`.
const PROTO_ROOT: &str = "proto";

const PROTO_FILES: &[&str] = &[
    "aegis/ledger/v1/record.proto",
    "aegis/ledger/v1/ledger.proto",
    "aegis/ledger/v1/admin.proto",
    "aegis/ledger/v1/raft.proto",
];

/// Read back by `src/lib.rs`; keep the two in step.
const DESCRIPTOR_FILE: &str = "aegis_ledger_v1_descriptor.bin";

fn main() -> Result<(), Box<dyn Error>> {
    // A directory is scanned recursively, so adding or editing any .proto file reruns us.
    println!("cargo:rerun-if-changed={PROTO_ROOT}");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let descriptors = protox::compile(PROTO_FILES, [PROTO_ROOT])?;
    fs::write(out_dir.join(DESCRIPTOR_FILE), descriptors.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        // protox has no protoc run to report files of; we emitted rerun-if-changed above.
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;
    Ok(())
}
