//! Reads what the audit record says about a response out of the response itself: the
//! upstream's token usage, the finish reason, a token count of the gateway's own, and the
//! entropy of the next-token distributions when the response carries log-probabilities.
//! Works on whole JSON bodies and on server-sent event streams fed chunk by chunk, in bounded
//! memory.

use proto::v1;
use serde::Deserialize;

/// Longest SSE line kept while waiting for its end. A longer event is skipped (and analysis
/// marked incomplete) rather than buffered without bound.
const SSE_LINE_BYTES_MAX: usize = 256 * 1024;

/// Longest finish reason recorded: the upstream's text goes into the audit record, so it is
/// bounded like every other field.
const FINISH_REASON_BYTES_MAX: usize = 64;

/// Accumulates the analysis of one response.
#[derive(Debug, Default)]
pub struct ResponseAnalyzer {
    /// The unfinished last line of the stream so far.
    line: Vec<u8>,
    /// Skipping the rest of an over-long line.
    skipping_line: bool,
    usage: Option<v1::TokenUsage>,
    token_count: u64,
    finish_reason: String,
    /// The model the response names (`model`, or Anthropic's `message.model`), bounded.
    model: String,
    entropy_count: u64,
    entropy_sum_bits: f64,
    entropy_min_bits: f64,
    entropy_max_bits: f64,
}

