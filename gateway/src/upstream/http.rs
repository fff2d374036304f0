//! An upstream reached over HTTP/1.1, in clear or over TLS (rustls; Mozilla's roots or a
//! configured CA file): OpenAI-compatible APIs and Anthropic. Pooled keep-alive connections
//! with TCP_NODELAY, a connect timeout, retries only when connecting failed (a
//! request that reached the upstream is never sent twice), and a deadline for the response
//! headers. The request body is forwarded as received, re-framed by hyper with its own
//! `Content-Length`; client framing and hop-by-hop headers never pass through.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use super::{Api, ResponseBody, UpstreamResponse};
use crate::config::{UpstreamConfig, UpstreamKind};
use crate::error::{ApiError, ErrorKind};
use crate::policy::limits::ParsedRequest;

/// Longest wait for an upstream's model list: `/v1/models` asks every wildcard upstream.
const MODELS_TIMEOUT: Duration = Duration::from_secs(5);

/// Anthropic API version sent when the client named none.
const ANTHROPIC_VERSION_DEFAULT: &str = "2023-06-01";

/// Client headers passed on to Anthropic (they select API behaviour, not identity).
const ANTHROPIC_PASSTHROUGH: [&str; 2] = ["anthropic-version", "anthropic-beta"];

/// A pooled HTTP client for one upstream.
#[derive(Debug)]
pub struct HttpUpstream {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    kind: UpstreamKind,
    /// `base_url` without a trailing slash, e.g. `http://127.0.0.1:8000/v1`.
    base_url: String,
    /// The upstream's credential header, ready to send; `None` when no key is configured.
    credential: Option<(HeaderName, HeaderValue)>,
    first_byte_timeout: Duration,
    connect_retries: u32,
}

