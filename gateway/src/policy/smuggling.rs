//! The request-smuggling guard: a strict HTTP/1.1 framing validator that sees every byte a
//! client sends before hyper does. Request smuggling needs two parsers that disagree about where
//! a request ends; the guard removes the disagreement by refusing every message whose framing is
//! not unambiguous under RFC 9112, even where hyper would pick one reading:
//!
//! - every line ends in CRLF (no bare LF or CR), no NUL or other control bytes, no obsolete line
//!   folding, header names are tokens with no whitespace before the colon;
//! - at most one `Content-Length`, a plain decimal; never together with `Transfer-Encoding`;
//! - `Transfer-Encoding` only as one header whose value is exactly `chunked`, and not in HTTP/1.0;
//!   look-alike names (`transfer_encoding`, `content_length`) are refused rather than ignored;
//! - chunk sizes are 1 to 15 hex digits with no extensions, every chunk ends in CRLF, no trailers;
//! - the header section is bounded (`header_bytes_max`).
//!
//! [`GuardedIo`] wraps the connection: it releases a request's head to hyper only once the
//! whole head validated, and its body as it validates. On a violation hyper reads end-of-stream,
//! finishes the responses it owes (the server runs with half-close), and when it shuts the
//! connection down the client gets `400` (OpenAI's error shape, `connection: close`) after them.
//! A violation inside a body is answered by hyper itself (the body read fails). The upstream never sees the client's framing anyway: the gateway forwards a body
//! it read whole, with its own `Content-Length`.
//!
//! While spans are exported, the guard times each head it validates (from its first bytes to
//! the end of validation) and queues the check for the request's span ([`HeadChecks`]); a
//! refusal is told when the refused bytes began to arrive. With export off it reads no clock.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::head_checks::{HeadCheck, HeadChecks};

/// Hex digits allowed in a chunk size: 15 cannot overflow a u64.
const CHUNK_SIZE_DIGITS_MAX: usize = 15;

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Why a message was refused. The message is safe to show the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("the request's header section exceeds {0} bytes")]
    HeadTooLarge(usize),
    #[error("a line ends in a bare LF; HTTP/1.1 lines end in CRLF")]
    BareLineFeed,
    #[error("a bare CR appears outside a line ending")]
    BareCarriageReturn,
    #[error("the request contains a control character (NUL or similar)")]
    ControlCharacter,
    #[error("the request line is malformed")]
    MalformedRequestLine,
    #[error("obsolete line folding (a header line starting with whitespace) is not accepted")]
    ObsoleteLineFolding,
    #[error("a header name is not a valid token, or has whitespace before its colon")]
    InvalidHeaderName,
    #[error("a header line has no colon")]
    MissingColon,
    #[error("a header name looks like a framing header but is not one (e.g. transfer_encoding)")]
    LookAlikeFramingHeader,
    #[error("more than one Content-Length header, or a list of lengths")]
    DuplicateContentLength,
    #[error("Content-Length is not a plain decimal number")]
    InvalidContentLength,
    #[error("Content-Length and Transfer-Encoding together are ambiguous")]
    ContentLengthWithTransferEncoding,
    #[error("Transfer-Encoding must be exactly one header with the value chunked")]
    UnsupportedTransferEncoding,
    #[error("Transfer-Encoding is not allowed in HTTP/1.0")]
    TransferEncodingInHttp10,
    #[error("a chunk size is not 1 to 15 hexadecimal digits followed by CRLF")]
    MalformedChunkSize,
    #[error("chunk extensions are not accepted")]
    ChunkExtension,
    #[error("a chunk's data is not followed by CRLF")]
    MalformedChunkEnd,
    #[error("trailer fields after the last chunk are not accepted")]
    Trailers,
}

impl Violation {
    /// A stable name for the violation (`error.type` of the guard's span).
    pub fn code(self) -> &'static str {
        match self {
            Violation::HeadTooLarge(_) => "head_too_large",
            Violation::BareLineFeed => "bare_line_feed",
            Violation::BareCarriageReturn => "bare_carriage_return",
            Violation::ControlCharacter => "control_character",
            Violation::MalformedRequestLine => "malformed_request_line",
            Violation::ObsoleteLineFolding => "obsolete_line_folding",
            Violation::InvalidHeaderName => "invalid_header_name",
            Violation::MissingColon => "missing_colon",
            Violation::LookAlikeFramingHeader => "look_alike_framing_header",
            Violation::DuplicateContentLength => "duplicate_content_length",
            Violation::InvalidContentLength => "invalid_content_length",
            Violation::ContentLengthWithTransferEncoding => "content_length_with_transfer_encoding",
            Violation::UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            Violation::TransferEncodingInHttp10 => "transfer_encoding_in_http_1_0",
            Violation::MalformedChunkSize => "malformed_chunk_size",
            Violation::ChunkExtension => "chunk_extension",
            Violation::MalformedChunkEnd => "malformed_chunk_end",
            Violation::Trailers => "trailers",
        }
    }
}

