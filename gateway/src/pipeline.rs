//! The policy pipeline, declared once, outermost first:
//!
//! request id + audit record + SERVER span → (smuggling guard, on the connection) → limits → auth →
//! WAF → rate limit → adapter + forwarder (`proxy.rs`); each stage has an INTERNAL span. The
//! guard ran before the request existed: its span comes with the request (`HeadCheck`) and is
//! exported under the SERVER span here.
//!
//! Every stage that refuses answers in the route's error shape and says why in the audit
//! record; the outermost stage finishes the record for every response, refused or not.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use http_body_util::BodyExt as _;
use parking_lot::Mutex;
use proto::v1;
use sha2::{Digest as _, Sha256};
use tracing::Instrument as _;

use crate::app::App;
use crate::audit::draft::{Draft, Outcome};
use crate::config::Scope;
use crate::error::{ApiError, ErrorKind, Flavor, Refusal};
use crate::metrics::Stage;
use crate::policy::head_checks::HeadCheck;
use crate::policy::limits::{self, ParsedRequest};
use crate::policy::rate_limit::{Decision, Outcome as RateOutcome, Reservation};
use crate::trace_context::{TRACEPARENT, TraceContext};
use crate::{audit, proxy, spans};

/// The header carrying the record id on every response.
pub const RECORD_ID_HEADER: HeaderName = HeaderName::from_static("x-aegis-record-id");

/// Bodies up to this size are inspected by the WAF on the request's own task.
const WAF_INLINE_BYTES_MAX: usize = 64 * 1024;

/// The token reservation of an admitted request, settled by whoever learns the usage.
#[derive(Clone, Debug, Default)]
pub struct ReservationSlot(Arc<Mutex<Option<Reservation>>>);

/// Marks a streamed response: its stream task finishes the audit record, not the audit layer.
#[derive(Clone, Copy, Debug)]
pub struct StreamAudited;

impl ReservationSlot {
    /// Settles the reservation with the tokens actually used, if there is one left.
    pub fn settle(&self, app: &App, total_tokens: u64) {
        if let Some(reservation) = self.0.lock().take() {
            app.limiter.settle(reservation, total_tokens, Instant::now());
        }
    }
}

/// The routes governed by the pipeline, with their stages.
pub fn governed_router(app: Arc<App>) -> Router {
    let routes = Router::new()
        .route("/v1/chat/completions", post(proxy::forward))
        .route("/v1/completions", post(proxy::forward))
        .route("/v1/embeddings", post(proxy::forward))
        .route("/v1/messages", post(proxy::forward))
        .route("/v1/models", get(proxy::models))
        .route("/v1/audit/records/{record_id}", get(audit::lookup::get_record))
        // Layers run bottom-up on the way in: limits, then auth, then the rate limit.
        .route_layer(middleware::from_fn_with_state(app.clone(), rate_limit))
        .route_layer(middleware::from_fn_with_state(app.clone(), inspect))
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .route_layer(middleware::from_fn_with_state(app.clone(), enforce_limits))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    routes.layer(middleware::from_fn_with_state(app.clone(), record)).with_state(app)
}

