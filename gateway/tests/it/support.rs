//! Test fixtures: a gateway served in-process on port 0 in front of a real three-process ledger
//! cluster (from `chaos-tests`), and a small HTTP client.

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use gateway::config::Config;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest as _, Sha256};
use tokio::sync::oneshot;

pub(crate) use chaos_tests::{LedgerCluster, free_port};

/// API keys of the test configuration.
pub(crate) const KEY_ALPHA: &str = "sk-test-alpha";
pub(crate) const KEY_NO_PROXY_SCOPE: &str = "sk-test-noscope";
pub(crate) const KEY_LIMITED: &str = "sk-test-limited";
pub(crate) const KEY_BETA: &str = "sk-test-beta";

/// Lowercase hex SHA-256 of `key`, as the configuration stores it.
pub(crate) fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The test configuration: a mock upstream, tenants `alpha` (async) and `beta`, four keys.
pub(crate) fn config(ledger_endpoints: &[String], spool_dir: &Path) -> Config {
    let endpoints: Vec<String> = ledger_endpoints.iter().map(|endpoint| format!("{endpoint:?}")).collect();
    let text = format!(
        r#"
gateway_id = "gw-test"
listen = "127.0.0.1:0"
[limits]
body_bytes_max = 65536
json_depth_max = 16
messages_max = 64
stream_keepalive_ms = 100
[[upstreams]]
name = "mock"
kind = "mock"
models = ["mock-1", "mock-*", "claude-mock"]
[upstreams.mock]
chunk_count = 6
[[tenants]]
id = "alpha"
[[tenants]]
id = "beta"
[[credentials]]
id = "alpha-app"
tenant = "alpha"
key_sha256 = "{alpha}"
scopes = ["proxy", "audit:read"]
[[credentials]]
id = "alpha-reader"
tenant = "alpha"
key_sha256 = "{noscope}"
scopes = ["audit:read"]
[[credentials]]
id = "beta-limited"
tenant = "beta"
key_sha256 = "{limited}"
scopes = ["proxy", "audit:read"]
requests_per_minute = 1
requests_burst = 1
[[credentials]]
id = "beta-app"
tenant = "beta"
key_sha256 = "{beta}"
scopes = ["proxy", "audit:read"]
[audit]
ledger_endpoints = [{endpoints}]
spool_dir = "{spool}"
append_timeout_ms = 1000
append_attempts = 2
retry_backoff_initial_ms = 20
retry_backoff_max_ms = 200
linger_ms = 2
"#,
        alpha = key_hash(KEY_ALPHA),
        noscope = key_hash(KEY_NO_PROXY_SCOPE),
        limited = key_hash(KEY_LIMITED),
        beta = key_hash(KEY_BETA),
        endpoints = endpoints.join(", "),
        spool = spool_dir.display(),
    );
    let config = Config::from_toml(&text, "test config").expect("test config parses");
    config.validate().expect("test config is valid");
    config
}

/// A gateway served in-process until dropped (or `stop`ped).
pub(crate) struct Gateway {
    pub(crate) address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Gateway {
    pub(crate) async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway::serve(config, listener, async {
            let _ = stopped.await;
        }));
        Self { address, stop: Some(stop), task: Some(task) }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Shuts the gateway down gracefully and waits for it.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("gateway task").expect("gateway shut down cleanly");
        }
    }

    /// The value of a metric line (`name` with its labels, if any) in `/metrics`.
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        let response = get(&self.url("/metrics"), None).await;
        let text = String::from_utf8_lossy(&response.body).into_owned();
        text.lines()
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not in /metrics:\n{text}"))
    }
}

/// A response as the test client saw it.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub(crate) fn record_id(&self) -> String {
        self.headers
            .get("x-aegis-record-id")
            .expect("every response carries x-aegis-record-id")
            .to_str()
            .expect("ascii")
            .to_owned()
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub(crate) async fn post(url: &str, key: Option<&str>, body: &str) -> Reply {
    send(Method::POST, url, key, Bytes::from(body.to_owned()), &[]).await
}

pub(crate) async fn post_with_headers(
    url: &str,
    key: Option<&str>,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    send(Method::POST, url, key, Bytes::from(body.to_owned()), headers).await
}

pub(crate) async fn get(url: &str, key: Option<&str>) -> Reply {
    send(Method::GET, url, key, Bytes::new(), &[]).await
}

async fn send(method: Method, url: &str, key: Option<&str>, body: Bytes, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::builder().method(method).uri(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response =
        client().request(request.body(Full::new(body)).expect("request")).await.expect("gateway answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply { status: parts.status, headers: parts.headers, body }
}
