//! API-key authentication: a bearer key (or Anthropic's `x-api-key`) is hashed with SHA-256 and
//! looked up among the configured hashes. The gateway never stores, logs or audits a key, only
//! the id of the credential it matched.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use crate::config::{AuditModeConfig, Config, FailureMode, Scope, parse_key_hash};
use crate::error::{ApiError, ErrorKind};

/// Longest API key accepted; longer values are refused without hashing them.
const KEY_BYTES_MAX: usize = 512;

/// A configured tenant, shared by its credentials.
#[derive(Debug)]
pub struct Tenant {
    pub id: String,
    pub audit_mode: AuditModeConfig,
    pub on_audit_failure: FailureMode,
    /// Permits for this tenant's open streams (`streams_max`).
    pub streams: Arc<Semaphore>,
    pub streams_max: usize,
    pub waf: crate::waf::Policy,
}

/// A configured API credential, as authentication found it.
#[derive(Debug)]
pub struct Credential {
    /// Position in the configuration: the credential's slot in the rate limiter.
    pub index: usize,
    pub id: String,
    pub tenant: Arc<Tenant>,
    scopes: Vec<Scope>,
}

/// Finds the credential of a request's API key.
#[derive(Debug)]
pub struct Authenticator {
    by_key_hash: HashMap<[u8; 32], Arc<Credential>>,
}

impl Credential {
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// Refuses with 403 unless the credential has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.has_scope(scope) {
            return Ok(());
        }
        let name = match scope {
            Scope::Proxy => "proxy",
            Scope::AuditRead => "audit:read",
            Scope::Admin => "admin",
        };
        Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!("this API key lacks the {name:?} scope this endpoint requires"),
        ))
    }
}

impl Authenticator {
    /// Builds the lookup table from a validated configuration.
    pub fn new(config: &Config) -> Self {
        let tenants: HashMap<&str, Arc<Tenant>> = config
            .tenants
            .iter()
            .map(|tenant| {
                let shared = Tenant {
                    id: tenant.id.clone(),
                    audit_mode: tenant.audit_mode,
                    on_audit_failure: tenant.on_audit_failure,
                    streams: Arc::new(Semaphore::new(tenant.streams_max)),
                    streams_max: tenant.streams_max,
                    waf: crate::waf::Policy::new(&tenant.waf, config.waf.inspect_bytes_max),
                };
                (tenant.id.as_str(), Arc::new(shared))
            })
            .collect();
        let by_key_hash = config
            .credentials
            .iter()
            .enumerate()
            .filter_map(|(index, credential)| {
                let hash = parse_key_hash(&credential.key_sha256)?;
                let tenant = tenants.get(credential.tenant.as_str())?.clone();
                let shared = Credential {
                    index,
                    id: credential.id.clone(),
                    tenant,
                    scopes: credential.scopes.clone(),
                };
                Some((hash, Arc::new(shared)))
            })
            .collect();
        Self { by_key_hash }
    }

    /// The credential of the key in `Authorization: Bearer <key>` (or `x-api-key: <key>`), or
    /// 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Credential>, ApiError> {
        let key = api_key(headers).ok_or_else(|| {
            ApiError::new(
                ErrorKind::Unauthenticated,
                "you didn't provide an API key: send it as `Authorization: Bearer <key>`",
            )
        })?;
        let invalid = || ApiError::new(ErrorKind::Unauthenticated, "incorrect API key provided");
        if key.len() > KEY_BYTES_MAX {
            return Err(invalid());
        }
        let hash: [u8; 32] = Sha256::digest(key).into();
        self.by_key_hash.get(&hash).cloned().ok_or_else(invalid)
    }
}

/// The API key a request carries, if any.
fn api_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value.as_bytes();
        let scheme = value.get(..7)?;
        return scheme
            .eq_ignore_ascii_case(b"bearer ")
            .then(|| value[7..].trim_ascii())
            .filter(|key| !key.is_empty());
    }
    headers.get("x-api-key").map(|value| value.as_bytes().trim_ascii()).filter(|key| !key.is_empty())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn api_key_comes_from_bearer_or_x_api_key() {
        let mut headers = HeaderMap::new();
        assert_eq!(api_key(&headers), None);
        headers.insert("x-api-key", HeaderValue::from_static("sk-anthropic"));
        assert_eq!(api_key(&headers), Some(&b"sk-anthropic"[..]));
        headers.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Bearer  sk-openai "));
        assert_eq!(api_key(&headers), Some(&b"sk-openai"[..]), "Authorization wins");
        headers.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Basic dXNlcjpwYXNz"));
        assert_eq!(api_key(&headers), None, "another scheme is no key, not a fallback to x-api-key");
        headers.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(api_key(&headers), None);
    }
}
