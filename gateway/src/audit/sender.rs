//! The audit sender: takes encoded records from request handlers without blocking them, batches
//! them by count, bytes and a short linger, and appends the batches to the ledger. A batch the
//! ledger cannot take goes to the on-disk spool, which a replayer drains in order once the
//! ledger is back. Records are never dropped while anything can hold them:
//!
//! 1. the bounded in-memory queue (`queue_records_max`), overflowing into
//! 2. an overflow list drained before the queue, whose growth admission control bounds
//!    (requests are refused while the audit path is saturated, see [`AuditSender::accepting`]);
//! 3. the spool on disk (`spool_bytes_max`), fsync'd before a record counts as spooled;
//! 4. records that fit nowhere ("stranded") stay in memory and are retried; the gateway
//!    refuses fail-closed tenants' requests meanwhile. Only fail-open tenants can push this
//!    beyond `queue_records_max` records, and only then is a record dropped (and counted).
//!
//! Delivery is at least once; the ledger appends a record id once, so replays are harmless.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::ledger::{AppendError, LedgerNodes};
use super::spool::{Spool, SpoolConfig, SpoolError};
use crate::config::{AuditConfig, AuditModeConfig};
use crate::metrics::Metrics;

/// What a `durable` or `strict` response waits for.
pub type Delivered = Result<(), AuditFailure>;

/// Why a record could not be delivered the way its audit mode demands. The record itself is
/// still kept (spooled or stranded in memory) and delivered later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuditFailure {
    #[error("the ledger did not acknowledge the audit record in time; it was spooled for later delivery")]
    NotAcknowledged,
    #[error("the audit record could not be written to the local spool")]
    NotSpooled,
}

/// The handlers' side of the sender. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditSender {
    shared: Arc<Shared>,
}

/// The running sender tasks and spool thread; [`SenderTasks::shutdown`] flushes them.
#[derive(Debug)]
pub struct SenderTasks {
    batcher: tokio::task::JoinHandle<()>,
    replayer: tokio::task::JoinHandle<()>,
    /// The spool thread: it ends, closing the spool (and releasing its lock), once the batcher
    /// and the replayer are gone.
    spool_thread: std::thread::JoinHandle<()>,
    shared: Arc<Shared>,
}

/// Why the sender could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the audit spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("invalid ledger endpoint: {0}")]
    Endpoint(#[from] tonic::transport::Error),
    #[error("cannot start the spool thread: {0}")]
    Thread(#[from] std::io::Error),
}

#[derive(Debug)]
struct Shared {
    queue: mpsc::Sender<Item>,
    /// Records that found the queue full; drained before it. Bounded by admission control.
    overflow: Mutex<VecDeque<Item>>,
    overflow_added: Notify,
    /// Records neither the ledger nor the spool took. Retried by the replayer.
    stranded: Mutex<VecDeque<Vec<u8>>>,
    /// Wakes the replayer: something was spooled or stranded.
    replay_wanted: Notify,
    /// The last attempt to reach the ledger failed: new batches go straight to the spool (keeping
    /// them in order behind the spooled ones) until the replayer gets through.
    ledger_down: AtomicBool,
    /// The spool refused a write for lack of space and has not drained since.
    spool_full: AtomicBool,
    /// The spool is above its high-water mark.
    spool_high: AtomicBool,
    /// Set at shutdown: batches stop retrying the ledger and go to the spool.
    shutting_down: AtomicBool,
    stranded_records_max: usize,
    /// Hard bound of the overflow. Admission control refuses requests long before it is
    /// reached; only records of requests refused before admission could push it here.
    overflow_records_max: usize,
    metrics: Metrics,
}

#[derive(Debug)]
struct Item {
    record: Vec<u8>,
    delivery: Delivery,
    /// The request's (trace id, span id): the batch span that carries the record links to it.
    trace: Option<RecordTrace>,
}

/// A record's trace id and the span id of its request.
pub type RecordTrace = ([u8; 16], [u8; 8]);

#[derive(Debug)]
enum Delivery {
    Async,
    Durable(oneshot::Sender<Delivered>),
    Strict(oneshot::Sender<Delivered>),
}

/// Requests to the spool thread, which owns the [`Spool`] and does its blocking I/O.
enum SpoolCommand {
    Append(Vec<Vec<u8>>, oneshot::Sender<Result<(), SpoolError>>),
    Peek { records_max: usize, bytes_max: usize, reply: oneshot::Sender<Result<Vec<Vec<u8>>, SpoolError>> },
    Consume(usize, oneshot::Sender<Result<(), SpoolError>>),
    DeadLetter(Vec<Vec<u8>>, oneshot::Sender<std::io::Result<PathBuf>>),
}

/// Handle to the spool thread.
#[derive(Clone, Debug)]
struct SpoolHandle {
    commands: std::sync::mpsc::Sender<SpoolCommand>,
}

impl std::fmt::Debug for SpoolCommand {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SpoolCommand")
    }
}

