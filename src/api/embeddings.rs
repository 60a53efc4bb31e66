use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde_json::{json, Value};

use crate::api::metered::{self, Ask, Metered};
use crate::api::{forced_provider, read_json};
use crate::app::AppState;
use crate::auth::Caller;
use crate::catalog::ModelKind;
use crate::error::ApiError;
use crate::providers::breaker::Outcome;
use crate::providers::{EmbeddingsCall, Providers, TokenUsage, EMBEDDING_PROVIDERS};
use crate::routing;
use crate::telemetry::{add_upstream_wait, label_request};
use crate::validation::chat::InputModalities;
use crate::validation::embeddings::{embeddings_request, Encoding};

/// POST /v1/embeddings: billed on input tokens only.
pub async fn embeddings(
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    providers: web::Data<Providers>,
) -> Result<HttpResponse, ApiError> {
    let forced = forced_provider(&req, EMBEDDING_PROVIDERS)?;
    let (body, body_len) = read_json(&req, payload, state.settings.limits.max_body_bytes).await?;
    let request = embeddings_request(body).map_err(ApiError::BadRequest)?;

    let ask = Ask {
        model: &request.model,
        kind: ModelKind::Embedding,
        forced,
        uses: InputModalities::default(),
        max_output_tokens: None,
        produces_output: false,
        body_len,
        endpoint: "embeddings",
        stream: false,
    };
    let Metered { model, mut meter, request_id, .. } =
        metered::reserve(&req, &caller, &state, ask).await?;

    let started = Instant::now();
    let served =
        routing::first_success(&model, forced, &providers, &request_id, async |provider, route| {
            provider
                .embeddings(&EmbeddingsCall {
                    upstream_model: &route.upstream_model,
                    request: &request,
                })
                .await
        })
        .await;
    add_upstream_wait(&req, started.elapsed());
    let served = served?;
    served.permit.report(Outcome::Success);
    meter.set_provider(served.provider);
    label_request(&req, &model.id, Some(served.provider));

    let embeddings = served.value;
    let usage = TokenUsage { prompt_tokens: embeddings.prompt_tokens, completion_tokens: 0 };
    let settled = meter.settle(usage, "completed").await?;
    let data: Vec<Value> = embeddings
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = match request.encoding {
                Encoding::Float => json!(vector),
                Encoding::Base64 => json!(base64_f32(&vector)),
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "total_tokens": usage.prompt_tokens,
            "credits_used": settled.credits_used,
            "credits_remaining": settled.credits_remaining,
        },
    })))
}

/// OpenAI's base64 encoding: the vector as little-endian f32s.
fn base64_f32(vector: &[f64]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
    }
}
