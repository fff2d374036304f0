//! `aegis-gateway-loadgen`: a small closed-loop HTTP/1.1 load generator for benchmarking the Aegis
//! gateway against the upstream it fronts (e.g. a mock LLM server hit directly vs. through the gateway).
//!
//! What it measures:
//! - **Closed loop.** `--concurrency N` workers each send one request, wait for the complete response,
//!   and immediately send the next one. Throughput is therefore bounded by latency; there is no
//!   fixed arrival rate (so no coordinated-omission correction is attempted or needed for comparing
//!   two targets at the same concurrency).
//! - **One keep-alive connection per worker.** Each worker owns a single HTTP/1.1 connection
//!   (`TCP_NODELAY` on) and reuses it. If the connection fails the attempt is counted as an error and
//!   the worker reconnects; a connection the server closed cleanly (`Connection: close`, or closed
//!   while idle) is re-opened without counting an error. Connect time is never part of a latency.
//! - **Latency = send start to last body byte.** The clock starts just before the request is handed
//!   to the connection and stops when the last byte of the response body has been read. With
//!   `--stream` (SSE responses) the time to the first non-empty body chunk (TTFB) is reported too.
//! - **Measurement window.** Requests *started* during `--warmup-secs` are not measured. With
//!   `--duration-secs`, requests started before the deadline are measured and allowed to finish;
//!   with `--requests N`, exactly N attempts are measured. `requests` counts measured attempts
//!   (including errors), `errors` those that failed (I/O error, timeout or unexpected status) and the
//!   latency percentiles are computed over the successful ones only. Requests/s is
//!   `requests / duration_secs`, where the duration runs from the end of warm-up until the last
//!   measured response completed.
//! - **Bounded memory.** Latencies are kept as `u32` microseconds in one `Vec` per worker and sorted
//!   at the end; at most [`MAX_SAMPLES`] (10 million) samples are kept in total (split evenly across
//!   workers). Samples beyond a worker's share are dropped (counted, with a warning on stderr).
//!
//! Example:
//! ```text
//! aegis-gateway-loadgen --url http://127.0.0.1:8080/v1/chat/completions \
//!     --header 'Authorization: Bearer sk-test' \
//!     --body '{"model":"mock","messages":[{"role":"user","content":"hi"}]}' \
//!     --concurrency 32 --duration-secs 10 --warmup-secs 1 --label gateway-c32 --json
//! ```

// This binary's stdout (human-readable block or one JSON object) is its interface.
#![allow(clippy::print_stdout)]

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use http::header::{CONNECTION, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

/// Upper bound on latency samples kept in memory across all workers (each sample is 4 bytes, so at
/// most ~40 MB, or ~80 MB with `--stream`).
const MAX_SAMPLES: usize = 10_000_000;
/// Highest accepted `--concurrency`.
const MAX_CONCURRENCY: u32 = 10_000;
/// Pause after a failed connect so a dead target does not turn the workers into a busy loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// Command-line flags.
#[derive(Debug, Clone, Parser)]
#[command(name = "aegis-gateway-loadgen", version, about = "Closed-loop HTTP/1.1 load generator")]
pub struct Cli {
    /// Target URL, http only: http://host[:port]/path
    #[arg(long)]
    url: String,
    /// HTTP method
    #[arg(long, default_value = "POST")]
    method: String,
    /// Extra request header 'Name: value' (repeatable)
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Request body (sent as application/json unless a content-type header is given)
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// Read the request body from a file
    #[arg(long, value_name = "PATH")]
    body_file: Option<PathBuf>,
    /// Number of workers, each with one keep-alive connection (1..=10000)
    #[arg(long)]
    concurrency: u32,
    /// Measured duration in seconds (after warm-up)
    #[arg(long, default_value_t = 10.0, conflicts_with = "requests")]
    duration_secs: f64,
    /// Warm-up seconds; requests started during warm-up are not measured
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Stop after this many measured requests instead of after a duration
    #[arg(long)]
    requests: Option<u64>,
    /// Expected response status; any other status counts as an error
    #[arg(long, default_value_t = 200)]
    expect_status: u16,
    /// Per-request timeout in seconds (a timeout counts as an error and reconnects)
    #[arg(long, default_value_t = 60.0)]
    timeout_secs: f64,
    /// Responses are streamed (SSE): also report time to first body byte
    #[arg(long)]
    stream: bool,
    /// Print one JSON object instead of the human-readable block
    #[arg(long)]
    json: bool,
    /// Free-form name for this run, echoed in the output
    #[arg(long)]
    label: Option<String>,
    /// Tokio worker threads (default: number of CPUs)
    #[arg(long)]
    threads: Option<usize>,
}

/// When the measured phase ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StopAfter {
    Duration(Duration),
    Requests(u64),
}

