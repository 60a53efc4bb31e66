//! The built-in offline provider: deterministic replies, token counts and streaming, for the
//! demo, the tests and benchmarks of the gateway's own overhead.
//!
//! Token counting is defined, not estimated: a prompt costs one token per
//! whitespace-separated word of text in the messages plus one per message; a reply costs one
//! token per word it contains.

use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::{
    ChatCall, ChatReply, ChunkStream, Embeddings, EmbeddingsCall, ResponsesCall, StreamItem,
    TokenUsage,
};
use crate::config::DemoProvider;

/// Longest echo of the user's words, so a long prompt does not make a long reply.
const MAX_ECHO_WORDS: usize = 32;
const OPENING: &str = "Hello from the Quantized demo model! You said:";

pub struct Demo {
    token_delay: Duration,
}

impl Demo {
    pub fn new(settings: &DemoProvider) -> Self {
        Self { token_delay: Duration::from_millis(settings.token_delay_ms) }
    }

    pub fn chat(&self, call: &ChatCall<'_>) -> ChatReply {
        let messages = call
            .request
            .body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let prompt_tokens = prompt_tokens(messages);
        let (words, finish_reason) = reply_words(messages, call.max_output_tokens);
        let usage = TokenUsage { prompt_tokens, completion_tokens: words.len() as u64 };
        let id = format!("gen-{}", uuid::Uuid::new_v4().simple());
        let created = time::OffsetDateTime::now_utc().unix_timestamp();
        let model = call.request.model.clone();
        if !call.request.stream {
            let completion = json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": { "role": "assistant", "content": words.join(" ") },
                    "finish_reason": finish_reason,
                }],
            });
            let Value::Object(completion) = completion else { unreachable!("json! object") };
            return ChatReply::Complete { completion, usage };
        }
        let chunk = move |delta: Value, finish: Value| {
            let Value::Object(map) = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
            }) else {
                unreachable!("json! object")
            };
            map
        };
        let mut items = Vec::with_capacity(words.len() + 3);
        items.push(StreamItem::Chunk {
            chunk: chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            completion_tokens: 0,
        });
        // Like Anthropic's message_start: the prompt's count first, so a cut stream bills it.
        items.push(StreamItem::Usage(TokenUsage { prompt_tokens, completion_tokens: 0 }));
        for (i, word) in words.iter().enumerate() {
            let text = if i == 0 { word.clone() } else { format!(" {word}") };
            items.push(StreamItem::Chunk {
                chunk: chunk(json!({ "content": text }), Value::Null),
                completion_tokens: 1,
            });
        }
        items.push(StreamItem::Chunk {
            chunk: chunk(json!({}), json!(finish_reason)),
            completion_tokens: 0,
        });
        items.push(StreamItem::Usage(usage));
        ChatReply::Stream(self.paced(items))
    }
}

