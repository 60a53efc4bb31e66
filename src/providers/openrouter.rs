//! OpenRouter: OpenAI-compatible, so requests pass through (with the upstream's model id)
//! and replies come back nearly unchanged; the work is in classifying failures and in
//! reading the usage the ledger needs.

use std::time::Duration;

use serde_json::{Map, Value};

use super::http::{self, error_message, BODY_LIMIT};
use super::sse::SseEvent;
use super::{
    translated_stream, ChatCall, ChatReply, Embeddings, EmbeddingsCall, ResponsesCall, StreamItem,
    StreamTranslate, TokenUsage, UpstreamError,
};
use crate::config::HttpProvider;

const NAME: &str = "openrouter";

pub struct OpenRouter {
    client: awc::Client,
    url: String,
    embeddings_url: String,
    responses_url: String,
    api_key: String,
    timeout: Duration,
}

impl OpenRouter {
    pub fn new(settings: &HttpProvider, timeout: Duration) -> Self {
        Self {
            client: http::client(timeout),
            url: format!("{}/chat/completions", settings.base_url.trim_end_matches('/')),
            embeddings_url: format!("{}/embeddings", settings.base_url.trim_end_matches('/')),
            responses_url: format!("{}/responses", settings.base_url.trim_end_matches('/')),
            api_key: settings.api_key.expose().to_string(),
            timeout,
        }
    }

    /// POSTs to OpenRouter with our key; a failure comes back classified.
    async fn post(
        &self,
        url: &str,
        body: &Map<String, Value>,
    ) -> Result<http::Response, UpstreamError> {
        let request = self
            .client
            .post(url)
            .bearer_auth(&self.api_key)
            .insert_header(("X-Title", "Quantized"));
        http::post_json(request, body, NAME, classify_error).await
    }

    pub async fn chat(&self, call: &ChatCall<'_>) -> Result<ChatReply, UpstreamError> {
        let mut body = call.request.body.clone();
        body.insert("model".into(), Value::String(call.upstream_model.to_string()));
        let started = std::time::Instant::now();
        let mut res = self.post(&self.url, &body).await?;
        if call.request.stream {
            let translator = ChunkTranslator {
                model: call.request.model.clone(),
                done: false,
                saw_usage: false,
            };
            return Ok(ChatReply::Stream(translated_stream(
                http::sse_events(res, NAME),
                translator,
            )));
        }
        // `upstream_timeout_secs` bounds the whole call, head and body together.
        let left = self.timeout.saturating_sub(started.elapsed());
        let bytes = http::read_body(&mut res, BODY_LIMIT, left, NAME).await?;
        let (completion, usage) = parse_completion(&bytes, &call.request.model)?;
        Ok(ChatReply::Complete { completion, usage })
    }
}

impl OpenRouter {
    pub async fn embeddings(&self, call: &EmbeddingsCall<'_>) -> Result<Embeddings, UpstreamError> {
        let mut body = call.request.body.clone();
        body.insert("model".into(), Value::String(call.upstream_model.to_string()));
        // The gateway encodes base64 itself when asked; upstream always sends floats.
        body.insert("encoding_format".into(), Value::String("float".into()));
        let started = std::time::Instant::now();
        let mut res = self.post(&self.embeddings_url, &body).await?;
        let left = self.timeout.saturating_sub(started.elapsed());
        let bytes = http::read_body(&mut res, BODY_LIMIT, left, NAME).await?;
        parse_embeddings(&bytes, call.request.inputs.len())
    }
}

impl OpenRouter {
    pub async fn responses(&self, call: &ResponsesCall<'_>) -> Result<ChatReply, UpstreamError> {
        let mut body = call.request.body.clone();
        body.insert("model".into(), Value::String(call.upstream_model.to_string()));
        let started = std::time::Instant::now();
        let mut res = self.post(&self.responses_url, &body).await?;
        if call.request.stream {
            let translator = ResponsesTranslator { model: call.request.model.clone(), done: false };
            return Ok(ChatReply::Stream(translated_stream(
                http::sse_events(res, NAME),
                translator,
            )));
        }
        let left = self.timeout.saturating_sub(started.elapsed());
        let bytes = http::read_body(&mut res, BODY_LIMIT, left, NAME).await?;
        let (response, usage) = parse_response(&bytes, &call.request.model)?;
        Ok(ChatReply::Complete { completion: response, usage })
    }
}

