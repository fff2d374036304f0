//! Proof bundles: a record, its inclusion proof and the signed checkpoint the proof verifies
//! against, in one JSON file that anyone can check offline with `aegisctl verify` (or any RFC
//! 9162 library and a C2SP note verifier).

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mmr::{Hash, InclusionProof, LeafIndex, TreeSize};
use serde::{Deserialize, Serialize};

use crate::client::read_limited;

/// The bundle format this version writes and reads.
pub const FORMAT: &str = "aegis-proof-bundle/v1";
/// Largest bundle read: a 64 KiB record, base64, a 64-hash path and a note fit many times over.
const BUNDLE_BYTES_MAX: u64 = 1024 * 1024;
/// Longest inclusion path a bundle may carry (a tree of at most 2^63 leaves).
const PATH_LEN_MAX: usize = 64;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Always [`FORMAT`].
    pub format: String,
    pub leaf_index: u64,
    pub tree_size: u64,
    /// The record bytes exactly as the ledger stores them (the leaf data), base64.
    pub record: String,
    /// The RFC 9162 inclusion path, leaf's sibling first, base64 hashes.
    pub inclusion_path: Vec<String>,
    /// The C2SP signed checkpoint note of `tree_size` leaves.
    pub checkpoint: String,
}

/// A bundle's contents, decoded (not yet verified).
pub struct Decoded {
    pub record: Vec<u8>,
    pub proof: InclusionProof,
    pub checkpoint: String,
}

impl Bundle {
    pub fn new(record: &[u8], proof: &InclusionProof, checkpoint: &str) -> Self {
        Self {
            format: FORMAT.to_owned(),
            leaf_index: proof.leaf_index.0,
            tree_size: proof.tree_size.0,
            record: BASE64.encode(record),
            inclusion_path: proof.path.iter().map(|hash| BASE64.encode(hash.0)).collect(),
            checkpoint: checkpoint.to_owned(),
        }
    }

    /// Writes the bundle to `path` (replacing it atomically).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)? + "\n";
        let partial = path.with_extension("partial");
        std::fs::write(&partial, text).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Reads and decodes the bundle at `path`, within limits.
    pub fn read(path: &Path) -> anyhow::Result<Decoded> {
        let text =
            read_limited(path, BUNDLE_BYTES_MAX).with_context(|| format!("reading {}", path.display()))?;
        let bundle: Self = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a proof bundle", path.display()))?;
        if bundle.format != FORMAT {
            bail!("{} is a {:?} bundle; this aegisctl reads {FORMAT:?}", path.display(), bundle.format);
        }
        if bundle.inclusion_path.len() > PATH_LEN_MAX {
            bail!(
                "the bundle's inclusion path has {} hashes, at most {PATH_LEN_MAX}",
                bundle.inclusion_path.len()
            );
        }
        let record = BASE64
            .decode(&bundle.record)
            .map_err(|error| anyhow!("the bundle's record is not base64: {error}"))?;
        let path = bundle
            .inclusion_path
            .iter()
            .enumerate()
            .map(|(i, hash)| {
                let bytes = BASE64
                    .decode(hash)
                    .map_err(|error| anyhow!("inclusion_path[{i}] is not base64: {error}"))?;
                Hash::try_from(bytes.as_slice())
                    .map_err(|_| anyhow!("inclusion_path[{i}] is not a 32-byte hash"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Decoded {
            record,
            proof: InclusionProof {
                leaf_index: LeafIndex(bundle.leaf_index),
                tree_size: TreeSize(bundle.tree_size),
                path,
            },
            checkpoint: bundle.checkpoint,
        })
    }
}
