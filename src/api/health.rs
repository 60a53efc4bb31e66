use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::app::AppState;
use crate::error::ApiError;
use crate::store;

/// GET /health, no auth: 200 while the database answers, masked 503 otherwise.
pub async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let pool = state.pool.clone();
    web::block(move || -> anyhow::Result<()> {
        store::get(&pool)?.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    })
    .await
    .map_err(|e| ApiError::Unavailable(e.into()))?
    .map_err(ApiError::Unavailable)?;
    Ok(HttpResponse::Ok().json(json!({ "status": "ok" })))
}
