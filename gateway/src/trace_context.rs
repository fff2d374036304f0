//! W3C Trace Context (`traceparent`) values. With OpenTelemetry export on, the request's SERVER
//! span joins the client's trace and its ids become the request's `TraceContext` (see
//! `pipeline::record`). With export off, a client's valid `traceparent` still joins the record to
//! its trace, with a span id of the gateway's own; the upstream receives `traceparent` naming the
//! gateway's span (the upstream CLIENT span when exporting) as parent, and the client gets the
//! gateway's `traceparent` back. Requests without one are traced only when exporting.

use http::{HeaderMap, HeaderValue};

/// The header, as W3C names it.
pub const TRACEPARENT: &str = "traceparent";

/// The trace a request belongs to and the gateway's span in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The gateway's span for this request (new, random).
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceContext {
    /// The context of a request with a valid version-00 `traceparent`, with a new span id;
    /// `None` without one (invalid values are ignored, as the specification asks).
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(TRACEPARENT)?.as_bytes();
        // 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>
        if value.len() != 55 || &value[..3] != b"00-" || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let trace_id: [u8; 16] = hex(&value[3..35])?;
        let parent_id: [u8; 8] = hex(&value[36..52])?;
        let [flags] = hex::<1>(&value[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        let mut span_id = [0u8; 8];
        while span_id == [0; 8] {
            getrandom::fill(&mut span_id).ok()?;
        }
        Some(Self { trace_id, span_id, flags })
    }

    /// `traceparent` naming the gateway's span as the parent, for the upstream request.
    pub fn traceparent(&self) -> HeaderValue {
        let mut text = String::with_capacity(55);
        text.push_str("00-");
        push_hex(&mut text, &self.trace_id);
        text.push('-');
        push_hex(&mut text, &self.span_id);
        text.push('-');
        push_hex(&mut text, &[self.flags]);
        HeaderValue::try_from(text).expect("hex digits and dashes are a valid header value")
    }
}

/// Lowercase hex (as W3C requires) into `N` bytes.
fn hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(bytes)
}

fn push_hex(text: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_str(value).expect("header"));
        headers
    }

    #[test]
    fn valid_traceparents_are_joined_with_a_new_span_and_invalid_ones_ignored() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::from_headers(&headers(incoming)).expect("valid");
        assert_eq!(context.trace_id[..4], [0x4b, 0xf9, 0x2f, 0x35]);
        assert_ne!(context.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7], "a span of our own");
        let outgoing = context.traceparent();
        let outgoing = outgoing.to_str().expect("ascii");
        assert!(outgoing.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && outgoing.ends_with("-01"));
        assert_eq!(
            TraceContext::from_headers(&headers(outgoing)).expect("round trip").trace_id,
            context.trace_id
        );
        for invalid in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(TraceContext::from_headers(&headers(invalid)), None, "{invalid}");
        }
        assert_eq!(TraceContext::from_headers(&HeaderMap::new()), None);
    }
}
