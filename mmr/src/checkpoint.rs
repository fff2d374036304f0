//! C2SP tlog-checkpoint: the signed statement "the log `origin` has `size` leaves with `root`".
//!
//! The body is `<origin>\n<size>\n<base64 root>\n` followed by optional extension lines, and it
//! travels as the text of a [`SignedNote`]. [`CheckpointVerifier`] turns untrusted note bytes
//! into a [`VerifiedCheckpoint`] or a typed error.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::{Hash, NoteError, NoteLimits, NoteSigner, SignedNote, TreeSize, VerifierKey, VerifierPolicy};

/// A log's claimed state. Unsigned and unverified until it comes out of a [`CheckpointVerifier`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Checkpoint {
    /// Names the log; verifiers MUST check it, or a checkpoint of another log could be replayed.
    pub origin: String,
    pub size: TreeSize,
    pub root: Hash,
    /// Extension lines after the root, carried through as they are.
    pub extensions: Vec<String>,
}

/// A checkpoint whose note met the verifier's origin and signature policy.
#[derive(Clone, Debug)]
pub struct VerifiedCheckpoint {
    pub checkpoint: Checkpoint,
    /// The trusted keys whose valid signatures the note carried.
    pub signed_by: Vec<VerifierKey>,
    pub note: SignedNote,
}

/// Opens checkpoint notes of one log: checks limits, form, origin and the signature policy.
#[derive(Clone, Debug)]
pub struct CheckpointVerifier {
    origin: String,
    policy: VerifierPolicy,
    limits: NoteLimits,
}

/// Why a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error("checkpoint body is missing its {0} line")]
    MissingLine(&'static str),
    #[error("checkpoint origin line is empty")]
    EmptyOrigin,
    #[error("checkpoint tree size is not a decimal number without leading zeros")]
    BadSize,
    #[error("checkpoint root is not the base64 of a 32-byte hash")]
    BadRoot,
    #[error("checkpoint has an empty extension line")]
    EmptyExtension,
    #[error("checkpoint is for log {found:?}, expected {expected:?}")]
    WrongOrigin { expected: String, found: String },
}

impl Checkpoint {
    pub fn new(origin: impl Into<String>, size: TreeSize, root: Hash) -> Self {
        Self { origin: origin.into(), size, root, extensions: Vec::new() }
    }

    /// The note text of this checkpoint.
    pub fn to_body(&self) -> String {
        let mut body = format!("{}\n{}\n{}\n", self.origin, self.size.0, BASE64.encode(self.root.0));
        for extension in &self.extensions {
            body.push_str(extension);
            body.push('\n');
        }
        body
    }

    /// Parses a note text as a checkpoint body.
    pub fn from_body(body: &str) -> Result<Self, CheckpointError> {
        let text = body.strip_suffix('\n').ok_or(NoteError::BadText)?;
        let mut lines = text.split('\n');
        let origin = lines.next().ok_or(CheckpointError::MissingLine("origin"))?;
        if origin.is_empty() {
            return Err(CheckpointError::EmptyOrigin);
        }
        let size = parse_size(lines.next().ok_or(CheckpointError::MissingLine("tree size"))?)?;
        let root = parse_root(lines.next().ok_or(CheckpointError::MissingLine("root hash"))?)?;
        let extensions = lines
            .map(
                |line| {
                    if line.is_empty() { Err(CheckpointError::EmptyExtension) } else { Ok(line.to_owned()) }
                },
            )
            .collect::<Result<_, _>>()?;
        Ok(Self { origin: origin.to_owned(), size, root, extensions })
    }

    /// A note of this checkpoint signed by each of `signers`.
    pub fn sign(&self, signers: &[&NoteSigner]) -> Result<SignedNote, CheckpointError> {
        let mut note = SignedNote::new(self.to_body())?;
        for signer in signers {
            note.sign(signer)?;
        }
        Ok(note)
    }
}

impl CheckpointVerifier {
    pub fn new(origin: impl Into<String>, policy: VerifierPolicy, limits: NoteLimits) -> Self {
        Self { origin: origin.into(), policy, limits }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn policy(&self) -> &VerifierPolicy {
        &self.policy
    }

    /// Parses and verifies untrusted note bytes.
    pub fn open(&self, note: &[u8]) -> Result<VerifiedCheckpoint, CheckpointError> {
        self.verify(SignedNote::parse(note, &self.limits)?)
    }

    /// Verifies an already parsed note.
    pub fn verify(&self, note: SignedNote) -> Result<VerifiedCheckpoint, CheckpointError> {
        let checkpoint = Checkpoint::from_body(note.text())?;
        if checkpoint.origin != self.origin {
            return Err(CheckpointError::WrongOrigin {
                expected: self.origin.clone(),
                found: checkpoint.origin,
            });
        }
        let signed_by = self.policy.verify(&note)?.into_iter().cloned().collect();
        Ok(VerifiedCheckpoint { checkpoint, signed_by, note })
    }
}

fn parse_size(line: &str) -> Result<TreeSize, CheckpointError> {
    let canonical = !line.is_empty()
        && line.bytes().all(|b| b.is_ascii_digit())
        && (line == "0" || !line.starts_with('0'));
    if !canonical {
        return Err(CheckpointError::BadSize);
    }
    line.parse().map(TreeSize).map_err(|_| CheckpointError::BadSize)
}

fn parse_root(line: &str) -> Result<Hash, CheckpointError> {
    let bytes = BASE64.decode(line).map_err(|_| CheckpointError::BadRoot)?;
    Hash::try_from(bytes.as_slice()).map_err(|_| CheckpointError::BadRoot)
}
