//! The chaos suite's load: concurrent clients appending directly to the ledger and sending
//! requests through the gateways, and the history of every attempt for the oracle.
//!
//! An attempt is `Acked` when the system said the record is kept, `Failed` only when the system
//! said for certain that nothing was done (the request was refused before any work), and
//! `Unknown` otherwise: a timeout, a lost connection or an "outcome unknown" error may still have
//! appended the record. Direct clients retry an unknown batch with the same record ids, as the
//! ledger's errors tell clients to, so retries exercise idempotent appends under faults.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use proto::v1;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

use crate::cluster::channel;
use crate::records::{audit_record, record_id};
use crate::rng::Rng;

/// How long one client call may take before its outcome counts as unknown.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per direct batch (the first and its retries with the same record ids).
const TRIES: usize = 4;

/// How a gateway tenant's records reach the ledger (the gateway's `audit_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditMode {
    /// The response waits for the ledger's acknowledgement.
    Strict,
    /// The response waits until the record is fsync'd in the gateway's spool.
    Durable,
    /// The response does not wait; only a graceful stop guarantees delivery.
    Async,
}

impl AuditMode {
    pub const ALL: [Self; 3] = [Self::Strict, Self::Durable, Self::Async];

    /// The API key of this mode's tenant in [`gateway_config`].
    pub fn api_key(self) -> &'static str {
        match self {
            Self::Strict => "sk-chaos-strict",
            Self::Durable => "sk-chaos-durable",
            Self::Async => "sk-chaos-async",
        }
    }

    fn tenant(self) -> &'static str {
        match self {
            Self::Strict => "strict",
            Self::Durable => "durable",
            Self::Async => "async",
        }
    }
}

/// A gateway configuration with one tenant (and key) per audit mode, and the mock upstream.
pub fn gateway_config() -> String {
    let mut config = String::from(
        "gateway_id = \"set-by-flag\"\n\n[[upstreams]]\nname = \"mock\"\nkind = \"mock\"\nmodels = [\"*\"]\n",
    );
    for mode in AuditMode::ALL {
        let tenant = mode.tenant();
        config.push_str(&format!(
            "\n[[tenants]]\nid = \"{tenant}\"\naudit_mode = \"{tenant}\"\n\n[[credentials]]\nid = \"{tenant}-app\"\n\
             tenant = \"{tenant}\"\nkey_sha256 = \"{}\"\nscopes = [\"proxy\"]\n",
            sha256_hex(mode.api_key())
        ));
    }
    config.push_str("\n[audit]\nledger_endpoints = []\nspool_dir = \"set-by-flag\"\n");
    config
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Who a record was sent through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    Direct,
    Gateway(AuditMode),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Acked,
    Failed,
    Unknown,
}

/// One client operation: a direct batch (with its retries) or one gateway request.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub via: Via,
    /// The records it carried (a gateway request without an answer has none: its id is unknown).
    pub record_ids: Vec<String>,
    pub outcome: Outcome,
    pub started: Instant,
    /// Until the acknowledgement (or the last try's end).
    pub latency: Duration,
}

/// Where the clients send their load.
#[derive(Clone, Debug)]
pub struct Targets {
    /// Every ledger node's client address; a direct client picks one at random per try.
    pub ledger: Vec<SocketAddr>,
    /// Every gateway's address.
    pub gateways: Vec<SocketAddr>,
}

/// How much load.
#[derive(Clone, Copy, Debug)]
pub struct LoadShape {
    pub direct_clients: usize,
    /// Clients per audit mode, spread over the gateways.
    pub gateway_clients_per_mode: usize,
}

impl Default for LoadShape {
    fn default() -> Self {
        Self { direct_clients: 4, gateway_clients_per_mode: 1 }
    }
}

/// Running clients. [`Workload::stop`] ends them and returns the history.
pub struct Workload {
    stop: Arc<AtomicBool>,
    clients: JoinSet<Vec<Attempt>>,
    /// Successful direct tries: (start, end), for recovery times.
    successes: Arc<Mutex<Vec<(Instant, Instant)>>>,
}