/// How a validated request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
}

/// What the guard calls at the first violation of a connection, with the violation and, while
/// spans are exported, when the refused bytes began to arrive. It returns the complete HTTP
/// response to send before closing.
pub type OnRefusal = Box<dyn FnOnce(Violation, Option<SystemTime>) -> Vec<u8> + Send>;

/// Scans `buffer` for the end of a request head. Returns the head's length (through its final
/// CRLF CRLF, after any empty lines before it) when complete, `None` when more bytes are needed.
/// Line-ending errors are found as the bytes arrive, before the head is complete.
pub fn find_head_end(buffer: &[u8], header_bytes_max: usize) -> Result<Option<usize>, Violation> {
    // Empty lines before a request line are allowed (RFC 9112 §2.2).
    let mut start = 0;
    while buffer[start..].starts_with(b"\r\n") {
        start += 2;
        if start > header_bytes_max {
            return Err(Violation::HeadTooLarge(header_bytes_max));
        }
    }
    let mut line_start = start;
    let mut index = start;
    while index < buffer.len() {
        match buffer[index] {
            b'\n' => {
                if index == 0 || buffer[index - 1] != b'\r' {
                    return Err(Violation::BareLineFeed);
                }
                if index + 1 - line_start == 2 && line_start > start {
                    return Ok(Some(index + 1));
                }
                line_start = index + 1;
            }
            b'\r' => {
                if let Some(&next) = buffer.get(index + 1)
                    && next != b'\n'
                {
                    return Err(Violation::BareCarriageReturn);
                }
            }
            _ => {}
        }
        if index - start >= header_bytes_max {
            return Err(Violation::HeadTooLarge(header_bytes_max));
        }
        index += 1;
    }
    Ok(None)
}

/// Validates a complete request head (as [`find_head_end`] delimited it) and returns its body
/// framing.
pub fn validate_head(head: &[u8]) -> Result<Framing, Violation> {
    let mut lines = head.split(|&byte| byte == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let mut request_line = lines.next().unwrap_or_default();
    while request_line.is_empty() {
        request_line = lines.next().ok_or(Violation::MalformedRequestLine)?;
    }
    let http_10 = validate_request_line(request_line)?;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(Violation::ObsoleteLineFolding);
        }
        let colon = line.iter().position(|&byte| byte == b':').ok_or(Violation::MissingColon)?;
        let (name, value) = (&line[..colon], trim_whitespace(&line[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&byte| is_token(byte)) {
            return Err(Violation::InvalidHeaderName);
        }
        if value.iter().any(|&byte| (byte < 0x20 && byte != b'\t') || byte == 0x7f) {
            return Err(Violation::ControlCharacter);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(Violation::DuplicateContentLength);
            }
            content_length = Some(parse_content_length(value)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if transfer_encoding.is_some() {
                return Err(Violation::UnsupportedTransferEncoding);
            }
            transfer_encoding = Some(value);
        } else if is_look_alike(name) {
            return Err(Violation::LookAlikeFramingHeader);
        }
    }
    match (content_length, transfer_encoding) {
        (Some(_), Some(_)) => Err(Violation::ContentLengthWithTransferEncoding),
        (_, Some(_)) if http_10 => Err(Violation::TransferEncodingInHttp10),
        (_, Some(coding)) if coding.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
        (_, Some(_)) => Err(Violation::UnsupportedTransferEncoding),
        (Some(length), None) => Ok(Framing::Length(length)),
        (None, None) => Ok(Framing::Length(0)),
    }
}

/// `METHOD SP request-target SP HTTP/1.x`; returns whether it is HTTP/1.0.
fn validate_request_line(line: &[u8]) -> Result<bool, Violation> {
    let mut parts = line.split(|&byte| byte == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Violation::MalformedRequestLine);
    };
    let method_ok = !method.is_empty() && method.iter().all(|&byte| is_token(byte));
    let target_ok = !target.is_empty() && target.iter().all(|&byte| (0x21..0x7f).contains(&byte));
    if !method_ok || !target_ok {
        return Err(Violation::MalformedRequestLine);
    }
    match version {
        b"HTTP/1.1" => Ok(false),
        b"HTTP/1.0" => Ok(true),
        _ => Err(Violation::MalformedRequestLine),
    }
}