/// Outermost stage: gives the request its record id and finishes its audit record once the
/// response is known (streams finish theirs in the stream task). For `durable` and `strict`
/// tenants the response waits here until the record is spooled, respectively acknowledged.
async fn record(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| static_route(path.as_str()))
        .filter(|route| !route.is_empty());
    let span = spans::request(request.method(), route);
    // Join the client's trace (W3C `traceparent`). With export off the span has no context: the
    // record then takes the client's trace id with a span id of the gateway's own.
    let _ = telemetry::set_parent_from_http(&span, request.headers());
    let trace = match telemetry::span_ids(&span) {
        Some((trace_id, span_id, flags)) => Some(TraceContext { trace_id, span_id, flags }),
        None => TraceContext::from_headers(request.headers()),
    };
    // The smuggling guard's check of this request's head (only there while spans are exported).
    if telemetry::exporting()
        && let Some(check) = request.extensions_mut().remove::<HeadCheck>()
    {
        spans::guard(&span, &check);
    }
    match trace {
        // The upstream sees the gateway's span as the parent of its own.
        Some(trace) => request.headers_mut().insert(TRACEPARENT, trace.traceparent()),
        None => request.headers_mut().remove(TRACEPARENT),
    };
    let draft = Draft::begin_traced(request.method(), app.gateway_id.clone(), app.audit.clone(), trace);
    spans::record_id(&span, draft.header_value().to_str().unwrap_or_default());
    request.extensions_mut().insert(draft.clone());
    let mut response = next.run(request).instrument(span.clone()).await;
    response.headers_mut().insert(RECORD_ID_HEADER, draft.header_value().clone());
    if let Some(trace) = &trace {
        // The client finds its trace (and the record's trace id) here.
        response.headers_mut().insert(TRACEPARENT, trace.traceparent());
    }
    let status = response.status();
    let route = draft.update(|fields| fields.route);
    spans::finish_request(&span, status.as_u16());
    if response.extensions().get::<StreamAudited>().is_some() {
        app.metrics.observe_request(route, status.as_u16(), draft.started().elapsed().as_secs_f64());
        return response;
    }
    let refusal = response.extensions().get::<Refusal>().map(|refusal| refusal.0);
    let flavor = draft.update(|fields| fields.flavor);
    let (parts, body) = response.into_parts();
    // Non-streamed bodies are complete in memory (`Full`): collecting them does not wait.
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            tracing::error!(%error, "a non-streamed response body failed");
            Bytes::new()
        }
    };
    let response_sha256: [u8; 32] = Sha256::digest(&body).into();
    let wait = draft.finish(&Outcome {
        status: status.as_u16(),
        refusal,
        response_sha256: &response_sha256,
        response_bytes: body.len() as u64,
    });
    // A refusal is never held back: only a served response waits for its record.
    if let Some(delivered) = wait.filter(|_| refusal.is_none()) {
        let outcome = tokio::time::timeout(app.strict_timeout, delivered).await;
        if !matches!(outcome, Ok(Ok(Ok(())))) {
            let error = ApiError::new(
                ErrorKind::AuditUnavailable,
                "the audit record of this request could not be made durable in time, so the response \
                 is withheld; the record is kept and will be delivered. Retry later",
            );
            let mut response = error.into_response_for(flavor);
            response.headers_mut().insert(RECORD_ID_HEADER, draft.header_value().clone());
            return response;
        }
    }
    app.metrics.observe_request(route, status.as_u16(), draft.started().elapsed().as_secs_f64());
    Response::from_parts(parts, Body::from(body))
}

/// Header and body limits; reads and parses the body once for every later stage.
async fn enforce_limits(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let stage = spans::stage("aegis.limits");
    let draft = draft_of(&request);
    let route = request.extensions().get::<MatchedPath>().map_or("", |path| static_route(path.as_str()));
    let flavor = if route == "/v1/messages" { Flavor::Anthropic } else { Flavor::OpenAi };
    draft.update(|fields| {
        fields.route = route;
        fields.flavor = flavor;
    });
    if let Err(error) = limits::check_headers(request.headers(), app.limits.header_bytes_max) {
        return error.into_response_for(flavor);
    }
    if request.method() != Method::POST {
        app.metrics.observe_stage(Stage::Limits, started.elapsed().as_secs_f64());
        drop(stage);
        return next.run(request).await;
    }
    let limits = app.limits.for_route(route);
    let (mut parts, body) = request.into_parts();
    let read = tokio::time::timeout(
        app.body_read_timeout,
        limits::read_body(&parts.headers, body, limits.body_bytes_max),
    );
    let read = read.await.unwrap_or_else(|_| {
        Err(ApiError::new(
            ErrorKind::RequestTimeout,
            format!("the request body did not arrive within {:?}", app.body_read_timeout),
        ))
    });
    let parsed = match read.and_then(|body| {
        draft.update(|fields| {
            fields.request_sha256 = Sha256::digest(&body).to_vec();
            fields.request_bytes = body.len() as u64;
        });
        limits::parse_request(body, limits.json_depth_max, limits.messages_max)
    }) {
        Ok(parsed) => parsed,
        Err(error) => return error.into_response_for(flavor),
    };
    draft.update(|fields| {
        fields.model.clone_from(&parsed.model);
        fields.streamed = parsed.stream;
    });
    let body = Body::from(parsed.body.clone());
    parts.extensions.insert(parsed);
    app.metrics.observe_stage(Stage::Limits, started.elapsed().as_secs_f64());
    drop(stage);
    next.run(Request::from_parts(parts, body)).await
}

