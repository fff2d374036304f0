//! Redaction of streamed responses over a bounded sliding window. Sensitive data can straddle
//! the events of a stream ("bob@exa" | "mple.com"), so content events are held while their
//! text is within the last [`WINDOW_BYTES`] of the stream's text, and released once no match can
//! still reach them (never splitting a match between released and held events). Each released
//! event keeps its place and shape; only its text changes where a match lies: the placeholder
//! goes into the event where the match starts, and the match's rest is removed from the events
//! after it. Other events (role, finish reason, usage, pings, end of stream) keep their place in
//! the queue and pass unchanged. The client sees the same events, text delayed by the window.
//! The window is bounded by [`WINDOW_BYTES_MAX`]: a match that keeps growing past it (a long
//! token) is redacted as far as it has been seen and released, so the rescanning per event
//! stays bounded.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::{Hit, Policy, Waf, detector_rule_id, rules::Action};
use crate::error::Flavor;

/// Text held back: longer than the sensitive values the detectors find in practice (IBANs,
/// cards, phone numbers, most addresses and keys), so they cannot straddle the released part
/// and the rest. The price is latency: a stream's text reaches the client this many bytes
/// (some 30 tokens) late. A longer match (a JWT, a very long address) whose start was already
/// released is redacted only in its unreleased part.
pub const WINDOW_BYTES: usize = 128;

/// Most text held at once: beyond it everything held is released (redacted as far as seen).
pub const WINDOW_BYTES_MAX: usize = 4 * 1024;

/// Longest event kept while waiting for its end; a longer one is passed through as it is.
const EVENT_BYTES_MAX: usize = 256 * 1024;

/// A held event: a content event to re-render with its (redacted) text, or another event to
/// pass as it came.
#[derive(Debug)]
enum Held {
    Content(Value),
    Other(Bytes),
}

/// Rewrites one stream.
#[derive(Debug)]
pub struct StreamRedactor {
    waf: Arc<Waf>,
    policy: Policy,
    flavor: Flavor,
    /// Bytes of an event not yet complete.
    partial: Vec<u8>,
    /// Text of content events not yet released.
    window: String,
    /// The held events, in order, each with the end of the text before and in it in `window`.
    held: std::collections::VecDeque<(Held, usize)>,
    /// Redactions per rule id.
    counts: BTreeMap<&'static str, u32>,
}

impl StreamRedactor {
    pub fn new(waf: Arc<Waf>, policy: Policy, flavor: Flavor) -> Self {
        Self {
            waf,
            policy,
            flavor,
            partial: Vec::new(),
            window: String::new(),
            held: std::collections::VecDeque::new(),
            counts: BTreeMap::new(),
        }
    }

