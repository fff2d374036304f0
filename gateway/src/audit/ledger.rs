//! The gateway's connections to the ledger cluster: one lazily connected gRPC channel per
//! configured node. Appends go to the node that last worked; any node accepts them (followers
//! forward to the leader), so on failure the client simply moves to the next node.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proto::LedgerClient;
use proto::v1;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// Why an Append did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The node is down, slow, not in a cluster, or has no leader: try again (elsewhere).
    #[error("ledger node {endpoint} failed the append: {status}")]
    Retryable { endpoint: String, status: tonic::Status },
    /// The ledger refused the records themselves (malformed, too large, an id reused with other
    /// bytes): retrying cannot help.
    #[error("ledger node {endpoint} refused the records: {status}")]
    Refused { endpoint: String, status: tonic::Status },
}

/// Clients for every ledger node.
#[derive(Debug)]
pub struct LedgerNodes {
    nodes: Vec<(String, LedgerClient<Channel>)>,
    /// Index of the node to try first: the last one that answered.
    preferred: AtomicUsize,
    append_timeout: Duration,
}

impl LedgerNodes {
    /// Prepares channels to `endpoints` (`http://host:port`); nothing connects until first use.
    pub fn new(endpoints: &[String], append_timeout: Duration) -> Result<Self, tonic::transport::Error> {
        let nodes = endpoints
            .iter()
            .map(|endpoint| {
                let channel = Endpoint::from_shared(endpoint.clone())?
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .connect_lazy();
                Ok((endpoint.clone(), LedgerClient::new(channel).max_decoding_message_size(16 * 1024 * 1024)))
            })
            .collect::<Result<_, tonic::transport::Error>>()?;
        Ok(Self { nodes, preferred: AtomicUsize::new(0), append_timeout })
    }

    /// Appends `records` (encoded audit records) through the preferred node. On a retryable
    /// failure the next call goes to the next node.
    pub async fn append(&self, records: Vec<Vec<u8>>) -> Result<v1::AppendResponse, AppendError> {
        let index = self.preferred.load(Ordering::Relaxed) % self.nodes.len();
        let (endpoint, client) = &self.nodes[index];
        let mut request = tonic::Request::new(v1::AppendRequest { records });
        request.set_timeout(self.append_timeout);
        // The ledger's spans join the audit batch's trace.
        telemetry::inject_current_tonic(request.metadata_mut());
        match client.clone().append(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => {
                if is_refusal(status.code()) {
                    return Err(AppendError::Refused { endpoint: endpoint.clone(), status });
                }
                let _ = self.preferred.compare_exchange(
                    index,
                    (index + 1) % self.nodes.len(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                Err(AppendError::Retryable { endpoint: endpoint.clone(), status })
            }
        }
    }

    /// Fetches a record's inclusion proof against the latest published checkpoint from the
    /// first node that answers.
    pub async fn inclusion_proof(
        &self,
        record_id: &str,
    ) -> Result<v1::GetInclusionProofResponse, tonic::Status> {
        let mut last_error = tonic::Status::unavailable("no ledger node configured");
        for offset in 0..self.nodes.len() {
            let index = (self.preferred.load(Ordering::Relaxed) + offset) % self.nodes.len();
            let mut request = tonic::Request::new(v1::GetInclusionProofRequest {
                leaf: Some(v1::get_inclusion_proof_request::Leaf::RecordId(record_id.to_owned())),
                tree_size: None,
            });
            request.set_timeout(self.append_timeout);
            match self.nodes[index].1.clone().get_inclusion_proof(request).await {
                Ok(response) => return Ok(response.into_inner()),
                // Answers about the record itself are the same on every node.
                Err(status)
                    if matches!(status.code(), Code::NotFound | Code::OutOfRange | Code::InvalidArgument) =>
                {
                    return Err(status);
                }
                Err(status) => last_error = status,
            }
        }
        Err(last_error)
    }
}

/// Status codes meaning the ledger looked at the records and will never take them.
fn is_refusal(code: Code) -> bool {
    matches!(code, Code::InvalidArgument | Code::AlreadyExists)
}