impl Workload {
    /// Starts the clients. `run` keeps the record ids of different runs apart.
    pub fn start(targets: &Targets, shape: LoadShape, run: u32, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let successes = Arc::new(Mutex::new(Vec::new()));
        let mut clients = JoinSet::new();
        let channels: Arc<Vec<Channel>> =
            Arc::new(targets.ledger.iter().map(|&address| channel(address)).collect());
        let next_record = Arc::new(AtomicU64::new(0));
        for client in 0..shape.direct_clients {
            let direct = Direct {
                channels: Arc::clone(&channels),
                run,
                next_record: Arc::clone(&next_record),
                rng: Rng::new(seed ^ (client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                stop: Arc::clone(&stop),
                successes: Arc::clone(&successes),
            };
            clients.spawn(direct.run());
        }
        let http: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        for mode in AuditMode::ALL {
            for client in 0..shape.gateway_clients_per_mode {
                let gateways = targets.gateways.clone();
                let (http, stop) = (http.clone(), Arc::clone(&stop));
                clients.spawn(gateway_client(http, gateways, mode, client, stop));
            }
        }
        Self { stop, clients, successes }
    }

    /// Stops the clients (each finishes its current operation, retries included) and returns
    /// every attempt, and the (start, end) of every successful direct append try.
    pub async fn stop(mut self) -> (Vec<Attempt>, Vec<(Instant, Instant)>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut attempts = Vec::new();
        while let Some(history) = self.clients.join_next().await {
            attempts.extend(history.expect("a client task"));
        }
        let successes = std::mem::take(&mut *self.successes.lock().unwrap_or_else(PoisonError::into_inner));
        (attempts, successes)
    }

    /// The time from `since` until a direct append that started at or after it succeeded.
    pub fn recovered_after(&self, since: Instant) -> Option<Duration> {
        first_success_after(&self.successes.lock().unwrap_or_else(PoisonError::into_inner), since)
    }
}

/// The time from `since` until the first successful try that started at or after it ended.
pub fn first_success_after(successes: &[(Instant, Instant)], since: Instant) -> Option<Duration> {
    successes.iter().filter(|(start, _)| *start >= since).map(|(_, end)| *end - since).min()
}

struct Direct {
    channels: Arc<Vec<Channel>>,
    run: u32,
    next_record: Arc<AtomicU64>,
    rng: Rng,
    stop: Arc<AtomicBool>,
    successes: Arc<Mutex<Vec<(Instant, Instant)>>>,
}

impl Direct {
    async fn run(mut self) -> Vec<Attempt> {
        let mut history = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            let count = 1 + self.rng.below(4) as u64;
            let first = self.next_record.fetch_add(count, Ordering::Relaxed);
            let record_ids: Vec<String> = (first..first + count).map(|n| record_id(self.run, n)).collect();
            let records: Vec<Vec<u8>> =
                record_ids.iter().map(|id| audit_record(id, "chaos-direct")).collect();
            let started = Instant::now();
            let outcome = self.append(&records).await;
            history.push(Attempt {
                via: Via::Direct,
                record_ids,
                outcome,
                started,
                latency: started.elapsed(),
            });
            if outcome != Outcome::Acked {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        history
    }

    /// Appends `records` through random nodes, retrying with the same ids until acknowledged or
    /// out of tries.
    async fn append(&mut self, records: &[Vec<u8>]) -> Outcome {
        let mut outcome = Outcome::Failed;
        for try_number in 0..TRIES {
            if try_number > 0 {
                tokio::time::sleep(Duration::from_millis(200 * try_number as u64)).await;
            }
            let node = self.rng.below(self.channels.len());
            let mut client = proto::LedgerClient::new(self.channels[node].clone());
            let request = v1::AppendRequest { records: records.to_vec() };
            let started = Instant::now();
            match tokio::time::timeout(CALL_TIMEOUT, client.append(request)).await {
                Ok(Ok(response)) => {
                    let response = response.into_inner();
                    assert_eq!(response.results.len(), records.len(), "one result per record");
                    self.successes
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((started, Instant::now()));
                    return Outcome::Acked;
                }
                Ok(Err(status)) => {
                    assert_ne!(
                        status.code(),
                        Code::InvalidArgument,
                        "the workload sent a bad request: {status}"
                    );
                    // Refused before any work: certain. Anything else may have appended.
                    if status.code() != Code::ResourceExhausted {
                        outcome = Outcome::Unknown;
                    }
                }
                Err(_elapsed) => outcome = Outcome::Unknown,
            }
        }
        outcome
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const CHAT: &str = r#"{"model":"mock-1","messages":[{"role":"user","content":"chaos"}]}"#;

/// Sends chat requests of `mode`'s tenant, alternating gateways, until `stop`.
async fn gateway_client(
    http: HttpClient,
    gateways: Vec<SocketAddr>,
    mode: AuditMode,
    client: usize,
    stop: Arc<AtomicBool>,
) -> Vec<Attempt> {
    let mut history = Vec::new();
    let mut n = client;
    while !stop.load(Ordering::Relaxed) {
        let gateway = gateways[n % gateways.len()];
        n += 1;
        let started = Instant::now();
        let (outcome, record_ids) = match chat(&http, gateway, mode).await {
            Some((200, Some(id))) => (Outcome::Acked, vec![id]),
            // Refused or not acknowledged in time (503 in strict mode while the ledger is away):
            // the record exists and may still be delivered.
            Some((_, Some(id))) => (Outcome::Unknown, vec![id]),
            Some((_, None)) | None => (Outcome::Unknown, Vec::new()),
        };
        let failed = outcome != Outcome::Acked;
        history.push(Attempt {
            via: Via::Gateway(mode),
            record_ids,
            outcome,
            started,
            latency: started.elapsed(),
        });
        if failed {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    history
}

/// One chat request; its status and record id, or `None` without a complete answer.
async fn chat(http: &HttpClient, gateway: SocketAddr, mode: AuditMode) -> Option<(u16, Option<String>)> {
    let request = http::Request::post(format!("http://{gateway}/v1/chat/completions"))
        .header("authorization", format!("Bearer {}", mode.api_key()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .expect("a request");
    let response = tokio::time::timeout(CALL_TIMEOUT * 2, http.request(request)).await.ok()?.ok()?;
    let status = response.status().as_u16();
    let record_id =
        response.headers().get("x-aegis-record-id").and_then(|value| value.to_str().ok()).map(str::to_owned);
    tokio::time::timeout(CALL_TIMEOUT, response.into_body().collect()).await.ok()?.ok()?;
    Some((status, record_id))
}
