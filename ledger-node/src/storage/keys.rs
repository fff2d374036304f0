//! The ledger's keyspace in its sled tree. Every key starts with a one-byte kind; integers are
//! big-endian so that sled's byte order is numeric order.

/// Name of the sled tree that holds the ledger state (the Raft log lives in trees of its own).
pub(crate) const LEDGER_TREE: &str = "ledger";

/// `n` + block number → a block of consecutive MMR node hashes (`blocks.rs`).
pub(crate) const NODE: u8 = b'n';
/// `l` + block number → a block of consecutive records, each exactly as received.
pub(crate) const LEAF: u8 = b'l';
/// `I` + the record id's first 6 bytes → a bucket of record ids and their leaf indexes
/// (`id_index.rs`).
pub(crate) const RECORD_ID_BUCKET: u8 = b'I';
/// `i` + 16-byte record id → leaf index (8 bytes), for ids whose bucket was full (`id_index.rs`).
pub(crate) const RECORD_ID: u8 = b'i';
/// `c` + tree size → a published checkpoint note.
pub(crate) const CHECKPOINT: u8 = b'c';

/// Last applied Raft log id (postcard of `Option<LogId>`).
pub(crate) const META_APPLIED: &[u8] = b"m/applied";
/// Last applied membership (postcard of `StoredMembership`).
pub(crate) const META_MEMBERSHIP: &[u8] = b"m/membership";
/// Tree size after the last applied entry (8 bytes).
pub(crate) const META_SIZE: &[u8] = b"m/size";
/// Root after the last applied entry (32 bytes): compared at start-up with the root recomputed
/// from the stored peaks.
pub(crate) const META_ROOT: &[u8] = b"m/root";
/// Present while a snapshot is being installed: the tree is then half-written and must be
/// discarded at start-up.
pub(crate) const META_INSTALLING: &[u8] = b"m/installing";

pub(crate) fn with_u64(kind: u8, value: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = kind;
    key[1..].copy_from_slice(&value.to_be_bytes());
    key
}

pub(crate) fn with_record_id(id: &[u8; 16]) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = RECORD_ID;
    key[1..].copy_from_slice(id);
    key
}

/// Reads the integer back out of a `with_u64` key or an 8-byte value.
pub(crate) fn u64_of(bytes: &[u8]) -> Option<u64> {
    let bytes = if bytes.len() == 9 { &bytes[1..] } else { bytes };
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
