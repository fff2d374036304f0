//! The audit record of one request while it is being served. Every stage writes what it learnt
//! into the request's [`Draft`]; finishing it encodes the `AuditRecord` and hands it to the
//! sender. A draft that is dropped unfinished (the client went away, the handler panicked, the
//! gateway aborted a stream at shutdown) finishes itself in `Drop`, so every request produces
//! exactly one record whatever path it takes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method};
use parking_lot::Mutex;
use prost::Message as _;
use proto::v1;
use tokio::sync::oneshot;

use super::sender::{AuditSender, Delivered};
use crate::config::{AuditModeConfig, FailureMode};
use crate::error::{ErrorKind, Flavor};
use crate::policy::auth::Credential;

/// Longest method name recorded; longer (extension) methods are cut.
pub const METHOD_BYTES_MAX: usize = 16;

/// Status recorded for a request whose client disconnected before the response was complete
/// (nginx's "client closed request").
pub const STATUS_CLIENT_CLOSED: u16 = 499;

/// One request's audit record in the making. Shared (`Arc`) between the stages that fill it.
#[derive(Debug)]
pub struct Draft {
    record_id: uuid::Uuid,
    /// The id as the `x-aegis-record-id` header value, rendered once.
    header_value: HeaderValue,
    received_at_unix_nanos: i64,
    started: Instant,
    /// The request method, at most [`METHOD_BYTES_MAX`] bytes (hyper bounds it only by the
    /// head size); empty when the request line could not be trusted.
    method: Box<str>,
    gateway_id: Arc<str>,
    sender: AuditSender,
    fields: Mutex<DraftFields>,
    /// Set by the first `finish`; a draft is recorded once.
    finished: AtomicBool,
    /// The W3C trace the request belongs to, when the client sent one.
    trace: Option<crate::trace_context::TraceContext>,
}

/// What the stages learnt about the request so far.
#[derive(Debug, Default)]
pub struct DraftFields {
    /// The route template, e.g. `/v1/chat/completions`; empty for unknown routes.
    pub route: &'static str,
    pub flavor: Flavor,
    pub credential: Option<Arc<Credential>>,
    pub model: String,
    pub upstream: Option<Arc<str>>,
    pub request_sha256: Vec<u8>,
    pub request_bytes: u64,
    pub streamed: bool,
    pub rate_limit: Option<v1::RateLimitDecision>,
    pub usage: Option<v1::TokenUsage>,
    pub upstream_latency_us: u64,
    pub analysis: Option<v1::ResponseAnalysis>,
    /// The request went on although a policy component failed (fail-open).
    pub fail_open: bool,
    /// WAF rules that matched, request then response.
    pub waf_hits: Vec<v1::WafHit>,
}

/// How the response ended, as the audit record states it.
#[derive(Clone, Debug)]
pub struct Outcome<'a> {
    pub status: u16,
    pub refusal: Option<ErrorKind>,
    pub response_sha256: &'a [u8],
    pub response_bytes: u64,
}

impl Draft {
    /// A draft for a request in `trace` (if the client sent one).
    pub fn begin_traced(
        method: &Method,
        gateway_id: Arc<str>,
        sender: AuditSender,
        trace: Option<crate::trace_context::TraceContext>,
    ) -> Arc<Self> {
        Self::begin(method, gateway_id, sender).with_trace(trace)
    }

    /// Puts a new draft (nobody else holds it yet) in `trace`, e.g. once a span named by its
    /// record id has its ids.
    pub fn with_trace(mut self: Arc<Self>, trace: Option<crate::trace_context::TraceContext>) -> Arc<Self> {
        Arc::get_mut(&mut self).expect("a new draft has one owner").trace = trace;
        self
    }

    pub fn begin(method: &Method, gateway_id: Arc<str>, sender: AuditSender) -> Arc<Self> {
        let method = method.as_str();
        let cut = (0..=method.len().min(METHOD_BYTES_MAX))
            .rev()
            .find(|&end| method.is_char_boundary(end))
            .unwrap_or(0);
        Self::begin_with_method(&method[..cut], gateway_id, sender)
    }

