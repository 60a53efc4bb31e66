//! The gateway in front of the fake OpenRouter and Anthropic upstreams.

use serde_json::{json, Value};

use crate::fake_upstream::*;
use crate::helpers::*;

pub const OPENROUTER_KEY: &str = "sk-or-v1-test-key";
pub const ANTHROPIC_KEY: &str = "sk-ant-test-key";

/// The gateway with both HTTP providers pointed at one fake upstream.
pub async fn spawn_with_upstream(
    configure: impl FnOnce(&mut quantized::Settings),
) -> (TestApp, FakeUpstream) {
    let upstream = FakeUpstream::start().await;
    let (openrouter, anthropic) = (upstream.openrouter_url(), upstream.anthropic_url());
    let app = spawn_app_with(|s| {
        s.providers.openrouter.base_url = openrouter;
        s.providers.openrouter.api_key = quantized::config::Secret(OPENROUTER_KEY.into());
        s.providers.anthropic.base_url = anthropic;
        s.providers.anthropic.api_key = quantized::config::Secret(ANTHROPIC_KEY.into());
        configure(s);
    })
    .await;
    (app, upstream)
}

pub fn body_for(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

#[actix_web::test]
async fn openrouter_non_stream_is_relayed_and_billed_from_its_usage() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = app.chat(&seeded.key, &body_for("openai/gpt-4.1-mini", "Hi")).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let body = r.json();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from the fake upstream");
    assert_eq!(body["model"], "openai/gpt-4.1-mini");
    // 11 × 0.0016 + 7 × 0.0064 = 0.0624 → 1 µcr
    assert_eq!(body["usage"]["prompt_tokens"], 11);
    assert_eq!(body["usage"]["completion_tokens"], 7);
    assert_eq!(body["usage"]["credits_used"], 1);
    assert!(body.get("provider").is_none());
    let sent = upstream.last_request().unwrap();
    assert_eq!(sent.route, "openrouter");
    assert_eq!(sent.header("authorization"), Some(format!("Bearer {OPENROUTER_KEY}").as_str()));
    assert_eq!(sent.body["model"], "openai/gpt-4.1-mini");
    assert!(
        !sent.headers.iter().any(|(_, v)| v.contains(&seeded.key)),
        "the client's key is never forwarded"
    );
}

#[actix_web::test]
async fn anthropic_stream_is_translated_to_chunks_and_billed() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let mut body = body_for("anthropic/claude-sonnet-4-20250514", "Hi");
    body["stream"] = json!(true);

    let r = app.chat(&seeded.key, &body).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let events = sse_events(&r.text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "Hello from the fake upstream");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], 11);
    assert_eq!(usage["completion_tokens"], 7);
    // 11 × 0.048 + 7 × 0.24 = 2.208 → 3 µcr
    assert_eq!(usage["credits_used"], 3);
    let sent = upstream.last_request().unwrap();
    assert_eq!(sent.route, "anthropic");
    assert_eq!(sent.body["model"], "claude-sonnet-4-20250514");
    assert_eq!(sent.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], 1_000_000 - 3);
}
