//! Who is calling: the `Caller` extractor turns the `Authorization` header into an
//! `AuthContext`, or answers 401 before the handler runs. Two kinds of bearer token share the
//! header: API keys (`sk-quantized-…`) and institution-signed JWTs (`jwt.rs`).

pub mod jwt;
pub mod public_key;
pub mod registry;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};

use crate::app::AppState;
use crate::error::ApiError;
use crate::store::{self, keys};
use crate::telemetry::RequestId;
use registry::{JwtLookup, LookupJwt, LookupKey, RememberJwt};

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
        // Refusals of non-API-key tokens are logged with a reason; the id ties that line to
        // the request's own log line.
        let request_id = token
            .as_deref()
            .is_some_and(|t| !t.starts_with(keys::KEY_PREFIX))
            .then(|| RequestId::of(req));
        Box::pin(async move {
            let state =
                state.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("AppState missing")))?;
            let token = token.ok_or(ApiError::Unauthorized)?;
            // The prefix cannot begin a JWS (whose first segment is base64url JSON), so the
            // two kinds never compete for a token.
            let found = if token.starts_with(keys::KEY_PREFIX) {
                api_key(&state, &token).await?
            } else if jwt::looks_like_jws(&token) {
                institution_jwt(&state, token, request_id.unwrap_or_default()).await?
            } else {
                let id = request_id.unwrap_or_default();
                log::debug!("{id} bearer token is neither an API key nor a JWT");
                None
            };
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

fn registry_down(e: actix::MailboxError) -> ApiError {
    ApiError::Unavailable(anyhow::anyhow!("key registry unreachable: {e}"))
}

async fn api_key(state: &AppState, token: &str) -> Result<Option<Arc<AuthContext>>, ApiError> {
    if token.len() > 256 {
        return Ok(None);
    }
    state
        .registry
        .send(LookupKey(keys::hash(token)))
        .await
        .map_err(registry_down)?
        .map_err(ApiError::Unavailable)
}

/// A JWT the registry has seen costs one hash and one message, like an API key. A new one is
/// verified (and on first use provisioned) on the blocking pool, then remembered.
async fn institution_jwt(
    state: &AppState,
    token: String,
    request_id: String,
) -> Result<Option<Arc<AuthContext>>, ApiError> {
    let hash = keys::hash(&token);
    let generation = match state.registry.send(LookupJwt(hash)).await.map_err(registry_down)? {
        JwtLookup::Known(found) => return Ok(found),
        JwtLookup::Unknown { generation } => generation,
    };
    let pool = state.pool.clone();
    let leeway = state.settings.auth.jwt_leeway_secs;
    let verdict = web::block(move || {
        let mut conn = store::get(&pool)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        jwt::authenticate(&mut conn, &token, leeway, now)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
    .map_err(ApiError::Unavailable)?;
    let found = match verdict {
        Ok(context) => Some(Arc::new(context)),
        // Garbage is routine noise; a well-formed token refused is worth an operator's eye
        // (a key not registered yet, a portal clock running fast).
        Err(reason @ jwt::Rejection::Malformed(_)) => {
            log::debug!("{request_id} JWT refused: {reason}");
            None
        }
        Err(reason) => {
            log::info!("{request_id} JWT refused: {reason}");
            None
        }
    };
    state.registry.do_send(RememberJwt { hash, generation, found: found.clone() });
    Ok(found)
}
