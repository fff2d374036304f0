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

/// The texts of a request body for `api`, in document order.
pub fn request_texts(api: Api, body: &Value) -> Vec<Text<'_>> {
    let mut texts = Vec::new();
    match api {
        Api::ChatCompletions | Api::Messages => {
            if let Some(system) = body.get("system") {
                content_texts(system, "/system".to_owned(), &mut texts);
            }
            if let Some(Value::Array(messages)) = body.get("messages") {
                for (index, message) in messages.iter().enumerate() {
                    if let Some(content) = message.get("content") {
                        content_texts(content, format!("/messages/{index}/content"), &mut texts);
                    }
                }
            }
        }
        Api::Completions => {
            if let Some(prompt) = body.get("prompt") {
                string_or_strings(prompt, "/prompt".to_owned(), &mut texts);
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
        let embeddings = json!({"input": ["a", "b", [1, 2]]});
        assert_eq!(request_texts(Api::Embeddings, &embeddings).len(), 2);
        assert_eq!(request_texts(Api::Completions, &json!({"prompt": "p"}))[0].text, "p");
        assert_eq!(location("request", "/messages/1/content/0/text"), "request:messages[1].content[0].text");
    }
}
