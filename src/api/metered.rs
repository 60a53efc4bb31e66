//! The front half every metered endpoint shares: find the model, check it can take the
//! request, and hold the credits it may cost ([`reserve`]); or, for the fixed-price tools
//! (web search, fetch), hold their price per unit ([`reserve_units`]). What differs per
//! endpoint (body shapes, the upstream call, the usage object) stays in its handler.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse};
use serde_json::Value;

use crate::api::streaming::{self, Protocol};
use crate::catalog::Route;
use crate::ledger::Settled;
use crate::providers::breaker::Outcome;
use crate::providers::{ChatReply, Provider, Providers, TokenUsage, UpstreamError};
use crate::routing;
use crate::telemetry::{add_upstream_wait, label_request};

use crate::app::AppState;
use crate::auth::Caller;
use crate::catalog::{Model, ModelKind};
use crate::error::ApiError;
use crate::ledger::Reserve;
use crate::metering::{usage_record, Meter};
use crate::telemetry::RequestId;
use crate::validation::chat::InputModalities;

/// Used as the output ceiling when neither the request nor the catalog gives one.
const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;

/// What a request asks of a model.
pub struct Ask<'a> {
    pub model: &'a str,
    pub kind: ModelKind,
    pub forced: Option<&'static str>,
    pub uses: InputModalities,
    /// The client's output limit; `None` = the model's own.
    pub max_output_tokens: Option<u32>,
    /// Embeddings produce no output tokens.
    pub produces_output: bool,
    pub body_len: usize,
    pub endpoint: &'static str,
    pub stream: bool,
}

pub struct Metered {
    pub model: Arc<Model>,
    pub meter: Meter,
    pub request_id: String,
    /// The output ceiling before the balance was considered.
    pub ceiling: u64,
    /// The provider `X-Quantized-Provider` forces, if any.
    pub forced: Option<&'static str>,
}

impl Metered {
    /// The output the hold pays for (the ceiling, or less when the balance is short).
    pub fn granted(&self) -> u64 {
        self.meter.max_output_tokens()
    }
}

/// The back half chat completions and responses share: route the call (falling over until
/// the first real output), then answer. A complete reply is settled and gets the usage object
/// `usage_of` makes from the upstream's usage and the settlement; a stream is relayed in
/// `protocol`, which settles at its end.
pub async fn generate(
    req: &HttpRequest,
    state: &AppState,
    providers: &Providers,
    metered: Metered,
    protocol: Protocol,
    mut call: impl AsyncFnMut(&Provider, &Route) -> Result<ChatReply, UpstreamError>,
    usage_of: impl FnOnce(Option<Value>, TokenUsage, Settled) -> Value,
) -> Result<HttpResponse, ApiError> {
    let Metered { model, mut meter, request_id, forced, .. } = metered;
    let idle = Duration::from_secs(state.settings.limits.stream_idle_timeout_secs.max(1));
    let started = Instant::now();
    let served =
        routing::first_success(&model, forced, providers, &request_id, async |provider, route| {
            match call(provider, route).await? {
                ChatReply::Stream(chunks) => {
                    Ok(ChatReply::Stream(streaming::first_output(chunks, idle).await?))
                }
                complete => Ok(complete),
            }
        })
        .await;
    add_upstream_wait(req, started.elapsed());
    let served = served?;
    meter.set_provider(served.provider);
    label_request(req, &model.id, Some(served.provider));
    match served.value {
        ChatReply::Complete { mut completion, usage } => {
            served.permit.report(Outcome::Success);
            let settled = meter.settle(usage, "completed").await?;
            let theirs = completion.remove("usage");
            completion.insert("usage".into(), usage_of(theirs, usage, settled));
            Ok(HttpResponse::Ok().json(completion))
        }
        ChatReply::Stream(chunks) => {
            Ok(streaming::relay(chunks, meter, idle, served.permit, protocol))
        }
    }
}

/// Resolves the model (404), checks its kind and input modalities (400) and the forced
/// provider (404), then reserves the worst-case cost (402).
pub async fn reserve(
    req: &HttpRequest,
    caller: &Caller,
    state: &AppState,
    ask: Ask<'_>,
) -> Result<Metered, ApiError> {
    let catalog = state.catalog.snapshot();
    let model = catalog
        .resolve(ask.model, ask.forced)
        .ok_or_else(|| ApiError::model_not_found(ask.model))?
        .clone();
    if model.kind != ask.kind {
        let (is, wanted) = match model.kind {
            ModelKind::Chat => ("a chat model", "an embedding model"),
            ModelKind::Embedding => ("an embedding model", "a chat model"),
        };
        return Err(ApiError::BadRequest(format!("Model '{}' is {is}, not {wanted}", model.id)));
    }
    check_modalities(&model, ask.uses)?;
    if ask.forced.is_some_and(|f| !model.served_by(f)) {
        return Err(ApiError::model_not_found(ask.model));
    }
    let ceiling = if ask.produces_output {
        output_ceiling(ask.max_output_tokens, model.max_output_tokens)
    } else {
        0
    };
    let reserve = Reserve {
        license_id: caller.license_id.clone(),
        prices: catalog.prices_for(&caller.license_type_id, &model),
        prompt_tokens: estimate_prompt_tokens(ask.body_len, model.context_window),
        max_output_tokens: ceiling,
    };
    let request_id = RequestId::of(req);
    let record = usage_record(request_id.clone(), caller, ask.endpoint, &model.id, ask.stream);
    let meter = Meter::reserve(&state.ledger, reserve, record).await?;
    Ok(Metered { model, meter, request_id, ceiling, forced: ask.forced })
}

/// Holds `units` of the fixed-price `tool` (`web-search` per call, `fetch` per URL) at the
/// price of the caller's license type (402 when the balance cannot cover them all). The usage
/// row is the tool's, with no model; its `prompt_tokens` will count the units billed.
pub async fn reserve_units(
    req: &HttpRequest,
    caller: &Caller,
    state: &AppState,
    tool: &'static str,
    units: u64,
) -> Result<Meter, ApiError> {
    let price = state.catalog.snapshot().tool_price(&caller.license_type_id, tool);
    let reserve = Reserve::units(caller.license_id.clone(), price, units).ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!("price of {tool} out of range: {price} µcr"))
    })?;
    let record = usage_record(RequestId::of(req), caller, tool, "", false);
    Meter::reserve(&state.ledger, reserve, record).await
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
fn estimate_prompt_tokens(body_len: usize, context_window: Option<i64>) -> u64 {
    let estimate = (body_len as u64).div_ceil(2);
    context_window.and_then(|c| u64::try_from(c).ok()).map_or(estimate, |c| estimate.min(c))
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
}