/// Validated run options.
#[derive(Debug, Clone)]
pub struct Opts {
    addr: SocketAddr,
    path_and_query: Uri,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
    concurrency: u32,
    warmup: Duration,
    stop: StopAfter,
    expect_status: StatusCode,
    timeout: Duration,
    stream: bool,
    label: Option<String>,
}

impl TryFrom<Cli> for Opts {
    type Error = anyhow::Error;

    fn try_from(cli: Cli) -> anyhow::Result<Self> {
        ensure!(
            (1..=MAX_CONCURRENCY).contains(&cli.concurrency),
            "--concurrency must be between 1 and {MAX_CONCURRENCY}, got {}",
            cli.concurrency
        );
        let target = Target::parse(&cli.url)?;
        let method = Method::from_bytes(cli.method.to_ascii_uppercase().as_bytes())
            .with_context(|| format!("invalid --method {:?}", cli.method))?;
        let body = read_body(cli.body, cli.body_file.as_ref())?;
        let headers = build_headers(&cli.headers, &target.authority, !body.is_empty())?;
        let stop = match cli.requests {
            Some(0) => bail!("--requests must be at least 1"),
            Some(n) => StopAfter::Requests(n),
            None => StopAfter::Duration(positive_secs("--duration-secs", cli.duration_secs)?),
        };
        let expect_status = StatusCode::from_u16(cli.expect_status)
            .with_context(|| format!("invalid --expect-status {}", cli.expect_status))?;
        Ok(Opts {
            addr: target.addr,
            path_and_query: target.path_and_query,
            method,
            headers,
            body,
            concurrency: cli.concurrency,
            warmup: non_negative_secs("--warmup-secs", cli.warmup_secs)?,
            stop,
            expect_status,
            timeout: positive_secs("--timeout-secs", cli.timeout_secs)?,
            stream: cli.stream,
            label: cli.label,
        })
    }
}

/// The parsed `--url`.
struct Target {
    addr: SocketAddr,
    authority: String,
    path_and_query: Uri,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("invalid --url {url:?}"))?;
        ensure!(uri.scheme_str() == Some("http"), "--url must start with http:// (got {url:?})");
        let authority = uri.authority().with_context(|| format!("--url {url:?} has no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        ensure!(!host.is_empty(), "--url {url:?} has no host");
        let port = authority.port_u16().unwrap_or(80);
        let addr = (host, port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {host}:{port}"))?
            .next()
            .with_context(|| format!("{host}:{port} resolved to no address"))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let path_and_query = path.parse().with_context(|| format!("invalid path in --url {url:?}"))?;
        Ok(Target { addr, authority: authority.as_str().to_owned(), path_and_query })
    }
}

fn read_body(body: Option<String>, body_file: Option<&PathBuf>) -> anyhow::Result<Bytes> {
    match (body, body_file) {
        (Some(text), _) => Ok(Bytes::from(text)),
        (None, Some(path)) => {
            let data = std::fs::read(path).with_context(|| format!("cannot read --body-file {path:?}"))?;
            Ok(Bytes::from(data))
        }
        (None, None) => Ok(Bytes::new()),
    }
}

/// Parses the `--header` values and adds `Host` and (for a non-empty body) a JSON content type
/// unless the user supplied them.
fn build_headers(raw: &[String], authority: &str, has_body: bool) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for line in raw {
        let (name, value) = parse_header(line)?;
        headers.append(name, value);
    }
    if !headers.contains_key(HOST) {
        headers.insert(HOST, HeaderValue::from_str(authority).context("invalid host in --url")?);
    }
    if has_body && !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Ok(headers)
}

