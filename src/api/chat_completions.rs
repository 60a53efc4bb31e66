use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::stream::{self, StreamExt};
use serde_json::Value;

use crate::api::{forced_provider, read_json, streaming};
use crate::app::AppState;
use crate::auth::Caller;
use crate::catalog::{Model, ModelKind};
use crate::error::ApiError;
use crate::ledger::Reserve;
use crate::metering::{usage_json, usage_record, Meter};
use crate::providers::breaker::Outcome;
use crate::providers::{
    ChatCall, ChatReply, ChunkStream, Providers, StreamItem, UpstreamError, CHAT_PROVIDERS,
};
use crate::routing;
use crate::telemetry::{add_upstream_wait, label_request, RequestId};
use crate::validation::chat::{chat_request, InputModalities};

/// Used as the output ceiling when neither the request nor the catalog gives one.
const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;

/// POST /v1/chat/completions
pub async fn chat_completions(
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    providers: web::Data<Providers>,
) -> Result<HttpResponse, ApiError> {
    let forced = forced_provider(&req, CHAT_PROVIDERS)?;
    let (body, body_len) = read_json(&req, payload, state.settings.limits.max_body_bytes).await?;
    let mut request = chat_request(body).map_err(ApiError::BadRequest)?;

    let catalog = state.catalog.snapshot();
    let model = catalog
        .resolve(&request.model, forced)
        .ok_or_else(|| ApiError::model_not_found(&request.model))?;
    if model.kind != ModelKind::Chat {
        return Err(ApiError::BadRequest(format!(
            "Model '{}' is an embedding model, not a chat model",
            model.id
        )));
    }
    check_modalities(model, request.uses)?;
    if forced.is_some_and(|f| !model.served_by(f)) {
        return Err(ApiError::model_not_found(&request.model));
    }
    let ceiling = output_ceiling(request.max_tokens, model.max_output_tokens);
    let reserve = Reserve {
        license_id: caller.license_id.clone(),
        prices: catalog.prices_for(&caller.license_type_id, model),
        prompt_tokens: estimate_prompt_tokens(body_len, model.context_window),
        max_output_tokens: ceiling,
    };
    let request_id = RequestId::of(&req);
    let record =
        usage_record(request_id.clone(), &caller, "chat.completions", &model.id, request.stream);
    let mut meter = Meter::reserve(&state.ledger, reserve, record).await?;
    let granted = meter.max_output_tokens();
    if granted < ceiling || request.max_tokens.is_some_and(|asked| u64::from(asked) > granted) {
        limit_output(&mut request.body, granted);
    }

    let idle = Duration::from_secs(state.settings.limits.stream_idle_timeout_secs.max(1));
    let started = Instant::now();
    let served =
        routing::first_success(model, forced, &providers, &request_id, async |provider, route| {
            let call = ChatCall {
                upstream_model: &route.upstream_model,
                request: &request,
                max_output_tokens: granted,
            };
            match provider.chat(&call).await? {
                ChatReply::Stream(chunks) => {
                    Ok(ChatReply::Stream(first_chunk_arrived(chunks, idle).await?))
                }
                complete => Ok(complete),
            }
        })
        .await;
    add_upstream_wait(&req, started.elapsed());
    let served = served?;
    meter.set_provider(served.provider);
    label_request(&req, &model.id, Some(served.provider));
    match served.value {
        ChatReply::Complete { mut completion, usage } => {
            served.permit.report(Outcome::Success);
            let settled = meter.settle(usage, "completed").await?;
            let mut usage_value = usage_json(usage, settled);
            // Keep the upstream's token details (cached tokens and the like).
            if let (Some(Value::Object(theirs)), Value::Object(ours)) =
                (completion.remove("usage"), &mut usage_value)
            {
                for (k, v) in theirs {
                    ours.entry(k).or_insert(v);
                }
            }
            completion.insert("usage".into(), usage_value);
            Ok(HttpResponse::Ok().json(completion))
        }
        ChatReply::Stream(chunks) => Ok(streaming::relay(chunks, meter, idle, served.permit)),
    }
}

/// Most items held back while waiting for a stream's first content.
const MAX_HELD_ITEMS: usize = 64;

