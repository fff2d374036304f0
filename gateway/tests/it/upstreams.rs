//! The gateway in front of upstreams reached over HTTP: the mock provider served on its own
//! port as an OpenAI-compatible and as an Anthropic upstream, an upstream that dies mid-stream,
//! one that refuses connections; and stream admission.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway::config::{Config, MockConfig, UpstreamConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{Gateway, KEY_ALPHA, config, free_port, post};

/// Serves the mock provider over HTTP on a fresh port.
async fn mock_server(mock: MockConfig) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, gateway::upstream::mock::router(Arc::new(mock))).await });
    address
}

/// An upstream that answers a stream's headers and one event, then drops the connection.
async fn dying_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0u8; 64 * 1024];
                let _ = stream.read(&mut request).await;
                let event = "data: {\"choices\":[{\"delta\":{\"content\":\"half\"}}]}\n\n";
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
                    event.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Dropped without the terminating chunk: the stream breaks mid-way.
            });
        }
    });
    address
}

/// Serves the mock provider over TLS with a fresh self-signed certificate for `localhost`;
/// returns its address and the certificate in PEM.
async fn tls_mock_server() -> (SocketAddr, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let certificate_pem = certified.cert.pem();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let router =
        gateway::upstream::mock::router(Arc::new(MockConfig { chunk_count: 4, ..MockConfig::default() }));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper_util::service::TowerToHyperService::new(router);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (address, certificate_pem)
}

fn upstream(toml: &str) -> UpstreamConfig {
    toml::from_str(toml).expect("upstream config")
}

