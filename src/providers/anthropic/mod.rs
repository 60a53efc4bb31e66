//! Anthropic's Messages API. `translate` maps OpenAI chat requests and replies to and from
//! it (pure functions); this file only makes the HTTP calls.

pub mod translate;

use std::time::Duration;

use serde_json::Value;

use super::http::{self, BODY_LIMIT};
use super::sse::SseEvent;
use super::{translated_stream, ChatCall, ChatReply, StreamItem, StreamTranslate, UpstreamError};
use crate::config::HttpProvider;

const NAME: &str = "anthropic";
/// The API version this translation was written against.
const API_VERSION: &str = "2023-06-01";

pub struct Anthropic {
    client: awc::Client,
    url: String,
    api_key: String,
    timeout: Duration,
}

impl Anthropic {
    pub fn new(settings: &HttpProvider, timeout: Duration) -> Self {
        Self {
            client: http::client(timeout),
            url: format!("{}/messages", settings.base_url.trim_end_matches('/')),
            api_key: settings.api_key.expose().to_string(),
            timeout,
        }
    }

    pub async fn chat(&self, call: &ChatCall<'_>) -> Result<ChatReply, UpstreamError> {
        let body = translate::to_messages_request(
            &call.request.body,
            call.upstream_model,
            call.max_output_tokens,
            call.request.stream,
        )?;
        let started = std::time::Instant::now();
        let request = self
            .client
            .post(&self.url)
            .insert_header(("x-api-key", self.api_key.as_str()))
            .insert_header(("anthropic-version", API_VERSION));
        let mut res = http::post_json(request, &body, NAME, translate::classify_error).await?;
        if call.request.stream {
            let translator = translate::StreamTranslator::new(&call.request.model);
            return Ok(ChatReply::Stream(translated_stream(
                http::sse_events(res, NAME),
                translator,
            )));
        }
        // `upstream_timeout_secs` bounds the whole call, head and body together.
        let left = self.timeout.saturating_sub(started.elapsed());
        let bytes = http::read_body(&mut res, BODY_LIMIT, left, NAME).await?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| UpstreamError::Unavailable(format!("{NAME}: malformed response: {e}")))?;
        let (completion, usage) = translate::from_messages_response(&value, &call.request.model)?;
        Ok(ChatReply::Complete { completion, usage })
    }
}

impl StreamTranslate for translate::StreamTranslator {
    fn on_event(&mut self, event: &SseEvent) -> Result<Vec<StreamItem>, UpstreamError> {
        translate::StreamTranslator::on_event(self, event)
    }

    fn finished(&self) -> bool {
        translate::StreamTranslator::finished(self)
    }
}
