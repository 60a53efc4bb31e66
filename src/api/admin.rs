//! The admin API (design §3) under `/admin/v1`, behind the admin token. Every body is
//! validated as strictly as `/v1`; every change that could affect authentication clears the
//! KeyRegistry's cache, and every price or model change rebuilds the catalog snapshot.

use std::future::Future;
use std::pin::Pin;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest, HttpResponse};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::{read_json, resource};
use crate::app::AppState;
use crate::auth::{bearer_token, public_key, registry::InvalidateAll};
use crate::catalog::{Model, TOOLS};
use crate::error::ApiError;
use crate::json_body;
use crate::ledger::price::{Price, Prices, MAX_UNIT_MICRO_CREDITS};
use crate::ledger::Adjust;
use crate::metering::ledger_error;
use crate::providers::breaker::GetStatus;
use crate::providers::KNOWN_PROVIDERS;
use crate::store::{self, keys, licenses, organisations, usage, Conn};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/institutions", "GET, POST")
            .route(web::post().to(create_institution))
            .route(web::get().to(list_institutions)),
    )
    .service(
        resource("/institutions/{institution}/public-keys", "GET, POST")
            .route(web::post().to(add_public_key))
            .route(web::get().to(list_public_keys)),
    )
    .service(resource("/public-keys/{id}", "DELETE").route(web::delete().to(delete_public_key)))
    .service(
        resource("/license-types", "GET, POST")
            .route(web::post().to(create_license_type))
            .route(web::get().to(list_license_types)),
    )
    .service(
        resource("/license-types/{license_type}/prices/{model_id:.+}", "PUT")
            .route(web::put().to(set_model_price)),
    )
    .service(
        resource("/license-types/{license_type}/tool-prices/{tool}", "PUT")
            .route(web::put().to(set_tool_price)),
    )
    .service(
        resource("/licenses", "GET, POST")
            .route(web::post().to(create_license))
            .route(web::get().to(list_licenses)),
    )
    .service(resource("/licenses/{id}", "GET").route(web::get().to(get_license)))
    .service(resource("/licenses/{id}/credits", "POST").route(web::post().to(change_credits)))
    .service(
        resource("/licenses/{id}/keys", "GET, POST")
            .route(web::post().to(create_key))
            .route(web::get().to(list_keys)),
    )
    .service(resource("/licenses/{id}/usage", "GET").route(web::get().to(list_usage)))
    .service(resource("/keys/{id}", "DELETE").route(web::delete().to(delete_key)))
    .service(resource("/providers", "GET").route(web::get().to(list_providers)))
    .service(resource("/models", "GET").route(web::get().to(list_models)))
    .service(resource("/models/{model_id:.+}", "PUT").route(web::put().to(put_model)));
}

/// Proof that the request carries the admin token. Both sides are hashed first so the
/// comparison takes the same time whatever the token's length or content.
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Admin, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let verdict = match (req.app_data::<web::Data<AppState>>(), bearer_token(req)) {
            (Some(state), Some(token)) => {
                let expected = Sha256::digest(state.settings.admin_token.expose().as_bytes());
                let given = Sha256::digest(token.as_bytes());
                let same: bool = expected.ct_eq(&given).into();
                (same && !state.settings.admin_token.is_empty())
                    .then_some(Admin)
                    .ok_or(ApiError::Unauthorized)
            }
            _ => Err(ApiError::Unauthorized),
        };
        Box::pin(async move { verdict })
    }
}

/// Runs blocking store work off the HTTP worker.
async fn db<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&mut Conn) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let pool = state.pool.clone();
    web::block(move || {
        let mut conn = store::get(&pool)?;
        work(&mut conn)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
}

async fn body<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<T, ApiError> {
    let (value, _) = read_json(req, payload, state.settings.limits.max_body_bytes).await?;
    json_body::from_value(value)
}

/// Distinguishes a key that is absent (outer `None`) from one set to `null`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn check_alias(field: &str, alias: &str) -> Result<(), ApiError> {
    let ok = !alias.is_empty()
        && alias.len() <= 64
        && alias.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then_some(()).ok_or_else(|| {
        ApiError::BadRequest(format!("'{field}' must be 1 to 64 letters, digits, '-', '_' or '.'"))
    })
}

fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    (!name.trim().is_empty() && name.len() <= 200)
        .then_some(())
        .ok_or_else(|| ApiError::BadRequest(format!("'{field}' must be 1 to 200 characters")))
}

fn non_negative(field: &str, value: i64) -> Result<(), ApiError> {
    (value >= 0)
        .then_some(())
        .ok_or_else(|| ApiError::BadRequest(format!("'{field}' must not be negative")))
}

