//! Connections to ledger nodes: endpoints, timeouts, the admin token, and errors that say what
//! to do.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::cli::Connection;

/// Largest admin token file read.
const TOKEN_BYTES_MAX: u64 = 4096;
/// Largest message accepted from a node: GetEntries pages and proofs are far smaller.
const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

pub type AdminClient = proto::AdminClient<InterceptedService<Channel, Bearer>>;
pub type LedgerClient = proto::LedgerClient<Channel>;

/// The nodes the user named and how to reach them.
pub struct Cluster {
    endpoints: Vec<String>,
    bearer: Bearer,
    timeout: Duration,
}

impl Cluster {
    pub fn new(connection: &Connection) -> anyhow::Result<Self> {
        let endpoints: Vec<String> = connection
            .ledger
            .iter()
            .map(|endpoint| endpoint.trim())
            .filter(|endpoint| !endpoint.is_empty())
            .map(normalize)
            .collect();
        if endpoints.is_empty() {
            return Err(anyhow!("no ledger endpoint: give --ledger host:port or AEGIS_LEDGER_ENDPOINTS"));
        }
        let token = match &connection.admin_token_file {
            Some(path) => {
                let text = read_limited(path, TOKEN_BYTES_MAX)
                    .with_context(|| format!("reading the admin token file {}", path.display()))?;
                let token = text.trim();
                let value = MetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| anyhow!("the admin token in {} is not printable ASCII", path.display()))?;
                Some(value)
            }
            None => None,
        };
        Ok(Self {
            endpoints,
            bearer: Bearer(token),
            timeout: Duration::from_millis(connection.timeout_ms.max(1)),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// A channel to `endpoint`, connected now (so an unreachable node is known at once).
    pub async fn channel(&self, endpoint: &str) -> anyhow::Result<Channel> {
        Endpoint::from_shared(endpoint.to_owned())
            .with_context(|| format!("{endpoint} is not a valid address"))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .connect()
            .await
            .map_err(|error| anyhow!("cannot reach the ledger node at {endpoint}: {error}"))
    }

    /// A `Ledger` client of the first endpoint that answers, with its name.
    pub async fn ledger(&self) -> anyhow::Result<(String, LedgerClient)> {
        let mut errors = Vec::new();
        for endpoint in &self.endpoints {
            match self.channel(endpoint).await {
                Ok(channel) => return Ok((endpoint.clone(), ledger_client(channel))),
                Err(error) => errors.push(format!("{error:#}")),
            }
        }
        Err(anyhow!("no ledger node answered: {}", errors.join("; ")))
    }

    /// A `Ledger` client of `endpoint`.
    pub async fn ledger_at(&self, endpoint: &str) -> anyhow::Result<LedgerClient> {
        Ok(ledger_client(self.channel(endpoint).await?))
    }

    /// An `Admin` client of `endpoint`, sending the admin token if one was given.
    pub async fn admin_at(&self, endpoint: &str) -> anyhow::Result<AdminClient> {
        let channel = self.channel(endpoint).await?;
        Ok(proto::AdminClient::with_interceptor(channel, self.bearer.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX))
    }
}

fn ledger_client(channel: Channel) -> LedgerClient {
    proto::LedgerClient::new(channel).max_decoding_message_size(MESSAGE_BYTES_MAX)
}

/// Adds `authorization: Bearer <token>` to Admin calls.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// `http://host:port` for a bare `host:port`.
pub fn normalize(endpoint: &str) -> String {
    if endpoint.contains("://") { endpoint.to_owned() } else { format!("http://{endpoint}") }
}

/// An error for a failed call: what the node said, and what to do about it.
pub fn call_error(endpoint: &str, what: &str, status: &Status) -> anyhow::Error {
    let hint = match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => {
            " (Admin needs --admin-token-file, or a call from the node's own machine)"
        }
        Code::Unavailable => " (is the node running and reachable?)",
        Code::DeadlineExceeded => " (the node is slow or partitioned; retry, or raise --timeout-ms)",
        _ => "",
    };
    anyhow!("{what} at {endpoint} failed: {}: {}{hint}", code_name(status.code()), status.message())
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
}

/// Reads a small file whole, refusing one larger than `max` bytes.
pub fn read_limited(path: &std::path::Path, max: u64) -> anyhow::Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(anyhow!("{} is larger than {max} bytes", path.display()));
    }
    Ok(text)
}