/// Waits until a stream has produced real output (text, a tool call or a finish reason),
/// holding back what comes before it (the role chunk, early usage). Until then nothing has
/// reached the client, so an upstream that fails can still fall over to the next route.
async fn first_chunk_arrived(
    mut chunks: ChunkStream,
    idle: Duration,
) -> Result<ChunkStream, UpstreamError> {
    let mut held = Vec::new();
    loop {
        let item = match actix_web::rt::time::timeout(idle, chunks.next()).await {
            Ok(Some(item)) => item?,
            Ok(None) => {
                return Err(UpstreamError::Unavailable(
                    "stream ended before its first output".into(),
                ))
            }
            Err(_) => {
                return Err(UpstreamError::Unavailable(format!("no stream output within {idle:?}")))
            }
        };
        let is_output = match &item {
            StreamItem::Chunk { chunk, completion_tokens } => {
                *completion_tokens > 0 || has_finish_reason(chunk)
            }
            StreamItem::Usage(_) => false,
        };
        held.push(Ok(item));
        if is_output || held.len() >= MAX_HELD_ITEMS {
            return Ok(stream::iter(held).chain(chunks).boxed_local());
        }
    }
}

fn has_finish_reason(chunk: &serde_json::Map<String, Value>) -> bool {
    chunk.get("choices").and_then(Value::as_array).is_some_and(|choices| {
        choices.iter().any(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()))
    })
}

/// Design §0: a content part the model cannot take is refused before any upstream call.
fn check_modalities(model: &Model, uses: InputModalities) -> Result<(), ApiError> {
    let supported = model.input_modality;
    for (used, ok, name) in [
        (uses.image, supported.image, "image"),
        (uses.audio, supported.audio, "audio"),
        (uses.video, supported.video, "video"),
    ] {
        if used && !ok {
            return Err(ApiError::BadRequest(format!(
                "Model '{}' does not support {name} input",
                model.id
            )));
        }
    }
    Ok(())
}

/// The most output the request may produce: what it asked for, within the model's limit.
fn output_ceiling(asked: Option<u32>, model_max: Option<i64>) -> u64 {
    let model_max = model_max.and_then(|m| u64::try_from(m).ok());
    match (asked.map(u64::from), model_max) {
        (Some(a), Some(m)) => a.min(m),
        (Some(a), None) => a,
        (None, Some(m)) => m,
        (None, None) => DEFAULT_MAX_OUTPUT_TOKENS,
    }
}

/// An estimate of the prompt that errs high: real tokenizers need at least two bytes of
/// JSON per token, and a prompt cannot exceed the model's context window.
pub fn estimate_prompt_tokens(body_len: usize, context_window: Option<i64>) -> u64 {
    let estimate = (body_len as u64).div_ceil(2);
    context_window.and_then(|c| u64::try_from(c).ok()).map_or(estimate, |c| estimate.min(c))
}

/// Asks upstream for no more output than the hold pays for, in the field(s) the client used.
fn limit_output(body: &mut serde_json::Map<String, Value>, tokens: u64) {
    let mut set = false;
    for field in ["max_completion_tokens", "max_tokens"] {
        if body.get(field).is_some_and(|v| !v.is_null()) {
            body.insert(field.into(), tokens.into());
            set = true;
        }
    }
    if !set {
        body.insert("max_tokens".into(), tokens.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_takes_the_smaller_of_request_and_model() {
        assert_eq!(output_ceiling(Some(100), Some(50)), 50);
        assert_eq!(output_ceiling(Some(10), Some(50)), 10);
        assert_eq!(output_ceiling(None, Some(50)), 50);
        assert_eq!(output_ceiling(None, None), DEFAULT_MAX_OUTPUT_TOKENS);
    }

    #[test]
    fn prompt_estimate_is_capped_by_the_context_window() {
        assert_eq!(estimate_prompt_tokens(101, None), 51);
        assert_eq!(estimate_prompt_tokens(1_000_000, Some(1000)), 1000);
    }

    #[test]
    fn limit_output_uses_the_clients_field() {
        let mut body = serde_json::Map::new();
        body.insert("max_completion_tokens".into(), 500.into());
        limit_output(&mut body, 20);
        assert_eq!(body["max_completion_tokens"], 20);
        assert!(!body.contains_key("max_tokens"));
        let mut body = serde_json::Map::new();
        limit_output(&mut body, 20);
        assert_eq!(body["max_tokens"], 20);
    }
}