/// A Content-Length value: 1 to 19 decimal digits, nothing else.
fn parse_content_length(value: &[u8]) -> Result<u64, Violation> {
    if value.contains(&b',') {
        return Err(Violation::DuplicateContentLength);
    }
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(Violation::InvalidContentLength);
    }
    value
        .iter()
        .try_fold(0u64, |total, &digit| total.checked_mul(10)?.checked_add(u64::from(digit - b'0')))
        .ok_or(Violation::InvalidContentLength)
}

/// Header names some servers would read as a framing header (`_` for `-`, stray spaces are
/// already refused as non-token bytes).
fn is_look_alike(name: &[u8]) -> bool {
    let normalized = |expected: &[u8]| {
        name.len() == expected.len()
            && name.iter().zip(expected).all(|(&byte, &want)| {
                let byte = if byte == b'_' { b'-' } else { byte.to_ascii_lowercase() };
                byte == want
            })
    };
    normalized(b"content-length") || normalized(b"transfer-encoding")
}

/// RFC 9110 `tchar`.
fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn trim_whitespace(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|&byte| byte != b' ' && byte != b'\t').unwrap_or(value.len());
    let end = value.iter().rposition(|&byte| byte != b' ' && byte != b'\t').map_or(start, |index| index + 1);
    &value[start..end]
}

/// Where the guard is in the byte stream of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Collecting a request head.
    Head,
    /// Passing this many more bytes of a `Content-Length` body.
    Body(u64),
    /// In a chunked body.
    Chunked(ChunkStage),
    /// Refused: hyper reads end-of-stream from now on.
    Refused(Violation),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkStage {
    /// Reading a chunk-size line: the size so far and its digit count.
    Size {
        size: u64,
        digits: usize,
    },
    /// Saw the CR after the size.
    SizeCr {
        size: u64,
    },
    /// Passing this many more data bytes.
    Data(u64),
    /// Expecting the CR, then the LF, after a chunk's data.
    DataCr,
    DataLf,
    /// After the last chunk: expecting the final CRLF (no trailers).
    LastCr,
    LastLf,
}

/// A connection whose bytes pass the smuggling guard before hyper reads them.
pub struct GuardedIo<T> {
    inner: T,
    stage: Stage,
    /// Bytes read from the client and not yet validated.
    pending: BytesMut,
    /// Validated bytes hyper has not read yet.
    validated: BytesMut,
    header_bytes_max: usize,
    /// The 400 still to send after a refusal, and how much of it went out.
    rejection: Option<(Vec<u8>, usize)>,
    /// Told once about a refusal (to count and audit it); returns the response to send.
    on_refusal: Option<OnRefusal>,
    /// Where validated heads are reported for the requests' spans; `None` while spans are not
    /// exported, and then the guard reads no clock.
    head_checks: Option<Arc<HeadChecks>>,
    /// Heads validated so far: the next head's sequence number (counted with `head_checks`).
    heads_validated: u64,
    /// When the bytes of the head being collected began to arrive (with `head_checks`).
    head_started: Option<SystemTime>,
    /// When the latest read from the client returned (with `head_checks`).
    read_at: Option<SystemTime>,
}

impl<T> std::fmt::Debug for GuardedIo<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("GuardedIo").field("stage", &self.stage).finish_non_exhaustive()
    }
}

impl<T> GuardedIo<T> {
    /// Guards `inner`. `on_refusal` is called once, at the first violation, and returns the
    /// complete HTTP response to send before closing.
    pub fn new(
        inner: T,
        header_bytes_max: usize,
        on_refusal: impl FnOnce(Violation, Option<SystemTime>) -> Vec<u8> + Send + 'static,
    ) -> Self {
        Self {
            inner,
            stage: Stage::Head,
            pending: BytesMut::new(),
            validated: BytesMut::new(),
            header_bytes_max,
            rejection: None,
            on_refusal: Some(Box::new(on_refusal)),
            head_checks: None,
            heads_validated: 0,
            head_started: None,
            read_at: None,
        }
    }

