//! The gateway's settings: a TOML file (`--config`) holding tenants, credentials, upstreams and
//! limits, with the deployment-specific scalars overridable by `AEGIS_*` environment variables
//! and flags (flag > environment > file > default).
//!
//! `gateway.example.toml` lists every setting with its default.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// Longest gateway, tenant, credential or upstream name: they are written into every audit
/// record, so they are bounded like every field.
pub const ID_BYTES_MAX: usize = 128;

/// Everything a gateway is configured with. Build it with [`Config::load`] or
/// [`Config::from_toml`], then check it with [`Config::validate`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names this gateway instance in every audit record it writes. Unique per instance.
    pub gateway_id: String,
    /// Where the OpenAI-compatible API, `/healthz`, `/readyz` and `/metrics` are served.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bind `listen` with `SO_REUSEPORT`, so that several gateway processes on one host share
    /// the port and the kernel spreads connections among them (and a restarting one leaves
    /// the others serving).
    #[serde(default)]
    pub listen_reuse_port: bool,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Upstream providers, tried in order for the first whose `models` matches.
    pub upstreams: Vec<UpstreamConfig>,
    pub tenants: Vec<TenantConfig>,
    pub credentials: Vec<CredentialConfig>,
    pub audit: AuditConfig,
    #[serde(default)]
    pub waf: WafConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub log: LogConfig,
}

/// Limits on what one request may carry, and on how many may be served at once.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sum of the lengths of all header names and values. Larger: 431.
    pub header_bytes_max: usize,
    /// Request body bytes. Larger: 413.
    pub body_bytes_max: usize,
    /// Nesting depth of the JSON body (objects and arrays). Deeper: 400.
    pub json_depth_max: usize,
    /// Messages in one chat or messages request. More: 400.
    pub messages_max: usize,
    /// Per-route overrides of the three limits above, keyed by route, e.g.
    /// `[limits.routes."/v1/embeddings"] body_bytes_max = 16777216` (the default: embedding
    /// requests carry large batches). Setting any route replaces the default table.
    pub routes: BTreeMap<String, RouteLimits>,
    /// Client connections served at once (each carries one HTTP/1.1 request at a time); beyond
    /// it new connections wait in the kernel's accept queue rather than in memory.
    pub connections_max: usize,
    /// Streaming responses open at once on this gateway. More: 429.
    pub streams_max: usize,
    /// Completion tokens assumed for the rate limit when a request names no `max_tokens`.
    pub default_completion_tokens: u64,
    /// Longest a client may take to send its request body (slow-body protection). Slower: 408.
    pub body_read_timeout_ms: u64,
    /// While a stream waits for its first chunk, a `: ping` comment is sent this often so
    /// clients and proxies do not time the connection out.
    pub stream_keepalive_ms: u64,
}

/// Overrides of the body limits for one route; absent values fall back to `[limits]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteLimits {
    pub body_bytes_max: Option<usize>,
    pub json_depth_max: Option<usize>,
    pub messages_max: Option<usize>,
}

/// The body limits that apply to one route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    pub body_bytes_max: usize,
    pub json_depth_max: usize,
    pub messages_max: usize,
}

/// Routes whose limits can be configured.
pub const LIMITED_ROUTES: [&str; 4] =
    ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages"];

/// One upstream provider.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Names the upstream in audit records and metrics, e.g. `openai`.
    pub name: String,
    pub kind: UpstreamKind,
    /// Model patterns served here: an exact name, or a prefix ending in `*` (`gpt-4o*`), or `*`.
    pub models: Vec<String>,
    /// Base URL of the provider's API, up to and including `/v1`, e.g.
    /// `http://127.0.0.1:11434/v1`. Required unless `kind = "mock"`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// PEM file of the certificate authorities to trust for an `https` base URL, instead of
    /// the bundled Mozilla roots (for providers behind a private CA).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Name of the environment variable holding the provider's API key, sent as
    /// `Authorization: Bearer` (OpenAI) or `x-api-key` (Anthropic). Never in the file.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest wait for the upstream's response headers.
    #[serde(default = "default_first_byte_timeout_ms")]
    pub first_byte_timeout_ms: u64,
    /// Longest a whole response may take, streamed or not.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Retries after a failed connection attempt (never after the request was sent).
    #[serde(default = "default_connect_retries")]
    pub connect_retries: u32,
    /// Idle keep-alive connections kept per upstream host.
    #[serde(default = "default_pool_idle_max")]
    pub pool_idle_max: usize,
    /// Response bytes read from a non-streamed upstream response. Larger: 502.
    #[serde(default = "default_response_bytes_max")]
    pub response_bytes_max: usize,
    /// Settings of the built-in mock provider (`kind = "mock"`).
    #[serde(default)]
    pub mock: MockConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    /// Any OpenAI-compatible API (OpenAI, vLLM, Ollama, LiteLLM...): `/v1/chat/completions`,
    /// `/v1/completions`, `/v1/embeddings`, `/v1/models`.
    Openai,
    /// Anthropic's Messages API: `/v1/messages`.
    Anthropic,
    /// The built-in deterministic provider, answering every API in-process.
    Mock,
}