/// Starts the sender: opens (and recovers) the spool off the async runtime, starts its thread,
/// the batcher and the replayer.
pub async fn start(config: &AuditConfig, metrics: Metrics) -> Result<(AuditSender, SenderTasks), StartError> {
    let spool_config = SpoolConfig {
        dir: config.spool_dir.clone(),
        segment_bytes_max: config.spool_segment_bytes_max,
        spool_bytes_max: config.spool_bytes_max,
        record_bytes_max: config.record_bytes_max,
    };
    // Recovery reads and checks up to spool_bytes_max of segments: blocking work.
    let (spool, report) = tokio::task::spawn_blocking(move || Spool::open(spool_config))
        .await
        .map_err(|error| StartError::Thread(std::io::Error::other(error)))??;
    if report.dropped_torn_tail_bytes > 0 {
        tracing::warn!(
            dropped_bytes = report.dropped_torn_tail_bytes,
            "the audit spool ended in a torn write (a crash mid-append); the incomplete tail was \
             dropped. Records acknowledged as spooled are never in a torn tail."
        );
    }
    if spool.pending_records() > 0 {
        tracing::info!(
            records = spool.pending_records(),
            "audit spool holds records from an earlier run: replaying"
        );
    }
    let ledger = Arc::new(LedgerNodes::new(
        &config.ledger_endpoints,
        Duration::from_millis(config.append_timeout_ms),
    )?);
    let (queue, receiver) = mpsc::channel(config.queue_records_max);
    let shared = Arc::new(Shared {
        queue,
        overflow: Mutex::new(VecDeque::new()),
        overflow_added: Notify::new(),
        stranded: Mutex::new(VecDeque::new()),
        replay_wanted: Notify::new(),
        ledger_down: AtomicBool::new(false),
        spool_full: AtomicBool::new(false),
        spool_high: AtomicBool::new(false),
        shutting_down: AtomicBool::new(false),
        stranded_records_max: config.queue_records_max,
        overflow_records_max: config.queue_records_max.saturating_mul(4),
        metrics,
    });
    let high_water_bytes = config.spool_bytes_max / 100 * u64::from(config.spool_high_water_percent);
    let (spool, spool_thread) =
        start_spool_thread(spool, config.spool_dir.join("rejected"), high_water_bytes, shared.clone())?;
    let batcher =
        tokio::spawn(run_batcher(receiver, shared.clone(), ledger.clone(), spool.clone(), config.clone()));
    let replayer = tokio::spawn(run_replayer(shared.clone(), ledger, spool, config.clone()));
    Ok((AuditSender { shared: shared.clone() }, SenderTasks { batcher, replayer, spool_thread, shared }))
}

