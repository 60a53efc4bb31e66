use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use crate::api::metered::{self, Ask, Metered};
use crate::api::{forced_provider, read_json, streaming};
use crate::app::AppState;
use crate::auth::Caller;
use crate::catalog::ModelKind;
use crate::error::ApiError;
use crate::metering::usage_json;
use crate::providers::breaker::Outcome;
use crate::providers::{ChatCall, ChatReply, Providers, CHAT_PROVIDERS};
use crate::routing;
use crate::telemetry::{add_upstream_wait, label_request};
use crate::validation::chat::chat_request;

/// POST /v1/chat/completions
pub async fn chat_completions(
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    providers: web::Data<Providers>,
) -> Result<HttpResponse, ApiError> {
    let forced = forced_provider(&req, CHAT_PROVIDERS)?;
    let (body, body_len) = read_json(&req, payload, state.settings.limits.max_body_bytes).await?;
    let mut request = chat_request(body).map_err(ApiError::BadRequest)?;

    let ask = Ask {
        model: &request.model,
        kind: ModelKind::Chat,
        forced,
        uses: request.uses,
        max_output_tokens: request.max_tokens,
        produces_output: true,
        body_len,
        endpoint: "chat.completions",
        stream: request.stream,
    };
    let Metered { model, mut meter, request_id, ceiling } =
        metered::reserve(&req, &caller, &state, ask).await?;
    let granted = meter.max_output_tokens();
    if granted < ceiling || request.max_tokens.is_some_and(|asked| u64::from(asked) > granted) {
        limit_output(&mut request.body, granted);
    }

    let idle = Duration::from_secs(state.settings.limits.stream_idle_timeout_secs.max(1));
    let started = Instant::now();
    let served =
        routing::first_success(&model, forced, &providers, &request_id, async |provider, route| {
            let call = ChatCall {
                upstream_model: &route.upstream_model,
                request: &request,
                max_output_tokens: granted,
            };
            match provider.chat(&call).await? {
                ChatReply::Stream(chunks) => {
                    Ok(ChatReply::Stream(streaming::first_output(chunks, idle).await?))
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
        ChatReply::Complete { mut completion, usage } => {
            served.permit.report(Outcome::Success);
            let settled = meter.settle(usage, "completed").await?;
            let mut usage_value = usage_json(usage, settled);
            // Keep the upstream's token details (cached tokens and the like).
            if let (Some(Value::Object(theirs)), Value::Object(ours)) =
                (completion.remove("usage"), &mut usage_value)
            {
                for (k, v) in theirs {
                    ours.entry(k).or_insert(v);
                }
            }
            completion.insert("usage".into(), usage_value);
            Ok(HttpResponse::Ok().json(completion))
        }
        ChatReply::Stream(chunks) => Ok(streaming::relay(
            chunks,
            meter,
            idle,
            served.permit,
            streaming::Protocol::ChatCompletions,
        )),
    }
}

/// Asks upstream for no more output than the hold pays for, in the field(s) the client used.
fn limit_output(body: &mut serde_json::Map<String, Value>, tokens: u64) {
    let mut set = false;
    for field in ["max_completion_tokens", "max_tokens"] {
        if body.get(field).is_some_and(|v| !v.is_null()) {
            body.insert(field.into(), tokens.into());
            set = true;
        }
    }
    if !set {
        body.insert("max_tokens".into(), tokens.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_output_uses_the_clients_field() {
        let mut body = serde_json::Map::new();
        body.insert("max_completion_tokens".into(), 500.into());
        limit_output(&mut body, 20);
        assert_eq!(body["max_completion_tokens"], 20);
        assert!(!body.contains_key("max_tokens"));
        let mut body = serde_json::Map::new();
        limit_output(&mut body, 20);
        assert_eq!(body["max_tokens"], 20);
    }
}
