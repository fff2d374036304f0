//! What the user trusts: a log origin and "at least k of these verifier keys". Checkpoints are
//! verified against this, never against anything the server says about itself.

use anyhow::{Context as _, anyhow, bail};
use mmr::{CheckpointVerifier, NoteLimits, VerifiedCheckpoint, VerifierKey, VerifierPolicy};
use proto::v1;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::cli::TrustArgs;
use crate::client::read_limited;
use crate::failure::Failure;

/// Largest trust file read.
const TRUST_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Most keys a policy may name (a cluster has a handful of nodes).
const KEYS_MAX: usize = 64;

/// The trust file: what `aegisctl pin` writes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    origin: Option<String>,
    #[serde(default)]
    keys: Vec<String>,
    quorum: Option<usize>,
}

/// A verified trust policy.
pub struct Trust {
    verifier: CheckpointVerifier,
}

impl TrustArgs {
    /// The policy from the trust file, overridden by flags.
    pub fn load(&self) -> Result<Trust, Failure> {
        let file = match &self.trust {
            Some(path) => {
                let text = read_limited(path, TRUST_FILE_BYTES_MAX)
                    .with_context(|| format!("reading the trust file {}", path.display()))?;
                toml::from_str::<TrustFile>(&text)
                    .with_context(|| format!("the trust file {} is not valid", path.display()))?
            }
            None => TrustFile::default(),
        };
        let origin = self.origin.clone().or(file.origin).ok_or_else(|| {
            anyhow!(
                "no origin to trust: give --origin (the first line of the log's checkpoints) or --trust FILE"
            )
        })?;
        let keys = if self.keys.is_empty() { file.keys } else { self.keys.clone() };
        let quorum = self.quorum.or(file.quorum);
        Ok(Trust::new(origin, &keys, quorum)?)
    }
}

impl Trust {
    /// Trusts checkpoints of `origin` signed by `quorum` (default: a majority) of `keys`.
    pub fn new(origin: String, keys: &[String], quorum: Option<usize>) -> anyhow::Result<Self> {
        if origin.trim().is_empty() {
            bail!("the origin to trust is empty");
        }
        if keys.is_empty() {
            bail!(
                "no verifier keys to trust: give --key for each ledger node (aegisctl status lists them; \
                 check them with your operator) or --trust FILE"
            );
        }
        if keys.len() > KEYS_MAX {
            bail!("{} verifier keys given, at most {KEYS_MAX}", keys.len());
        }
        let keys: Vec<VerifierKey> = keys
            .iter()
            .map(|key| key.trim().parse().map_err(|error| anyhow!("verifier key {key:?}: {error}")))
            .collect::<anyhow::Result<_>>()?;
        let quorum = quorum.unwrap_or(keys.len() / 2 + 1);
        let policy = VerifierPolicy::new(keys, quorum).map_err(|error| anyhow!("trust policy: {error}"))?;
        Ok(Self { verifier: CheckpointVerifier::new(origin, policy, NoteLimits::default()) })
    }

    pub fn origin(&self) -> &str {
        self.verifier.origin()
    }

    pub fn quorum(&self) -> usize {
        self.verifier.policy().threshold()
    }

    pub fn keys(&self) -> &[VerifierKey] {
        self.verifier.policy().keys()
    }

    /// A short name for this policy, from the origin, quorum and keys (order-independent):
    /// keys the monitor's state, so no server can choose which state it is checked against.
    pub fn id(&self) -> String {
        let mut keys: Vec<String> = self.keys().iter().map(ToString::to_string).collect();
        keys.sort();
        let mut hasher = Sha256::new();
        hasher.update(self.origin().as_bytes());
        hasher.update(format!("\n{}\n", self.quorum()).as_bytes());
        for key in keys {
            hasher.update(key.as_bytes());
            hasher.update(b"\n");
        }
        hex(&hasher.finalize()[..8])
    }

    /// Verifies a checkpoint as it came over the wire.
    pub fn verify_wire(&self, checkpoint: &v1::SignedCheckpoint) -> Result<VerifiedCheckpoint, Failure> {
        let note = checkpoint
            .to_note(&NoteLimits::default())
            .map_err(|error| Failure::rejected(format!("the checkpoint is malformed: {error}")))?;
        self.verifier
            .verify(note)
            .map_err(|error| Failure::rejected(format!("the checkpoint does not verify: {error}")))
    }

    /// Verifies a checkpoint note's text (from a bundle or the monitor's state).
    pub fn verify_note(&self, note: &str) -> Result<VerifiedCheckpoint, Failure> {
        self.verifier
            .open(note.as_bytes())
            .map_err(|error| Failure::rejected(format!("the checkpoint does not verify: {error}")))
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// The names of the keys that signed `checkpoint`.
pub fn signer_names(checkpoint: &VerifiedCheckpoint) -> Vec<String> {
    checkpoint.signed_by.iter().map(|key| key.key_name().to_owned()).collect()
}
