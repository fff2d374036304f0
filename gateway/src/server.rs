//! The HTTP server: accepts connections (TCP_NODELAY, a bounded number at once), serves the
//! governed API plus `/healthz`, `/readyz` and `/metrics`, and shuts down gracefully: stop
//! accepting, let in-flight requests and streams finish within `drain_timeout_ms`, cancel the
//! rest (their audit records are still written), then flush the audit sender to the ledger or
//! the spool.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use http::StatusCode;
use http::header::CONTENT_TYPE;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::app::App;
use crate::audit::draft::{Draft, Outcome};
use crate::audit::sender;
use crate::config::Config;
use crate::error::{ApiError, ErrorKind, Flavor};
use crate::metrics::Metrics;
use crate::pipeline::governed_router;
use crate::policy::head_checks::HeadChecks;
use crate::policy::smuggling::{GuardedIo, Violation};
use crate::spans;
use crate::trace_context::TRACEPARENT;
use sha2::{Digest as _, Sha256};

/// Longest a client may take to send a request's headers (slowloris protection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// State of the operational endpoints.
#[derive(Clone, Debug)]
struct Ops {
    app: Arc<App>,
    draining: Arc<AtomicBool>,
}

/// Binds `config.listen` and serves until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let listener = bind(config.listen, config.listen_reuse_port)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    serve(config, listener, shutdown).await
}

/// A listener on `address`, shared with other processes when `reuse_port`.
fn bind(address: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    /// Connections the kernel queues before accept: a burst on a busy gateway fits.
    const ACCEPT_BACKLOG: u32 = 1024;
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(address)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Serves on an already bound listener (tests bind port 0) until `shutdown` completes.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let (audit, sender_tasks) =
        sender::start(&config.audit, metrics.clone()).await.context("cannot start the audit sender")?;
    let app = Arc::new(App::new(&config, audit, metrics)?);
    let draining = Arc::new(AtomicBool::new(false));
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Ops { app: app.clone(), draining: draining.clone() })
        .fallback_service(governed_router(app.clone()));
    let address = listener.local_addr().ok();
    tracing::info!(address = ?address, gateway_id = %config.gateway_id, "gateway listening");

    let connection_slots = Arc::new(Semaphore::new(config.limits.connections_max));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(config.limits.header_bytes_max.max(8192) + 8192)
        .keep_alive(true)
        // A read side closed by the smuggling guard must not cut short the responses owed to
        // the requests before the refused one.
        .half_close(true);
    let mut connections = JoinSet::new();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = connection_slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
        }
        let mut guarded = GuardedIo::new(stream, config.limits.header_bytes_max, refusal_response(&app));
        // While spans are exported, each request takes the guard's check of its head (in
        // order: HTTP/1 serves a connection's requests one after another) for its span.
        let head_checks = telemetry::exporting().then(|| Arc::new(HeadChecks::default()));
        if let Some(head_checks) = &head_checks {
            guarded = guarded.with_head_checks(head_checks.clone());
        }
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut request: http::Request<hyper::body::Incoming>| {
                if let Some(check) = head_checks.as_ref().and_then(|head_checks| head_checks.take_next()) {
                    request.extensions_mut().insert(check);
                }
                request
            },
        ));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(guarded), service));
        connections.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }

    tracing::info!("shutting down: draining in-flight requests");
    draining.store(true, Ordering::Relaxed);
    drop(listener);
    let drain_timeout = Duration::from_millis(config.shutdown.drain_timeout_ms);
    let drained = tokio::time::timeout(drain_timeout, async {
        graceful.shutdown().await;
        app.wait_for_streams().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(?drain_timeout, "requests still running after the drain timeout are cancelled");
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    app.abort_streams().await;
    drop(router);
    drop(app);
    sender_tasks.shutdown(Duration::from_millis(config.shutdown.audit_flush_timeout_ms)).await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// What the smuggling guard answers (and records) when it refuses a connection's request.
/// While spans are exported (`started` is then known) the refusal gets a SERVER span of its
/// own, whose trace the audit record and the response's `traceparent` name.
fn refusal_response(app: &App) -> impl FnOnce(Violation, Option<SystemTime>) -> Vec<u8> + Send + 'static {
    let (gateway_id, sender, metrics) = (app.gateway_id.clone(), app.audit.clone(), app.metrics.clone());
    move |violation, started| {
        metrics.smuggling_refusals_total.inc();
        let error =
            ApiError::new(ErrorKind::AmbiguousFraming, format!("malformed HTTP request: {violation}"));
        let body = error.body(Flavor::OpenAi);
        let draft = Draft::begin_with_method("", gateway_id, sender);
        let trace = started.and_then(|started| spans::refused(violation, started, draft.header_value()));
        let draft = draft.with_trace(trace);
        let response_sha256: [u8; 32] = Sha256::digest(&body).into();
        draft.finish(&Outcome {
            status: 400,
            refusal: Some(ErrorKind::AmbiguousFraming),
            response_sha256: &response_sha256,
            response_bytes: body.len() as u64,
        });
        let mut response = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\nx-aegis-record-id: {}\r\n",
            body.len(),
            draft.record_id().hyphenated()
        )
        .into_bytes();
        if let Some(trace) = trace {
            response.extend_from_slice(TRACEPARENT.as_bytes());
            response.extend_from_slice(b": ");
            response.extend_from_slice(trace.traceparent().as_bytes());
            response.extend_from_slice(b"\r\n");
        }
        response.extend_from_slice(b"\r\n");
        response.extend_from_slice(&body);
        response
    }
}

/// Ready unless draining or the audit spool is above its high-water mark.
async fn readyz(State(ops): State<Ops>) -> Response {
    if ops.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if !ops.app.audit.healthy() {
        return (StatusCode::SERVICE_UNAVAILABLE, "audit spool above its high-water mark\n").into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

/// OpenMetrics for Prometheus (which asks for it), the classic text format for anyone else.
async fn metrics_text(State(ops): State<Ops>, headers: http::HeaderMap) -> Response {
    let metrics: &Metrics = &ops.app.metrics;
    metrics.audit_queue_depth.set(ops.app.audit.queue_depth() as u64);
    let accept = headers.get(http::header::ACCEPT).and_then(|value| value.to_str().ok());
    let (content_type, body) = telemetry::exposition::negotiate(accept, metrics.encode());
    ([(CONTENT_TYPE, content_type)], body).into_response()
}