/// The built-in mock provider's behaviour: deterministic text, configurable timing.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MockConfig {
    /// Delay before the response (or the first streamed chunk).
    pub first_token_latency_ms: u64,
    /// Content chunks in a streamed response, and words in a plain one.
    pub chunk_count: u32,
    /// Delay between streamed chunks.
    pub chunk_interval_ms: u64,
    /// Dimensions of the embeddings it returns.
    pub embedding_dimensions: u32,
}

/// A tenant: the unit of isolation for audit records, streams and policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    #[serde(default)]
    pub audit_mode: AuditModeConfig,
    /// What to do when audit records can be neither sent nor spooled: refuse requests with 503
    /// (`closed`, the default) or serve them unaudited (`open`, counted and flagged).
    #[serde(default)]
    pub on_audit_failure: FailureMode,
    /// Streaming responses open at once for this tenant. More: 429.
    #[serde(default = "default_tenant_streams_max")]
    pub streams_max: usize,
    /// The tenant's WAF policy: `[tenants.waf]`.
    #[serde(default)]
    pub waf: WafTenantConfig,
}

/// The WAF shared by all tenants: its rule file and bounds.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WafConfig {
    /// The rule file (see `gateway/waf/rules.toml`); absent: the rules built into the gateway.
    pub rules_file: Option<PathBuf>,
    /// How often the rule file is checked for changes; a changed valid file replaces the
    /// rules without dropping connections.
    pub reload_interval_ms: u64,
    /// Text bytes inspected per request at most; beyond it the request fails closed (403)
    /// unless its tenant's WAF is fail-open.
    pub inspect_bytes_max: usize,
    /// Bytes decoded from embedded base64/percent/HTML-entity segments per text at most; a text
    /// holding more is an inspection failure (the tenant's `on_error` decides).
    pub decoded_bytes_max: usize,
    /// Nesting of encodings decoded (base64 inside base64...).
    pub decode_depth_max: u8,
    /// Size of the normalized form of one text at most.
    pub normalized_bytes_max: usize,
}

