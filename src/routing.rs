//! Choosing an upstream for a model: its routes in order (or only the forced one), skipping
//! providers that are not configured and circuits that are open, and falling over to the
//! next route when a call fails before anything reached the client.

use crate::catalog::{Model, Route};
use crate::error::ApiError;
use crate::providers::breaker::{Admission, Admit, Outcome, Permit};
use crate::providers::{Provider, Providers, UpstreamError};

/// A successful attempt: its value, who served it, and the breaker permit whose outcome the
/// caller reports once it knows it (a stream is judged at its end).
pub struct Served<T> {
    pub value: T,
    pub provider: &'static str,
    pub permit: Permit,
}

/// Tries `model`'s routes; see [`first_success_of`].
pub async fn first_success<T>(
    model: &Model,
    forced: Option<&str>,
    providers: &Providers,
    request_id: &str,
    attempt: impl AsyncFnMut(&Provider, &Route) -> Result<T, UpstreamError>,
) -> Result<Served<T>, ApiError> {
    first_success_of(&model.routes, &model.id, forced, providers, request_id, attempt).await
}

/// Tries `routes` in order until an attempt succeeds. `subject` names what is routed (a
/// model id) in a 404. Endpoints without models (web search, fetch) pass their own routes.
pub async fn first_success_of<T>(
    routes: &[Route],
    subject: &str,
    forced: Option<&str>,
    providers: &Providers,
    request_id: &str,
    mut attempt: impl AsyncFnMut(&Provider, &Route) -> Result<T, UpstreamError>,
) -> Result<Served<T>, ApiError> {
    let routes: Vec<&Route> =
        routes.iter().filter(|r| forced.is_none_or(|f| r.provider == f)).collect();
    if routes.is_empty() {
        return Err(ApiError::model_not_found(subject));
    }
    let mut last = UpstreamError::Unavailable(format!("no configured provider serves {subject}"));
    for route in routes {
        let Some(provider) = providers.get(&route.provider) else { continue };
        let admission = if provider.health.is_clean() {
            Admission::Allowed
        } else {
            provider.breaker.send(Admit).await.unwrap_or(Admission::Refused)
        };
        if admission == Admission::Refused {
            last = UpstreamError::Unavailable(format!("circuit of {} is open", provider.name));
            continue;
        }
        let permit = Permit::new(provider.breaker.clone(), provider.health.clone(), admission);
        match attempt(provider, route).await {
            Ok(value) => return Ok(Served { value, provider: provider.name, permit }),
            Err(UpstreamError::BadRequest(message)) => {
                // The upstream is fine; the request is not, and another route would say so too.
                permit.report(Outcome::Success);
                return Err(ApiError::BadRequest(message));
            }
            Err(UpstreamError::ModelNotFound) => {
                permit.report(Outcome::Success);
                last = UpstreamError::ModelNotFound;
            }
            // Nothing was sent: the permit is dropped as abandoned.
            Err(unsupported @ UpstreamError::Unsupported(_)) => last = unsupported,
            Err(UpstreamError::Unavailable(cause)) => {
                log::warn!("{request_id} upstream {} failed: {cause}", provider.name);
                permit.report(Outcome::Failure);
                last = UpstreamError::Unavailable(cause);
            }
        }
    }
    Err(match last {
        UpstreamError::ModelNotFound => ApiError::model_not_found(subject),
        UpstreamError::BadRequest(message) | UpstreamError::Unsupported(message) => {
            ApiError::BadRequest(message)
        }
        UpstreamError::Unavailable(cause) => {
            ApiError::Unavailable(anyhow::anyhow!("{request_id}: {cause}"))
        }
    })
}
