use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::api::forced_provider;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::providers::CHAT_PROVIDERS;

/// GET /v1/models: the catalog with the caller's prices. A bare array as documented; the
/// official OpenAI SDKs (which send `X-Stainless-Lang`) get the `{"object":"list"}`
/// envelope their `models.list()` expects (design §0).
pub async fn list_models(
    caller: Caller,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let provider = forced_provider(&req, CHAT_PROVIDERS)?;
    let openai_sdk = req.headers().contains_key("x-stainless-lang");
    let catalog = state.catalog.snapshot();
    let models: Vec<Value> = catalog
        .models()
        .filter(|m| provider.is_none_or(|p| m.served_by(p)))
        .map(|m| m.public_json(catalog.prices_for(&caller.license_type_id, m), openai_sdk))
        .collect();
    let body =
        if openai_sdk { json!({ "object": "list", "data": models }) } else { Value::Array(models) };
    Ok(HttpResponse::Ok().json(body))
}
