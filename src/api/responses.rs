use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use crate::api::metered::{self, Ask};
use crate::api::streaming::{responses_usage, Protocol};
use crate::api::{forced_provider, read_json};
use crate::app::AppState;
use crate::auth::Caller;
use crate::catalog::{ModelKind, Route};
use crate::error::ApiError;
use crate::providers::{Provider, Providers, ResponsesCall, RESPONSES_PROVIDERS};
use crate::validation::responses::responses_request;

/// POST /v1/responses: OpenAI's Responses API, through OpenRouter (or the demo provider).
pub async fn responses(
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    providers: web::Data<Providers>,
) -> Result<HttpResponse, ApiError> {
    let forced = forced_provider(&req, RESPONSES_PROVIDERS)?;
    let (body, body_len) = read_json(&req, payload, state.settings.limits.max_body_bytes).await?;
    let mut request = responses_request(body).map_err(ApiError::BadRequest)?;
    let ask = Ask {
        model: &request.model,
        kind: ModelKind::Chat,
        forced,
        uses: request.uses,
        max_output_tokens: request.max_output_tokens,
        produces_output: true,
        body_len,
        endpoint: "responses",
        stream: request.stream,
    };
    let metered = metered::reserve(&req, &caller, &state, ask).await?;
    let granted = metered.granted();
    if granted < metered.ceiling
        || request.max_output_tokens.is_some_and(|asked| u64::from(asked) > granted)
    {
        request.body.insert("max_output_tokens".into(), granted.into());
    }
    let call = async |provider: &Provider, route: &Route| {
        let call = ResponsesCall {
            upstream_model: &route.upstream_model,
            request: &request,
            max_output_tokens: granted,
        };
        provider.responses(&call).await
    };
    let usage_of =
        |theirs: Option<Value>, usage, settled| responses_usage(theirs.as_ref(), usage, settled);
    metered::generate(&req, &state, &providers, metered, Protocol::Responses, call, usage_of).await
}
