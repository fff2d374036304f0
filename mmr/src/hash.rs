//! SHA-256 hashing with RFC 9162 §2.1.1 domain separation between leaves and interior nodes.

use std::fmt;

use sha2::{Digest, Sha256};

/// Length in bytes of every hash in the tree.
pub const HASH_LEN: usize = 32;

/// A SHA-256 digest: a leaf hash, an interior node hash or a root.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; HASH_LEN]);

/// A byte string that is not exactly [`HASH_LEN`] bytes long was offered as a hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a hash is {HASH_LEN} bytes, got {len}")]
pub struct HashLengthError {
    pub len: usize,
}

impl Hash {
    pub const fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }
}

impl TryFrom<&[u8]> for Hash {
    type Error = HashLengthError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        <[u8; HASH_LEN]>::try_from(bytes).map(Hash).map_err(|_| HashLengthError { len: bytes.len() })
    }
}

impl AsRef<[u8]> for Hash {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Domain-separation prefix of a leaf hash (RFC 9162 §2.1.1).
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of an interior node hash (RFC 9162 §2.1.1).
const NODE_PREFIX: u8 = 0x01;

/// `SHA-256(0x00 || data)`: the hash of the leaf whose data is `data`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_PREFIX]);
    hasher.update(data);
    Hash(hasher.finalize().into())
}

/// `SHA-256(0x01 || left || right)`: the hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    // One contiguous buffer: a single `update` call keeps sha2's block buffering
    // out of the way, which matters on the append path (one node hash per leaf on average).
    let mut input = [0u8; 1 + 2 * HASH_LEN];
    input[0] = NODE_PREFIX;
    input[1..=HASH_LEN].copy_from_slice(&left.0);
    input[1 + HASH_LEN..].copy_from_slice(&right.0);
    Hash(Sha256::digest(input).into())
}

/// `SHA-256("")`: the root of the empty tree (RFC 9162 §2.1.1).
pub fn empty_root() -> Hash {
    Hash(Sha256::digest([]).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(
            format!("{:?}", empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn leaf_and_node_hashes_are_domain_separated() {
        let a = leaf_hash(b"a");
        let b = leaf_hash(b"b");
        let mut concatenated = Vec::from(a.0);
        concatenated.extend_from_slice(&b.0);
        // A node must never collide with a leaf whose data is the two children.
        assert_ne!(node_hash(&a, &b), leaf_hash(&concatenated));
        assert_ne!(node_hash(&a, &b), node_hash(&b, &a));
    }

    #[test]
    fn hash_from_slice_checks_length() {
        assert_eq!(Hash::try_from(&[7u8; 32][..]), Ok(Hash([7; 32])));
        assert_eq!(Hash::try_from(&[7u8; 31][..]), Err(HashLengthError { len: 31 }));
        assert_eq!(Hash::try_from(&[7u8; 33][..]), Err(HashLengthError { len: 33 }));
    }
}