/// API-key authentication, scope check, and the audit admission check.
async fn authenticate(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let stage = spans::stage("aegis.auth");
    let draft = draft_of(&request);
    let flavor = draft.update(|fields| fields.flavor);
    let credential = match app.auth.authenticate(request.headers()) {
        Ok(credential) => credential,
        Err(error) => return error.into_response_for(flavor),
    };
    draft.update(|fields| fields.credential = Some(credential.clone()));
    let is_audit_route = draft.update(|fields| fields.route.starts_with("/v1/audit/"));
    let scope = if is_audit_route { Scope::AuditRead } else { Scope::Proxy };
    let admin_reading_records = is_audit_route && credential.has_scope(Scope::Admin);
    if !admin_reading_records && let Err(error) = credential.require(scope) {
        return error.into_response_for(flavor);
    }
    if !app.audit.accepting() {
        if draft.fails_open() {
            draft.update(|fields| fields.fail_open = true);
        } else {
            let error = ApiError::new(
                ErrorKind::AuditUnavailable,
                "the gateway cannot currently record audit records (ledger unreachable and spool full), \
                 so it refuses requests rather than serve them unaudited. Retry later",
            );
            return error.into_response_for(flavor);
        }
    }
    request.extensions_mut().insert(credential);
    app.metrics.observe_stage(Stage::Auth, started.elapsed().as_secs_f64());
    drop(stage);
    next.run(request).await
}

/// The WAF over every text the model will read: block (403), redact (the body goes on with
/// placeholders) or log, as the tenant's policy says; every match goes into the audit record.
async fn inspect(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let draft = draft_of(&request);
    let (route, flavor) = draft.update(|fields| (fields.route, fields.flavor));
    let Some(api) = crate::upstream::Api::of_route(route) else { return next.run(request).await };
    let Some(parsed) = request.extensions().get::<ParsedRequest>() else { return next.run(request).await };
    let Some(credential) = request.extensions().get::<Arc<crate::policy::auth::Credential>>() else {
        return ApiError::new(ErrorKind::Internal, "the WAF ran before authentication").into_response();
    };
    let policy = &credential.tenant.waf;
    let stage = spans::stage("aegis.waf");
    // Inspection costs about 4 µs per KiB: large bodies go to the blocking pool rather than
    // holding a runtime worker.
    let inspection = if parsed.body.len() > WAF_INLINE_BYTES_MAX {
        let (waf, body, owned_policy) = (app.waf.clone(), parsed.body.clone(), policy.clone());
        tokio::task::spawn_blocking(move || waf.inspect_request(api, &body, &owned_policy))
            .await
            .unwrap_or_else(|error| {
                Err(crate::waf::WafError::Body(format!("the inspection failed: {error}")))
            })
    } else {
        app.waf.inspect_request(api, &parsed.body, policy)
    };
    app.metrics.observe_stage(Stage::Waf, started.elapsed().as_secs_f64());
    drop(stage);
    let inspection = match inspection {
        Ok(inspection) => inspection,
        Err(error) => {
            app.metrics.waf_errors_total.inc();
            if policy.on_error == crate::config::FailureMode::Open {
                draft.update(|fields| fields.fail_open = true);
                return next.run(request).await;
            }
            return ApiError::new(
                ErrorKind::PermissionDenied,
                format!("the request could not be inspected and this organization's policy refuses uninspected requests: {error}"),
            )
            .into_response_for(flavor);
        }
    };
    record_hits(&app, &draft, &inspection);
    match inspection.verdict {
        crate::waf::Verdict::Allow => next.run(request).await,
        crate::waf::Verdict::Block { rule_id } => ApiError::new(
            ErrorKind::PermissionDenied,
            format!("the request was blocked by content policy rule {rule_id}"),
        )
        .into_response_for(flavor),
        crate::waf::Verdict::Redacted(body) => {
            let mut parsed = parsed.clone();
            parsed.body = body.clone();
            request.extensions_mut().insert(parsed);
            *request.body_mut() = Body::from(body);
            next.run(request).await
        }
    }
}

/// Writes WAF hits into the audit record and the metrics.
pub fn record_hits(app: &App, draft: &Draft, inspection: &crate::waf::Inspection) {
    if inspection.hits.is_empty() {
        return;
    }
    draft.update(|fields| {
        for hit in &inspection.hits {
            let action = match hit.action {
                crate::waf::rules::Action::Block => v1::WafAction::Block,
                crate::waf::rules::Action::Redact => v1::WafAction::Redact,
                crate::waf::rules::Action::Log => v1::WafAction::Log,
            };
            app.metrics.waf_decision(if inspection.shadow {
                "shadow"
            } else {
                match hit.action {
                    crate::waf::rules::Action::Block => "block",
                    crate::waf::rules::Action::Redact => "redact",
                    crate::waf::rules::Action::Log => "log",
                }
            });
            fields.waf_hits.push(v1::WafHit {
                rule_id: hit.rule_id.clone(),
                category: hit.category.clone(),
                action: action.into(),
                count: hit.count,
                location: hit.location.clone(),
                shadow: inspection.shadow,
            });
        }
    });
}