fn institution(conn: &Conn, id_or_alias: &str) -> Result<organisations::Institution, ApiError> {
    organisations::find_institution(conn, id_or_alias)?
        .ok_or_else(|| ApiError::NotFound(format!("Institution '{id_or_alias}' not found")))
}

fn license_type(conn: &Conn, id_or_alias: &str) -> Result<organisations::LicenseType, ApiError> {
    organisations::find_license_type(conn, id_or_alias)?
        .ok_or_else(|| ApiError::NotFound(format!("License type '{id_or_alias}' not found")))
}

fn license(conn: &Conn, id: &str) -> Result<licenses::License, ApiError> {
    licenses::get(conn, id)?.ok_or_else(|| ApiError::NotFound(format!("License '{id}' not found")))
}

/// Clears the KeyRegistry's caches and waits until it is done, so the very next request is
/// judged against the database (handlers read the caches directly).
async fn forget_credentials(state: &AppState) -> Result<(), ApiError> {
    state
        .registry
        .send(InvalidateAll)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("registry: {e}")))
}

fn created(value: impl serde::Serialize) -> HttpResponse {
    HttpResponse::Created().json(value)
}

fn ok(value: impl serde::Serialize) -> HttpResponse {
    HttpResponse::Ok().json(value)
}

fn duplicate(err: rusqlite::Error, what: String) -> ApiError {
    if store::is_unique_violation(&err) {
        ApiError::Conflict(what)
    } else {
        ApiError::Internal(anyhow::Error::new(err).context("insert"))
    }
}

// ---- institutions and their public keys ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewInstitution {
    alias: String,
    name: String,
}

async fn create_institution(
    _: Admin,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let new: NewInstitution = body(&req, payload, &state).await?;
    check_alias("alias", &new.alias)?;
    check_name("name", &new.name)?;
    let inst = db(&state, move |conn| {
        organisations::create_institution(conn, &new.alias, &new.name)
            .map_err(|e| duplicate(e, format!("Institution alias '{}' already exists", new.alias)))
    })
    .await?;
    Ok(created(inst))
}