fn responses_usage_of(value: &Value) -> Option<TokenUsage> {
    Some(TokenUsage {
        prompt_tokens: value.get("input_tokens")?.as_u64()?,
        completion_tokens: value.get("output_tokens")?.as_u64()?,
    })
}

/// A Responses API `response` object: checked, its usage read, its model set to ours.
pub fn parse_response(
    bytes: &[u8],
    model: &str,
) -> Result<(Map<String, Value>, TokenUsage), UpstreamError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| malformed(&format!("not JSON ({e})")))?;
    let Value::Object(mut response) = value else { return Err(malformed("not an object")) };
    if response.get("object").and_then(Value::as_str) != Some("response") {
        return Err(malformed("not a response object"));
    }
    if response.get("status").and_then(Value::as_str) == Some("failed") {
        return Err(UpstreamError::Unavailable(format!(
            "{NAME}: response failed: {:?}",
            response.get("error")
        )));
    }
    let usage =
        response.get("usage").and_then(responses_usage_of).ok_or_else(|| malformed("no usage"))?;
    tidy(&mut response, model);
    Ok((response, usage))
}

/// OpenRouter's Responses events pass through; the terminal one (which carries usage) is
/// held back by the relay until our credits can be added to it.
struct ResponsesTranslator {
    model: String,
    done: bool,
}

impl StreamTranslate for ResponsesTranslator {
    fn on_event(&mut self, event: &SseEvent) -> Result<Vec<StreamItem>, UpstreamError> {
        if event.data.trim() == "[DONE]" {
            self.done = true;
            return Ok(Vec::new());
        }
        let value: Value = serde_json::from_str(&event.data)
            .map_err(|e| malformed(&format!("stream event not JSON ({e})")))?;
        let Value::Object(mut data) = value else {
            return Err(malformed("stream event not an object"));
        };
        let kind = data.get("type").and_then(Value::as_str).unwrap_or("").to_string();
        if let Some(Value::Object(response)) = data.get_mut("response") {
            tidy(response, &self.model);
        }
        match kind.as_str() {
            "error" | "response.failed" => Err(UpstreamError::Unavailable(format!(
                "{NAME}: {kind} event in stream: {:?}",
                data.get("error")
            ))),
            // Older OpenRouter pages name the terminal event `response.done`.
            "response.completed" | "response.incomplete" | "response.done" => {
                self.done = true;
                let usage = data
                    .get("response")
                    .and_then(|r| r.get("usage"))
                    .and_then(responses_usage_of)
                    .ok_or_else(|| malformed("terminal event without usage"))?;
                Ok(vec![StreamItem::Usage(usage), StreamItem::Final(data)])
            }
            _ => {
                let output = kind.ends_with(".delta")
                    && data.get("delta").and_then(Value::as_str).is_some_and(|d| !d.is_empty());
                Ok(vec![StreamItem::Chunk { chunk: data, completion_tokens: u64::from(output) }])
            }
        }
    }

    fn finished(&self) -> bool {
        self.done
    }
}

/// Upstream vectors in input order (by their `index`), checked to be one per input.
pub fn parse_embeddings(bytes: &[u8], inputs: usize) -> Result<Embeddings, UpstreamError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| malformed(&format!("not JSON ({e})")))?;
    let data = value.get("data").and_then(Value::as_array).ok_or_else(|| malformed("no data"))?;
    let prompt_tokens = value
        .pointer("/usage/prompt_tokens")
        .and_then(Value::as_u64)
        .ok_or_else(|| malformed("no usage"))?;
    let mut vectors: Vec<Option<Vec<f64>>> = vec![None; inputs];
    for (position, item) in data.iter().enumerate() {
        let index = item.get("index").and_then(Value::as_u64).map_or(position, |i| i as usize);
        let vector: Option<Vec<f64>> = item
            .get("embedding")
            .and_then(Value::as_array)
            .and_then(|v| v.iter().map(Value::as_f64).collect());
        let slot =
            vectors.get_mut(index).ok_or_else(|| malformed("embedding index out of range"))?;
        *slot = Some(vector.ok_or_else(|| malformed("embedding is not a list of numbers"))?);
    }
    let vectors = vectors
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| malformed("missing embeddings"))?;
    Ok(Embeddings { vectors, prompt_tokens })
}