    /// Times every head the guard validates and queues its check in `head_checks`, in order.
    /// Only while spans are exported: it costs clock reads.
    pub fn with_head_checks(mut self, head_checks: Arc<HeadChecks>) -> Self {
        self.head_checks = Some(head_checks);
        self
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The violation that closed this connection, if one did.
    pub fn violation(&self) -> Option<Violation> {
        match self.stage {
            Stage::Refused(violation) => Some(violation),
            _ => None,
        }
    }

    /// Moves as many pending bytes as validate into `validated`.
    fn advance(&mut self) {
        loop {
            let progressed = match self.stage {
                Stage::Refused(_) => return,
                Stage::Head => match find_head_end(&self.pending, self.header_bytes_max) {
                    Err(violation) => return self.refuse(violation),
                    Ok(None) => {
                        // The head's first bytes came with the latest read: earlier bytes
                        // were all consumed by the previous message.
                        if self.head_started.is_none() {
                            self.head_started = self.read_at;
                        }
                        false
                    }
                    Ok(Some(length)) => match validate_head(&self.pending[..length]) {
                        Err(violation) => return self.refuse(violation),
                        Ok(framing) => {
                            self.report_head(length, framing);
                            let head = self.pending.split_to(length);
                            self.validated.extend_from_slice(&head);
                            self.stage = match framing {
                                Framing::Length(0) => Stage::Head,
                                Framing::Length(length) => Stage::Body(length),
                                Framing::Chunked => Stage::Chunked(ChunkStage::Size { size: 0, digits: 0 }),
                            };
                            true
                        }
                    },
                },
                Stage::Body(remaining) => {
                    let take = usize::try_from(remaining).unwrap_or(usize::MAX).min(self.pending.len());
                    if take > 0 {
                        let bytes = self.pending.split_to(take);
                        self.validated.extend_from_slice(&bytes);
                        let left = remaining - take as u64;
                        self.stage = if left == 0 { Stage::Head } else { Stage::Body(left) };
                    }
                    take > 0 && self.stage == Stage::Head
                }
                Stage::Chunked(chunk) => match self.advance_chunked(chunk) {
                    Err(violation) => return self.refuse(violation),
                    Ok(progressed) => progressed,
                },
            };
            if !progressed || self.pending.is_empty() {
                return;
            }
        }
    }

    /// Validates chunked-body bytes; returns whether the body ended (so the next head starts).
    fn advance_chunked(&mut self, mut chunk: ChunkStage) -> Result<bool, Violation> {
        let mut consumed = 0;
        let result = loop {
            let Some(&byte) = self.pending.get(consumed) else { break Ok(false) };
            chunk = match chunk {
                ChunkStage::Data(remaining) => {
                    let take =
                        usize::try_from(remaining).unwrap_or(usize::MAX).min(self.pending.len() - consumed);
                    consumed += take;
                    let left = remaining - take as u64;
                    if left == 0 { ChunkStage::DataCr } else { ChunkStage::Data(left) }
                }
                ChunkStage::Size { size, digits } => {
                    consumed += 1;
                    match byte {
                        b'\r' if digits > 0 => ChunkStage::SizeCr { size },
                        b';' if digits > 0 => break Err(Violation::ChunkExtension),
                        _ => {
                            let Some(value) = (byte as char).to_digit(16) else {
                                break Err(Violation::MalformedChunkSize);
                            };
                            if digits == CHUNK_SIZE_DIGITS_MAX {
                                break Err(Violation::MalformedChunkSize);
                            }
                            ChunkStage::Size { size: size << 4 | u64::from(value), digits: digits + 1 }
                        }
                    }
                }
                ChunkStage::SizeCr { size } => {
                    consumed += 1;
                    match (byte, size) {
                        (b'\n', 0) => ChunkStage::LastCr,
                        (b'\n', size) => ChunkStage::Data(size),
                        _ => break Err(Violation::MalformedChunkSize),
                    }
                }
                ChunkStage::DataCr => {
                    consumed += 1;
                    if byte != b'\r' {
                        break Err(Violation::MalformedChunkEnd);
                    }
                    ChunkStage::DataLf
                }
                ChunkStage::DataLf => {
                    consumed += 1;
                    if byte != b'\n' {
                        break Err(Violation::MalformedChunkEnd);
                    }
                    ChunkStage::Size { size: 0, digits: 0 }
                }
                ChunkStage::LastCr => {
                    consumed += 1;
                    if byte != b'\r' {
                        break Err(Violation::Trailers);
                    }
                    ChunkStage::LastLf
                }
                ChunkStage::LastLf => {
                    consumed += 1;
                    if byte != b'\n' {
                        break Err(Violation::Trailers);
                    }
                    let bytes = self.pending.split_to(consumed);
                    self.validated.extend_from_slice(&bytes);
                    self.stage = Stage::Head;
                    return Ok(true);
                }
            };
        };
        if result.is_ok() {
            let bytes = self.pending.split_to(consumed);
            self.validated.extend_from_slice(&bytes);
            self.stage = Stage::Chunked(chunk);
        }
        result
    }

    /// Queues the check of a head that just validated, when spans are exported.
    fn report_head(&mut self, head_bytes: usize, framing: Framing) {
        let Some(head_checks) = &self.head_checks else { return };
        let finished = SystemTime::now();
        let started = self.head_started.take().or(self.read_at).unwrap_or(finished);
        let sequence = self.heads_validated;
        self.heads_validated += 1;
        head_checks.push(HeadCheck { sequence, started, finished, head_bytes, framing });
    }

    fn refuse(&mut self, violation: Violation) {
        // Refused between requests, the guard answers; refused inside a body, hyper is mid-
        // request and answers itself (its body read fails), so a second response would follow.
        let between_requests = self.stage == Stage::Head;
        self.stage = Stage::Refused(violation);
        self.pending.clear();
        let started = self.head_started.take().or(self.read_at);
        if let Some(on_refusal) = self.on_refusal.take() {
            let response = on_refusal(violation, started);
            if between_requests {
                self.rejection = Some((response, 0));
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> GuardedIo<T> {
    /// Writes what is left of the 400 response, if any.
    fn poll_send_rejection(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((response, written)) = &mut self.rejection {
            if *written == response.len() {
                self.rejection = None;
                break;
            }
            let sent = ready!(Pin::new(&mut self.inner).poll_write(cx, &response[*written..]))?;
            if sent == 0 {
                self.rejection = None;
                break;
            }
            *written += sent;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.validated.is_empty() {
                let count = this.validated.len().min(out.remaining());
                out.put_slice(&this.validated[..count]);
                this.validated.advance(count);
                return Poll::Ready(Ok(()));
            }
            if let Stage::Refused(_) = this.stage {
                // End of stream for hyper. It finishes the responses it owes (half-close), then
                // shuts the connection down, and the 400 goes out there, after them.
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            let mut buffer = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buffer))?;
            if buffer.filled().is_empty() {
                // The client closed; hyper sees whatever it sent, unvalidated tail excluded.
                return Poll::Ready(Ok(()));
            }
            if this.head_checks.is_some() {
                this.read_at = Some(SystemTime::now());
            }
            this.pending.extend_from_slice(buffer.filled());
            this.advance();
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, bytes)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_rejection(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(head: &str) -> Result<Framing, Violation> {
        let bytes = head.as_bytes();
        let length = find_head_end(bytes, 8192)?.expect("a complete head");
        validate_head(&bytes[..length])
    }

    #[test]
    fn heads_are_framed_or_refused() {
        let ok = "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n";
        assert_eq!(framing(ok), Ok(Framing::Length(12)));
        assert_eq!(framing("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(Framing::Length(0)));
        assert_eq!(framing("\r\nGET / HTTP/1.1\r\n\r\n"), Ok(Framing::Length(0)));
        assert_eq!(framing("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"), Ok(Framing::Chunked));
        for (head, violation) in [
            (
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                Violation::DuplicateContentLength,
            ),
            ("POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n", Violation::DuplicateContentLength),
            ("POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n", Violation::InvalidContentLength),
            (
                "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
                Violation::InvalidContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                Violation::ContentLengthWithTransferEncoding,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Violation::UnsupportedTransferEncoding,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
                Violation::UnsupportedTransferEncoding,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
                Violation::UnsupportedTransferEncoding,
            ),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Violation::TransferEncodingInHttp10),
            ("POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n", Violation::InvalidHeaderName),
            ("POST / HTTP/1.1\r\nTransfer_Encoding: chunked\r\n\r\n", Violation::LookAlikeFramingHeader),
            ("POST / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", Violation::ObsoleteLineFolding),
            ("POST / HTTP/1.1\r\nX: a\x00b\r\n\r\n", Violation::ControlCharacter),
            ("POST / HTTP/1.1\r\nNoColon\r\n\r\n", Violation::MissingColon),
            ("POST /a b HTTP/1.1\r\n\r\n", Violation::MalformedRequestLine),
            ("POST / HTTP/2.0\r\n\r\n", Violation::MalformedRequestLine),
        ] {
            assert_eq!(framing(head), Err(violation), "{head:?}");
        }
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nHost: a\n\n", 8192), Err(Violation::BareLineFeed));
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 8192),
            Err(Violation::BareCarriageReturn)
        );
        assert_eq!(find_head_end(&[b'a'; 100], 50), Err(Violation::HeadTooLarge(50)));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 8192), Ok(None));
    }
}