    /// A draft for a request whose method is unknown or untrusted (`method` may be empty).
    pub fn begin_with_method(method: &str, gateway_id: Arc<str>, sender: AuditSender) -> Arc<Self> {
        let record_id = uuid::Uuid::now_v7();
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let header_value = HeaderValue::from_bytes(record_id.hyphenated().encode_lower(&mut text).as_bytes())
            .expect("a hyphenated UUID is a valid header value");
        let received_at_unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| i64::try_from(since.as_nanos()).unwrap_or(i64::MAX));
        Arc::new(Self {
            record_id,
            header_value,
            received_at_unix_nanos,
            started: Instant::now(),
            method: method.into(),
            gateway_id,
            sender,
            fields: Mutex::new(DraftFields::default()),
            finished: AtomicBool::new(false),
            trace: None,
        })
    }

    pub fn record_id(&self) -> uuid::Uuid {
        self.record_id
    }

    pub fn header_value(&self) -> &HeaderValue {
        &self.header_value
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Runs `update` on the fields under the draft's lock (uncontended: one request's stages
    /// run one after another).
    pub fn update<T>(&self, update: impl FnOnce(&mut DraftFields) -> T) -> T {
        update(&mut self.fields.lock())
    }

    /// The audit mode of the request: its tenant's, or `async` before authentication.
    pub fn audit_mode(&self) -> AuditModeConfig {
        self.fields
            .lock()
            .credential
            .as_ref()
            .map_or(AuditModeConfig::Async, |credential| credential.tenant.audit_mode)
    }

    /// Whether the request's tenant serves requests unaudited when the audit path is full.
    pub fn fails_open(&self) -> bool {
        self.fields
            .lock()
            .credential
            .as_ref()
            .is_some_and(|credential| credential.tenant.on_audit_failure == FailureMode::Open)
    }

    /// Encodes the record and hands it to the sender in the tenant's audit mode. Returns what
    /// to wait for before releasing the response (`durable` and `strict` modes), or `None`.
    /// Only the first call records; later ones return `None`.
    pub fn finish(&self, outcome: &Outcome<'_>) -> Option<oneshot::Receiver<Delivered>> {
        if self.finished.swap(true, Ordering::AcqRel) {
            return None;
        }
        let (record, mode) = self.build(outcome);
        let trace = self.trace.map(|trace| (trace.trace_id, trace.span_id));
        self.sender.submit(record.encode_to_vec(), mode, trace)
    }

    fn build(&self, outcome: &Outcome<'_>) -> (v1::AuditRecord, AuditModeConfig) {
        let finished_at_unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| i64::try_from(since.as_nanos()).unwrap_or(i64::MAX));
        let latency_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut fields = self.fields.lock();
        let fields = &mut *fields;
        let mode = fields
            .credential
            .as_ref()
            .map_or(AuditModeConfig::Async, |credential| credential.tenant.audit_mode);
        let (tenant, credential_id) = match &fields.credential {
            Some(credential) => (credential.tenant.id.clone(), credential.id.clone()),
            None => (String::new(), String::new()),
        };
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let record = v1::AuditRecord {
            record_id: self.record_id.hyphenated().encode_lower(&mut text).to_owned(),
            gateway_id: self.gateway_id.to_string(),
            tenant,
            credential_id,
            received_at_unix_nanos: self.received_at_unix_nanos,
            finished_at_unix_nanos,
            method: self.method.to_string(),
            route: fields.route.to_owned(),
            model: std::mem::take(&mut fields.model),
            upstream: fields.upstream.as_deref().unwrap_or_default().to_owned(),
            status_code: u32::from(outcome.status),
            latency_us,
            upstream_latency_us: fields.upstream_latency_us,
            usage: fields.usage,
            request_sha256: std::mem::take(&mut fields.request_sha256),
            response_sha256: outcome.response_sha256.to_vec(),
            request_bytes: fields.request_bytes,
            response_bytes: outcome.response_bytes,
            streamed: fields.streamed,
            policy: Some(v1::PolicyDecisions {
                waf_hits: std::mem::take(&mut fields.waf_hits),
                rate_limit: fields.rate_limit,
                audit_mode: match mode {
                    AuditModeConfig::Async => v1::AuditMode::Async,
                    AuditModeConfig::Durable => v1::AuditMode::Durable,
                    AuditModeConfig::Strict => v1::AuditMode::Strict,
                }
                .into(),
                refusal_reason: outcome.refusal.map(ErrorKind::refusal_reason).unwrap_or_default().to_owned(),
                fail_open: fields.fail_open,
            }),
            analysis: fields.analysis.take(),
            trace_id: self.trace.map(|trace| trace.trace_id.to_vec()).unwrap_or_default(),
            span_id: self.trace.map(|trace| trace.span_id.to_vec()).unwrap_or_default(),
            captured: None,
        };
        (record, mode)
    }
}

impl Drop for Draft {
    fn drop(&mut self) {
        if !self.finished.load(Ordering::Acquire) {
            // Nobody finished the record: the client disconnected or the request was cancelled.
            let _ = self.finish(&Outcome {
                status: STATUS_CLIENT_CLOSED,
                refusal: None,
                response_sha256: &[],
                response_bytes: 0,
            });
        }
    }
}
