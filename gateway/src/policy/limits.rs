//! Request limits, checked before anything else looks at a request: header bytes, body bytes
//! (per route), JSON nesting depth and message count. The body is read here, once, into memory
//! bounded by the route's limit; later stages see it as a [`ParsedRequest`].

use std::borrow::Cow;

use axum::body::Body;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde::Deserialize;
use serde::de::{IgnoredAny, SeqAccess, Visitor};

use crate::error::{ApiError, ErrorKind};

/// The request body and the few fields the gateway's policy needs from it, parsed once.
#[derive(Clone, Debug)]
pub struct ParsedRequest {
    /// The body exactly as received: forwarded unchanged and hashed into the audit record.
    pub body: Bytes,
    pub model: String,
    pub stream: bool,
    /// `max_tokens` or `max_completion_tokens` when the request sets one.
    pub max_tokens: Option<u64>,
    pub message_count: usize,
    /// Whether the client asked for log-probabilities (the mock then returns them).
    pub logprobs: bool,
    /// `stream_options.include_usage`: the stream ends with a usage chunk.
    pub include_usage: bool,
}

/// Sums the lengths of every header name and value; a request above `header_bytes_max` is
/// refused. hyper already bounds the whole head it buffers; this is the configured, reported
/// limit.
pub fn check_headers(headers: &HeaderMap, header_bytes_max: usize) -> Result<(), ApiError> {
    let total: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if total > header_bytes_max {
        return Err(ApiError::new(
            ErrorKind::HeadersTooLarge,
            format!("request headers are {total} bytes; the limit is {header_bytes_max}"),
        ));
    }
    Ok(())
}

/// Reads the whole body, refusing more than `body_bytes_max` bytes (by `Content-Length` before
/// reading, and while reading for chunked bodies).
pub async fn read_body(headers: &HeaderMap, body: Body, body_bytes_max: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorKind::BodyTooLarge,
            format!("the request body exceeds this route's limit of {body_bytes_max} bytes"),
        )
    };
    if let Some(length) = headers.get(http::header::CONTENT_LENGTH) {
        let length: u64 = length.to_str().ok().and_then(|text| text.parse().ok()).ok_or_else(|| {
            ApiError::new(ErrorKind::InvalidRequest, "the Content-Length header is not a number")
        })?;
        if length > body_bytes_max as u64 {
            discard_while_answering(body, length);
            return Err(too_large());
        }
    }
    match Limited::new(body, body_bytes_max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(too_large()),
        Err(error) => Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("the request body could not be read: {error}"),
        )),
    }
}

/// Most bytes of a refused body read and thrown away so that the client (or a proxy such as
/// nginx, which sends the body while it waits) receives the 413 instead of a connection reset.
const DISCARD_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// How long a refused body is read at most, like nginx's `lingering_time`.
const DISCARD_TIME_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and drops a refused body in the background while the 413 goes out (a "lingering
/// close"): answering and closing at once would reset the connection under a client that is
/// still sending, and it would see an error instead of the 413 (nginx turns that into a 502).
/// Bounded by [`DISCARD_BYTES_MAX`] and [`DISCARD_TIME_MAX`]; beyond either the connection is
/// closed as before.
fn discard_while_answering(body: Body, declared_length: u64) {
    if declared_length > DISCARD_BYTES_MAX {
        return;
    }
    tokio::spawn(async move {
        let mut body = body;
        let _ = tokio::time::timeout(DISCARD_TIME_MAX, async {
            while let Some(Ok(_frame)) = body.frame().await {}
        })
        .await;
    });
}

/// Checks the body is a JSON object no deeper than `json_depth_max` with at most
/// `messages_max` messages, and extracts the fields policy needs.
pub fn parse_request(
    body: Bytes,
    json_depth_max: usize,
    messages_max: usize,
) -> Result<ParsedRequest, ApiError> {
    let depth = json_depth(&body);
    if depth > json_depth_max {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("the JSON body nests {depth} levels deep; the limit is {json_depth_max}"),
        ));
    }
    let fields: RequestFields<'_> = serde_json::from_slice(&body).map_err(|error| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("the request body is not a valid JSON object: {error}"),
        )
    })?;
    let message_count = fields.messages.map_or(0, |count| count.0);
    if message_count > messages_max {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("the request has {message_count} messages; the limit is {messages_max}"),
        )
        .with_param("messages"));
    }
    let model = match fields.model {
        Some(model) if !model.is_empty() && model.len() <= 256 => model.into_owned(),
        Some(_) => {
            return Err(ApiError::new(ErrorKind::InvalidRequest, "model must be 1 to 256 characters")
                .with_param("model"));
        }
        None => {
            return Err(ApiError::new(ErrorKind::InvalidRequest, "you must provide a model parameter")
                .with_param("model"));
        }
    };
    Ok(ParsedRequest {
        model,
        stream: fields.stream.unwrap_or(false),
        max_tokens: fields.max_completion_tokens.or(fields.max_tokens),
        message_count,
        logprobs: matches!(fields.logprobs, Some(Logprobs::Chat(true) | Logprobs::Completions(1..))),
        include_usage: fields.stream_options.is_some_and(|options| options.include_usage),
        body,
    })
}