    /// Takes the next upstream chunk; returns the bytes to send now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.partial.extend_from_slice(chunk);
        while let Some(end) = find_event_end(&self.partial) {
            let event: Vec<u8> = self.partial.drain(..end).collect();
            self.event(&event, &mut out);
        }
        if self.partial.len() > EVENT_BYTES_MAX {
            self.flush(&mut out);
            out.push(Bytes::from(std::mem::take(&mut self.partial)));
        }
        out
    }

    /// The end of the upstream stream: everything held goes out.
    pub fn finish(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.flush(&mut out);
        if !self.partial.is_empty() {
            out.push(Bytes::from(std::mem::take(&mut self.partial)));
        }
        out
    }

    /// What was redacted, for the audit record.
    pub fn hits(&self) -> Vec<Hit> {
        let rules = self.waf.rules();
        self.counts
            .iter()
            .map(|(rule_id, count)| Hit {
                rule_id: (*rule_id).to_owned(),
                category: rules.detectors.get(*rule_id).map(|rule| rule.category.clone()).unwrap_or_default(),
                action: Action::Redact,
                count: *count,
                location: "response:stream".to_owned(),
            })
            .collect()
    }

    fn event(&mut self, event: &[u8], out: &mut Vec<Bytes>) {
        match self.content(event) {
            Some((text, template)) => {
                self.window.push_str(&text);
                self.held.push_back((Held::Content(template), self.window.len()));
                self.release(false, out);
            }
            None if self.held.is_empty() => out.push(Bytes::copy_from_slice(event)),
            None => self.held.push_back((Held::Other(Bytes::copy_from_slice(event)), self.window.len())),
        }
    }

    fn flush(&mut self, out: &mut Vec<Bytes>) {
        self.release(true, out);
    }

    /// Releases the held events that no match can still reach (all of them when `everything`).
    fn release(&mut self, everything: bool, out: &mut Vec<Bytes>) {
        if self.held.is_empty() {
            return;
        }
        let findings = self.waf.redactable_findings(&self.window, &self.policy);
        let everything = everything || self.window.len() > WINDOW_BYTES_MAX;
        let limit =
            if everything { self.window.len() } else { self.window.len().saturating_sub(WINDOW_BYTES) };
        // The last event end within the limit that no finding straddles.
        let cut = self
            .held
            .iter()
            .map(|(_, end)| *end)
            .filter(|&end| end <= limit)
            .rfind(|&end| !findings.iter().any(|finding| finding.start < end && finding.end > end))
            .unwrap_or(0);
        if cut == 0 {
            return;
        }
        // Released in full (`everything`), a match still open at the end is redacted as far as
        // it goes.
        let released: Vec<_> = findings.into_iter().filter(|finding| finding.end <= cut).collect();
        for finding in &released {
            *self.counts.entry(detector_rule_id(finding.kind)).or_insert(0) += 1;
        }
        let mut start = 0;
        while let Some((_, end)) = self.held.front() {
            if *end > cut {
                break;
            }
            let (event, end) = self.held.pop_front().expect("checked above");
            match event {
                Held::Content(template) => {
                    let text = redact_slice(&self.window, start, end, &released);
                    out.push(self.render(&template, &text));
                }
                Held::Other(bytes) => out.push(bytes),
            }
            start = end;
        }
        self.window.drain(..cut);
        for (_, end) in &mut self.held {
            *end -= cut;
        }
    }

    /// The text of a content event and the event itself, or `None` for other events.
    fn content(&self, event: &[u8]) -> Option<(String, Value)> {
        let data = event
            .split(|&byte| byte == b'\n')
            .find_map(|line| line.strip_prefix(b"data:"))
            .map(<[u8]>::trim_ascii)?;
        let value: Value = serde_json::from_slice(data).ok()?;
        let text = match self.flavor {
            Flavor::OpenAi => value.pointer("/choices/0/delta/content")?.as_str()?,
            Flavor::Anthropic => {
                if value.get("type")?.as_str()? != "content_block_delta" {
                    return None;
                }
                value.pointer("/delta/text")?.as_str()?
            }
        };
        if text.is_empty() {
            return None;
        }
        Some((text.to_owned(), value))
    }

    /// An event like `template` carrying `text`.
    fn render(&self, template: &Value, text: &str) -> Bytes {
        let mut event = template.clone();
        let pointer = match self.flavor {
            Flavor::OpenAi => "/choices/0/delta/content",
            Flavor::Anthropic => "/delta/text",
        };
        if let Some(slot) = event.pointer_mut(pointer) {
            *slot = Value::String(text.to_owned());
        }
        let prefix = match self.flavor {
            Flavor::OpenAi => "",
            Flavor::Anthropic => "event: content_block_delta\n",
        };
        Bytes::from(format!("{prefix}data: {event}\n\n"))
    }
}

/// The text of `window[start..end]` with the findings redacted: a finding's placeholder goes
/// where it starts, and its characters are removed wherever they are.
fn redact_slice(window: &str, start: usize, end: usize, findings: &[super::detectors::Finding]) -> String {
    let mut text = String::with_capacity(end - start);
    let mut position = start;
    for finding in findings.iter().filter(|finding| finding.start < end && finding.end > start) {
        let from = finding.start.max(start);
        text.push_str(&window[position.max(start)..from.max(position)]);
        if finding.start >= start {
            text.push_str(super::detectors::placeholder(finding.kind));
        }
        position = finding.end.min(end);
    }
    if position < end {
        text.push_str(&window[position..end]);
    }
    text
}

