//! The one place gateway errors become HTTP responses: OpenAI's error object
//! (`{"error":{"message","type","param","code"}}`) on OpenAI routes, Anthropic's
//! (`{"type":"error","error":{"type","message"}}`) on `/v1/messages`, with the status codes the
//! official SDKs map to their exception classes. Internals never reach the client.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, StatusCode};
use serde_json::json;

/// Which API's error shape a response uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flavor {
    #[default]
    OpenAi,
    Anthropic,
}

/// Why the gateway refused or failed a request. Each kind fixes the status code, the error type
/// the SDKs see and the stable reason written into the audit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No or unknown API key: 401.
    Unauthenticated,
    /// The key lacks the scope the route needs, or asks for another tenant's data: 403.
    PermissionDenied,
    /// No such route, model or record: 404.
    NotFound,
    /// Malformed JSON, too deep, too many messages, a missing field: 400.
    InvalidRequest,
    /// The smuggling guard refused the request's HTTP framing: 400, and the connection closes.
    AmbiguousFraming,
    /// The route exists but not for this method: 405.
    MethodNotAllowed,
    /// The client took too long to send its body: 408.
    RequestTimeout,
    /// Body larger than the route's limit: 413.
    BodyTooLarge,
    /// Header section larger than the limit: 431.
    HeadersTooLarge,
    /// Request rate limit of the credential: 429.
    RateLimitedRequests,
    /// Token rate limit of the credential: 429.
    RateLimitedTokens,
    /// Too many streams open on the gateway or the tenant: 429.
    TooManyStreams,
    /// Audit records can be neither delivered nor spooled, or a strict record was not
    /// acknowledged in time: 503.
    AuditUnavailable,
    /// The gateway is shutting down: 503.
    Draining,
    /// The upstream could not be reached or answered garbage: 502.
    UpstreamUnavailable,
    /// The upstream did not answer in time: 504.
    UpstreamTimeout,
    /// A bug or an unexpected failure inside the gateway: 500.
    Internal,
}

/// An error answered to the client.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: Cow<'static, str>,
    /// The request field at fault, when there is one (OpenAI's `param`).
    pub param: Option<&'static str>,
    /// Extra headers, e.g. `retry-after` and `x-ratelimit-*` on a 429.
    pub headers: Option<Box<HeaderMap>>,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::InvalidRequest | Self::AmbiguousFraming => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RateLimitedRequests | Self::RateLimitedTokens | Self::TooManyStreams => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::AuditUnavailable | Self::Draining => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable reason recorded in `PolicyDecisions.refusal_reason`.
    pub fn refusal_reason(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::InvalidRequest => "invalid_request",
            Self::AmbiguousFraming => "smuggling_guard",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::BodyTooLarge => "body_too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::RateLimitedRequests | Self::RateLimitedTokens => "rate_limited",
            Self::TooManyStreams => "too_many_streams",
            Self::AuditUnavailable => "audit_unavailable",
            Self::Draining => "draining",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Internal => "internal_error",
        }
    }

    /// OpenAI's `type` and `code` for this kind.
    fn openai_type_and_code(self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::Unauthenticated => ("invalid_request_error", Some("invalid_api_key")),
            Self::PermissionDenied => ("permission_error", Some("insufficient_permissions")),
            Self::NotFound => ("invalid_request_error", Some("not_found")),
            Self::InvalidRequest => ("invalid_request_error", None),
            Self::AmbiguousFraming => ("invalid_request_error", Some("malformed_http_request")),
            Self::MethodNotAllowed => ("invalid_request_error", Some("method_not_allowed")),
            Self::RequestTimeout => ("invalid_request_error", Some("request_timeout")),
            Self::BodyTooLarge => ("invalid_request_error", Some("request_too_large")),
            Self::HeadersTooLarge => ("invalid_request_error", Some("headers_too_large")),
            Self::RateLimitedRequests => ("requests", Some("rate_limit_exceeded")),
            Self::RateLimitedTokens => ("tokens", Some("rate_limit_exceeded")),
            Self::TooManyStreams => ("requests", Some("too_many_streams")),
            Self::AuditUnavailable => ("server_error", Some("audit_unavailable")),
            Self::Draining => ("server_error", Some("shutting_down")),
            Self::UpstreamUnavailable => ("server_error", Some("upstream_unavailable")),
            Self::UpstreamTimeout => ("server_error", Some("upstream_timeout")),
            Self::Internal => ("server_error", None),
        }
    }

    /// Anthropic's error `type` for this kind.
    fn anthropic_type(self) -> &'static str {
        match self {
            Self::Unauthenticated => "authentication_error",
            Self::PermissionDenied => "permission_error",
            Self::NotFound => "not_found_error",
            Self::InvalidRequest
            | Self::HeadersTooLarge
            | Self::AmbiguousFraming
            | Self::MethodNotAllowed
            | Self::RequestTimeout => "invalid_request_error",
            Self::BodyTooLarge => "request_too_large",
            Self::RateLimitedRequests | Self::RateLimitedTokens | Self::TooManyStreams => "rate_limit_error",
            Self::AuditUnavailable | Self::Draining => "overloaded_error",
            Self::UpstreamUnavailable | Self::UpstreamTimeout | Self::Internal => "api_error",
        }
    }
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self { kind, message: message.into(), param: None, headers: None }
    }

    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.headers = Some(Box::new(headers));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The JSON error body in the given API's shape.
    pub fn body(&self, flavor: Flavor) -> Bytes {
        let value = match flavor {
            Flavor::OpenAi => {
                let (error_type, code) = self.kind.openai_type_and_code();
                json!({"error": {
                    "message": self.message,
                    "type": error_type,
                    "param": self.param,
                    "code": code,
                }})
            }
            Flavor::Anthropic => json!({"type": "error", "error": {
                "type": self.kind.anthropic_type(),
                "message": self.message,
            }}),
        };
        Bytes::from(value.to_string())
    }

    /// The error as one server-sent event, for failures after a stream started: OpenAI's SDKs
    /// raise on a `data:` object with an `error` member; Anthropic's on an `error` event.
    pub fn sse_event(&self, flavor: Flavor) -> Bytes {
        let body = self.body(flavor);
        let mut event = Vec::with_capacity(body.len() + 32);
        if flavor == Flavor::Anthropic {
            event.extend_from_slice(b"event: error\n");
        }
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(&body);
        event.extend_from_slice(b"\n\n");
        Bytes::from(event)
    }

    /// The complete HTTP response in the given API's shape.
    pub fn into_response_for(self, flavor: Flavor) -> Response {
        let mut response = (self.status(), self.body(flavor)).into_response();
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(headers) = self.headers {
            response.headers_mut().extend(*headers);
        }
        response.extensions_mut().insert(Refusal(self.kind));
        response
    }
}

/// Marks a response the gateway produced to refuse or fail a request, so the audit layer can
/// record why.
#[derive(Clone, Copy, Debug)]
pub struct Refusal(pub ErrorKind);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_for(Flavor::OpenAi)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}: {}", self.kind.refusal_reason(), self.message)
    }
}
