//! Who is calling: the `Caller` extractor turns the `Authorization` header into an
//! `AuthContext`, or answers 401 before the handler runs.

pub mod public_key;
pub mod registry;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};

use crate::app::AppState;
use crate::error::ApiError;
use crate::store::keys::{self, KEY_PREFIX};
use registry::LookupKey;

/// The identity behind a request: the key used and the license it bills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthContext {
    pub key_id: String,
    pub license_id: String,
    pub institution_id: String,
    pub license_type_id: String,
    pub unique_id: Option<String>,
    pub user_id: Option<String>,
    /// Unix seconds; checked on every request, so a cached key still expires on time.
    pub expires_at: Option<i64>,
}

/// An authenticated caller. Taking it as a handler argument makes the handler unreachable
/// without valid credentials.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<AuthContext>);

impl std::ops::Deref for Caller {
    type Target = AuthContext;
    fn deref(&self) -> &AuthContext {
        &self.0
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Caller, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = bearer_token(req).map(str::to_string);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let state =
                state.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("AppState missing")))?;
            let token = token.ok_or(ApiError::Unauthorized)?;
            // JWTs (institution-signed) arrive with their own issue; until then only API keys.
            if !token.starts_with(KEY_PREFIX) || token.len() > 256 {
                return Err(ApiError::Unauthorized);
            }
            let found = state
                .registry
                .send(LookupKey(keys::hash(&token)))
                .await
                .map_err(|e| {
                    ApiError::Unavailable(anyhow::anyhow!("key registry unreachable: {e}"))
                })?
                .map_err(ApiError::Unavailable)?;
            let context = found.ok_or(ApiError::Unauthorized)?;
            if context
                .expires_at
                .is_some_and(|exp| exp <= time::OffsetDateTime::now_utc().unix_timestamp())
            {
                return Err(ApiError::Unauthorized);
            }
            Ok(Caller(context))
        })
    }
}