fn parse_header(line: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let (name, value) =
        line.split_once(':').with_context(|| format!("--header {line:?} must look like 'Name: value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .with_context(|| format!("invalid header name in --header {line:?}"))?;
    let value = HeaderValue::from_str(value.trim())
        .with_context(|| format!("invalid header value in --header {line:?}"))?;
    Ok((name, value))
}

fn positive_secs(flag: &str, secs: f64) -> anyhow::Result<Duration> {
    ensure!(secs > 0.0, "{flag} must be greater than 0, got {secs}");
    non_negative_secs(flag, secs)
}

fn non_negative_secs(flag: &str, secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .with_context(|| format!("{flag} must be a finite number >= 0, got {secs}"))
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: u32,
    pub p90: u32,
    pub p99: u32,
    pub p999: u32,
    pub max: u32,
    pub mean: f64,
}

impl LatencySummary {
    /// Summarises samples (sorted in place). All zeros when there are no samples.
    fn from_samples(samples: &mut [u32]) -> Self {
        samples.sort_unstable();
        let Some(&max) = samples.last() else { return Self::default() };
        let sum: u64 = samples.iter().map(|&s| u64::from(s)).sum();
        LatencySummary {
            p50: percentile(samples, 500),
            p90: percentile(samples, 900),
            p99: percentile(samples, 990),
            p999: percentile(samples, 999),
            max,
            mean: sum as f64 / samples.len() as f64,
        }
    }
}

/// Nearest-rank percentile of a sorted, non-empty slice; `per_mille` is in 1..=1000.
fn percentile(sorted: &[u32], per_mille: usize) -> u32 {
    let rank = (sorted.len() * per_mille).div_ceil(1000).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// Result of a run; serialised as-is for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub label: Option<String>,
    pub concurrency: u32,
    /// Measured attempts, including errors.
    pub requests: u64,
    pub errors: u64,
    pub duration_secs: f64,
    pub requests_per_sec: f64,
    /// Send start to last body byte, successful requests only.
    pub latency_us: LatencySummary,
    /// Send start to first non-empty body chunk; only with `--stream`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttfb_us: Option<LatencySummary>,
    /// The first error message seen in the measured phase, for diagnosis.
    pub first_error: Option<String>,
}

impl Report {
    /// The human-readable block.
    fn human(&self) -> String {
        let mut out = String::new();
        let label = self.label.as_deref().unwrap_or("-");
        let _ = writeln!(out, "label:        {label}");
        let _ = writeln!(out, "concurrency:  {}", self.concurrency);
        let _ = writeln!(out, "requests:     {} in {:.3} s", self.requests, self.duration_secs);
        let _ = writeln!(out, "requests/s:   {:.1}", self.requests_per_sec);
        let _ = writeln!(out, "errors:       {}", self.errors);
        let _ = writeln!(out, "latency (ms): {}", format_ms(&self.latency_us));
        if let Some(ttfb) = &self.ttfb_us {
            let _ = writeln!(out, "ttfb (ms):    {}", format_ms(ttfb));
        }
        if let Some(err) = &self.first_error {
            let _ = writeln!(out, "first error:  {err}");
        }
        out
    }
}

fn format_ms(s: &LatencySummary) -> String {
    let ms = |us: u32| f64::from(us) / 1000.0;
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.p999),
        ms(s.max),
        s.mean / 1000.0
    )
}

/// Shared schedule deciding whether the next request is warm-up, measured, or not sent at all.
struct Schedule {
    measure_start: Instant,
    deadline: Option<Instant>,
    limit: Option<u64>,
    issued: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Warmup,
    Measured,
    Done,
}

