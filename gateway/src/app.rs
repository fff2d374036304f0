//! The gateway's shared state: everything built once from the configuration that handlers and
//! policy stages read. Nothing in it is per-client state another gateway would need.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::audit::ledger::LedgerNodes;
use crate::audit::sender::AuditSender;
use crate::config::{Config, LimitsConfig};
use crate::metrics::Metrics;
use crate::policy::auth::Authenticator;
use crate::policy::rate_limit::{InvalidLimits, LimitConfig, RateLimiter};
use crate::upstream::Upstreams;

/// Shared by every request.
#[derive(Debug)]
pub struct App {
    pub gateway_id: Arc<str>,
    pub limits: LimitsConfig,
    pub auth: Authenticator,
    pub limiter: RateLimiter,
    pub upstreams: Upstreams,
    /// Permits for streams open on this gateway (`limits.streams_max`).
    pub streams: Arc<Semaphore>,
    pub audit: AuditSender,
    /// For `GET /v1/audit/records/{id}`.
    pub ledger: LedgerNodes,
    pub metrics: Metrics,
    pub waf: Arc<crate::waf::Waf>,
    /// How long a `strict` response waits for the ledger.
    pub strict_timeout: Duration,
    /// Longest a client may take to send a request body.
    pub body_read_timeout: Duration,
    /// `: ping` interval while a stream waits for its first chunk.
    pub stream_keepalive: Duration,
    /// The running stream tasks, so shutdown can wait for them and cancel stragglers.
    stream_tasks: Mutex<JoinSet<()>>,
}

impl App {
    pub fn new(config: &Config, audit: AuditSender, metrics: Metrics) -> Result<Self, anyhow::Error> {
        let limits = config
            .credentials
            .iter()
            .map(|credential| {
                Some(LimitConfig {
                    requests_per_minute: credential.requests_per_minute,
                    requests_burst: credential.requests_burst,
                    tokens_per_minute: credential.tokens_per_minute,
                })
            })
            .collect();
        let limiter = RateLimiter::new(limits).map_err(|InvalidLimits { credential, reason }| {
            anyhow::anyhow!("credential {:?}: {reason}", config.credentials[credential].id)
        })?;
        let ledger = LedgerNodes::new(
            &config.audit.ledger_endpoints,
            Duration::from_millis(config.audit.append_timeout_ms),
        )?;
        let waf = Arc::new(crate::waf::Waf::new(&config.waf)?);
        waf.watch(Duration::from_millis(config.waf.reload_interval_ms));
        Ok(Self {
            waf,
            gateway_id: Arc::from(config.gateway_id.as_str()),
            limits: config.limits.clone(),
            auth: Authenticator::new(config),
            limiter,
            upstreams: Upstreams::new(config, &metrics)?,
            streams: Arc::new(Semaphore::new(config.limits.streams_max)),
            audit,
            ledger,
            metrics,
            strict_timeout: Duration::from_millis(config.audit.strict_timeout_ms),
            stream_keepalive: Duration::from_millis(config.limits.stream_keepalive_ms),
            body_read_timeout: Duration::from_millis(config.limits.body_read_timeout_ms),
            stream_tasks: Mutex::new(JoinSet::new()),
        })
    }

    /// Runs a stream task, tracked for shutdown.
    pub fn spawn_stream(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.stream_tasks.lock();
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Completes when no stream task is running.
    pub async fn wait_for_streams(&self) {
        loop {
            {
                let mut tasks = self.stream_tasks.lock();
                while tasks.try_join_next().is_some() {}
                if tasks.is_empty() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Cancels the stream tasks still running; each still finishes its audit record (the
    /// record's draft does so when dropped).
    pub async fn abort_streams(&self) {
        let mut tasks = std::mem::take(&mut *self.stream_tasks.lock());
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}
