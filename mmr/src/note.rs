//! C2SP signed-note: text signed by any number of named Ed25519 keys, and the key string forms.
//!
//! A note is its text (non-empty, UTF-8, ending in a newline, no control characters but
//! newline), a blank line, then one line per signature: `— <key name> <base64(key id ‖ sig)>`.
//! The key id is the first four bytes of `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)`.
//! Parsing takes hostile input: every size is bounded by [`NoteLimits`], every error is typed.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// The algorithm byte of Ed25519 keys in C2SP signed-note.
const ALG_ED25519: u8 = 0x01;
/// Every signature line starts with an em dash and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";
const PRIVATE_KEY_PREFIX: &str = "PRIVATE+KEY+";

/// Bounds on a note taken from the network or disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoteLimits {
    /// The whole note, text and signatures.
    pub note_bytes_max: usize,
    /// Any one line, without its newline.
    pub line_bytes_max: usize,
    /// Lines of text (a checkpoint has three plus its extensions).
    pub text_lines_max: usize,
    /// Signature lines, known or not: a cluster has a handful of nodes and a few witnesses.
    pub signatures_max: usize,
}

impl Default for NoteLimits {
    fn default() -> Self {
        Self { note_bytes_max: 16 * 1024, line_bytes_max: 1024, text_lines_max: 64, signatures_max: 64 }
    }
}

/// The 4-byte key id that links a signature line to its key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct KeyId(pub [u8; 4]);

/// One signature line of a note.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NoteSignature {
    pub key_name: String,
    pub key_id: KeyId,
    /// The signature proper, without the key id. 64 bytes for Ed25519; other algorithms' lines
    /// are carried through unverified.
    pub signature: Vec<u8>,
}

/// A note's text with its signatures. Holding one says nothing about whether the signatures
/// are valid: that is [`VerifierPolicy::verify`]'s job.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedNote {
    text: String,
    signatures: Vec<NoteSignature>,
}

/// A named Ed25519 private key that signs notes.
pub struct NoteSigner {
    key_name: String,
    key_id: KeyId,
    key: SigningKey,
}

/// A named Ed25519 public key, written `<name>+<hex key id>+<base64(0x01 ‖ public key)>`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VerifierKey {
    key_name: String,
    key_id: KeyId,
    key: VerifyingKey,
}

/// "At least `threshold` of these keys signed": the rule a note must meet to be trusted.
#[derive(Clone, Debug)]
pub struct VerifierPolicy {
    keys: Vec<VerifierKey>,
    threshold: usize,
}

/// Why a note, a key or a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("note is {len} bytes, over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("a line is {len} bytes, over the limit of {max}")]
    LineTooLong { len: usize, max: usize },
    #[error("note text has more than {max} lines")]
    TooManyLines { max: usize },
    #[error("note has more than {max} signatures")]
    TooManySignatures { max: usize },
    #[error("note is not valid UTF-8")]
    NotUtf8,
    #[error("note contains a control character other than newline")]
    ControlCharacter,
    #[error("note text is empty or does not end with a newline")]
    BadText,
    #[error("note has no signatures (no blank line followed by signature lines)")]
    NoSignatures,
    #[error("malformed signature line: {0}")]
    BadSignatureLine(&'static str),
    #[error("key {key_name} signed the note twice")]
    DuplicateSignature { key_name: String },
    #[error("invalid key name (empty, or contains whitespace or '+')")]
    BadKeyName,
    #[error("malformed key: {0}")]
    BadKey(&'static str),
    #[error("the signature by trusted key {key_name} is invalid: the note was altered or forged")]
    InvalidSignature { key_name: String },
    #[error("{valid} trusted signatures, the policy needs {threshold}")]
    PolicyNotMet { valid: usize, threshold: usize },
    #[error("a policy needs 1 to {keys} signatures of its {keys} distinct keys, not {threshold}")]
    BadPolicy { threshold: usize, keys: usize },
}

impl SignedNote {
    /// An unsigned note; `text` must be valid note text (see the module docs).
    pub fn new(text: String) -> Result<Self, NoteError> {
        check_text(&text)?;
        Ok(Self { text, signatures: Vec::new() })
    }

    /// Parses a note with its signatures. Checks form and limits, not signatures.
    pub fn parse(note: &[u8], limits: &NoteLimits) -> Result<Self, NoteError> {
        if note.len() > limits.note_bytes_max {
            return Err(NoteError::TooLarge { len: note.len(), max: limits.note_bytes_max });
        }
        let note = std::str::from_utf8(note).map_err(|_| NoteError::NotUtf8)?;
        // Signature lines are never empty, so the last blank line ends the text.
        let split = note.rfind("\n\n").ok_or(NoteError::NoSignatures)?;
        let (text, signature_block) = (&note[..=split], &note[split + 2..]);
        check_text(text)?;
        check_lines(text, limits)?;
        if text.lines().count() > limits.text_lines_max {
            return Err(NoteError::TooManyLines { max: limits.text_lines_max });
        }
        if signature_block.is_empty() {
            return Err(NoteError::NoSignatures);
        }
        if !signature_block.ends_with('\n') {
            return Err(NoteError::BadSignatureLine("the last signature line has no newline"));
        }
        check_lines(signature_block, limits)?;
        if signature_block.chars().any(|c| c.is_ascii_control() && c != '\n') {
            return Err(NoteError::ControlCharacter);
        }
        let mut parsed = Self { text: text.to_owned(), signatures: Vec::new() };
        for line in signature_block.lines() {
            if parsed.signatures.len() == limits.signatures_max {
                return Err(NoteError::TooManySignatures { max: limits.signatures_max });
            }
            parsed.add_signature(parse_signature_line(line)?)?;
        }
        Ok(parsed)
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }

    /// Adds a signature line (for example a cosignature from another node).
    /// A second signature by the same key is refused.
    pub fn add_signature(&mut self, signature: NoteSignature) -> Result<(), NoteError> {
        check_key_name(&signature.key_name)?;
        if self.signatures.iter().any(|s| s.key_name == signature.key_name && s.key_id == signature.key_id) {
            return Err(NoteError::DuplicateSignature { key_name: signature.key_name });
        }
        self.signatures.push(signature);
        Ok(())
    }

    /// Signs the text with `signer` and adds the signature.
    pub fn sign(&mut self, signer: &NoteSigner) -> Result<(), NoteError> {
        self.add_signature(signer.sign(&self.text))
    }
}

impl fmt::Display for SignedNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        f.write_str("\n")?;
        for signature in &self.signatures {
            let mut bytes = Vec::with_capacity(4 + signature.signature.len());
            bytes.extend_from_slice(&signature.key_id.0);
            bytes.extend_from_slice(&signature.signature);
            writeln!(f, "{SIGNATURE_PREFIX}{} {}", signature.key_name, BASE64.encode(bytes))?;
        }
        Ok(())
    }
}

