//! HTTP only: routing, body reading and the handlers. Handlers stay thin: they parse, ask
//! the actors and the store, and shape the answer.

pub mod admin;
pub mod chat_completions;
pub mod embeddings;
pub mod health;
pub mod license;
pub mod metered;
pub mod metrics;
pub mod models;
pub mod responses;
pub mod search;
pub mod streaming;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::Value;

use crate::error::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/metrics", "GET").route(web::get().to(metrics::metrics)))
        .service(
            resource("/health", "GET, HEAD")
                .route(web::get().to(health::health))
                .route(web::head().to(health::health)),
        )
        .service(
            web::scope("/v1")
                .service(
                    resource("/models", "GET, HEAD")
                        .route(web::get().to(models::list_models))
                        .route(web::head().to(models::list_models)),
                )
                .service(
                    resource("/license", "GET, HEAD")
                        .route(web::get().to(license::get_license))
                        .route(web::head().to(license::get_license)),
                )
                .service(
                    resource("/chat/completions", "POST")
                        .route(web::post().to(chat_completions::chat_completions)),
                )
                .service(
                    resource("/embeddings", "POST").route(web::post().to(embeddings::embeddings)),
                )
                .service(resource("/responses", "POST").route(web::post().to(responses::responses)))
                .service(resource("/web-search", "POST").route(web::post().to(search::web_search)))
                .service(resource("/fetch", "POST").route(web::post().to(search::fetch))),
        )
        .service(web::scope("/admin/v1").configure(admin::configure))
        .app_data(web::QueryConfig::default().error_handler(|err, _| {
            let message = match err {
                actix_web::error::QueryPayloadError::Deserialize(e) => {
                    crate::json_body::translate(".".into(), e.to_string())
                }
                other => format!("invalid query string: {other}"),
            };
            ApiError::BadRequest(message).into()
        }))
        .app_data(
            web::PathConfig::default().error_handler(|err, _| {
                ApiError::BadRequest(format!("invalid path: {err}")).into()
            }),
        );
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!("No route for {} {}", req.method(), req.path())))
}

/// A resource whose other methods get 405 with an `Allow` header listing `allow`.
pub fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        Err::<HttpResponse, _>(ApiError::MethodNotAllowed(allow))
    }))
}

/// How long a request body may take to arrive once its head has.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads a JSON request body: the content type must be JSON, the size within the limit
/// (checked against `Content-Length` first, then while reading), and the bytes valid JSON.
/// Returns the value and the body's size in bytes.
pub async fn read_json(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<(Value, usize), ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::bad_request("Content-Type must be application/json"));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let read = async {
        let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request(format!("could not read the request body: {e}"))
            })?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    // The HTTP layer bounds how long the head may take, not the body: a client that stalls
    // mid-body would hold its connection (and a worker's attention) for ever.
    let body = actix_web::rt::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| ApiError::BodyTimeout)??;
    if body.is_empty() {
        return Err(ApiError::bad_request("request body is empty: expected a JSON object"));
    }
    let value = crate::strict_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    Ok((value, body.len()))
}

/// The `X-Quantized-Provider` header, checked against the providers this endpoint has.
pub fn forced_provider(
    req: &HttpRequest,
    serving: &[&'static str],
) -> Result<Option<&'static str>, ApiError> {
    let Some(value) = req.headers().get("x-quantized-provider") else { return Ok(None) };
    let name = String::from_utf8_lossy(value.as_bytes());
    let name = name.trim();
    let Some(known) = crate::providers::KNOWN_PROVIDERS.iter().find(|p| **p == name) else {
        return Err(ApiError::BadRequest(format!("Unknown provider '{name}'")));
    };
    if !serving.contains(known) {
        return Err(ApiError::BadRequest(format!(
            "Provider '{name}' does not support this endpoint"
        )));
    }
    Ok(Some(known))
}