/// A tenant's WAF policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WafTenantConfig {
    pub mode: WafMode,
    /// When a body cannot be inspected (over the byte budget, unreadable): refuse (`closed`)
    /// or let it through flagged `fail_open` in its audit record (`open`).
    pub on_error: FailureMode,
    /// Actions overriding the rule file's defaults, by rule id or category, e.g.
    /// `{ "pii.email" = "log", "prompt_injection" = "block", "pci" = "redact" }`.
    pub actions: std::collections::HashMap<String, crate::waf::rules::Action>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WafMode {
    /// Decisions are applied: blocks refuse, redactions rewrite.
    #[default]
    Enforce,
    /// Decisions are only recorded in the audit record.
    Shadow,
    /// No inspection.
    Off,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditModeConfig {
    /// The response is not delayed; records are batched to the ledger or spooled.
    #[default]
    Async,
    /// The record is fsync'd to the local spool before the response is released.
    Durable,
    /// The response is released only after the ledger acknowledged the record.
    Strict,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    #[default]
    Closed,
    Open,
}

/// One API key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// Names the credential in audit records and logs (the key itself never appears anywhere).
    pub id: String,
    pub tenant: String,
    /// Lowercase hex SHA-256 of the whole API key (`aegisctl hash-key`, or
    /// `printf %s "$KEY" | sha256sum`).
    pub key_sha256: String,
    /// What the key may do: `proxy` (model APIs), `audit:read` (own tenant's records),
    /// `admin` (every tenant's records).
    pub scopes: Vec<Scope>,
    /// Requests per minute for this credential on this gateway instance; absent: unlimited.
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Requests allowed at once above the steady rate.
    #[serde(default = "default_requests_burst")]
    pub requests_burst: u32,
    /// Tokens (prompt + completion) per minute on this gateway instance; absent: unlimited.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
pub enum Scope {
    #[serde(rename = "proxy")]
    Proxy,
    #[serde(rename = "audit:read")]
    AuditRead,
    #[serde(rename = "admin")]
    Admin,
}

/// How audit records reach the ledger.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Client addresses of the ledger nodes, e.g. `http://10.0.0.1:7400`. Any node accepts
    /// appends (followers forward to the leader); the sender moves on when one is down.
    pub ledger_endpoints: Vec<String>,
    /// Where records wait on disk while the ledger is unreachable.
    pub spool_dir: PathBuf,
    #[serde(default = "default_spool_bytes_max")]
    pub spool_bytes_max: u64,
    #[serde(default = "default_spool_segment_bytes_max")]
    pub spool_segment_bytes_max: u64,
    /// Above this share of `spool_bytes_max`, `/readyz` reports not ready so load balancers
    /// move traffic elsewhere before requests start failing.
    #[serde(default = "default_spool_high_water_percent")]
    pub spool_high_water_percent: u8,
    /// Records waiting in memory for the sender. Beyond it records go to the spool.
    #[serde(default = "default_queue_records_max")]
    pub queue_records_max: usize,
    /// Records in one Append call. At most the ledger's `append_records_max`.
    #[serde(default = "default_batch_records_max")]
    pub batch_records_max: usize,
    /// Record bytes in one Append call. At most the ledger's `append_bytes_max` (112 KiB by
    /// default).
    #[serde(default = "default_batch_bytes_max")]
    pub batch_bytes_max: usize,
    /// How long a partial batch waits for more records.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Append calls in flight at once.
    #[serde(default = "default_appends_in_flight_max")]
    pub appends_in_flight_max: usize,
    /// Deadline of one Append call.
    #[serde(default = "default_append_timeout_ms")]
    pub append_timeout_ms: u64,
    /// Attempts at sending a batch (over all nodes) before it goes to the spool.
    #[serde(default = "default_append_attempts")]
    pub append_attempts: u32,
    #[serde(default = "default_retry_backoff_initial_ms")]
    pub retry_backoff_initial_ms: u64,
    #[serde(default = "default_retry_backoff_max_ms")]
    pub retry_backoff_max_ms: u64,
    /// Longest a `strict` response waits for the ledger before it fails with 503.
    #[serde(default = "default_strict_timeout_ms")]
    pub strict_timeout_ms: u64,
    /// Largest encoded audit record. Records are a few hundred bytes; this bounds a spool frame.
    #[serde(default = "default_record_bytes_max")]
    pub record_bytes_max: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight requests and streams may take to finish after SIGTERM.
    pub drain_timeout_ms: u64,
    /// How long the audit sender may take to hand its queue to the ledger or the spool.
    pub audit_flush_timeout_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `gateway=debug,info`. `RUST_LOG` overrides it.
    pub filter: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Flags(#[from] clap::Error),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Command-line flags; each also reads the `AEGIS_*` variable named in its help.
#[derive(Debug, Parser)]
#[command(name = "aegis-gateway", version, about = "Aegis governance gateway for LLM traffic")]
pub struct Flags {
    /// The TOML configuration file.
    #[arg(long, env = "AEGIS_GATEWAY_CONFIG")]
    pub config: PathBuf,
    #[arg(long, env = "AEGIS_GATEWAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "AEGIS_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// Comma-separated ledger client addresses.
    #[arg(long, env = "AEGIS_LEDGER_ENDPOINTS", value_delimiter = ',')]
    pub ledger_endpoints: Option<Vec<String>>,
    #[arg(long, env = "AEGIS_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    #[arg(long, env = "AEGIS_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Check the configuration (file, variables and flags), print it is valid and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl Config {
    /// Reads the flags and environment, the file they name, and applies the overrides.
    pub fn load() -> Result<Self, ConfigError> {
        let flags = Flags::try_parse()?;
        let text = std::fs::read_to_string(&flags.config)
            .map_err(|source| ConfigError::Read { path: flags.config.clone(), source })?;
        let mut config = Self::from_toml(&text, &flags.config.display().to_string())?;
        config.apply(flags);
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text)
            .map_err(|source| ConfigError::Parse { path: origin.to_owned(), source: Box::new(source) })
    }

    fn apply(&mut self, flags: Flags) {
        if let Some(listen) = flags.listen {
            self.listen = listen;
        }
        if let Some(gateway_id) = flags.gateway_id {
            self.gateway_id = gateway_id;
        }
        if let Some(endpoints) = flags.ledger_endpoints {
            self.audit.ledger_endpoints = endpoints;
        }
        if let Some(spool_dir) = flags.spool_dir {
            self.audit.spool_dir = spool_dir;
        }
        if let Some(format) = flags.log_format {
            self.log.format = format;
        }
    }

    /// Checks everything that would otherwise fail at the first request.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if self.gateway_id.is_empty() || self.gateway_id.len() > ID_BYTES_MAX {
            return invalid(format!("gateway_id must be 1 to {ID_BYTES_MAX} bytes"));
        }
        let limits = &self.limits;
        for (name, value) in [
            ("limits.header_bytes_max", limits.header_bytes_max),
            ("limits.body_bytes_max", limits.body_bytes_max),
            ("limits.json_depth_max", limits.json_depth_max),
            ("limits.messages_max", limits.messages_max),
            ("limits.connections_max", limits.connections_max),
            ("limits.streams_max", limits.streams_max),
            ("limits.stream_keepalive_ms", usize::try_from(limits.stream_keepalive_ms).unwrap_or(usize::MAX)),
            (
                "limits.body_read_timeout_ms",
                usize::try_from(limits.body_read_timeout_ms).unwrap_or(usize::MAX),
            ),
        ] {
            if value == 0 {
                return invalid(format!("{name} must be at least 1"));
            }
        }
        for (route, overrides) in &limits.routes {
            if !LIMITED_ROUTES.contains(&route.as_str()) {
                return invalid(format!("limits.routes: {route:?} is not one of {LIMITED_ROUTES:?}"));
            }
            let values = [overrides.body_bytes_max, overrides.json_depth_max, overrides.messages_max];
            if values.contains(&Some(0)) {
                return invalid(format!("limits.routes.{route:?}: limits must be at least 1"));
            }
        }
        if self.upstreams.is_empty() {
            return invalid("at least one [[upstreams]] is needed".into());
        }
        let mut names = HashSet::new();
        for upstream in &self.upstreams {
            if upstream.name.is_empty()
                || upstream.name.len() > ID_BYTES_MAX
                || !names.insert(upstream.name.as_str())
            {
                return invalid(format!(
                    "upstream name {:?} is empty, longer than {ID_BYTES_MAX} bytes or used twice",
                    upstream.name
                ));
            }
            if upstream.kind != UpstreamKind::Mock {
                let Some(base_url) = &upstream.base_url else {
                    return invalid(format!("upstream {:?} needs a base_url", upstream.name));
                };
                if !base_url.starts_with("http://") && !base_url.starts_with("https://") {
                    return invalid(format!(
                        "upstream {:?}: base_url {base_url:?} must start with http:// or https://",
                        upstream.name
                    ));
                }
            }
            if upstream.models.is_empty() {
                return invalid(format!(
                    "upstream {:?} serves no models: set models = [\"*\"]",
                    upstream.name
                ));
            }
            if upstream.mock.chunk_count == 0 || upstream.mock.chunk_count > 100_000 {
                return invalid(format!("upstream {:?}: mock.chunk_count must be 1..=100000", upstream.name));
            }
        }
        let mut tenants = HashSet::new();
        for tenant in &self.tenants {
            if tenant.id.is_empty() || tenant.id.len() > ID_BYTES_MAX || !tenants.insert(tenant.id.as_str()) {
                return invalid(format!(
                    "tenant id {:?} is empty, longer than {ID_BYTES_MAX} bytes or used twice",
                    tenant.id
                ));
            }
            if tenant.streams_max == 0 {
                return invalid(format!("tenant {:?}: streams_max must be at least 1", tenant.id));
            }
        }
        let mut credential_ids = HashSet::new();
        let mut key_hashes = HashSet::new();
        for credential in &self.credentials {
            if credential.id.is_empty()
                || credential.id.len() > ID_BYTES_MAX
                || !credential_ids.insert(credential.id.as_str())
            {
                return invalid(format!(
                    "credential id {:?} is empty, longer than {ID_BYTES_MAX} bytes or used twice",
                    credential.id
                ));
            }
            if !tenants.contains(credential.tenant.as_str()) {
                return invalid(format!(
                    "credential {:?} names tenant {:?}, which is not configured",
                    credential.id, credential.tenant
                ));
            }
            if parse_key_hash(&credential.key_sha256).is_none() {
                return invalid(format!(
                    "credential {:?}: key_sha256 must be 64 lowercase hex digits (the SHA-256 of the key)",
                    credential.id
                ));
            }
            if !key_hashes.insert(credential.key_sha256.as_str()) {
                return invalid(format!("credential {:?}: the same key is configured twice", credential.id));
            }
            if credential.requests_burst == 0 || credential.requests_per_minute == Some(0) {
                return invalid(format!(
                    "credential {:?}: requests_per_minute and requests_burst must be at least 1",
                    credential.id
                ));
            }
            if credential.tokens_per_minute == Some(0) {
                return invalid(format!(
                    "credential {:?}: tokens_per_minute must be at least 1",
                    credential.id
                ));
            }
        }
        let audit = &self.audit;
        if audit.ledger_endpoints.is_empty() {
            return invalid("audit.ledger_endpoints must name at least one ledger node".into());
        }
        for endpoint in &audit.ledger_endpoints {
            if !endpoint.starts_with("http://") {
                return invalid(format!("audit.ledger_endpoints: {endpoint:?} must start with http://"));
            }
        }
        for (name, value) in [
            ("audit.queue_records_max", audit.queue_records_max),
            ("audit.batch_records_max", audit.batch_records_max),
            ("audit.batch_bytes_max", audit.batch_bytes_max),
            ("audit.appends_in_flight_max", audit.appends_in_flight_max),
        ] {
            if value == 0 {
                return invalid(format!("{name} must be at least 1"));
            }
        }
        if u64::from(audit.record_bytes_max) > audit.spool_segment_bytes_max
            || audit.spool_segment_bytes_max > audit.spool_bytes_max
        {
            return invalid(
                "audit: need record_bytes_max <= spool_segment_bytes_max <= spool_bytes_max".into(),
            );
        }
        if audit.record_bytes_max as usize > audit.batch_bytes_max {
            return invalid("audit.record_bytes_max must not exceed audit.batch_bytes_max".into());
        }
        if audit.append_attempts == 0 || !(1..=100).contains(&audit.spool_high_water_percent) {
            return invalid("audit: append_attempts >= 1 and spool_high_water_percent in 1..=100".into());
        }
        Ok(())
    }
}