impl Schedule {
    fn new(opts: &Opts, start: Instant) -> Self {
        let measure_start = start + opts.warmup;
        let (deadline, limit) = match opts.stop {
            StopAfter::Duration(d) => (Some(measure_start + d), None),
            StopAfter::Requests(n) => (None, Some(n)),
        };
        Schedule { measure_start, deadline, limit, issued: AtomicU64::new(0) }
    }

    /// Phase of the request about to be sent; in `--requests` mode this claims a measured slot.
    fn next(&self) -> Phase {
        let now = Instant::now();
        if now < self.measure_start {
            return Phase::Warmup;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            return Phase::Done;
        }
        match self.limit {
            Some(limit) if self.issued.fetch_add(1, Ordering::Relaxed) >= limit => Phase::Done,
            _ => Phase::Measured,
        }
    }
}

/// Timings of one successful exchange.
#[derive(Debug, Clone, Copy)]
struct Sample {
    total: Duration,
    ttfb: Duration,
}

/// What one worker measured.
struct WorkerStats {
    requests: u64,
    errors: u64,
    latencies: Vec<u32>,
    ttfbs: Vec<u32>,
    cap: usize,
    dropped: u64,
    first_error: Option<String>,
    finished: Instant,
}

impl WorkerStats {
    fn new(cap: usize) -> Self {
        WorkerStats {
            requests: 0,
            errors: 0,
            latencies: Vec::new(),
            ttfbs: Vec::new(),
            cap,
            dropped: 0,
            first_error: None,
            finished: Instant::now(),
        }
    }