/// The deepest nesting of objects and arrays in `json`, scanning bytes in one pass (strings and
/// escapes skipped), before any parser recurses into it. Malformed input gets whatever depth it
/// reaches; the parser rejects it afterwards.
pub fn json_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The fields read from a request body; everything else is skipped without being stored.
#[derive(Deserialize)]
struct RequestFields<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    messages: Option<Count>,
    #[serde(default)]
    logprobs: Option<Logprobs>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

/// `logprobs`: a flag on chat completions, a count on legacy completions.
#[derive(Deserialize)]
#[serde(untagged)]
enum Logprobs {
    Chat(bool),
    Completions(u64),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The length of a JSON array, counted without keeping its elements.
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountVisitor;
        impl<'de> Visitor<'de> for CountVisitor {
            type Value = Count;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                let mut count = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    count += 1;
                }
                Ok(Count(count))
            }
        }
        deserializer.deserialize_seq(CountVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_counts_nesting_and_ignores_brackets_in_strings() {
        for (json, expected) in [
            (r#"{}"#, 1),
            (r#"{"a":[{"b":1}]}"#, 3),
            (r#"{"a":"[[[[{{{{"}"#, 1),
            (r#"{"a":"\"[[[","b":[[]]}"#, 3),
            (r#"[[[[[[[[[[]]]]]]]]]]"#, 10),
            (r#"17"#, 0),
        ] {
            assert_eq!(json_depth(json.as_bytes()), expected, "{json}");
        }
    }

    #[test]
    fn parse_request_extracts_policy_fields_and_enforces_limits() {
        let body = Bytes::from_static(
            br#"{"model":"gpt-x","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"hi"},{"role":"user","content":"yo"}]}"#,
        );
        let parsed = parse_request(body.clone(), 8, 10).expect("valid");
        assert_eq!((parsed.model.as_str(), parsed.stream, parsed.max_tokens), ("gpt-x", true, Some(50)));
        assert_eq!(parsed.message_count, 2);
        assert_eq!(parsed.body, body);

        let error = parse_request(body.clone(), 8, 1).expect_err("too many messages");
        assert_eq!((error.kind, error.param), (ErrorKind::InvalidRequest, Some("messages")));
        let error = parse_request(body, 2, 10).expect_err("too deep");
        assert!(error.message.contains("nests 3 levels"), "{}", error.message);

        for bad in [&br#"{"messages":[]}"#[..], b"not json", br#"{"model":""}"#, br#"[1]"#] {
            let error = parse_request(Bytes::from_static(bad), 8, 10).expect_err("refused");
            assert_eq!(error.kind, ErrorKind::InvalidRequest);
        }
        let parsed = parse_request(
            Bytes::from_static(br#"{"model":"m","max_completion_tokens":7,"max_tokens":9}"#),
            8,
            1,
        )
        .expect("valid");
        assert_eq!(parsed.max_tokens, Some(7), "max_completion_tokens wins over the deprecated max_tokens");
    }
}
