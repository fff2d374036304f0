//! Why a command failed, and the exit status that tells scripts which kind of failure it was.

use std::fmt;

/// A failed command.
#[derive(Debug)]
pub enum Failure {
    /// The command could not be carried out: bad input, an unreachable node, a server error.
    Error(anyhow::Error),
    /// Something did not verify: a signature, a proof, a bundle, a recomputed tree.
    Rejected(String),
    /// The monitor saw two checkpoints that cannot both be true; evidence was written.
    Inconsistent { message: String, evidence: std::path::PathBuf },
}

impl Failure {
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::Rejected(message.into())
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Error(_) => 1,
            Self::Rejected(_) => 3,
            Self::Inconsistent { .. } => 4,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Error(_) => "error",
            Self::Rejected(_) => "verification_failed",
            Self::Inconsistent { .. } => "inconsistent",
        }
    }

    /// Reports the failure: on stderr, and with `json` also as `{"error": ...}` on stdout.
    pub fn print(&self, json: bool) {
        eprintln!("aegisctl: {self}");
        if json {
            let mut error = serde_json::json!({ "kind": self.kind(), "message": self.to_string() });
            if let Self::Inconsistent { evidence, .. } = self {
                error["evidence"] = evidence.display().to_string().into();
            }
            #[allow(clippy::print_stdout, reason = "the CLI's output")]
            {
                println!("{}", serde_json::json!({ "error": error }));
            }
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Error(error) => write!(f, "{error:#}"),
            Self::Rejected(message) => write!(f, "VERIFICATION FAILED: {message}"),
            Self::Inconsistent { message, evidence } => {
                write!(f, "INCONSISTENT LOG: {message}; evidence written to {}", evidence.display())
            }
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Self::Error(error.into())
    }
}