impl Demo {
    /// The Responses API: the same reply as chat, as a `response` object or its event stream.
    pub fn responses(&self, call: &ResponsesCall<'_>) -> ChatReply {
        let body = &call.request.body;
        let texts = responses_texts(body);
        let prompt_tokens =
            texts.iter().map(|(_, t)| t.split_whitespace().count() as u64 + 1).sum();
        let last_user =
            texts.iter().rev().find(|(role, _)| role == "user").map_or("", |(_, t)| t.as_str());
        let (words, finish) =
            reply_words(&[json!({"role": "user", "content": last_user})], call.max_output_tokens);
        let usage = TokenUsage { prompt_tokens, completion_tokens: words.len() as u64 };
        let text = words.join(" ");
        let id = format!("resp_{}", uuid::Uuid::new_v4().simple());
        let item_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let created_at = time::OffsetDateTime::now_utc().unix_timestamp();
        let status = if finish == "length" { "incomplete" } else { "completed" };
        let item = |status: &str, text: &str| {
            json!({"type": "message", "id": item_id, "status": status, "role": "assistant",
                   "content": if status == "in_progress" { json!([]) } else { json!([{"type": "output_text", "text": text, "annotations": []}]) }})
        };
        let response = |status: &str, output: Value| {
            let mut r = json!({"id": id, "object": "response", "created_at": created_at, "model": call.request.model,
                               "status": status, "output": output});
            if status != "in_progress" {
                r["usage"] = json!({"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
                                    "total_tokens": usage.prompt_tokens + usage.completion_tokens});
            }
            r
        };
        if !call.request.stream {
            let Value::Object(completion) = response(status, json!([item("completed", &text)]))
            else {
                unreachable!("json! object")
            };
            return ChatReply::Complete { completion, usage };
        }
        let mut events = vec![
            json!({"type": "response.created", "response": response("in_progress", json!([]))}),
            json!({"type": "response.in_progress", "response": response("in_progress", json!([]))}),
            json!({"type": "response.output_item.added", "output_index": 0, "item": item("in_progress", "")}),
            json!({"type": "response.content_part.added", "item_id": item_id, "output_index": 0, "content_index": 0,
                   "part": {"type": "output_text", "text": "", "annotations": []}}),
        ];
        for (i, word) in words.iter().enumerate() {
            let delta = if i == 0 { word.clone() } else { format!(" {word}") };
            events.push(
                json!({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0,
                               "content_index": 0, "delta": delta, "logprobs": []}),
            );
        }
        events.push(
            json!({"type": "response.output_text.done", "item_id": item_id, "output_index": 0,
                           "content_index": 0, "text": text, "logprobs": []}),
        );
        events.push(json!({"type": "response.content_part.done", "item_id": item_id, "output_index": 0,
                           "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}}));
        events.push(json!({"type": "response.output_item.done", "output_index": 0, "item": item("completed", &text)}));
        let terminal =
            if status == "completed" { "response.completed" } else { "response.incomplete" };
        let last = json!({"type": terminal, "response": response(status, json!([item("completed", &text)]))});
        let mut items: Vec<StreamItem> = events
            .into_iter()
            .enumerate()
            .map(|(n, mut event)| {
                event["sequence_number"] = json!(n);
                let output = event["type"] == "response.output_text.delta";
                let Value::Object(chunk) = event else { unreachable!("json! object") };
                StreamItem::Chunk { chunk, completion_tokens: u64::from(output) }
            })
            .collect();
        let mut last = last;
        last["sequence_number"] = json!(items.len());
        let Value::Object(last) = last else { unreachable!("json! object") };
        items.insert(0, StreamItem::Usage(TokenUsage { prompt_tokens, completion_tokens: 0 }));
        items.push(StreamItem::Usage(usage));
        items.push(StreamItem::Final(last));
        ChatReply::Stream(self.paced(items))
    }
}

/// (role, text) of the instructions and every input message, in order.
fn responses_texts(body: &serde_json::Map<String, Value>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(instructions) = body.get("instructions").and_then(Value::as_str) {
        out.push(("system".to_string(), instructions.to_string()));
    }
    match body.get("input") {
        Some(Value::String(text)) => out.push(("user".into(), text.clone())),
        Some(Value::Array(items)) => {
            for item in items {
                let role = item.get("role").and_then(Value::as_str).unwrap_or("user").to_string();
                let text = match item.get("content") {
                    Some(Value::String(t)) => t.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(" "),
                    _ => String::new(),
                };
                out.push((role, text));
            }
        }
        _ => {}
    }
    out
}

/// Longest demo vector; `dimensions` above this is served at this size.
const MAX_DEMO_DIMENSIONS: usize = 3072;
const DEFAULT_DEMO_DIMENSIONS: usize = 16;

impl Demo {
    /// Deterministic unit vectors derived from each text's SHA-256; one token per word
    /// (at least one per input).
    pub fn embeddings(&self, call: &EmbeddingsCall<'_>) -> Embeddings {
        let size = call
            .request
            .dimensions
            .map_or(DEFAULT_DEMO_DIMENSIONS, |d| d as usize)
            .min(MAX_DEMO_DIMENSIONS);
        let vectors = call.request.inputs.iter().map(|text| demo_vector(text, size)).collect();
        let prompt_tokens =
            call.request.inputs.iter().map(|t| (t.split_whitespace().count() as u64).max(1)).sum();
        Embeddings { vectors, prompt_tokens }
    }
}

fn demo_vector(text: &str, size: usize) -> Vec<f64> {
    use sha2::{Digest, Sha256};
    let mut values = Vec::with_capacity(size);
    let mut block = 0u32;
    while values.len() < size {
        let digest = Sha256::new()
            .chain_update(block.to_le_bytes())
            .chain_update(text.as_bytes())
            .finalize();
        values.extend(
            digest
                .chunks(2)
                .map(|pair| (u16::from_le_bytes([pair[0], pair[1]]) as f64 / 32767.5) - 1.0),
        );
        block += 1;
    }
    values.truncate(size);
    let norm = values.iter().map(|v| v * v).sum::<f64>().sqrt().max(f64::EPSILON);
    values.iter().map(|v| v / norm).collect()
}

impl Demo {
    /// Streams `items`, pausing `token_delay_ms` before each output token.
    fn paced(&self, items: Vec<StreamItem>) -> ChunkStream {
        let delay = self.token_delay;
        stream::iter(items)
            .then(move |item| async move {
                if !delay.is_zero()
                    && matches!(item, StreamItem::Chunk { completion_tokens: 1, .. })
                {
                    actix_web::rt::time::sleep(delay).await;
                }
                Ok(item)
            })
            .boxed_local()
    }
}

/// The text of a message's content: a string, or the `text` of its text parts.
fn texts(message: &Value) -> impl Iterator<Item = &str> {
    let content = message.get("content");
    let whole = content.and_then(Value::as_str);
    let parts = content
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("text")?.as_str());
    whole.into_iter().chain(parts)
}

pub fn prompt_tokens(messages: &[Value]) -> u64 {
    messages
        .iter()
        .map(|m| 1 + texts(m).map(|t| t.split_whitespace().count() as u64).sum::<u64>())
        .sum()
}

/// The reply: a fixed opening, then an echo of the last user message, cut at `max_tokens`.
fn reply_words(messages: &[Value], max_tokens: u64) -> (Vec<String>, &'static str) {
    let last_user =
        messages.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
    let echo =
        last_user.into_iter().flat_map(texts).flat_map(str::split_whitespace).take(MAX_ECHO_WORDS);
    let all: Vec<String> = OPENING.split_whitespace().chain(echo).map(str::to_string).collect();
    let limit = usize::try_from(max_tokens).unwrap_or(usize::MAX);
    if all.len() > limit {
        (all[..limit].to_vec(), "length")
    } else {
        (all, "stop")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_plus_one_per_message() {
        let messages = vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": [{"type": "text", "text": "hello  there world"}, {"type": "image_url", "image_url": {"url": "x"}}]}),
        ];
        assert_eq!(prompt_tokens(&messages), 2 + 1 + 3 + 1);
    }

    #[test]
    fn reply_echoes_and_respects_the_ceiling() {
        let messages = vec![json!({"role": "user", "content": "ping pong"})];
        let (words, finish) = reply_words(&messages, 100);
        assert_eq!(words.join(" "), format!("{OPENING} ping pong"));
        assert_eq!(finish, "stop");
        let (words, finish) = reply_words(&messages, 3);
        assert_eq!(words.len(), 3);
        assert_eq!(finish, "length");
    }
}
