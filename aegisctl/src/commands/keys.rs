//! `aegisctl keygen` (a ledger node's checkpoint signing key) and `aegisctl hash-key` (the hash a
//! gateway stores for an API key).

use std::io::{Read as _, Write as _};

use anyhow::{Context as _, anyhow};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mmr::NoteSigner;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::cli::{HashKeyArgs, KeygenArgs};
use crate::failure::Failure;
use crate::report::Report;
use crate::trust::hex;

/// Longest API key read from stdin.
const API_KEY_BYTES_MAX: u64 = 1024;

pub fn keygen(args: &KeygenArgs) -> Result<Report, Failure> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|error| anyhow!("no randomness from the OS: {error}"))?;
    let signer = NoteSigner::from_seed(&args.name, &seed)
        .map_err(|error| anyhow!("key name {:?}: {error}", args.name))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&args.out)
        .with_context(|| format!("creating {} (an existing key is never overwritten)", args.out.display()))?;
    writeln!(file, "{}", signer.to_private_key_string())
        .with_context(|| format!("writing {}", args.out.display()))?;
    file.sync_all().with_context(|| format!("syncing {}", args.out.display()))?;
    let verifier = signer.verifier_key().to_string();
    let text = format!(
        "private key written to {} (mode 0600): give it to the node as signing_key_file and keep it secret\n\
         verifier key (public, give it to auditors):\n{verifier}\n",
        args.out.display()
    );
    Ok(Report::new(
        text,
        json!({ "private_key_file": args.out.display().to_string(), "verifier_key": verifier }),
    ))
}

pub fn hash_key(args: &HashKeyArgs) -> Result<Report, Failure> {
    let key = if args.generate {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|error| anyhow!("no randomness from the OS: {error}"))?;
        format!("sk-aegis-{}", URL_SAFE_NO_PAD.encode(bytes))
    } else {
        let mut input = String::new();
        std::io::stdin()
            .take(API_KEY_BYTES_MAX + 1)
            .read_to_string(&mut input)
            .context("reading the API key from stdin")?;
        if input.len() as u64 > API_KEY_BYTES_MAX {
            return Err(anyhow!("the API key on stdin is longer than {API_KEY_BYTES_MAX} bytes").into());
        }
        let key = input.trim_end_matches(['\r', '\n']).to_owned();
        if key.is_empty() {
            return Err(anyhow!(
                "no API key on stdin: pipe one in (printf %s \"$KEY\" | aegisctl hash-key) or use --generate"
            )
            .into());
        }
        key
    };
    let hash = hex(&Sha256::digest(key.as_bytes()));
    let (text, json) = if args.generate {
        (
            format!(
                "api key    {key}\nkey_sha256 = \"{hash}\"\n(the key is shown once: hand it to the client; the gateway stores only the hash)\n"
            ),
            json!({ "api_key": key, "key_sha256": hash }),
        )
    } else {
        (format!("key_sha256 = \"{hash}\"\n"), json!({ "key_sha256": hash }))
    };
    Ok(Report::new(text, json))
}