impl NoteSigner {
    /// The signer named `key_name` whose Ed25519 private key is `seed`.
    pub fn from_seed(key_name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        check_key_name(key_name)?;
        let key = SigningKey::from_bytes(seed);
        let key_id = key_id(key_name, &key.verifying_key());
        Ok(Self { key_name: key_name.to_owned(), key_id, key })
    }

    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    pub fn verifier_key(&self) -> VerifierKey {
        VerifierKey { key_name: self.key_name.clone(), key_id: self.key_id, key: self.key.verifying_key() }
    }

    /// Signs `text`, which should be a note's text, and returns its signature line.
    pub fn sign(&self, text: &str) -> NoteSignature {
        NoteSignature {
            key_name: self.key_name.clone(),
            key_id: self.key_id,
            signature: self.key.sign(text.as_bytes()).to_bytes().to_vec(),
        }
    }

    /// The private key in Go's `golang.org/x/mod/sumdb/note` form:
    /// `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 ‖ seed)>`. Keep it secret.
    pub fn to_private_key_string(&self) -> String {
        let mut bytes = vec![ALG_ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        format!("{PRIVATE_KEY_PREFIX}{}+{}+{}", self.key_name, hex(&self.key_id.0), BASE64.encode(bytes))
    }
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        f.debug_struct("NoteSigner").field("key_name", &self.key_name).field("key_id", &self.key_id).finish()
    }
}

impl FromStr for NoteSigner {
    type Err = NoteError;

    fn from_str(text: &str) -> Result<Self, NoteError> {
        let rest = text
            .strip_prefix(PRIVATE_KEY_PREFIX)
            .ok_or(NoteError::BadKey("private key must start with PRIVATE+KEY+"))?;
        let (key_name, key_id, key) = split_key(rest)?;
        let seed: [u8; 32] = key.try_into().map_err(|_| NoteError::BadKey("an Ed25519 seed is 32 bytes"))?;
        let signer = Self::from_seed(key_name, &seed)?;
        if signer.key_id != key_id {
            return Err(NoteError::BadKey("key id does not match the name and key"));
        }
        Ok(signer)
    }
}

impl VerifierKey {
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Whether `signature` is this key's valid signature over `text`.
    fn verifies(&self, text: &str, signature: &NoteSignature) -> bool {
        let Ok(bytes) = <[u8; 64]>::try_from(signature.signature.as_slice()) else {
            return false;
        };
        self.key.verify_strict(text.as_bytes(), &Signature::from_bytes(&bytes)).is_ok()
    }

    fn signed(&self, signature: &NoteSignature) -> bool {
        self.key_name == signature.key_name && self.key_id == signature.key_id
    }
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = vec![ALG_ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{}+{}", self.key_name, hex(&self.key_id.0), BASE64.encode(bytes))
    }
}

impl FromStr for VerifierKey {
    type Err = NoteError;