/// A gateway whose ledger is unreachable (records go to its spool; these tests look at the
/// traffic) with the given upstreams in front of the built-in mock.
async fn gateway_with(
    upstreams: Vec<UpstreamConfig>,
    adjust: impl FnOnce(&mut Config),
) -> (Gateway, tempfile::TempDir) {
    let spool = tempfile::tempdir().expect("spool dir");
    let mut config = config(&[format!("http://{}", free_port())], spool.path());
    let mock = config.upstreams.remove(0);
    config.upstreams = upstreams;
    config.upstreams.push(mock);
    adjust(&mut config);
    config.validate().expect("valid");
    (Gateway::start(config).await, spool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_and_anthropic_upstreams_over_http_plain_and_streamed() {
    let mock = mock_server(MockConfig { chunk_count: 5, ..MockConfig::default() }).await;
    let (gateway, _spool) = gateway_with(
        vec![
            upstream(&format!("name = \"openai-like\"\nkind = \"openai\"\nbase_url = \"http://{mock}/v1\"\nmodels = [\"gpt-*\"]")),
            upstream(&format!("name = \"anthropic-like\"\nkind = \"anthropic\"\nbase_url = \"http://{mock}/v1\"\nmodels = [\"claude-3*\"]")),
        ],
        |_| {},
    )
    .await;
    let chat = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}"#;
    let reply = post(&gateway.url("/v1/chat/completions"), Some(KEY_ALPHA), chat).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.json()["model"], "gpt-4o-mini");
    assert_eq!(reply.json()["usage"]["completion_tokens"], 5);

    let stream = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hello"}]}"#;
    let reply = post(&gateway.url("/v1/chat/completions"), Some(KEY_ALPHA), stream).await;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    let contents =
        text.split("\"delta\":{\"content\":\"").skip(1).filter(|rest| !rest.starts_with('"')).count();
    assert_eq!(contents, 5, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));

    let messages = r#"{"model":"claude-3-haiku","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let reply = post(&gateway.url("/v1/messages"), Some(KEY_ALPHA), messages).await;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    assert_eq!(text.matches("event: content_block_delta").count(), 5, "{text}");
    assert!(text.contains("event: message_stop"));

    // An API the model's upstream does not speak: 400 in the route's error shape.
    let wrong = r#"{"model":"gpt-4o-mini","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
    let reply = post(&gateway.url("/v1/messages"), Some(KEY_ALPHA), wrong).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    assert_eq!(reply.json()["type"], "error", "Anthropic's shape on /v1/messages");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_become_openai_errors_and_mid_stream_error_events() {
    let dying = dying_server().await;
    let refused = free_port();
    let (gateway, _spool) = gateway_with(
        vec![
            upstream(&format!("name = \"dying\"\nkind = \"openai\"\nbase_url = \"http://{dying}/v1\"\nmodels = [\"dying\"]")),
            upstream(&format!(
                "name = \"down\"\nkind = \"openai\"\nbase_url = \"http://{refused}/v1\"\nmodels = [\"down\"]\nconnect_retries = 1"
            )),
        ],
        |_| {},
    )
    .await;
    let reply =
        post(&gateway.url("/v1/chat/completions"), Some(KEY_ALPHA), r#"{"model":"down","messages":[]}"#)
            .await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"]["code"], "upstream_unavailable");

    let stream = r#"{"model":"dying","stream":true,"messages":[{"role":"user","content":"hello"}]}"#;
    let reply = post(&gateway.url("/v1/chat/completions"), Some(KEY_ALPHA), stream).await;
    assert_eq!(reply.status, 200, "the stream had started");
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    let events: Vec<&str> = text.split("\n\n").filter(|event| !event.is_empty()).collect();
    assert_eq!(events.len(), 2, "{text}");
    assert!(events[0].contains("half"));
    let error: serde_json::Value =
        serde_json::from_str(events[1].strip_prefix("data: ").expect("a data event")).expect("JSON");
    assert_eq!(error["error"]["code"], "upstream_unavailable", "{error}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_tenant_limit_are_refused_with_429() {
    let (gateway, _spool) = gateway_with(Vec::new(), |config| {
        config.tenants[0].streams_max = 1;
        config.upstreams[0].mock.chunk_count = 20;
        config.upstreams[0].mock.chunk_interval_ms = 50;
    })
    .await;
    let stream = r#"{"model":"mock-1","stream":true,"messages":[{"role":"user","content":"hello"}]}"#;
    let url = gateway.url("/v1/chat/completions");
    let first = tokio::spawn({
        let url = url.clone();
        async move { post(&url, Some(KEY_ALPHA), stream).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = post(&url, Some(KEY_ALPHA), stream).await;
    assert_eq!(second.status, 429);
    assert_eq!(second.json()["error"]["code"], "too_many_streams");
    assert_eq!(first.await.expect("first stream").status, 200);
    // The slot is free again once the first stream ended.
    assert_eq!(post(&url, Some(KEY_ALPHA), stream).await.status, 200);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified_against_the_configured_ca() {
    let (server, certificate_pem) = tls_mock_server().await;
    let ca = tempfile::NamedTempFile::new().expect("ca file");
    std::fs::write(ca.path(), certificate_pem).expect("write ca");
    let port = server.port();
    let (gateway, _spool) = gateway_with(
        vec![
            upstream(&format!(
                "name = \"private-ca\"\nkind = \"openai\"\nbase_url = \"https://localhost:{port}/v1\"\nmodels = [\"gpt-tls\"]\ntls_ca_file = {:?}",
                ca.path()
            )),
            upstream(&format!(
                "name = \"public-roots\"\nkind = \"openai\"\nbase_url = \"https://localhost:{port}/v1\"\nmodels = [\"gpt-untrusted\"]"
            )),
        ],
        |_| {},
    )
    .await;
    let url = gateway.url("/v1/chat/completions");
    let reply =
        post(&url, Some(KEY_ALPHA), r#"{"model":"gpt-tls","messages":[{"role":"user","content":"hi"}]}"#)
            .await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.json()["usage"]["completion_tokens"], 4);
    let stream = r#"{"model":"gpt-tls","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let reply = post(&url, Some(KEY_ALPHA), stream).await;
    assert!(String::from_utf8_lossy(&reply.body).ends_with("data: [DONE]\n\n"));
    // The same server is not trusted by Mozilla's roots: the gateway refuses to talk to it.
    let reply = post(&url, Some(KEY_ALPHA), r#"{"model":"gpt-untrusted","messages":[]}"#).await;
    assert_eq!(reply.status, 502, "{}", String::from_utf8_lossy(&reply.body));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limits_apply_per_route() {
    let (gateway, _spool) = gateway_with(Vec::new(), |config| {
        config.limits.body_bytes_max = 10_000;
        config.limits.routes.insert(
            "/v1/embeddings".to_owned(),
            gateway::config::RouteLimits { body_bytes_max: Some(100_000), ..Default::default() },
        );
    })
    .await;
    let big_input = "x".repeat(50_000);
    let embeddings = format!(r#"{{"model":"mock-1","input":"{big_input}"}}"#);
    let chat = format!(r#"{{"model":"mock-1","messages":[{{"role":"user","content":"{big_input}"}}]}}"#);
    assert_eq!(post(&gateway.url("/v1/embeddings"), Some(KEY_ALPHA), &embeddings).await.status, 200);
    let refused = post(&gateway.url("/v1/chat/completions"), Some(KEY_ALPHA), &chat).await;
    assert_eq!(refused.status, 413);
    assert_eq!(refused.json()["error"]["code"], "request_too_large");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_lists_merge_upstreams_and_are_fetched_once_a_minute() {
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    let router = gateway::upstream::mock::router(Arc::new(MockConfig::default())).layer(
        axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            next.run(request)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    let (gateway, _spool) = gateway_with(
        vec![upstream(&format!(
            "name = \"listed\"\nkind = \"openai\"\nbase_url = \"http://{address}/v1\"\nmodels = [\"mock-*\"]"
        ))],
        |_| {},
    )
    .await;
    for _ in 0..3 {
        let reply = crate::support::get(&gateway.url("/v1/models"), Some(KEY_ALPHA)).await;
        assert_eq!(reply.status, 200);
        let ids: Vec<String> = reply.json()["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|model| model["id"].as_str().expect("id").to_owned())
            .collect();
        assert_eq!(
            ids.iter().filter(|id| *id == "mock-1").count(),
            1,
            "listed once though two upstreams serve it: {ids:?}"
        );
        assert!(ids.contains(&"claude-mock".to_owned()), "{ids:?}");
    }
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1, "the upstream's list is cached");
    gateway.stop().await;
}
