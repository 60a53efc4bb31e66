use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use crate::api::metered::{self, Ask, Metered};
use crate::api::streaming::{self, responses_usage, Protocol};
use crate::api::{forced_provider, read_json};
use crate::app::AppState;
use crate::auth::Caller;
use crate::catalog::ModelKind;
use crate::error::ApiError;
use crate::providers::breaker::Outcome;
use crate::providers::{ChatReply, Providers, ResponsesCall, RESPONSES_PROVIDERS};
use crate::routing;
use crate::telemetry::{add_upstream_wait, label_request};
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
    let Metered { model, mut meter, request_id, ceiling } =
        metered::reserve(&req, &caller, &state, ask).await?;
    let granted = meter.max_output_tokens();
    if granted < ceiling
        || request.max_output_tokens.is_some_and(|asked| u64::from(asked) > granted)
    {
        request.body.insert("max_output_tokens".into(), granted.into());
    }

    let idle = Duration::from_secs(state.settings.limits.stream_idle_timeout_secs.max(1));
    let started = Instant::now();
    let served =
        routing::first_success(&model, forced, &providers, &request_id, async |provider, route| {
            let call = ResponsesCall {
                upstream_model: &route.upstream_model,
                request: &request,
                max_output_tokens: granted,
            };
            match provider.responses(&call).await? {
                ChatReply::Stream(events) => {
                    Ok(ChatReply::Stream(streaming::first_output(events, idle).await?))
                }
                complete => Ok(complete),
            }
        })
        .await;
    add_upstream_wait(&req, started.elapsed());
    let served = served?;
    meter.set_provider(served.provider);
    label_request(&req, &model.id, Some(served.provider));
    match served.value {
        ChatReply::Complete { completion: mut response, usage } => {
            served.permit.report(Outcome::Success);
            let settled = meter.settle(usage, "completed").await?;
            let theirs = response.remove("usage");
            response.insert("usage".into(), responses_usage(theirs.as_ref(), usage, settled));
            Ok(HttpResponse::Ok().json(Value::Object(response)))
        }
        ChatReply::Stream(events) => {
            Ok(streaming::relay(events, meter, idle, served.permit, Protocol::Responses))
        }
    }
}
