//! The request-smuggling corpus: raw bytes on a socket, each variant refused with 400 and the
//! connection closed, and the upstream never sees a request from any of them. Valid chunked and
//! pipelined requests still pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gateway::config::MockConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{Gateway, KEY_ALPHA, config, free_port};

/// The mock provider over HTTP, counting the requests it receives.
async fn counting_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let router = gateway::upstream::mock::router(Arc::new(MockConfig::default())).layer(
        axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
            counter.fetch_add(1, Ordering::SeqCst);
            next.run(request)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (address, received)
}

/// Sends `bytes` on a fresh connection and reads until the server closes it.
async fn exchange(gateway: &Gateway, bytes: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(gateway.address).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the gateway kept the connection open after {:?}", String::from_utf8_lossy(bytes));
    String::from_utf8_lossy(&response).into_owned()
}

fn request(headers: &str, body: &str) -> Vec<u8> {
    format!("POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {KEY_ALPHA}\r\n{headers}\r\n{body}")
        .into_bytes()
}

const CHAT: &str = r#"{"model":"gpt-x","messages":[]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_variants_are_refused_and_never_reach_the_upstream() {
    let (upstream_address, received) = counting_upstream().await;
    let spool = tempfile::tempdir().expect("spool dir");
    let mut config = config(&[format!("http://{}", free_port())], spool.path());
    config.limits.header_bytes_max = 4_096;
    config.upstreams.insert(
        0,
        toml::from_str(&format!(
            "name = \"counted\"\nkind = \"openai\"\nbase_url = \"http://{upstream_address}/v1\"\nmodels = [\"gpt-*\"]"
        ))
        .expect("upstream"),
    );
    let gateway = Gateway::start(config).await;
    let smuggled = "GPOST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\nx";
    let chunked = |size_line: &str| {
        request("Transfer-Encoding: chunked\r\n", &format!("{size_line}\r\n{CHAT}\r\n0\r\n\r\n"))
    };
    let corpus: Vec<(&str, Vec<u8>)> = vec![
        (
            "CL.TE",
            request("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", &format!("0\r\n\r\n{smuggled}")),
        ),
        (
            "TE.CL",
            request(
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                &format!("5c\r\n{smuggled}\r\n0\r\n\r\n"),
            ),
        ),
        ("duplicate equal Content-Length", request("Content-Length: 2\r\nContent-Length: 2\r\n", "{}")),
        ("conflicting Content-Length", request("Content-Length: 2\r\nContent-Length: 40\r\n", "{}")),
        ("list-valued Content-Length", request("Content-Length: 2, 2\r\n", "{}")),
        ("signed Content-Length", request("Content-Length: +2\r\n", "{}")),
        ("negative Content-Length", request("Content-Length: -1\r\n", "{}")),
        ("hex Content-Length", request("Content-Length: 0x2\r\n", "{}")),
        ("overflowing Content-Length", request("Content-Length: 184467440737095516160\r\n", "{}")),
        ("coding list ending in chunked", request("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n")),
        ("chunked not last", request("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n")),
        ("obfuscated coding", request("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n")),
        ("space before colon", request("Transfer-Encoding : chunked\r\n", "0\r\n\r\n")),
        (
            "duplicate Transfer-Encoding",
            request("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"),
        ),
        ("underscore look-alike", request("Transfer_Encoding: chunked\r\nContent-Length: 2\r\n", "{}")),
        ("folded Transfer-Encoding", request("Transfer-Encoding:\r\n chunked\r\n", "0\r\n\r\n")),
        (
            "bare LF line endings",
            b"POST /v1/chat/completions HTTP/1.1\nHost: gw\nContent-Length: 2\n\n{}".to_vec(),
        ),
        ("bare CR in a value", request("X-Note: a\rb\r\nContent-Length: 2\r\n", "{}")),
        ("NUL in a header value", request("X-Note: a\0b\r\nContent-Length: 2\r\n", "{}")),
        (
            "Transfer-Encoding in HTTP/1.0",
            b"POST /v1/chat/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
        ),
        ("overflowing chunk size", chunked("1ffffffffffffffff")),
        ("chunk extension", chunked(&format!("{:x};ext=1", CHAT.len()))),
        ("chunk size with trailing space", chunked(&format!("{:x} ", CHAT.len()))),
        ("chunk size with 0x prefix", chunked(&format!("0x{:x}", CHAT.len()))),
        (
            "chunk data without CRLF",
            request("Transfer-Encoding: chunked\r\n", &format!("3\r\n{CHAT}\r\n0\r\n\r\n")),
        ),
        (
            "trailer after the last chunk",
            request(
                "Transfer-Encoding: chunked\r\n",
                &format!("{:x}\r\n{CHAT}\r\n0\r\nX-Trailer: 1\r\n\r\n", CHAT.len()),
            ),
        ),
        (
            "oversized header section",
            request(&format!("X-Padding: {}\r\nContent-Length: 2\r\n", "a".repeat(5_000)), "{}"),
        ),
        (
            "malformed request line",
            b"POST /v1/chat/completions HTTP/1.1 extra\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
        ),
    ];
    assert!(corpus.len() >= 20);
    for (name, bytes) in &corpus {
        let response = exchange(&gateway, bytes).await;
        assert!(response.starts_with("HTTP/1.1 400 "), "{name}: {response:?}");
        assert!(response.contains("x-aegis-record-id: "), "{name}: every refusal is audited: {response:?}");
        assert!(!response.contains("HTTP/1.1 200"), "{name}: a smuggled request got an answer: {response:?}");
    }
    assert_eq!(received.load(Ordering::SeqCst), 0, "no variant reached the upstream");
    assert!(gateway.metric("aegis_gateway_smuggling_refusals_total").await >= 20.0);

    // Valid chunked bodies and pipelined requests still work, and do reach the upstream.
    let valid_chunked = request(
        "Transfer-Encoding: chunked\r\nConnection: close\r\n",
        &format!("{:x}\r\n{CHAT}\r\n0\r\n\r\n", CHAT.len()),
    );
    let response = exchange(&gateway, &valid_chunked).await;
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    let mut pipelined = request(&format!("Content-Length: {}\r\n", CHAT.len()), CHAT);
    pipelined.extend(request(&format!("Content-Length: {}\r\nConnection: close\r\n", CHAT.len()), CHAT));
    let response = exchange(&gateway, &pipelined).await;
    assert_eq!(response.matches("HTTP/1.1 200 ").count(), 2, "{response}");
    assert_eq!(received.load(Ordering::SeqCst), 3);

    // A valid request pipelined with a smuggling attempt: the first is answered in full, then
    // the refusal, then the connection closes.
    let mut pipelined = request(&format!("Content-Length: {}\r\n", CHAT.len()), CHAT);
    pipelined.extend_from_slice(b"POST /v1/chat/completions HTTP/1.1\nHost: gw\n\n");
    let response = exchange(&gateway, &pipelined).await;
    let first = response.find("HTTP/1.1 200 ").expect("the valid request is answered");
    let refusal = response.find("HTTP/1.1 400 ").expect("then the refusal");
    assert!(first < refusal, "{response}");
    assert_eq!(received.load(Ordering::SeqCst), 4);
    gateway.stop().await;
}