/// The fields read from an OpenAI or Anthropic response, whole or one event of a stream.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Event {
    choices: Vec<Choice>,
    usage: Option<Usage>,
    model: Option<String>,
    /// Anthropic: `message_start` carries the input usage in `message`.
    message: Option<AnthropicMessage>,
    /// Anthropic: `content_block_delta` / `message_delta`.
    delta: Option<Delta>,
    /// Anthropic (whole message): the content blocks and the stop reason.
    content: Vec<ContentBlock>,
    stop_reason: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Choice {
    delta: Option<Delta>,
    message: Option<Delta>,
    text: Option<String>,
    finish_reason: Option<String>,
    logprobs: Option<Logprobs>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Delta {
    content: Option<serde_json::Value>,
    text: Option<String>,
    stop_reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Logprobs {
    content: Option<Vec<TokenLogprob>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TokenLogprob {
    top_logprobs: Vec<TopLogprob>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TopLogprob {
    logprob: f64,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(default)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AnthropicMessage {
    usage: Option<Usage>,
    model: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ContentBlock {
    text: Option<String>,
}

/// `text` cut to at most [`FINISH_REASON_BYTES_MAX`] bytes on a character boundary.
fn bounded(text: &str) -> &str {
    let end = (0..=text.len().min(FINISH_REASON_BYTES_MAX))
        .rev()
        .find(|&end| text.is_char_boundary(end))
        .unwrap_or(0);
    &text[..end]
}

impl ResponseAnalyzer {
    /// Analyses a whole (non-streamed) JSON response.
    pub fn feed_json(&mut self, body: &[u8]) {
        let Ok(event) = serde_json::from_slice::<Event>(body) else { return };
        self.absorb(&event, false);
    }

    /// Analyses the next chunk of a server-sent event stream.
    pub fn feed_sse(&mut self, mut chunk: &[u8]) {
        while let Some(end) = chunk.iter().position(|&byte| byte == b'\n') {
            let (head, rest) = chunk.split_at(end);
            chunk = &rest[1..];
            if self.skipping_line {
                self.skipping_line = false;
                continue;
            }
            if self.line.is_empty() {
                self.feed_line(head);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(head);
                self.feed_line(&line);
                line.clear();
                self.line = line;
            }
        }
        if self.skipping_line {
            return;
        }
        if self.line.len() + chunk.len() > SSE_LINE_BYTES_MAX {
            self.line.clear();
            self.skipping_line = true;
            return;
        }
        self.line.extend_from_slice(chunk);
    }

    fn feed_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else { return };
        let data = data.trim_ascii();
        if data.first() != Some(&b'{') {
            return;
        }
        if let Ok(event) = serde_json::from_slice::<Event>(data) {
            self.absorb(&event, true);
        }
    }

    fn absorb(&mut self, event: &Event, streamed: bool) {
        if self.model.is_empty()
            && let Some(model) = event
                .model
                .as_deref()
                .or_else(|| event.message.as_ref().and_then(|message| message.model.as_deref()))
        {
            self.model = bounded(model).to_owned();
        }
        if let Some(usage) = event.usage.or_else(|| event.message.as_ref().and_then(|message| message.usage))
        {
            self.merge_usage(usage);
        }
        for choice in &event.choices {
            if let Some(reason) = &choice.finish_reason {
                self.set_finish_reason(reason);
            }
            let text = choice
                .delta
                .as_ref()
                .or(choice.message.as_ref())
                .and_then(|delta| delta.content.as_ref().and_then(serde_json::Value::as_str))
                .or(choice.text.as_deref());
            let logprob_tokens = choice.logprobs.as_ref().and_then(|logprobs| logprobs.content.as_ref());
            if let Some(tokens) = logprob_tokens {
                for token in tokens {
                    self.observe_entropy(&token.top_logprobs);
                }
            }
            match (streamed, text) {
                (true, Some(text)) if !text.is_empty() => self.token_count += 1,
                (false, Some(text)) => {
                    self.token_count += logprob_tokens
                        .map_or_else(|| text.split_whitespace().count() as u64, |tokens| tokens.len() as u64);
                }
                _ => {}
            }
        }
        // Anthropic.
        if let Some(delta) = &event.delta {
            if let Some(reason) = &delta.stop_reason {
                self.set_finish_reason(reason);
            }
            if delta.text.as_deref().is_some_and(|text| !text.is_empty()) {
                self.token_count += 1;
            }
        }
        if event.event_type.as_deref() == Some("message") {
            if let Some(reason) = &event.stop_reason {
                self.set_finish_reason(reason);
            }
            for block in &event.content {
                self.token_count +=
                    block.text.as_deref().map_or(0, |text| text.split_whitespace().count() as u64);
            }
        }
    }

    fn set_finish_reason(&mut self, reason: &str) {
        bounded(reason).clone_into(&mut self.finish_reason);
    }

    /// The model the upstream says answered, if it said.
    pub fn response_model(&self) -> Option<&str> {
        (!self.model.is_empty()).then_some(self.model.as_str())
    }

    /// Why the generation stopped, if the upstream said.
    pub fn finish_reason(&self) -> Option<&str> {
        (!self.finish_reason.is_empty()).then_some(self.finish_reason.as_str())
    }

    fn merge_usage(&mut self, usage: Usage) {
        let current = self.usage.get_or_insert_with(v1::TokenUsage::default);
        if let Some(prompt) = usage.prompt_tokens.or(usage.input_tokens) {
            current.prompt_tokens = prompt;
        }
        if let Some(completion) = usage.completion_tokens.or(usage.output_tokens) {
            current.completion_tokens = completion;
        }
        current.total_tokens =
            usage.total_tokens.unwrap_or(current.prompt_tokens.saturating_add(current.completion_tokens));
    }

    /// Shannon entropy, in bits, of one token's top candidates, renormalized over them.
    fn observe_entropy(&mut self, candidates: &[TopLogprob]) {
        let probabilities: f64 = candidates.iter().map(|candidate| candidate.logprob.exp()).sum();
        if candidates.is_empty() || !probabilities.is_finite() || probabilities <= 0.0 {
            return;
        }
        let entropy_bits: f64 = candidates
            .iter()
            .map(|candidate| candidate.logprob.exp() / probabilities)
            .filter(|&probability| probability > 0.0)
            .map(|probability| -probability * probability.log2())
            .sum();
        if self.entropy_count == 0 {
            self.entropy_min_bits = entropy_bits;
            self.entropy_max_bits = entropy_bits;
        }
        self.entropy_count += 1;
        self.entropy_sum_bits += entropy_bits;
        self.entropy_min_bits = self.entropy_min_bits.min(entropy_bits);
        self.entropy_max_bits = self.entropy_max_bits.max(entropy_bits);
    }

    /// The total tokens the response used, as the upstream reported them.
    pub fn total_tokens(&self) -> Option<u64> {
        self.usage.map(|usage| usage.total_tokens)
    }

    /// Completion tokens the gateway counted itself (content events or words).
    pub fn token_count(&self) -> u64 {
        self.token_count
    }

    pub fn usage(&self) -> Option<v1::TokenUsage> {
        self.usage
    }

    /// The `ResponseAnalysis` of the audit record.
    pub fn analysis(&self) -> v1::ResponseAnalysis {
        let mean =
            if self.entropy_count == 0 { 0.0 } else { self.entropy_sum_bits / self.entropy_count as f64 };
        v1::ResponseAnalysis {
            token_count: self.token_count,
            entropy_token_count: self.entropy_count,
            token_entropy_mean_bits: mean,
            token_entropy_min_bits: self.entropy_min_bits,
            token_entropy_max_bits: self.entropy_max_bits,
            finish_reason: self.finish_reason.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_stream_split_anywhere_gives_usage_tokens_and_entropy() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"},\"logprobs\":{\"content\":[{\"top_logprobs\":",
            "[{\"logprob\":-0.6931471805599453},{\"logprob\":-0.6931471805599453}]}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\" b\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
            "data: [DONE]\n\n",
        );
        for split in [1, 3, 7, 64, stream.len()] {
            let mut analyzer = ResponseAnalyzer::default();
            for chunk in stream.as_bytes().chunks(split) {
                analyzer.feed_sse(chunk);
            }
            let analysis = analyzer.analysis();
            assert_eq!(
                (analysis.token_count, analysis.finish_reason.as_str()),
                (2, "length"),
                "split {split}"
            );
            assert_eq!((analysis.entropy_token_count, analysis.token_entropy_mean_bits), (1, 1.0));
            let usage = analyzer.usage().expect("usage chunk");
            assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.total_tokens), (5, 2, 7));
        }
    }

    #[test]
    fn anthropic_stream_and_whole_message() {
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n",
        );
        let mut analyzer = ResponseAnalyzer::default();
        analyzer.feed_sse(stream.as_bytes());
        let usage = analyzer.usage().expect("usage");
        assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.total_tokens), (9, 3, 12));
        assert_eq!(analyzer.analysis().finish_reason, "end_turn");
        assert_eq!(analyzer.analysis().token_count, 1);

        let mut analyzer = ResponseAnalyzer::default();
        analyzer.feed_json(
            br#"{"type":"message","content":[{"type":"text","text":"one two three"}],"stop_reason":"max_tokens","usage":{"input_tokens":4,"output_tokens":3}}"#,
        );
        assert_eq!(analyzer.total_tokens(), Some(7));
        assert_eq!(
            (analyzer.analysis().token_count, analyzer.analysis().finish_reason.as_str()),
            (3, "max_tokens")
        );
    }

    #[test]
    fn an_over_long_line_is_skipped_without_buffering_it() {
        let mut analyzer = ResponseAnalyzer::default();
        analyzer.feed_sse(b"data: {\"choices\":[{\"text\":\"");
        analyzer.feed_sse(&vec![b'x'; SSE_LINE_BYTES_MAX]);
        assert!(analyzer.line.is_empty());
        analyzer.feed_sse(b"\"}]}\n\ndata: {\"choices\":[{\"text\":\"ok\"}]}\n\n");
        assert_eq!(analyzer.analysis().token_count, 1, "the next event is analysed again");
    }
}