fn malformed(what: &str) -> UpstreamError {
    UpstreamError::Unavailable(format!("{NAME}: malformed response: {what}"))
}

fn usage_of(value: &Value) -> Option<TokenUsage> {
    Some(TokenUsage {
        prompt_tokens: value.get("prompt_tokens")?.as_u64()?,
        completion_tokens: value.get("completion_tokens")?.as_u64()?,
    })
}

/// Removes what is OpenRouter's business rather than the client's (which provider served,
/// what it cost us) and reports our model id.
fn tidy(object: &mut Map<String, Value>, model: &str) {
    object.remove("provider");
    object.insert("model".into(), Value::String(model.to_string()));
}

pub fn parse_completion(
    bytes: &[u8],
    model: &str,
) -> Result<(Map<String, Value>, TokenUsage), UpstreamError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| malformed(&format!("not JSON ({e})")))?;
    let Value::Object(mut completion) = value else { return Err(malformed("not an object")) };
    let choices = completion
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no choices"))?;
    // A 200 whose choice failed (OpenRouter §1.3): an upstream failure after all.
    if let Some(err) =
        completion.get("error").or_else(|| choices.iter().find_map(|c| c.get("error")))
    {
        return Err(UpstreamError::Unavailable(format!("{NAME}: error inside a 200 reply: {err}")));
    }
    let usage = completion.get("usage").and_then(usage_of).ok_or_else(|| malformed("no usage"))?;
    if let Some(Value::Object(theirs)) = completion.get_mut("usage") {
        theirs.retain(|k, _| {
            matches!(k.as_str(), "prompt_tokens_details" | "completion_tokens_details")
        });
    }
    tidy(&mut completion, model);
    Ok((completion, usage))
}

pub fn classify_error(status: u16, body: &[u8]) -> UpstreamError {
    let message = error_message(body).unwrap_or_default();
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let availability =
        value.pointer("/error/availability/code").and_then(Value::as_str).unwrap_or("");
    let no_such_model =
        matches!(availability, "model_not_found" | "no_endpoints" | "model_deprecated")
            || message.to_ascii_lowercase().contains("not a valid model");
    match status {
        404 => UpstreamError::ModelNotFound,
        400 if no_such_model => UpstreamError::ModelNotFound,
        400 | 413 | 422 if message.is_empty() => {
            UpstreamError::BadRequest("The provider rejected the request".into())
        }
        400 | 413 | 422 => {
            UpstreamError::BadRequest(format!("The provider rejected the request: {message}"))
        }
        _ => UpstreamError::Unavailable(format!("{NAME} answered {status}: {message}")),
    }
}

/// OpenRouter's chunks are already `chat.completion.chunk`s; the usage chunk becomes a
/// `Usage` item (the gateway sends its own usage chunk with the credits).
struct ChunkTranslator {
    model: String,
    done: bool,
    saw_usage: bool,
}

impl StreamTranslate for ChunkTranslator {
    fn on_event(&mut self, event: &SseEvent) -> Result<Vec<StreamItem>, UpstreamError> {
        if event.data.trim() == "[DONE]" {
            self.done = true;
            return Ok(Vec::new());
        }
        let value: Value = serde_json::from_str(&event.data)
            .map_err(|e| malformed(&format!("stream event not JSON ({e})")))?;
        let Value::Object(mut chunk) = value else {
            return Err(malformed("stream event not an object"));
        };
        if let Some(err) = chunk.get("error") {
            return Err(UpstreamError::Unavailable(format!(
                "{NAME}: error event in stream: {err}"
            )));
        }
        let mut items = Vec::new();
        if let Some(usage) = chunk.remove("usage").filter(Value::is_object) {
            items.push(StreamItem::Usage(
                usage_of(&usage).ok_or_else(|| malformed("usage without counts"))?,
            ));
            self.saw_usage = true;
        }
        let has_choices =
            chunk.get("choices").and_then(Value::as_array).is_some_and(|c| !c.is_empty());
        if has_choices {
            let delta = chunk.get("choices").and_then(|c| c.pointer("/0/delta"));
            let carries_output = delta.is_some_and(|d| {
                d.get("content").and_then(Value::as_str).is_some_and(|t| !t.is_empty())
                    || d.get("tool_calls").is_some()
            });
            tidy(&mut chunk, &self.model);
            items.insert(
                0,
                StreamItem::Chunk { chunk, completion_tokens: u64::from(carries_output) },
            );
        }
        Ok(items)
    }

