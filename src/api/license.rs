use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

/// GET /v1/license: the caller's license and live balance. Free.
pub async fn get_license(
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let balance = state.balance(&caller.license_id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "institution_id": caller.institution_id,
        "license_type_id": caller.license_type_id,
        "license_id": caller.license_id,
        "unique_id": caller.unique_id,
        "user_id": caller.user_id,
        "used_micro_credits": balance.used,
        "available_micro_credits": balance.available,
    })))
}