impl AuditSender {
    /// Hands an encoded record to the sender without waiting. For `durable` and `strict` the
    /// returned receiver completes when the record is spooled, respectively acknowledged by the
    /// ledger.
    pub fn submit(
        &self,
        record: Vec<u8>,
        mode: AuditModeConfig,
        trace: Option<RecordTrace>,
    ) -> Option<oneshot::Receiver<Delivered>> {
        let (delivery, receiver) = match mode {
            AuditModeConfig::Async => (Delivery::Async, None),
            AuditModeConfig::Durable => {
                let (sender, receiver) = oneshot::channel();
                (Delivery::Durable(sender), Some(receiver))
            }
            AuditModeConfig::Strict => {
                let (sender, receiver) = oneshot::channel();
                (Delivery::Strict(sender), Some(receiver))
            }
        };
        let metrics = &self.shared.metrics;
        metrics.audit_records_submitted_total.inc();
        match self.shared.queue.try_send(Item { record, delivery, trace }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(item)) => {
                let mut overflow = self.shared.overflow.lock();
                if overflow.len() >= self.shared.overflow_records_max {
                    drop(overflow);
                    metrics.audit_records_dropped_total.inc();
                    tracing::error!(
                        "the audit queue and its overflow are full (the sender cannot keep up); a record is lost"
                    );
                    return receiver;
                }
                overflow.push_back(item);
                drop(overflow);
                self.shared.overflow_added.notify_one();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // Only after shutdown flushed the sender, when no request can still be running.
                metrics.audit_records_dropped_total.inc();
                tracing::error!("an audit record arrived after the audit sender stopped; it is lost");
            }
        }
        receiver
    }

    /// Whether the audit path can take more records: false while records are stranded (neither
    /// the ledger nor the spool takes them) or the in-memory overflow is at its bound. Requests
    /// of fail-closed tenants are refused with 503 meanwhile.
    pub fn accepting(&self) -> bool {
        !self.shared.spool_full.load(Ordering::Relaxed)
            && self.shared.stranded.lock().is_empty()
            && self.shared.overflow.lock().len() < self.shared.stranded_records_max
    }

    /// Whether the gateway should receive traffic: false above the spool's high-water mark.
    pub fn healthy(&self) -> bool {
        !self.shared.spool_high.load(Ordering::Relaxed) && self.accepting()
    }

    /// Records waiting in memory (queue and overflow).
    pub fn queue_depth(&self) -> usize {
        self.shared.queue.max_capacity() - self.shared.queue.capacity() + self.shared.overflow.lock().len()
    }
}

impl SenderTasks {
    /// Flushes the sender once no request can submit records any more (the server has finished
    /// or cancelled them all): the batcher sends what it holds (or spools it) and stops; the replayer is stopped (the spool keeps its records for
    /// the next start). Gives up waiting after `timeout`; records still in flight then are in
    /// the spool or were acknowledged, except for a write cut short by the timeout itself.
    pub async fn shutdown(self, timeout: Duration) {
        self.shared.shutting_down.store(true, Ordering::Release);
        self.shared.overflow_added.notify_one();
        let flushed = tokio::time::timeout(timeout, self.batcher).await.is_ok();
        if !flushed {
            tracing::error!(?timeout, "the audit sender did not flush in time");
        }
        self.replayer.abort();
        let _ = self.replayer.await;
        // The spool thread ends once the batcher and the replayer dropped their handles; a
        // batcher still stuck past the timeout keeps it open, so only then is it not waited for.
        if flushed {
            let spool_thread = self.spool_thread;
            if tokio::task::spawn_blocking(move || spool_thread.join()).await.is_err() {
                tracing::error!("the audit spool thread panicked");
            }
        }
        let stranded = self.shared.stranded.lock().len();
        if stranded > 0 {
            self.shared.metrics.audit_records_dropped_total.inc_by(stranded as u64);
            tracing::error!(
                records = stranded,
                "audit records neither the ledger nor the spool took are lost at shutdown"
            );
        }
    }
}