impl LimitsConfig {
    /// The body limits of `route`: its overrides, else the defaults.
    pub fn for_route(&self, route: &str) -> BodyLimits {
        let overrides = self.routes.get(route);
        let pick = |value: Option<usize>, default: usize| value.unwrap_or(default);
        BodyLimits {
            body_bytes_max: pick(overrides.and_then(|route| route.body_bytes_max), self.body_bytes_max),
            json_depth_max: pick(overrides.and_then(|route| route.json_depth_max), self.json_depth_max),
            messages_max: pick(overrides.and_then(|route| route.messages_max), self.messages_max),
        }
    }
}

impl AuditConfig {
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }
}

/// Parses a lowercase hex SHA-256.
pub fn parse_key_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(hash)
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            header_bytes_max: 32 * 1024,
            body_bytes_max: 4 * 1024 * 1024,
            json_depth_max: 64,
            messages_max: 2048,
            routes: BTreeMap::from([(
                "/v1/embeddings".to_owned(),
                RouteLimits { body_bytes_max: Some(16 * 1024 * 1024), ..RouteLimits::default() },
            )]),
            connections_max: 4096,
            streams_max: 2048,
            default_completion_tokens: 1024,
            stream_keepalive_ms: 5_000,
            body_read_timeout_ms: 30_000,
        }
    }
}

