//! POST /v1/web-search and POST /v1/fetch: fixed-price tools (quantized-api.md §3.10, §3.11;
//! design §0). The pipeline is every metered endpoint's: auth → read and validate → reserve
//! (`metered::reserve_units`) → route → settle → respond; only the price is per unit (a search,
//! a fetched URL) instead of per token.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::api::metered::reserve_units;
use crate::api::{forced_provider, read_json};
use crate::app::AppState;
use crate::auth::Caller;
use crate::catalog::Route;
use crate::error::ApiError;
use crate::providers::breaker::Outcome;
use crate::providers::search::{FetchCall, SearchCall};
use crate::providers::{Provider, Providers, TokenUsage, UpstreamError, SEARCH_PROVIDERS};
use crate::routing::{self, Served};
use crate::telemetry::{add_upstream_wait, label_request, RequestId};
use crate::validation::search::{fetch_request, search_request};

/// The tools' names: the `endpoint` of their usage rows and the keys of their prices.
const WEB_SEARCH: &str = "web-search";
const FETCH: &str = "fetch";

/// Exa, then Tavily, then the demo provider; unconfigured ones are skipped.
static ROUTES: LazyLock<Vec<Route>> = LazyLock::new(|| {
    SEARCH_PROVIDERS
        .iter()
        .map(|p| Route { provider: (*p).to_string(), upstream_model: String::new() })
        .collect()
});

/// POST /v1/web-search
pub async fn web_search(
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    providers: web::Data<Providers>,
) -> Result<HttpResponse, ApiError> {
    let forced = forced_provider(&req, SEARCH_PROVIDERS)?;
    let (body, _) = read_json(&req, payload, state.settings.limits.max_body_bytes).await?;
    let request = search_request(&body).map_err(ApiError::BadRequest)?;
    let call = SearchCall { query: &request.query, num_results: request.num_results };

    let mut meter = reserve_units(&req, &caller, &state, WEB_SEARCH, 1).await?;
    let served = call_provider(&req, forced, &providers, async |provider| {
        let started = Instant::now();
        let mut reply = provider.web_search(&call).await?;
        // Exa and the demo may not say how long the search took: then it is what we saw.
        reply.search_time.get_or_insert_with(|| round_ms(started.elapsed().as_secs_f64()));
        Ok(reply)
    })
    .await?;
    meter.set_provider(served.provider);
    served.permit.report(Outcome::Success);
    let reply = served.value;
    // Usage rows count billed units in `prompt_tokens`: here one search.
    let settled = meter.settle(units(1), "completed").await?;

    let results: Vec<Value> = reply
        .results
        .into_iter()
        .map(|hit| {
            json!({
                "title": hit.title,
                "url": hit.url,
                "id": hit.id,
                "published_date": hit.published_date,
                "author": hit.author,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "results": results,
        "usage": {
            "search_time": reply.search_time,
            "credits_used": settled.credits_used,
            "credits_remaining": settled.credits_remaining,
        },
    })))
}

/// POST /v1/fetch
pub async fn fetch(
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    providers: web::Data<Providers>,
) -> Result<HttpResponse, ApiError> {
    let forced = forced_provider(&req, SEARCH_PROVIDERS)?;
    let (body, _) = read_json(&req, payload, state.settings.limits.max_body_bytes).await?;
    let request = fetch_request(&body).map_err(ApiError::BadRequest)?;
    // A URL asked for twice is fetched, and billed, once; each request entry still gets its result.
    let mut distinct: Vec<String> = Vec::with_capacity(request.urls.len());
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(request.urls.len());
    for url in &request.urls {
        index.entry(url.as_str()).or_insert_with(|| {
            distinct.push(url.clone());
            distinct.len() - 1
        });
    }
    let call = FetchCall { urls: &distinct, include_text: request.include_text };

    // Hold the price of every URL; settle for the ones fetched.
    let mut meter = reserve_units(&req, &caller, &state, FETCH, distinct.len() as u64).await?;
    let served =
        call_provider(&req, forced, &providers, async |provider| provider.fetch(&call).await)
            .await?;
    meter.set_provider(served.provider);
    served.permit.report(Outcome::Success);
    let pages = served.value;
    if pages.len() != distinct.len() {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "{}: {} pages for {} URLs",
            served.provider,
            pages.len(),
            distinct.len()
        )));
    }
    let fetched = pages.iter().filter(|p| p.succeeded()).count() as u64;
    // Usage rows count billed units in `prompt_tokens`: here the URLs fetched.
    let settled = meter.settle(units(fetched), "completed").await?;

    let results: Vec<Value> = request
        .urls
        .iter()
        .map(|url| {
            let page = &pages[index[url.as_str()]];
            json!({
                "url": url,
                "title": page.title,
                "text": if request.include_text { page.text.as_deref() } else { None },
                "status": page.status,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "results": results,
        "usage": {
            "credits_used": settled.credits_used,
            "credits_remaining": settled.credits_remaining,
        },
    })))
}

/// Routes to the search providers (or the forced one) and records the time spent waiting.
async fn call_provider<T>(
    req: &HttpRequest,
    forced: Option<&str>,
    providers: &Providers,
    mut attempt: impl AsyncFnMut(&Provider) -> Result<T, UpstreamError>,
) -> Result<Served<T>, ApiError> {
    let subject = req.path().trim_start_matches("/v1/");
    let started = Instant::now();
    let served = routing::first_success_of(
        &ROUTES,
        subject,
        forced,
        providers,
        &RequestId::of(req),
        async |provider, _| attempt(provider).await,
    )
    .await;
    add_upstream_wait(req, started.elapsed());
    if let Ok(served) = &served {
        // No model: the metrics line names the provider only.
        label_request(req, "", Some(served.provider));
    }
    served
}

/// Billed units, carried in the usage row's `prompt_tokens` (the tool has no tokens).
fn units(count: u64) -> TokenUsage {
    TokenUsage { prompt_tokens: count, completion_tokens: 0 }
}

fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}
