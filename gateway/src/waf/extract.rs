//! Finds every text a model will read in a request body (and every text it wrote in a
//! response): chat and Anthropic messages (string or content blocks), system prompts, tool
//! results, legacy completion prompts and embedding inputs. Each text comes with its JSON
//! pointer, so a redaction can replace exactly that string, and a location for the audit record.

use serde_json::Value;

use crate::upstream::Api;

/// One text found in a body.
#[derive(Debug, PartialEq, Eq)]
pub struct Text<'a> {
    /// JSON pointer (RFC 6901) of the string, e.g. `/messages/2/content`.
    pub pointer: String,
    pub text: &'a str,
}

/// Keys whose string values a model does not read as text (identifiers, enums, media), skipped
/// when walking a request: everything else under `messages`, `system` and `tools` is inspected,
/// so tool descriptions, tool-call arguments, tool inputs, names and document blocks are too.
const NOT_TEXT_KEYS: [&str; 10] = [
    "role",
    "type",
    "id",
    "tool_call_id",
    "tool_use_id",
    "media_type",
    "detail",
    "url",
    "data",
    "cache_control",
];

/// The texts of a request body for `api`, in document order.
pub fn request_texts(api: Api, body: &Value) -> Vec<Text<'_>> {
    let mut texts = Vec::new();
    match api {
        Api::ChatCompletions | Api::Messages => {
            for key in ["system", "messages", "tools"] {
                if let Some(value) = body.get(key) {
                    walk(value, format!("/{key}"), &mut texts);
                }
            }
        }
        Api::Completions => {
            for key in ["prompt", "suffix"] {
                if let Some(value) = body.get(key) {
                    string_or_strings(value, format!("/{key}"), &mut texts);
                }
            }
        }
        Api::Embeddings => {
            if let Some(input) = body.get("input") {
                string_or_strings(input, "/input".to_owned(), &mut texts);
            }
        }
    }
    texts
}

/// Every string under `value`, except under [`NOT_TEXT_KEYS`].
fn walk<'a>(value: &'a Value, pointer: String, texts: &mut Vec<Text<'a>>) {
    match value {
        Value::String(text) => texts.push(Text { pointer, text }),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                walk(item, format!("{pointer}/{index}"), texts);
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                if !NOT_TEXT_KEYS.contains(&key.as_str()) {
                    walk(item, format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1")), texts);
                }
            }
        }
        _ => {}
    }
}

/// The texts of a non-streamed response body for `api`: what the model wrote.
pub fn response_texts(api: Api, body: &Value) -> Vec<Text<'_>> {
    let mut texts = Vec::new();
    match api {
        Api::ChatCompletions | Api::Completions => {
            if let Some(Value::Array(choices)) = body.get("choices") {
                for (index, choice) in choices.iter().enumerate() {
                    if let Some(Value::String(text)) = choice.pointer("/message/content") {
                        texts.push(Text { pointer: format!("/choices/{index}/message/content"), text });
                    }
                    if let Some(Value::String(text)) = choice.get("text") {
                        texts.push(Text { pointer: format!("/choices/{index}/text"), text });
                    }
                }
            }
        }
        Api::Messages => {
            if let Some(content) = body.get("content") {
                content_texts(content, "/content".to_owned(), &mut texts);
            }
        }
        Api::Embeddings => {}
    }
    texts
}

/// A message content: a string, or content blocks whose `text` (and tool results' `content`)
/// are texts.
fn content_texts<'a>(content: &'a Value, pointer: String, texts: &mut Vec<Text<'a>>) {
    match content {
        Value::String(text) => texts.push(Text { pointer, text }),
        Value::Array(blocks) => {
            for (index, block) in blocks.iter().enumerate() {
                if let Some(Value::String(text)) = block.get("text") {
                    texts.push(Text { pointer: format!("{pointer}/{index}/text"), text });
                }
                // Anthropic tool results carry their own content (string or blocks).
                if let Some(inner) = block.get("content") {
                    content_texts(inner, format!("{pointer}/{index}/content"), texts);
                }
            }
        }
        _ => {}
    }
}

/// A string, or an array of strings (arrays of token ids carry no text).
fn string_or_strings<'a>(value: &'a Value, pointer: String, texts: &mut Vec<Text<'a>>) {
    match value {
        Value::String(text) => texts.push(Text { pointer, text }),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                if let Value::String(text) = item {
                    texts.push(Text { pointer: format!("{pointer}/{index}"), text });
                }
            }
        }
        _ => {}
    }
}

/// The audit location of a text: `request:messages[2].content` style, from its pointer.
pub fn location(side: &str, pointer: &str) -> String {
    let mut location = String::with_capacity(side.len() + pointer.len() + 4);
    location.push_str(side);
    location.push(':');
    for (index, part) in pointer.trim_start_matches('/').split('/').enumerate() {
        if part.bytes().all(|byte| byte.is_ascii_digit()) && !part.is_empty() {
            location.push('[');
            location.push_str(part);
            location.push(']');
        } else {
            if index > 0 {
                location.push('.');
            }
            location.push_str(part);
        }
    }
    location
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn texts_are_found_where_models_read_them() {
        let chat = json!({"model": "m", "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "tool", "content": "tool says"},
        ]});
        let pointers: Vec<(String, &str)> = request_texts(Api::ChatCompletions, &chat)
            .into_iter()
            .map(|text| (text.pointer, text.text))
            .collect();
        assert_eq!(
            pointers,
            [
                ("/messages/0/content".to_owned(), "be nice"),
                ("/messages/1/content/0/text".to_owned(), "hi"),
                ("/messages/2/content".to_owned(), "tool says"),
            ]
        );
        let anthropic = json!({"system": [{"type": "text", "text": "sys"}], "messages": [
            {"role": "user", "content": [{"type": "tool_result", "content": [{"type": "text", "text": "result"}]}]},
        ]});
        let texts: Vec<&str> =
            request_texts(Api::Messages, &anthropic).into_iter().map(|text| text.text).collect();
        assert_eq!(texts, ["sys", "result"]);
        let tools = json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": "{\"q\":\"x\"}"}}]}],
            "tools": [{"type": "function", "function": {"name": "f", "description": "looks things up"}}]});
        let texts: Vec<&str> =
            request_texts(Api::ChatCompletions, &tools).into_iter().map(|text| text.text).collect();
        assert_eq!(texts, ["{\"q\":\"x\"}", "f", "looks things up", "f"]);
        let embeddings = json!({"input": ["a", "b", [1, 2]]});
        assert_eq!(request_texts(Api::Embeddings, &embeddings).len(), 2);
        assert_eq!(request_texts(Api::Completions, &json!({"prompt": "p"}))[0].text, "p");
        assert_eq!(location("request", "/messages/1/content/0/text"), "request:messages[1].content[0].text");
    }
}
