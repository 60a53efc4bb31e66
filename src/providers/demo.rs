//! The built-in offline provider: deterministic replies, token counts and streaming, for the
//! demo, the tests and benchmarks of the gateway's own overhead.
//!
//! Token counting is defined, not estimated: a prompt costs one token per
//! whitespace-separated word of text in the messages plus one per message; a reply costs one
//! token per word it contains.

use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::{ChatCall, ChatReply, Embeddings, EmbeddingsCall, StreamItem, TokenUsage};
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
        let delay = self.token_delay;
        ChatReply::Stream(
            stream::iter(items)
                .then(move |item| async move {
                    if !delay.is_zero()
                        && matches!(item, StreamItem::Chunk { completion_tokens: 1, .. })
                    {
                        actix_web::rt::time::sleep(delay).await;
                    }
                    Ok(item)
                })
                .boxed_local(),
        )
    }
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