    /// A stream is whole once it said `[DONE]` or delivered its usage.
    fn finished(&self) -> bool {
        self.done || self.saw_usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_failures() {
        assert!(matches!(classify_error(404, b""), UpstreamError::ModelNotFound));
        let not_found =
            br#"{"error":{"code":400,"message":"x","availability":{"code":"model_not_found"}}}"#;
        assert!(matches!(classify_error(400, not_found), UpstreamError::ModelNotFound));
        let bad = br#"{"error":{"code":400,"message":"max_tokens too large"}}"#;
        assert!(
            matches!(classify_error(400, bad), UpstreamError::BadRequest(m) if m.ends_with("max_tokens too large"))
        );
        for status in [401, 402, 403, 408, 429, 500, 502, 503] {
            assert!(
                matches!(classify_error(status, b"{}"), UpstreamError::Unavailable(_)),
                "{status}"
            );
        }
    }

    #[test]
    fn completion_keeps_token_details_but_not_costs() {
        let body = br#"{"id":"gen-1","object":"chat.completion","model":"openai/x","provider":"OpenAI",
            "choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":10,"completion_tokens":4,"total_tokens":14,"cost":0.1,
                     "prompt_tokens_details":{"cached_tokens":2}}}"#;
        let (completion, usage) = parse_completion(body, "openai/x").unwrap();
        assert_eq!(usage, TokenUsage { prompt_tokens: 10, completion_tokens: 4 });
        assert!(!completion.contains_key("provider"));
        assert_eq!(
            completion["usage"],
            serde_json::json!({"prompt_tokens_details": {"cached_tokens": 2}})
        );
    }

    #[test]
    fn an_error_inside_a_200_is_a_failure() {
        let body = br#"{"choices":[{"message":{"content":""},"finish_reason":"error","error":{"code":502,"message":"x"}}],"usage":{"cost":0}}"#;
        assert!(matches!(parse_completion(body, "m"), Err(UpstreamError::Unavailable(_))));
        assert!(matches!(
            parse_completion(b"{\"choices\":[", "m"),
            Err(UpstreamError::Unavailable(_))
        ));
        assert!(matches!(
            parse_completion(b"{\"foo\":1}", "m"),
            Err(UpstreamError::Unavailable(_))
        ));
    }

    #[test]
    fn stream_events_become_chunks_and_usage() {
        let mut t = ChunkTranslator { model: "m".into(), done: false, saw_usage: false };
        let ev = |data: &str| SseEvent { event: None, data: data.into() };
        let items = t.on_event(&ev(r#"{"id":"g","object":"chat.completion.chunk","provider":"P","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#)).unwrap();
        assert!(
            matches!(&items[..], [StreamItem::Chunk { completion_tokens: 1, chunk }] if !chunk.contains_key("provider") && chunk["model"] == "m")
        );
        let items = t
            .on_event(&ev(
                r#"{"id":"g","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
            ))
            .unwrap();
        assert!(matches!(
            &items[..],
            [StreamItem::Usage(TokenUsage { prompt_tokens: 3, completion_tokens: 1 })]
        ));
        assert!(t.finished());
        assert!(t.on_event(&ev("[DONE]")).unwrap().is_empty());
        assert!(t.on_event(&ev(r#"{"error":{"code":429,"message":"x"},"choices":[]}"#)).is_err());
        assert!(t.on_event(&ev("{not json")).is_err());
    }
}
