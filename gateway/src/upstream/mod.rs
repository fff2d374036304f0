//! Upstream providers: which one serves a model, and sending a request to it. An upstream's
//! answer comes back as a status, a content type and a [`ResponseBody`] read chunk by chunk,
//! whether it came over HTTP or from the built-in mock.

pub mod http;
pub mod mock;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ::http::StatusCode;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use prometheus_client::metrics::histogram::Histogram;

use crate::config::{Config, MockConfig, UpstreamConfig, UpstreamKind};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use crate::policy::limits::ParsedRequest;

/// The model APIs the gateway proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    ChatCompletions,
    Completions,
    Embeddings,
    Messages,
}

impl Api {
    /// The API a route template serves, e.g. `/v1/messages`.
    pub fn of_route(route: &str) -> Option<Self> {
        match route {
            "/v1/chat/completions" => Some(Self::ChatCompletions),
            "/v1/completions" => Some(Self::Completions),
            "/v1/embeddings" => Some(Self::Embeddings),
            "/v1/messages" => Some(Self::Messages),
            _ => None,
        }
    }
}

/// Every configured upstream, in configuration order.
#[derive(Debug)]
pub struct Upstreams {
    upstreams: Vec<Arc<Upstream>>,
}

/// One configured upstream.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub kind: UpstreamKind,
    patterns: Vec<String>,
    backend: Backend,
    /// `aegis_gateway_upstream_duration_seconds` for this upstream.
    pub latency: Histogram,
    pub response_timeout: Duration,
    pub response_bytes_max: usize,
    /// Host and port of an HTTP upstream (`server.address`, `server.port` on its spans).
    pub server: Option<(String, u16)>,
    /// The upstream's own model list and when it was fetched: `/v1/models` asks it at most
    /// once per [`MODELS_CACHE_TTL`].
    models_cache: parking_lot::Mutex<Option<(std::time::Instant, Vec<String>)>>,
}

/// How long an upstream's model list is reused.
const MODELS_CACHE_TTL: Duration = Duration::from_secs(60);

#[derive(Debug)]
enum Backend {
    Http(Box<http::HttpUpstream>),
    Mock(MockConfig),
}

/// An upstream's response, headers received, body still to read.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub content_type: Option<::http::HeaderValue>,
    pub body: ResponseBody,
}

/// The body of an upstream response.
#[derive(Debug)]
pub enum ResponseBody {
    Http(Incoming),
    /// The mock's chunks, each due at `next_at` (the first after `first_delay`). Reading is
    /// cancel-safe: a chunk leaves the queue only once it is due and returned.
    Mock {
        chunks: VecDeque<Bytes>,
        first_delay: Duration,
        interval: Duration,
        next_at: Option<tokio::time::Instant>,
    },
}

impl Upstreams {
    /// Prepares every upstream; fails when one's TLS settings cannot be used.
    pub fn new(config: &Config, metrics: &Metrics) -> anyhow::Result<Self> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|upstream| Upstream::new(upstream, metrics).map(Arc::new))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { upstreams })
    }

    /// The first upstream whose model patterns match `model`.
    pub fn route(&self, model: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|upstream| upstream.serves(model))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.upstreams.iter()
    }
}

impl Upstream {
    fn new(config: &UpstreamConfig, metrics: &Metrics) -> anyhow::Result<Self> {
        let backend = match config.kind {
            UpstreamKind::Mock => Backend::Mock(config.mock.clone()),
            UpstreamKind::Openai | UpstreamKind::Anthropic => {
                Backend::Http(Box::new(http::HttpUpstream::new(config)?))
            }
        };
        Ok(Self {
            name: Arc::from(config.name.as_str()),
            kind: config.kind,
            patterns: config.models.clone(),
            backend,
            latency: metrics.upstream_histogram(&config.name),
            response_timeout: Duration::from_millis(config.response_timeout_ms),
            response_bytes_max: config.response_bytes_max,
            server: config.base_url.as_deref().and_then(server_of),
            models_cache: parking_lot::Mutex::new(None),
        })
    }

