//! A tiny HTTP/1.1 server for exercising the load generator (unit tests and `examples/mock_server.rs`).
//!
//! Routes (anything else answers 404):
//! - `/ok`: 200 with a small JSON body.
//! - `/status/CODE`: that status with a small body.
//! - `/close`: 200 with `Connection: close` (the server closes after each response).
//! - `/sse?chunks=N&delay_ms=D`: 200 `text/event-stream`, N `data:` events with D ms between them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::channel::{Channel, Sender};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the server saw.
#[derive(Debug, Default)]
pub(crate) struct ServerStats {
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests whose content-type was application/json and whose body was non-empty.
    pub json_bodies: AtomicU64,
}

type Body = BoxBody<Bytes, Infallible>;

/// Binds 127.0.0.1:`port` (0 = any) and serves until the process ends.
pub(crate) async fn spawn(port: u16) -> std::io::Result<(SocketAddr, Arc<ServerStats>)> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(ServerStats::default());
    tokio::spawn(accept_loop(listener, Arc::clone(&stats)));
    Ok((addr, stats))
}

async fn accept_loop(listener: TcpListener, stats: Arc<ServerStats>) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, Arc::clone(&stats)));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, stats: Arc<ServerStats>) -> Result<Response<Body>, Infallible> {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let is_json = req.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v == "application/json");
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if is_json && !body.is_empty() {
        stats.json_bodies.fetch_add(1, Ordering::Relaxed);
    }
    Ok(route(&path, &query))
}

fn route(path: &str, query: &str) -> Response<Body> {
    match path {
        "/ok" => plain(StatusCode::OK, false),
        "/close" => plain(StatusCode::OK, true),
        "/sse" => {
            sse(query_param(query, "chunks").unwrap_or(3), query_param(query, "delay_ms").unwrap_or(50))
        }
        _ => match path.strip_prefix("/status/").and_then(|c| c.parse().ok()) {
            Some(code) => plain(StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT), false),
            None => plain(StatusCode::NOT_FOUND, false),
        },
    }
}

fn plain(status: StatusCode, close: bool) -> Response<Body> {
    let body = Full::new(Bytes::from_static(br#"{"ok":true}"#)).boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, "application/json".parse().expect("static"));
    if close {
        resp.headers_mut().insert(http::header::CONNECTION, "close".parse().expect("static"));
    }
    resp
}

fn sse(chunks: u64, delay_ms: u64) -> Response<Body> {
    let (tx, body) = Channel::<Bytes, Infallible>::new(4);
    tokio::spawn(send_events(tx, chunks, Duration::from_millis(delay_ms)));
    let mut resp = Response::new(body.boxed());
    resp.headers_mut().insert(http::header::CONTENT_TYPE, "text/event-stream".parse().expect("static"));
    resp
}

async fn send_events(mut tx: Sender<Bytes, Infallible>, chunks: u64, delay: Duration) {
    for i in 0..chunks {
        if i > 0 {
            tokio::time::sleep(delay).await;
        }
        if tx.send_data(Bytes::from(format!("data: {{\"chunk\":{i}}}\n\n"))).await.is_err() {
            return;
        }
    }
    let _ = tx.send_data(Bytes::from_static(b"data: [DONE]\n\n")).await;
}

fn query_param(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}