/// The length of the first complete event (through its blank line) in `bytes`.
fn find_event_end(bytes: &[u8]) -> Option<usize> {
    let lf = bytes.windows(2).position(|window| window == b"\n\n").map(|at| at + 2);
    let crlf = bytes.windows(4).position(|window| window == b"\r\n\r\n").map(|at| at + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{WafConfig, WafTenantConfig};

    fn redactor() -> StreamRedactor {
        let waf = Arc::new(Waf::new(&WafConfig::default()).expect("rules"));
        StreamRedactor::new(waf, Policy::new(&WafTenantConfig::default(), 1 << 20), Flavor::OpenAi)
    }

    fn delta(text: &str) -> String {
        format!("data: {}\n\n", serde_json::json!({"choices": [{"index": 0, "delta": {"content": text}}]}))
    }

    #[test]
    fn an_address_split_across_events_and_chunks_is_redacted() {
        let stream = [
            delta("Contact bob@exa"),
            delta("mple.com today"),
            delta(" please."),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        for split in [1, 7, 50, stream.len()] {
            let mut redactor = redactor();
            let mut out = Vec::new();
            for chunk in stream.as_bytes().chunks(split) {
                out.extend(redactor.push(chunk));
            }
            out.extend(redactor.finish());
            let sent = String::from_utf8(out.concat()).expect("utf-8");
            assert!(!sent.contains("bob@"), "split {split}: {sent}");
            let text: String = sent
                .split("\n\n")
                .filter_map(|event| event.strip_prefix("data: "))
                .filter_map(|data| serde_json::from_str::<Value>(data).ok())
                .filter_map(|value| {
                    value.pointer("/choices/0/delta/content").and_then(Value::as_str).map(str::to_owned)
                })
                .collect();
            assert_eq!(text, "Contact [REDACTED:EMAIL] today please.", "split {split}");
            assert!(sent.ends_with("data: [DONE]\n\n"));
            assert_eq!(redactor.hits()[0].rule_id, "pii.email");
        }
    }
}

#[cfg(test)]
mod bounds {
    use super::*;
    use crate::config::{WafConfig, WafTenantConfig};

    #[test]
    fn pings_between_parts_of_an_address_do_not_release_it_and_long_tokens_stay_bounded() {
        let waf = Arc::new(Waf::new(&WafConfig::default()).expect("rules"));
        let policy = Policy::new(&WafTenantConfig::default(), 1 << 20);
        let mut redactor = StreamRedactor::new(waf.clone(), policy.clone(), Flavor::Anthropic);
        let delta = |text: &str| {
            format!(
                "event: content_block_delta\ndata: {}\n\n",
                serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})
            )
        };
        let stream = [
            delta("write to bob@exa"),
            "event: ping\ndata: {\"type\": \"ping\"}\n\n".to_owned(),
            delta("mple.com now"),
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned(),
        ]
        .concat();
        let mut out = redactor.push(stream.as_bytes());
        out.extend(redactor.finish());
        let sent = String::from_utf8(out.concat()).expect("utf-8");
        assert!(!sent.contains("bob@"), "{sent}");
        assert!(sent.find("event: ping").expect("ping kept") < sent.find("message_stop").expect("end kept"));

        // A token that never ends: the window never exceeds its bound.
        let mut redactor = StreamRedactor::new(waf, policy, Flavor::OpenAi);
        let event = |text: &str| {
            format!(
                "data: {}\n\n",
                serde_json::json!({"choices": [{"index": 0, "delta": {"content": text}}]})
            )
        };
        redactor.push(event("key sk-proj-").as_bytes());
        for _ in 0..5_000 {
            redactor.push(event("a1b2c3d4").as_bytes());
            assert!(redactor.window.len() <= WINDOW_BYTES_MAX + 16);
        }
    }
}