impl Default for MockConfig {
    fn default() -> Self {
        Self { first_token_latency_ms: 0, chunk_count: 8, chunk_interval_ms: 0, embedding_dimensions: 8 }
    }
}

impl Default for WafConfig {
    fn default() -> Self {
        Self {
            rules_file: None,
            reload_interval_ms: 2_000,
            // As large as the largest default body (embeddings), so no default request is
            // refused for size alone; large bodies are inspected off the async runtime.
            inspect_bytes_max: 16 * 1024 * 1024,
            decoded_bytes_max: 1024 * 1024,
            decode_depth_max: 2,
            // Twice the default chat body: NFKC can expand text, and a text whose normal form
            // does not fit is refused (fail closed) rather than half inspected.
            normalized_bytes_max: 8 * 1024 * 1024,
        }
    }
}

impl Default for WafTenantConfig {
    fn default() -> Self {
        Self {
            mode: WafMode::Enforce,
            on_error: FailureMode::Closed,
            actions: std::collections::HashMap::new(),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_timeout_ms: 30_000, audit_flush_timeout_ms: 10_000 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, filter: "info".into() }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_connect_timeout_ms() -> u64 {
    2_000
}
fn default_first_byte_timeout_ms() -> u64 {
    120_000
}
fn default_response_timeout_ms() -> u64 {
    600_000
}
fn default_connect_retries() -> u32 {
    2
}
fn default_pool_idle_max() -> usize {
    256
}
fn default_response_bytes_max() -> usize {
    16 * 1024 * 1024
}
fn default_tenant_streams_max() -> usize {
    512
}
fn default_requests_burst() -> u32 {
    10
}
fn default_spool_bytes_max() -> u64 {
    1024 * 1024 * 1024
}
fn default_spool_segment_bytes_max() -> u64 {
    16 * 1024 * 1024
}
fn default_spool_high_water_percent() -> u8 {
    80
}
fn default_queue_records_max() -> usize {
    65_536
}
fn default_batch_records_max() -> usize {
    256
}
fn default_batch_bytes_max() -> usize {
    96 * 1024
}
fn default_linger_ms() -> u64 {
    5
}
fn default_appends_in_flight_max() -> usize {
    4
}
fn default_append_timeout_ms() -> u64 {
    5_000
}
fn default_append_attempts() -> u32 {
    3
}
fn default_retry_backoff_initial_ms() -> u64 {
    50
}
fn default_retry_backoff_max_ms() -> u64 {
    5_000
}
fn default_strict_timeout_ms() -> u64 {
    5_000
}
fn default_record_bytes_max() -> u32 {
    16 * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_is_valid_and_lists_the_defaults() {
        let config = Config::from_toml(include_str!("../gateway.example.toml"), "gateway.example.toml")
            .expect("the example parses");
        config.validate().expect("the example is valid");
        let defaults = LimitsConfig::default();
        assert_eq!(config.limits.body_bytes_max, defaults.body_bytes_max);
        assert_eq!(config.limits.connections_max, defaults.connections_max);
        assert_eq!(config.audit.batch_bytes_max, default_batch_bytes_max());
        assert_eq!(config.audit.queue_records_max, default_queue_records_max());
        assert_eq!(config.limits.routes, defaults.routes);
        assert_eq!(config.limits.for_route("/v1/embeddings").body_bytes_max, 16 * 1024 * 1024);
        assert_eq!(config.limits.for_route("/v1/chat/completions").body_bytes_max, defaults.body_bytes_max);
    }

    #[test]
    fn invalid_configurations_are_refused_with_the_setting_named() {
        let example = include_str!("../gateway.example.toml");
        for (from, to, expected) in [
            ("tenant = \"acme\"\n", "tenant = \"nobody\"\n", "not configured"),
            ("key_sha256 = \"4d08", "key_sha256 = \"XX08", "64 lowercase hex"),
            ("json_depth_max = 64", "json_depth_max = 0", "limits.json_depth_max"),
            ("[limits.routes.\"/v1/embeddings\"]", "[limits.routes.\"/v1/nope\"]", "is not one of"),
            ("base_url = \"http", "base_url = \"http", ""),
            (
                "ledger_endpoints = [\"http://127.0.0.1:7410\"",
                "ledger_endpoints = [\"https://x:1\"",
                "must start with http://",
            ),
        ] {
            let text = example.replacen(from, to, 1);
            let config = Config::from_toml(&text, "test").expect("parses");
            match config.validate() {
                Ok(()) => assert!(expected.is_empty(), "{to} was accepted"),
                Err(error) => assert!(error.to_string().contains(expected), "{to}: {error}"),
            }
        }
        assert!(parse_key_hash(&"ab".repeat(32)).is_some());
        assert!(parse_key_hash(&"AB".repeat(32)).is_none());
    }
}