/// Collects items into batches and dispatches them until the queue closes.
async fn run_batcher(
    mut receiver: mpsc::Receiver<Item>,
    shared: Arc<Shared>,
    ledger: Arc<LedgerNodes>,
    spool: SpoolHandle,
    config: AuditConfig,
) {
    let permits = Arc::new(Semaphore::new(config.appends_in_flight_max));
    let mut in_flight = JoinSet::new();
    // An item that did not fit the previous batch starts the next one.
    let mut carried: Option<Item> = None;
    loop {
        let first = match carried.take() {
            Some(item) => item,
            None => match next_item(&mut receiver, &shared).await {
                Some(item) => item,
                None => break,
            },
        };
        let mut batch = Batch::default();
        batch.push(first);
        let deadline = Instant::now() + config.linger();
        while batch.records.len() < config.batch_records_max {
            let overflowed = shared.overflow.lock().pop_front();
            let item = match overflowed {
                Some(item) => item,
                None => tokio::select! {
                    biased;
                    item = receiver.recv() => match item {
                        Some(item) => item,
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                },
            };
            // A batch never exceeds batch_bytes_max (the ledger refuses larger Appends whole).
            if batch.bytes + item.record.len() > config.batch_bytes_max {
                carried = Some(item);
                break;
            }
            batch.push(item);
        }
        shared.metrics.audit_batch_records.observe(batch.records.len() as f64);
        let durable = std::mem::take(&mut batch.durable);
        let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (shared, ledger, spool, config) = (shared.clone(), ledger.clone(), spool.clone(), config.clone());
        in_flight.spawn(async move {
            if !durable.is_empty() {
                spool_durable(&shared, &spool, durable).await;
            }
            if !batch.records.is_empty() {
                ship(batch, &shared, &ledger, &spool, &config).await;
            }
            drop(permit);
        });
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}

/// The next item: from the overflow first, else the queue. At shutdown (when no request is
/// left to submit more), `None` once both are empty.
async fn next_item(receiver: &mut mpsc::Receiver<Item>, shared: &Shared) -> Option<Item> {
    loop {
        if let Some(item) = shared.overflow.lock().pop_front() {
            return Some(item);
        }
        if shared.shutting_down.load(Ordering::Acquire) {
            return receiver.try_recv().ok();
        }
        tokio::select! {
            item = receiver.recv() => return item,
            () = shared.overflow_added.notified() => {}
        }
    }
}

/// One batch being collected.
#[derive(Debug, Default)]
struct Batch {
    records: Vec<Vec<u8>>,
    /// Acknowledgements owed to `strict` items, by position in `records`.
    strict: Vec<oneshot::Sender<Delivered>>,
    bytes: usize,
    /// `durable` items: spooled first, delivered by the replayer.
    durable: Vec<(Vec<u8>, oneshot::Sender<Delivered>)>,
    /// The requests whose records the batch carries, for the batch span's links.
    traces: Vec<RecordTrace>,
}

impl Batch {
    fn push(&mut self, item: Item) {
        if let (Some(trace), false) = (item.trace, matches!(item.delivery, Delivery::Durable(_))) {
            self.traces.push(trace);
        }
        match item.delivery {
            Delivery::Async => {
                self.bytes += item.record.len();
                self.records.push(item.record);
            }
            Delivery::Strict(acknowledge) => {
                self.bytes += item.record.len();
                self.records.push(item.record);
                self.strict.push(acknowledge);
            }
            Delivery::Durable(acknowledge) => self.durable.push((item.record, acknowledge)),
        }
    }
}

/// Spools `durable` records (one fsync for all) and acknowledges them.
async fn spool_durable(
    shared: &Shared,
    spool: &SpoolHandle,
    durable: Vec<(Vec<u8>, oneshot::Sender<Delivered>)>,
) {
    let (records, acknowledgements): (Vec<_>, Vec<_>) = durable.into_iter().unzip();
    let count = records.len() as u64;
    let outcome = match spool.append(records.clone()).await {
        Ok(()) => {
            shared.metrics.audit_records_spooled_total.inc_by(count);
            shared.replay_wanted.notify_one();
            Ok(())
        }
        Err(error) => {
            tracing::error!(%error, records = count, "cannot spool durable audit records; keeping them in memory");
            strand(shared, records);
            Err(AuditFailure::NotSpooled)
        }
    };
    for acknowledge in acknowledgements {
        let _ = acknowledge.send(outcome);
    }
}

/// Appends a batch to the ledger in a CLIENT span of its own, linked to the request spans whose
/// records it carries; the ledger's spans join the batch span's trace.
async fn ship(
    mut batch: Batch,
    shared: &Shared,
    ledger: &LedgerNodes,
    spool: &SpoolHandle,
    config: &AuditConfig,
) {
    let span = tracing::info_span!(
        "audit batch",
        otel.name = "aegis.audit.append",
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = "aegis.ledger.v1.Ledger",
        rpc.method = "Append",
        aegis.records = batch.records.len(),
    );
    telemetry::add_links_by_id(&span, std::mem::take(&mut batch.traces));
    ship_in_span(batch, shared, ledger, spool, config).instrument(span).await;
}

/// Appends a batch to the ledger, retrying with backoff; spools it if the ledger stays away.
async fn ship_in_span(
    batch: Batch,
    shared: &Shared,
    ledger: &LedgerNodes,
    spool: &SpoolHandle,
    config: &AuditConfig,
) {
    let Batch { records, strict, .. } = batch;
    let count = records.len() as u64;
    let ledger_down = shared.ledger_down.load(Ordering::Relaxed);
    // While the ledger is down, go straight to the spool (behind the records already there),
    // unless a strict response is waiting: then try once, not the full retry schedule, so a
    // partition never holds a batch (and an in-flight slot) longer than one attempt.
    let attempts = match (strict.is_empty(), ledger_down) {
        (true, true) => 0,
        (false, true) => 1,
        (_, false) => config.append_attempts,
    };
    let mut backoff = Duration::from_millis(config.retry_backoff_initial_ms);
    for attempt in 1..=attempts {
        match ledger.append(records.clone()).await {
            Ok(_) => {
                shared.ledger_down.store(false, Ordering::Relaxed);
                shared.metrics.audit_records_acknowledged_total.inc_by(count);
                for acknowledge in strict {
                    let _ = acknowledge.send(Ok(()));
                }
                return;
            }
            Err(AppendError::Refused { endpoint, status }) => {
                append_or_isolate(shared, ledger, spool, records, &format!("{endpoint}: {status}")).await;
                for acknowledge in strict {
                    let _ = acknowledge.send(Err(AuditFailure::NotAcknowledged));
                }
                return;
            }
            Err(error @ AppendError::Retryable { .. }) => {
                shared.metrics.audit_append_failures_total.inc();
                tracing::warn!(%error, attempt, "audit append failed");
                if attempt == attempts || shared.shutting_down.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(config.retry_backoff_max_ms));
            }
        }
    }
    if attempts > 0 {
        shared.ledger_down.store(true, Ordering::Relaxed);
    }
    for acknowledge in strict {
        let _ = acknowledge.send(Err(AuditFailure::NotAcknowledged));
    }
    match spool.append(records.clone()).await {
        Ok(()) => {
            shared.metrics.audit_records_spooled_total.inc_by(count);
            shared.replay_wanted.notify_one();
        }
        Err(error) => {
            tracing::error!(%error, records = count, "cannot spool audit records; keeping them in memory");
            strand(shared, records);
        }
    }
}

/// After the ledger refused a batch: appends its halves separately, down to single records, so
/// that only the records the ledger refuses go to the dead-letter file and the rest are
/// delivered. Records whose halves hit a retryable failure meanwhile go to the spool.
async fn append_or_isolate(
    shared: &Shared,
    ledger: &LedgerNodes,
    spool: &SpoolHandle,
    records: Vec<Vec<u8>>,
    reason: &str,
) {
    let mut pending = vec![records];
    while let Some(mut part) = pending.pop() {
        if part.len() == 1 {
            match ledger.append(part.clone()).await {
                Ok(_) => {
                    shared.metrics.audit_records_acknowledged_total.inc();
                }
                Err(AppendError::Refused { endpoint, status }) => {
                    dead_letter(shared, spool, part, &format!("{endpoint}: {status}")).await;
                }
                Err(AppendError::Retryable { .. }) => {
                    if spool.append(part.clone()).await.is_ok() {
                        shared.metrics.audit_records_spooled_total.inc();
                    } else {
                        strand(shared, part);
                    }
                }
            }
            continue;
        }
        let second = part.split_off(part.len() / 2);
        for half in [second, part] {
            match ledger.append(half.clone()).await {
                Ok(_) => {
                    shared.metrics.audit_records_acknowledged_total.inc_by(half.len() as u64);
                }
                Err(AppendError::Refused { .. }) => pending.push(half),
                Err(AppendError::Retryable { .. }) => {
                    let count = half.len() as u64;
                    if spool.append(half.clone()).await.is_ok() {
                        shared.metrics.audit_records_spooled_total.inc_by(count);
                    } else {
                        strand(shared, half);
                    }
                }
            }
        }
    }
    tracing::warn!(reason, "the ledger refused a batch of audit records; isolated the refused ones");
}

/// Keeps records nobody took in memory for the replayer; drops (and counts) what exceeds the
/// bound, which only fail-open tenants' traffic can reach.
fn strand(shared: &Shared, records: Vec<Vec<u8>>) {
    let mut stranded = shared.stranded.lock();
    for record in records {
        if stranded.len() >= shared.stranded_records_max {
            shared.metrics.audit_records_dropped_total.inc();
            continue;
        }
        stranded.push_back(record);
    }
    drop(stranded);
    shared.replay_wanted.notify_one();
}

/// Writes records the ledger refused for good to the dead-letter directory, for an operator.
async fn dead_letter(shared: &Shared, spool: &SpoolHandle, records: Vec<Vec<u8>>, reason: &str) {
    let count = records.len() as u64;
    shared.metrics.audit_records_rejected_total.inc_by(count);
    match spool.dead_letter(records).await {
        Ok(path) => tracing::error!(
            reason,
            records = count,
            path = %path.display(),
            "the ledger refused audit records; they were written to the dead-letter file for inspection"
        ),
        Err(error) => {
            shared.metrics.audit_records_dropped_total.inc_by(count);
            tracing::error!(reason, %error, records = count, "the ledger refused audit records and they could not be kept");
        }
    }
}

/// Delivers stranded and spooled records, oldest first, whenever there are any.
async fn run_replayer(
    shared: Arc<Shared>,
    ledger: Arc<LedgerNodes>,
    spool: SpoolHandle,
    config: AuditConfig,
) {
    let backoff_initial = Duration::from_millis(config.retry_backoff_initial_ms);
    let mut backoff = backoff_initial;
    loop {
        let stranded: Vec<Vec<u8>> = {
            let mut stranded = shared.stranded.lock();
            let take = stranded.len().min(config.batch_records_max);
            stranded.drain(..take).collect()
        };
        if !stranded.is_empty() && spool.append(stranded.clone()).await.is_err() {
            // No room in the spool: hand them to the ledger directly, or keep them for later.
            if ledger.append(stranded.clone()).await.is_ok() {
                shared.metrics.audit_records_acknowledged_total.inc_by(stranded.len() as u64);
            } else {
                let mut kept = shared.stranded.lock();
                for record in stranded.into_iter().rev() {
                    kept.push_front(record);
                }
            }
        }
        let pending = match spool.peek(config.batch_records_max, config.batch_bytes_max).await {
            Ok(pending) => pending,
            Err(error) => {
                tracing::error!(%error, "cannot read the audit spool");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if pending.is_empty() {
            tokio::select! {
                () = shared.replay_wanted.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let count = pending.len();
        let outcome = ledger.append(pending.clone()).await;
        let delivered = match outcome {
            Ok(_) => {
                shared.ledger_down.store(false, Ordering::Relaxed);
                shared.metrics.audit_records_acknowledged_total.inc_by(count as u64);
                backoff = backoff_initial;
                true
            }
            Err(AppendError::Refused { endpoint, status }) => {
                dead_letter(&shared, &spool, pending, &format!("{endpoint}: {status}")).await;
                true
            }
            Err(error @ AppendError::Retryable { .. }) => {
                shared.ledger_down.store(true, Ordering::Relaxed);
                shared.metrics.audit_append_failures_total.inc();
                tracing::warn!(%error, ?backoff, "replaying the audit spool failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(config.retry_backoff_max_ms));
                false
            }
        };
        if delivered && let Err(error) = spool.consume(count).await {
            tracing::error!(%error, "cannot mark replayed audit records delivered; they will be sent again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Starts the thread that owns the spool.
fn start_spool_thread(
    mut spool: Spool,
    dead_letter_dir: PathBuf,
    high_water_bytes: u64,
    shared: Arc<Shared>,
) -> std::io::Result<(SpoolHandle, std::thread::JoinHandle<()>)> {
    let (commands, receiver) = std::sync::mpsc::channel::<SpoolCommand>();
    let publish = move |spool: &Spool, shared: &Shared| {
        shared.metrics.audit_spool_bytes.set(i64::try_from(spool.pending_bytes()).unwrap_or(i64::MAX));
        shared.metrics.audit_spool_records.set(i64::try_from(spool.pending_records()).unwrap_or(i64::MAX));
        shared.spool_high.store(spool.pending_bytes() >= high_water_bytes, Ordering::Relaxed);
    };
    publish(&spool, &shared);
    let thread = std::thread::Builder::new().name("aegis-audit-spool".into()).spawn(move || {
        while let Ok(command) = receiver.recv() {
            match command {
                SpoolCommand::Append(records, reply) => {
                    let outcome = spool.append(&records);
                    shared
                        .spool_full
                        .store(matches!(outcome, Err(SpoolError::Full { .. })), Ordering::Relaxed);
                    let _ = reply.send(outcome);
                }
                SpoolCommand::Peek { records_max, bytes_max, reply } => {
                    let _ = reply.send(spool.peek(records_max, bytes_max));
                }
                SpoolCommand::Consume(count, reply) => {
                    let outcome = spool.consume(count);
                    if outcome.is_ok() {
                        shared.spool_full.store(false, Ordering::Relaxed);
                    }
                    let _ = reply.send(outcome);
                }
                SpoolCommand::DeadLetter(records, reply) => {
                    let _ = reply.send(write_dead_letter(&dead_letter_dir, &records));
                }
            }
            publish(&spool, &shared);
        }
    })?;
    Ok((SpoolHandle { commands }, thread))
}

/// Writes records, each as a 4-byte little-endian length and its bytes, to a new file.
fn write_dead_letter(dir: &std::path::Path, records: &[Vec<u8>]) -> std::io::Result<PathBuf> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir)?;
    let name = format!("{}.records", uuid::Uuid::now_v7());
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path)?;
    for record in records {
        let length = u32::try_from(record.len()).unwrap_or(u32::MAX);
        file.write_all(&length.to_le_bytes())?;
        file.write_all(record)?;
    }
    file.sync_all()?;
    Ok(path)
}

impl SpoolHandle {
    async fn call<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> SpoolCommand) -> Option<T> {
        let (reply, receiver) = oneshot::channel();
        self.commands.send(command(reply)).ok()?;
        receiver.await.ok()
    }

    async fn append(&self, records: Vec<Vec<u8>>) -> Result<(), SpoolError> {
        self.call(|reply| SpoolCommand::Append(records, reply)).await.unwrap_or(Err(SpoolError::Stopped))
    }

    async fn peek(&self, records_max: usize, bytes_max: usize) -> Result<Vec<Vec<u8>>, SpoolError> {
        self.call(|reply| SpoolCommand::Peek { records_max, bytes_max, reply })
            .await
            .unwrap_or(Err(SpoolError::Stopped))
    }

    async fn consume(&self, count: usize) -> Result<(), SpoolError> {
        self.call(|reply| SpoolCommand::Consume(count, reply)).await.unwrap_or(Err(SpoolError::Stopped))
    }

    async fn dead_letter(&self, records: Vec<Vec<u8>>) -> std::io::Result<PathBuf> {
        self.call(|reply| SpoolCommand::DeadLetter(records, reply))
            .await
            .unwrap_or_else(|| Err(std::io::Error::other("the spool thread stopped")))
    }
}