async fn list_institutions(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(ok(db(&state, |conn| Ok(organisations::list_institutions(conn)?)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPublicKey {
    public_key: String,
    kid: Option<String>,
}

async fn add_public_key(
    _: Admin,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let new: NewPublicKey = body(&req, payload, &state).await?;
    let raw = public_key::parse_ed25519(&new.public_key).map_err(ApiError::BadRequest)?;
    if let Some(kid) = &new.kid {
        check_name("kid", kid)?;
    }
    let key = db(&state, move |conn| {
        let inst = institution(conn, &path)?;
        if let Some(kid) = new.kid.as_deref() {
            if organisations::kid_in_use(conn, &inst.id, kid)? {
                return Err(ApiError::Conflict(format!(
                    "Institution '{}' already has a key with kid '{kid}'",
                    inst.alias
                )));
            }
        }
        Ok(organisations::add_public_key(conn, &inst.id, new.kid.as_deref(), &raw)?)
    })
    .await?;
    forget_credentials(&state).await?;
    Ok(created(json!({ "id": key.id, "kid": key.kid, "created_at": key.created_at })))
}

async fn list_public_keys(
    _: Admin,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let keys = db(&state, move |conn| {
        let inst = institution(conn, &path)?;
        Ok(organisations::list_public_keys(conn, &inst.id)?)
    })
    .await?;
    Ok(ok(keys))
}

async fn delete_public_key(
    _: Admin,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let found = db(&state, {
        let id = id.clone();
        move |conn| Ok(organisations::delete_public_key(conn, &id)?)
    })
    .await?;
    if !found {
        return Err(ApiError::NotFound(format!("Public key '{id}' not found")));
    }
    forget_credentials(&state).await?;
    Ok(HttpResponse::NoContent().finish())
}

// ---- license types and prices ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLicenseType {
    alias: String,
    name: String,
    institution: String,
    /// Required, but may be `null` (unlimited): an unlimited type should never be an accident.
    #[serde(default, deserialize_with = "present")]
    default_micro_credits: Option<Option<i64>>,
}

async fn create_license_type(
    _: Admin,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let new: NewLicenseType = body(&req, payload, &state).await?;
    check_alias("alias", &new.alias)?;
    check_name("name", &new.name)?;
    let default = new
        .default_micro_credits
        .ok_or_else(|| ApiError::bad_request("field required: 'default_micro_credits'"))?;
    if let Some(amount) = default {
        non_negative("default_micro_credits", amount)?;
    }
    let lt = db(&state, move |conn| {
        let inst = institution(conn, &new.institution)?;
        organisations::create_license_type(conn, &inst.id, &new.alias, &new.name, default)
            .map_err(|e| duplicate(e, format!("License type alias '{}' already exists", new.alias)))
    })
    .await?;
    Ok(created(lt))
}

async fn list_license_types(
    _: Admin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(ok(db(&state, |conn| Ok(organisations::list_license_types(conn)?)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPrices {
    input_cost_per_micro_credit: Value,
    output_cost_per_micro_credit: Value,
}

async fn set_model_price(
    _: Admin,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let new: NewPrices = body(&req, payload, &state).await?;
    let price = |field: &str, v: &Value| {
        Price::from_json(v).map_err(|e| ApiError::BadRequest(format!("'{field}' {e}")))
    };
    let prices = Prices {
        input: price("input_cost_per_micro_credit", &new.input_cost_per_micro_credit)?,
        output: price("output_cost_per_micro_credit", &new.output_cost_per_micro_credit)?,
    };
    let (lt_ref, model_id) = path.into_inner();
    if state.catalog.snapshot().get_any(&model_id).is_none() {
        return Err(ApiError::model_not_found(&model_id));
    }
    let lt = db(&state, move |conn| {
        let lt = license_type(conn, &lt_ref)?;
        organisations::set_model_price(conn, &lt.id, &model_id, prices)?;
        Ok(json!({
            "license_type_id": lt.id,
            "model_id": model_id,
            "input_cost_per_micro_credit": prices.input.as_f64(),
            "output_cost_per_micro_credit": prices.output.as_f64(),
        }))
    })
    .await?;
    state.catalog.reload(&state.pool)?;
    Ok(ok(lt))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToolPrice {
    micro_credits: i64,
}

async fn set_tool_price(
    _: Admin,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (lt_ref, tool) = path.into_inner();
    if !TOOLS.contains(&tool.as_str()) {
        return Err(ApiError::NotFound(format!(
            "Unknown tool '{tool}': expected one of {}",
            TOOLS.join(", ")
        )));
    }
    let new: NewToolPrice = body(&req, payload, &state).await?;
    non_negative("micro_credits", new.micro_credits)?;
    if new.micro_credits > MAX_UNIT_MICRO_CREDITS {
        return Err(ApiError::BadRequest(format!(
            "'micro_credits' must not exceed {MAX_UNIT_MICRO_CREDITS}"
        )));
    }
    let price = db(&state, move |conn| {
        let lt = license_type(conn, &lt_ref)?;
        organisations::set_tool_price(conn, &lt.id, &tool, new.micro_credits)?;
        Ok(json!({ "license_type_id": lt.id, "tool": tool, "micro_credits": new.micro_credits }))
    })
    .await?;
    state.catalog.reload(&state.pool)?;
    Ok(ok(price))
}

// ---- licenses, credits, keys, usage ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLicense {
    institution: String,
    license_type: String,
    unique_id: Option<String>,
    user_id: Option<String>,
    micro_credits: Option<i64>,
}

async fn create_license(
    _: Admin,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let new: NewLicense = body(&req, payload, &state).await?;
    if let Some(amount) = new.micro_credits {
        non_negative("micro_credits", amount)?;
    }
    let license = db(&state, move |conn| {
        let inst = institution(conn, &new.institution)?;
        let lt = license_type(conn, &new.license_type)?;
        if lt.institution_id != inst.id {
            return Err(ApiError::BadRequest(format!(
                "License type '{}' does not belong to institution '{}'",
                lt.alias, inst.alias
            )));
        }
        Ok(licenses::create(
            conn,
            &licenses::NewLicense {
                institution_id: &inst.id,
                license_type_id: &lt.id,
                unique_id: new.unique_id.as_deref(),
                user_id: new.user_id.as_deref(),
                micro_credits: new.micro_credits.or(lt.default_micro_credits),
            },
        )?)
    })
    .await?;
    Ok(created(license))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LicenseQuery {
    institution: Option<String>,
    license_type: Option<String>,
    unique_id: Option<String>,
}

async fn list_licenses(
    _: Admin,
    query: web::Query<LicenseQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let list = db(&state, move |conn| {
        let inst = query.institution.as_deref().map(|i| institution(conn, i)).transpose()?;
        let lt = query.license_type.as_deref().map(|t| license_type(conn, t)).transpose()?;
        let filter = licenses::Filter {
            institution_id: inst.as_ref().map(|i| i.id.as_str()),
            license_type_id: lt.as_ref().map(|t| t.id.as_str()),
            unique_id: query.unique_id.as_deref(),
        };
        Ok(licenses::list(conn, &filter)?)
    })
    .await?;
    Ok(ok(list))
}

async fn get_license(
    _: Admin,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(ok(db(&state, move |conn| license(conn, &path)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditChange {
    micro_credits: i64,
    note: Option<String>,
}

async fn change_credits(
    _: Admin,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let change: CreditChange = body(&req, payload, &state).await?;
    if change.micro_credits == 0 {
        return Err(ApiError::bad_request("'micro_credits' must not be zero"));
    }
    let id = path.into_inner();
    let lookup = id.clone();
    db(&state, move |conn| license(conn, &lookup)).await?;
    let adjustment = usage::Adjustment {
        license_id: id.clone(),
        micro_credits: change.micro_credits,
        note: change.note,
    };
    state
        .ledger
        .send(Adjust(adjustment))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("ledger: {e}")))?
        .map_err(ledger_error)?;
    Ok(ok(db(&state, move |conn| license(conn, &id)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: Option<String>,
    expires_at: Option<String>,
}

async fn create_key(
    _: Admin,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let new: NewKey = body(&req, payload, &state).await?;
    if let Some(name) = &new.name {
        check_name("name", name)?;
    }
    let expires_at = match new.expires_at.as_deref() {
        Some(text) => Some(store::rfc3339(store::parse_rfc3339(text).ok_or_else(|| {
            ApiError::bad_request("invalid value for 'expires_at': expected an RFC 3339 timestamp")
        })?)),
        None => None,
    };
    let id = path.into_inner();
    let (info, key) = db(&state, move |conn| {
        license(conn, &id)?;
        Ok(keys::create(
            conn,
            &keys::NewKey {
                license_id: &id,
                name: new.name.as_deref(),
                expires_at: expires_at.as_deref(),
                ephemeral: false,
            },
        )?)
    })
    .await?;
    Ok(created(json!({
        "id": info.id,
        "key": key,
        "name": info.name,
        "expires_at": info.expires_at,
        "created_at": info.created_at,
    })))
}

async fn list_keys(
    _: Admin,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let list = db(&state, move |conn| {
        license(conn, &path)?;
        Ok(keys::list(conn, &path)?)
    })
    .await?;
    Ok(ok(list))
}

async fn delete_key(
    _: Admin,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let found = db(&state, {
        let id = id.clone();
        move |conn| Ok(keys::deactivate(conn, &id)?)
    })
    .await?;
    if !found {
        return Err(ApiError::NotFound(format!("Key '{id}' not found")));
    }
    forget_credentials(&state).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    /// Text, so a bad value gets the API's own message rather than the parser's.
    limit: Option<String>,
    before: Option<String>,
}

async fn list_usage(
    _: Admin,
    path: web::Path<String>,
    query: web::Query<UsageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let UsageQuery { limit, before } = query.into_inner();
    let limit = match limit {
        None => 100,
        Some(text) => text
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request("invalid type for 'limit': expected integer"))?,
    };
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("'limit' must be between 1 and 1000"));
    }
    let rows = db(&state, move |conn| {
        license(conn, &path)?;
        Ok(usage::list(conn, &path, limit as u32, before.as_deref())?)
    })
    .await?;
    Ok(ok(rows))
}

// ---- providers ----

/// Each provider: configured or not, and its circuit breaker's state.
async fn list_providers(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut out = Vec::new();
    for &name in KNOWN_PROVIDERS {
        let status = match state.breakers.get(name) {
            Some((breaker, _)) => Some(
                breaker
                    .send(GetStatus)
                    .await
                    .map_err(|e| ApiError::Internal(anyhow::anyhow!("breaker: {e}")))?,
            ),
            None => None,
        };
        out.push(json!({
            "provider": name,
            "configured": status.is_some(),
            "state": status.as_ref().map(|s| s.state),
            "consecutive_failures": status.as_ref().map(|s| s.consecutive_failures),
        }));
    }
    Ok(ok(out))
}

// ---- models ----

async fn list_models(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let models = db(&state, |conn| Ok(store::catalog::load_all(conn)?)).await?;
    Ok(ok(models.iter().map(Model::admin_json).collect::<Vec<_>>()))
}

async fn put_model(
    _: Admin,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (value, _) = read_json(&req, payload, state.settings.limits.max_body_bytes).await?;
    let model = Model::from_json(&path, value)?;
    let saved = model.admin_json();
    db(&state, move |conn| Ok(store::catalog::upsert(conn, &model)?)).await?;
    state.catalog.reload(&state.pool)?;
    Ok(ok(saved))
}
