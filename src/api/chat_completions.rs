use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use crate::api::metered::{self, Ask};
use crate::api::streaming::Protocol;
use crate::api::{forced_provider, read_json};
use crate::app::AppState;
use crate::auth::Caller;
use crate::catalog::ModelKind;
use crate::catalog::Route;
use crate::error::ApiError;
use crate::ledger::Settled;
use crate::metering::usage_json;
use crate::providers::{ChatCall, Provider, Providers, TokenUsage, CHAT_PROVIDERS};
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
    let metered = metered::reserve(&req, &caller, &state, ask).await?;
    let granted = metered.granted();
    if granted < metered.ceiling
        || request.max_tokens.is_some_and(|asked| u64::from(asked) > granted)
    {
        limit_output(&mut request.body, granted);
    }
    let call = async |provider: &Provider, route: &Route| {
        let call = ChatCall {
            upstream_model: &route.upstream_model,
            request: &request,
            max_output_tokens: granted,
        };
        provider.chat(&call).await
    };
    metered::generate(
        &req,
        &state,
        &providers,
        metered,
        Protocol::ChatCompletions,
        call,
        chat_usage,
    )
    .await
}

/// The chat usage object: our counts and credits, plus the upstream's token details (cached
/// tokens and the like).
fn chat_usage(theirs: Option<Value>, usage: TokenUsage, settled: Settled) -> Value {
    let mut ours = usage_json(usage, settled);
    if let (Some(Value::Object(theirs)), Value::Object(map)) = (theirs, &mut ours) {
        for (k, v) in theirs {
            map.entry(k).or_insert(v);
        }
    }
    ours
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