    fn record(&mut self, outcome: Result<Sample, String>, stream: bool) {
        self.requests += 1;
        match outcome {
            Ok(_) if self.latencies.len() >= self.cap => self.dropped += 1,
            Ok(sample) => {
                self.latencies.push(micros(sample.total));
                if stream {
                    self.ttfbs.push(micros(sample.ttfb));
                }
            }
            Err(err) => {
                self.errors += 1;
                self.first_error.get_or_insert(err);
            }
        }
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Runs the load test described by `opts` and returns the measurements.
pub async fn run(opts: Opts) -> Report {
    let opts = Arc::new(opts);
    let start = Instant::now();
    let schedule = Arc::new(Schedule::new(&opts, start));
    let cap = (MAX_SAMPLES / opts.concurrency as usize).max(1);
    let handles: Vec<_> = (0..opts.concurrency)
        .map(|_| tokio::spawn(worker(Arc::clone(&opts), Arc::clone(&schedule), cap)))
        .collect();
    let mut stats = Vec::with_capacity(handles.len());
    for handle in handles {
        match handle.await {
            Ok(s) => stats.push(s),
            Err(err) => eprintln!("aegis-gateway-loadgen: worker failed: {err}"),
        }
    }
    build_report(&opts, schedule.measure_start, stats)
}

fn build_report(opts: &Opts, measure_start: Instant, stats: Vec<WorkerStats>) -> Report {
    let finished = stats.iter().map(|s| s.finished).max().unwrap_or(measure_start);
    let duration_secs = finished.saturating_duration_since(measure_start).as_secs_f64();
    let requests = stats.iter().map(|s| s.requests).sum();
    let errors = stats.iter().map(|s| s.errors).sum();
    let dropped: u64 = stats.iter().map(|s| s.dropped).sum();
    if dropped > 0 {
        eprintln!("aegis-gateway-loadgen: warning: {dropped} latency samples dropped (cap {MAX_SAMPLES})");
    }
    let first_error = stats.iter().find_map(|s| s.first_error.clone());
    let (mut latencies, mut ttfbs) = (Vec::new(), Vec::new());
    for s in stats {
        latencies.extend(s.latencies);
        ttfbs.extend(s.ttfbs);
    }
    Report {
        label: opts.label.clone(),
        concurrency: opts.concurrency,
        requests,
        errors,
        duration_secs,
        requests_per_sec: if duration_secs > 0.0 { requests as f64 / duration_secs } else { 0.0 },
        latency_us: LatencySummary::from_samples(&mut latencies),
        ttfb_us: opts.stream.then(|| LatencySummary::from_samples(&mut ttfbs)),
        first_error,
    }
}

type Sender = SendRequest<Full<Bytes>>;

/// One closed-loop worker: one connection, requests back to back until the schedule says stop.
async fn worker(opts: Arc<Opts>, schedule: Arc<Schedule>, cap: usize) -> WorkerStats {
    let mut stats = WorkerStats::new(cap);
    let mut conn: Option<Sender> = None;
    loop {
        let phase = schedule.next();
        if phase == Phase::Done {
            break;
        }
        let outcome = attempt(&opts, &mut conn).await;
        // An error that also cost us the connection: pause briefly so a dead target is not hammered.
        let back_off = conn.is_none() && outcome.is_err();
        if phase == Phase::Measured {
            stats.record(outcome, opts.stream);
        }
        if back_off {
            tokio::time::sleep(CONNECT_BACKOFF).await;
        }
    }
    stats.finished = Instant::now();
    stats
}

/// One request on the worker's connection, (re)connecting first if needed. Any failure drops the
/// connection so the next attempt starts on a fresh one.
async fn attempt(opts: &Opts, conn: &mut Option<Sender>) -> Result<Sample, String> {
    let sender = match ensure_connected(opts, conn).await {
        Ok(sender) => sender,
        Err(err) => return Err(format!("connect: {err:#}")),
    };
    let result = tokio::time::timeout(opts.timeout, exchange(sender, build_request(opts))).await;
    match result {
        Ok(Ok(resp)) => {
            if resp.close {
                *conn = None;
            }
            if resp.status == opts.expect_status {
                Ok(resp.sample)
            } else {
                Err(format!("unexpected status {} (expected {})", resp.status, opts.expect_status))
            }
        }
        Ok(Err(err)) => {
            *conn = None;
            Err(format!("request: {err}"))
        }
        Err(_) => {
            *conn = None;
            Err(format!("timeout after {:?}", opts.timeout))
        }
    }
}

/// Returns a ready sender, reusing the existing connection unless the server closed it.
async fn ensure_connected<'a>(opts: &Opts, slot: &'a mut Option<Sender>) -> anyhow::Result<&'a mut Sender> {
    let reusable = match slot.take() {
        Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
        None => None,
    };
    let sender = match reusable {
        Some(sender) => sender,
        None => {
            tokio::time::timeout(opts.timeout, connect(opts.addr)).await.context("connect timed out")??
        }
    };
    Ok(slot.insert(sender))
}

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true).context("set TCP_NODELAY")?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Errors surface to the sender side; nothing to do with them here.
        let _ = connection.await;
    });
    Ok(sender)
}

fn build_request(opts: &Opts) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(opts.body.clone()));
    *req.method_mut() = opts.method.clone();
    *req.uri_mut() = opts.path_and_query.clone();
    *req.headers_mut() = opts.headers.clone();
    req
}

/// A fully read response.
struct Completed {
    status: StatusCode,
    close: bool,
    sample: Sample,
}

/// Sends `req` and reads the whole body, timing first and last body byte.
async fn exchange(sender: &mut Sender, req: Request<Full<Bytes>>) -> Result<Completed, hyper::Error> {
    let start = Instant::now();
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let close = wants_close(resp.headers());
    let mut body = resp.into_body();
    let mut ttfb = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if ttfb.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
            ttfb = Some(start.elapsed());
        }
    }
    let total = start.elapsed();
    Ok(Completed { status, close, sample: Sample { total, ttfb: ttfb.unwrap_or(total) } })
}

fn wants_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"))
}

fn build_runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        ensure!(n >= 1, "--threads must be at least 1");
        builder.worker_threads(n);
    }
    builder.enable_all().build().context("cannot start the tokio runtime")
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let (json, threads) = (cli.json, cli.threads);
    let opts = Opts::try_from(cli)?;
    let report = build_runtime(threads)?.block_on(run(opts));
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.human());
    }
    Ok(())
}

fn main() -> ExitCode {
    match real_main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("aegis-gateway-loadgen: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;