/// Request and token rate limits of the credential.
async fn rate_limit(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let stage = spans::stage("aegis.rate_limit");
    let draft = draft_of(&request);
    let Some(credential) = request.extensions().get::<Arc<crate::policy::auth::Credential>>().cloned() else {
        return ApiError::new(ErrorKind::Internal, "the rate limit ran before authentication")
            .into_response();
    };
    let tokens_estimate = request.extensions().get::<ParsedRequest>().map_or(0, |parsed| {
        prompt_tokens_estimate(parsed)
            .saturating_add(parsed.max_tokens.unwrap_or(app.limits.default_completion_tokens))
    });
    let flavor = draft.update(|fields| fields.flavor);
    let (decision, admitted) = match app.limiter.acquire(credential.index, tokens_estimate, Instant::now()) {
        Ok(admission) => {
            let slot = ReservationSlot(Arc::new(Mutex::new(Some(admission.reservation))));
            request.extensions_mut().insert(slot);
            (admission.decision, true)
        }
        Err(decision) => (decision, false),
    };
    draft.update(|fields| fields.rate_limit = Some(audit_decision(&decision)));
    let mut headers = http::HeaderMap::new();
    for (name, value) in decision.headers() {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
    app.metrics.observe_stage(Stage::RateLimit, started.elapsed().as_secs_f64());
    drop(stage);
    if !admitted {
        let (kind, message) = match decision.outcome {
            RateOutcome::LimitedRequests => {
                app.metrics.rate_limited("requests");
                (
                    ErrorKind::RateLimitedRequests,
                    "rate limit reached for requests: retry after the time in retry-after".to_owned(),
                )
            }
            RateOutcome::TokensExceedCapacity => {
                app.metrics.rate_limited("tokens");
                (
                    ErrorKind::RateLimitedTokens,
                    format!(
                        "this request needs an estimated {tokens_estimate} tokens, more than this key's per-minute token limit: \
                     lower max_tokens or the prompt"
                    ),
                )
            }
            RateOutcome::LimitedTokens | RateOutcome::Allowed => {
                app.metrics.rate_limited("tokens");
                (
                    ErrorKind::RateLimitedTokens,
                    "rate limit reached for tokens: retry after the time in retry-after".to_owned(),
                )
            }
        };
        return ApiError::new(kind, message).with_headers(headers).into_response_for(flavor);
    }
    let mut response = next.run(request).await;
    response.headers_mut().extend(headers);
    response
}

/// 404 in OpenAI's shape for any other path.
async fn not_found(request: Request) -> Response {
    ApiError::new(ErrorKind::NotFound, format!("no route for {} {}", request.method(), request.uri().path()))
        .into_response()
}

/// 405 in OpenAI's shape for a known path with another method.
async fn method_not_allowed(request: Request) -> Response {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
    .into_response()
}

/// The rate-limit decision as the audit record states it.
fn audit_decision(decision: &Decision) -> v1::RateLimitDecision {
    let outcome = match decision.outcome {
        RateOutcome::Allowed => v1::RateLimitOutcome::Allowed,
        RateOutcome::LimitedRequests => v1::RateLimitOutcome::LimitedRequests,
        RateOutcome::LimitedTokens | RateOutcome::TokensExceedCapacity => v1::RateLimitOutcome::LimitedTokens,
    };
    let millis = |duration: std::time::Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let requests = decision.requests.as_ref();
    let tokens = decision.tokens.as_ref();
    v1::RateLimitDecision {
        outcome: outcome.into(),
        requests_limit: requests.map_or(0, |quota| quota.limit),
        requests_remaining: requests.map_or(0, |quota| quota.remaining),
        requests_reset_ms: requests.map_or(0, |quota| millis(quota.reset)),
        tokens_limit: tokens.map_or(0, |quota| quota.limit),
        tokens_remaining: tokens.map_or(0, |quota| quota.remaining),
        tokens_reset_ms: tokens.map_or(0, |quota| millis(quota.reset)),
    }
}

/// Prompt tokens assumed before the upstream reports usage: a token per four body bytes.
pub fn prompt_tokens_estimate(parsed: &ParsedRequest) -> u64 {
    parsed.body.len() as u64 / 4
}

/// The request's draft, which the outermost stage always inserts.
fn draft_of(request: &Request) -> Arc<Draft> {
    request
        .extensions()
        .get::<Arc<Draft>>()
        .cloned()
        .expect("the record stage runs first and inserts the draft")
}

/// The route template as a `'static` string, for labels and records.
fn static_route(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/v1/embeddings" => "/v1/embeddings",
        "/v1/messages" => "/v1/messages",
        "/v1/models" => "/v1/models",
        "/v1/audit/records/{record_id}" => "/v1/audit/records/{record_id}",
        _ => "",
    }
}
