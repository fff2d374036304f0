//! Helpers shared by the tests: base64, building trees from leaf data.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mmr::{Hash, MemStore, Mmr};

pub(crate) fn b64(text: &str) -> Vec<u8> {
    BASE64.decode(text).unwrap_or_else(|error| panic!("bad base64 {text:?} in test data: {error}"))
}

pub(crate) fn b64_hash(text: &str) -> Hash {
    Hash::try_from(b64(text).as_slice()).expect("a 32-byte hash in test data")
}

/// An in-memory MMR holding `leaves`, appended by their data.
pub(crate) fn mmr_of(leaves: &[Vec<u8>]) -> Mmr<MemStore> {
    let mut mmr = Mmr::new(MemStore::new());
    for leaf in leaves {
        mmr.append(leaf).expect("in-memory appends cannot fail");
    }
    mmr
}

/// Deterministic leaf data for generated trees.
pub(crate) fn synthetic_leaves(count: u64) -> Vec<Vec<u8>> {
    (0..count).map(|i| format!("leaf-{i}").into_bytes()).collect()
}