    /// Whether a model pattern of this upstream matches `model`: exact, `prefix*`, or `*`.
    pub fn serves(&self, model: &str) -> bool {
        self.patterns.iter().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => pattern == model,
        })
    }

    /// The model names this upstream lists in `/v1/models`: its exact patterns, plus what an
    /// OpenAI-compatible upstream lists itself for its wildcard patterns.
    pub async fn models(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.patterns.iter().filter(|pattern| !pattern.ends_with('*')).cloned().collect();
        let has_wildcard = self.patterns.iter().any(|pattern| pattern.ends_with('*'));
        if let (Backend::Http(http), true, UpstreamKind::Openai) = (&self.backend, has_wildcard, self.kind) {
            let cached = self
                .models_cache
                .lock()
                .as_ref()
                .filter(|(fetched, _)| fetched.elapsed() < MODELS_CACHE_TTL)
                .map(|(_, listed)| listed.clone());
            let listed = match cached {
                Some(listed) => listed,
                None => match http.list_models().await {
                    Ok(listed) => {
                        *self.models_cache.lock() = Some((std::time::Instant::now(), listed.clone()));
                        listed
                    }
                    Err(error) => {
                        tracing::warn!(upstream = %self.name, %error, "cannot list the upstream's models");
                        Vec::new()
                    }
                },
            };
            names.extend(listed.into_iter().filter(|model| self.serves(model)));
        }
        names
    }

    /// Whether this upstream speaks `api`: Anthropic upstreams only the Messages API, OpenAI
    /// ones all but it, the mock all of them.
    pub fn speaks(&self, api: Api) -> bool {
        match self.kind {
            UpstreamKind::Mock => true,
            UpstreamKind::Anthropic => api == Api::Messages,
            UpstreamKind::Openai => api != Api::Messages,
        }
    }

    /// Sends the request and waits for the response headers.
    pub async fn send(
        &self,
        api: Api,
        request: &ParsedRequest,
        client_headers: &::http::HeaderMap,
    ) -> Result<UpstreamResponse, ApiError> {
        match &self.backend {
            Backend::Http(http) => http.send(api, request, client_headers).await,
            Backend::Mock(config) => {
                let response = mock::respond(config, api, request);
                Ok(UpstreamResponse {
                    status: StatusCode::OK,
                    content_type: Some(::http::HeaderValue::from_static(response.content_type)),
                    body: ResponseBody::Mock {
                        chunks: response.chunks,
                        first_delay: response.first_delay,
                        interval: response.interval,
                        next_at: None,
                    },
                })
            }
        }
    }
}

impl ResponseBody {
    /// The next chunk of body bytes; `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ApiError>> {
        match self {
            Self::Http(incoming) => loop {
                match incoming.frame().await? {
                    Ok(frame) => {
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            return Some(Ok(data));
                        }
                    }
                    Err(error) => {
                        return Some(Err(ApiError::new(
                            ErrorKind::UpstreamUnavailable,
                            format!("the upstream connection failed mid-response: {error}"),
                        )));
                    }
                }
            },
            Self::Mock { chunks, first_delay, interval, next_at } => {
                if chunks.is_empty() {
                    return None;
                }
                let due = *next_at.get_or_insert_with(|| tokio::time::Instant::now() + *first_delay);
                tokio::time::sleep_until(due).await;
                *next_at = Some(tokio::time::Instant::now() + *interval);
                chunks.pop_front().map(Ok)
            }
        }
    }

    /// Reads the whole body, refusing more than `bytes_max`. A body of one chunk is not copied.
    pub async fn read_all(&mut self, bytes_max: usize) -> Result<Bytes, ApiError> {
        let mut chunks = Vec::new();
        let mut total = 0;
        while let Some(chunk) = self.next_chunk().await {
            let chunk = chunk?;
            total += chunk.len();
            if total > bytes_max {
                return Err(ApiError::new(
                    ErrorKind::UpstreamUnavailable,
                    format!("the upstream's response exceeds the gateway's limit of {bytes_max} bytes"),
                ));
            }
            chunks.push(chunk);
        }
        Ok(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => Bytes::from(chunks.concat()),
        })
    }
}

/// Host and port of a base URL, the scheme's default port when it names none.
fn server_of(base_url: &str) -> Option<(String, u16)> {
    let uri: ::http::Uri = base_url.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    Some((host, port))
}