    fn from_str(text: &str) -> Result<Self, NoteError> {
        let (key_name, key_id, key) = split_key(text)?;
        let key: [u8; 32] =
            key.try_into().map_err(|_| NoteError::BadKey("an Ed25519 public key is 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&key)
            .map_err(|_| NoteError::BadKey("not a valid Ed25519 public key"))?;
        if self::key_id(key_name, &key) != key_id {
            return Err(NoteError::BadKey("key id does not match the name and key"));
        }
        Ok(Self { key_name: key_name.to_owned(), key_id, key })
    }
}

impl VerifierPolicy {
    /// Trust a note that at least `threshold` of `keys` signed. Keys must be distinct.
    pub fn new(keys: Vec<VerifierKey>, threshold: usize) -> Result<Self, NoteError> {
        let distinct = keys.iter().enumerate().all(|(i, key)| {
            keys[..i].iter().all(|earlier| earlier.key_name != key.key_name && earlier.key != key.key)
        });
        if threshold == 0 || threshold > keys.len() || !distinct {
            return Err(NoteError::BadPolicy { threshold, keys: keys.len() });
        }
        Ok(Self { keys, threshold })
    }

    pub fn keys(&self) -> &[VerifierKey] {
        &self.keys
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Checks the note's signatures; returns the trusted keys that signed it.
    ///
    /// Signatures by unknown keys are ignored (a note may carry witnesses' cosignatures).
    /// A signature by a trusted key that does not verify is an error, not merely uncounted:
    /// it means the note was altered.
    pub fn verify<'a>(&'a self, note: &SignedNote) -> Result<Vec<&'a VerifierKey>, NoteError> {
        let mut signed_by = Vec::new();
        for signature in &note.signatures {
            let Some(key) = self.keys.iter().find(|key| key.signed(signature)) else { continue };
            if !key.verifies(&note.text, signature) {
                return Err(NoteError::InvalidSignature { key_name: key.key_name.clone() });
            }
            signed_by.push(key);
        }
        if signed_by.len() < self.threshold {
            return Err(NoteError::PolicyNotMet { valid: signed_by.len(), threshold: self.threshold });
        }
        Ok(signed_by)
    }
}

/// `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[..4]`.
fn key_id(key_name: &str, key: &VerifyingKey) -> KeyId {
    let digest = Sha256::new()
        .chain_update(key_name.as_bytes())
        .chain_update([b'\n', ALG_ED25519])
        .chain_update(key.as_bytes())
        .finalize();
    KeyId([digest[0], digest[1], digest[2], digest[3]])
}

/// Splits `<name>+<hex key id>+<base64(0x01 ‖ key)>` and returns the key without its algorithm byte.
fn split_key(text: &str) -> Result<(&str, KeyId, Vec<u8>), NoteError> {
    // Base64 uses '+' too: the key is everything after the second '+'.
    let mut parts = text.splitn(3, '+');
    let (Some(key_name), Some(key_id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::BadKey("expected <name>+<hex key id>+<base64 key>"));
    };
    check_key_name(key_name)?;
    let key_id = parse_key_id_hex(key_id)?;
    let key = BASE64.decode(key).map_err(|_| NoteError::BadKey("key is not valid base64"))?;
    match key.split_first() {
        Some((&ALG_ED25519, key)) => Ok((key_name, key_id, key.to_vec())),
        Some(_) => Err(NoteError::BadKey("unsupported key algorithm (only Ed25519, 0x01)")),
        None => Err(NoteError::BadKey("key is empty")),
    }
}

fn parse_key_id_hex(text: &str) -> Result<KeyId, NoteError> {
    const ERROR: NoteError = NoteError::BadKey("key id must be 8 lowercase hex digits");
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(ERROR);
    }
    u32::from_str_radix(text, 16).map(|id| KeyId(id.to_be_bytes())).map_err(|_| ERROR)
}

fn parse_signature_line(line: &str) -> Result<NoteSignature, NoteError> {
    let rest = line
        .strip_prefix(SIGNATURE_PREFIX)
        .ok_or(NoteError::BadSignatureLine("must start with an em dash and a space"))?;
    let (key_name, encoded) =
        rest.split_once(' ').ok_or(NoteError::BadSignatureLine("expected <name> <base64>"))?;
    check_key_name(key_name)?;
    let bytes =
        BASE64.decode(encoded).map_err(|_| NoteError::BadSignatureLine("signature is not valid base64"))?;
    if bytes.len() < 5 {
        return Err(NoteError::BadSignatureLine("signature is shorter than a key id and one byte"));
    }
    let (key_id, signature) = bytes.split_at(4);
    Ok(NoteSignature {
        key_name: key_name.to_owned(),
        key_id: KeyId([key_id[0], key_id[1], key_id[2], key_id[3]]),
        signature: signature.to_vec(),
    })
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() || !text.ends_with('\n') {
        return Err(NoteError::BadText);
    }
    if text.chars().any(|c| c.is_ascii_control() && c != '\n') {
        return Err(NoteError::ControlCharacter);
    }
    Ok(())
}

fn check_lines(block: &str, limits: &NoteLimits) -> Result<(), NoteError> {
    match block.lines().map(str::len).max() {
        Some(len) if len > limits.line_bytes_max => {
            Err(NoteError::LineTooLong { len, max: limits.line_bytes_max })
        }
        _ => Ok(()),
    }
}

fn check_key_name(key_name: &str) -> Result<(), NoteError> {
    if key_name.is_empty() || key_name.chars().any(|c| c.is_whitespace() || c == '+') {
        return Err(NoteError::BadKeyName);
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