impl HttpUpstream {
    /// Prepares the client; fails only when the configured CA file cannot be used.
    pub fn new(config: &UpstreamConfig) -> anyhow::Result<Self> {
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(config)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.pool_idle_max)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let key = config.api_key_env.as_ref().and_then(|name| match std::env::var(name) {
            Ok(key) => Some(key),
            Err(_) => {
                tracing::warn!(upstream = %config.name, variable = %name, "the upstream's API key variable is not set");
                None
            }
        });
        let credential = key.and_then(|key| match config.kind {
            UpstreamKind::Anthropic => {
                HeaderValue::try_from(key).ok().map(|value| (HeaderName::from_static("x-api-key"), value))
            }
            _ => HeaderValue::try_from(format!("Bearer {key}")).ok().map(|mut value| {
                value.set_sensitive(true);
                (AUTHORIZATION, value)
            }),
        });
        Ok(Self {
            client,
            kind: config.kind,
            base_url: config.base_url.clone().unwrap_or_default().trim_end_matches('/').to_owned(),
            credential,
            first_byte_timeout: Duration::from_millis(config.first_byte_timeout_ms),
            connect_retries: config.connect_retries,
        })
    }

    /// Sends `request` to the upstream's endpoint for `api` and waits for the response headers.
    pub async fn send(
        &self,
        api: Api,
        request: &ParsedRequest,
        client_headers: &HeaderMap,
    ) -> Result<UpstreamResponse, ApiError> {
        let path = match api {
            Api::ChatCompletions => "/chat/completions",
            Api::Completions => "/completions",
            Api::Embeddings => "/embeddings",
            Api::Messages => "/messages",
        };
        let uri: Uri = format!("{}{path}", self.base_url).parse().map_err(|error| {
            ApiError::new(ErrorKind::Internal, format!("the upstream URL is invalid: {error}"))
        })?;
        let accept = if request.stream { "text/event-stream" } else { "application/json" };
        let mut attempt = 0;
        loop {
            let mut builder = Request::builder()
                .method(Method::POST)
                .uri(uri.clone())
                .header(CONTENT_TYPE, "application/json")
                .header(ACCEPT, accept);
            if let Some((name, value)) = &self.credential {
                builder = builder.header(name, value);
            }
            // W3C trace context: the pipeline set `traceparent` to the gateway's span.
            for name in [crate::trace_context::TRACEPARENT, "tracestate"] {
                if let Some(value) = client_headers.get(name) {
                    builder = builder.header(name, value);
                }
            }
            if self.kind == UpstreamKind::Anthropic {
                for name in ANTHROPIC_PASSTHROUGH {
                    if let Some(value) = client_headers.get(name) {
                        builder = builder.header(name, value);
                    }
                }
                if !client_headers.contains_key("anthropic-version") {
                    builder = builder.header("anthropic-version", ANTHROPIC_VERSION_DEFAULT);
                }
            }
            let outgoing = builder.body(Full::new(request.body.clone())).map_err(|error| {
                ApiError::new(ErrorKind::Internal, format!("cannot build the upstream request: {error}"))
            })?;
            match tokio::time::timeout(self.first_byte_timeout, self.client.request(outgoing)).await {
                Err(_) => {
                    return Err(ApiError::new(
                        ErrorKind::UpstreamTimeout,
                        format!("the upstream did not answer within {:?}", self.first_byte_timeout),
                    ));
                }
                Ok(Ok(response)) => {
                    let (parts, body) = response.into_parts();
                    // The upstream refusing the gateway's own credential is the gateway's
                    // problem, not the client's: SDKs must not report the client's key as wrong.
                    if matches!(parts.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                        return Err(ApiError::new(
                            ErrorKind::UpstreamUnavailable,
                            format!(
                                "the upstream refused the gateway's credential ({}); check the upstream's api_key_env",
                                parts.status
                            ),
                        ));
                    }
                    return Ok(UpstreamResponse {
                        status: parts.status,
                        content_type: parts.headers.get(CONTENT_TYPE).cloned(),
                        body: ResponseBody::Http(body),
                    });
                }
                Ok(Err(error)) if error.is_connect() && attempt < self.connect_retries => {
                    attempt += 1;
                    tracing::debug!(%error, attempt, "connecting to the upstream failed; retrying");
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
                Ok(Err(error)) => {
                    return Err(ApiError::new(
                        ErrorKind::UpstreamUnavailable,
                        format!("the upstream could not be reached: {error}"),
                    ));
                }
            }
        }
    }

    /// `GET /models` of an OpenAI-compatible upstream: the model ids it lists.
    pub async fn list_models(&self) -> Result<Vec<String>, ApiError> {
        let uri: Uri = format!("{}/models", self.base_url)
            .parse()
            .map_err(|error| ApiError::new(ErrorKind::Internal, format!("invalid upstream URL: {error}")))?;
        let mut builder = Request::builder().method(Method::GET).uri(uri);
        if let Some((name, value)) = &self.credential {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|error| ApiError::new(ErrorKind::Internal, error.to_string()))?;
        let unavailable = |error: String| ApiError::new(ErrorKind::UpstreamUnavailable, error);
        let response = tokio::time::timeout(MODELS_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| unavailable("timed out".into()))?
            .map_err(|error| unavailable(error.to_string()))?;
        if !response.status().is_success() {
            return Err(unavailable(format!("status {}", response.status())));
        }
        let body = http_body_util::Limited::new(response.into_body(), 4 * 1024 * 1024)
            .collect()
            .await
            .map_err(|error| unavailable(error.to_string()))?
            .to_bytes();
        #[derive(serde::Deserialize)]
        struct List {
            data: Vec<Model>,
        }
        #[derive(serde::Deserialize)]
        struct Model {
            id: String,
        }
        let list: List = serde_json::from_slice(&body).map_err(|error| unavailable(error.to_string()))?;
        Ok(list.data.into_iter().map(|model| model.id).collect())
    }
}

/// TLS settings for an upstream: TLS 1.2 and 1.3 with ring, trusting the configured CA file or
/// the bundled Mozilla roots.
fn tls_config(config: &UpstreamConfig) -> anyhow::Result<rustls::ClientConfig> {
    use anyhow::Context as _;

    let mut roots = rustls::RootCertStore::empty();
    match &config.tls_ca_file {
        Some(path) => {
            let certificates = CertificateDer::pem_file_iter(path).with_context(|| {
                format!("upstream {:?}: cannot read tls_ca_file {}", config.name, path.display())
            })?;
            for certificate in certificates {
                let certificate = certificate.with_context(|| {
                    format!("upstream {:?}: {} is not PEM certificates", config.name, path.display())
                })?;
                roots.add(certificate).with_context(|| {
                    format!(
                        "upstream {:?}: a certificate in {} is not a usable CA",
                        config.name,
                        path.display()
                    )
                })?;
            }
            anyhow::ensure!(
                !roots.is_empty(),
                "upstream {:?}: {} holds no certificate",
                config.name,
                path.display()
            );
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("the TLS provider supports no protocol version")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
