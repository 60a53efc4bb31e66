//! The gateway in front of the fake OpenRouter and Anthropic upstreams.

use std::time::Duration;

use futures_util::future::join_all;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::fake_upstream::Reply as Answer;
use crate::fake_upstream::*;
use crate::helpers::Reply;
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

// =============================================================================================
// Shared by the tests below.

const MINI: &str = "openai/gpt-4.1-mini";
const SONNET: &str = "anthropic/claude-sonnet-4-20250514";
const UNAVAILABLE: &str = "Service temporarily unavailable";
const ERROR_EVENT: &str = r#"{"error":{"message":"Service temporarily unavailable"}}"#;
/// Licenses start with this little: a new Claude request's output ceiling (16,384 tokens ×
/// 0.24) costs more, so the ceiling the ledger grants, which the upstream receives as
/// `max_tokens`, shows exactly how much of the balance is free (see `assert_billed`).
const BALANCE: i64 = 3_000;

/// Prices in 10⁻⁹ µcr per token (input, output) and the model's output ceiling.
fn pricing(model: &str) -> (i128, i128, u64) {
    match model {
        MINI => (1_600_000, 6_400_000, 32_768),
        SONNET => (48_000_000, 240_000_000, 16_384),
        other => panic!("no prices for {other}"),
    }
}

/// `ceil(prompt × input + completion × output)` in µcr.
fn cost(model: &str, prompt: u64, completion: u64) -> i64 {
    let (input, output, _) = pricing(model);
    let units = input * i128::from(prompt) + output * i128::from(completion);
    i64::try_from((units + 999_999_999) / 1_000_000_000).expect("small")
}

/// The output ceiling a request without `max_tokens` is granted when `free` µcr are free: the
/// prompt is estimated at one token per two bytes of body.
fn granted(model: &str, free: i64, body: &Value) -> u64 {
    let (input, output, ceiling) = pricing(model);
    let estimate = i128::from((body.to_string().len() as u64).div_ceil(2));
    let affordable = (i128::from(free) * 1_000_000_000 - estimate * input) / output;
    u64::try_from(affordable).expect("affordable").min(ceiling)
}

fn streamed(mut body: Value) -> Value {
    body["stream"] = json!(true);
    body
}

/// POST /v1/chat/completions, with `X-Quantized-Provider` when `forced` names one.
async fn chat_via(app: &TestApp, key: &str, body: &Value, forced: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> =
        forced.map(|p| ("X-Quantized-Provider", p)).into_iter().collect();
    app.post_with(key, "/v1/chat/completions", body, &headers).await
}

/// Nothing the upstream said about itself, and none of our provider keys, reaches the client.
fn assert_no_leak(r: &Reply) {
    for secret in [SECRET_MARKER, OPENROUTER_KEY, ANTHROPIC_KEY, "FakeProvider", "Fake upstream"] {
        assert!(!r.text.contains(secret), "the body leaks {secret:?}: {}", r.text);
        for (name, value) in r.headers.iter() {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(!value.contains(secret), "header {name} leaks {secret:?}: {value}");
        }
    }
    for upstream_header in ["x-generation-id", "request-id"] {
        assert!(r.header(upstream_header).is_none(), "{upstream_header} relayed");
    }
}

fn assert_unavailable(r: &Reply, what: &str) {
    assert_eq!(r.status(), 503, "{what}: {}", r.text);
    assert_eq!(r.error_message(), UNAVAILABLE, "{what}");
    assert_no_leak(r);
}

/// The chunks of a streamed reply (its final `[DONE]` checked and left out).
fn chunks_of(r: &Reply) -> Vec<Value> {
    let events = sse_events(&r.text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{}", r.text);
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}")))
        .collect()
}

fn content_of(chunks: &[Value]) -> String {
    chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect()
}

#[derive(Debug, PartialEq, Eq)]
struct UsageRow {
    model: String,
    provider: String,
    status: String,
    stream: bool,
    prompt_tokens: i64,
    completion_tokens: i64,
    micro_credits: i64,
}

fn usage_rows(app: &TestApp, license_id: &str) -> Vec<UsageRow> {
    let db = app.db();
    let mut statement = db
        .prepare(
            "SELECT model, provider, status, stream, prompt_tokens, completion_tokens,
                    micro_credits
               FROM usage WHERE license_id = ?1 ORDER BY id",
        )
        .expect("prepare");
    let rows = statement
        .query_map([license_id], |r| {
            Ok(UsageRow {
                model: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                provider: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                status: r.get(2)?,
                stream: r.get::<_, i64>(3)? != 0,
                prompt_tokens: r.get(4)?,
                completion_tokens: r.get(5)?,
                micro_credits: r.get(6)?,
            })
        })
        .expect("query");
    rows.map(|r| r.expect("row")).collect()
}

fn row(
    model: &str,
    provider: &str,
    status: &str,
    stream: bool,
    prompt: i64,
    completion: i64,
) -> UsageRow {
    UsageRow {
        model: model.into(),
        provider: provider.into(),
        status: status.into(),
        stream,
        prompt_tokens: prompt,
        completion_tokens: completion,
        micro_credits: cost(model, prompt as u64, completion as u64),
    }
}

/// The license's whole money trail: `charged` µcr were taken in `rows` usage rows, the usage
/// rows and the ledger agree, and nothing is still held. `GET /v1/license` shows the committed
/// balance whatever is held, so a probe request tells the rest: with a `BALANCE`-sized license
/// the output ceiling it is granted (sent upstream as `max_tokens`) is set by the free balance,
/// and a hold left behind, even of 1 µcr, lowers it. The probe is billed like any request.
async fn assert_billed(
    app: &TestApp,
    upstream: &FakeUpstream,
    seeded: &Seeded,
    initial: i64,
    charged: i64,
    rows: usize,
) {
    let id = &seeded.license_id;
    let license = app.license(&seeded.key).await;
    assert_eq!(license["available_micro_credits"], initial - charged, "available balance");
    assert_eq!(license["used_micro_credits"], charged, "used");
    let usage_sum =
        app.query_i64("SELECT SUM(micro_credits) FROM usage WHERE license_id = ?1", [id]);
    assert_eq!(usage_sum, charged, "usage rows");
    assert_eq!(usage_rows(app, id).len(), rows, "usage rows");
    let ledger_sum =
        app.query_i64("SELECT SUM(micro_credits) FROM ledger_entries WHERE license_id = ?1", [id]);
    assert_eq!(ledger_sum, initial - charged, "ledger entries");

    let probe = body_for(SONNET, "Is anything still held?");
    let ceiling = granted(SONNET, initial - charged, &probe);
    assert!(ceiling < 16_384, "the probe needs a balance that limits its output");
    upstream.set_default_fault(None);
    let r = app.chat(&seeded.key, &probe).await;
    assert_eq!(r.status(), 200, "probe: {}", r.text);
    let sent = upstream.last_request().expect("the probe reached the upstream");
    assert_eq!(sent.body["max_tokens"], ceiling, "a hold was left behind");
    let probe_cost = r.json()["usage"]["credits_used"].as_i64().expect("credits_used");
    let after = app.license(&seeded.key).await;
    assert_eq!(after["available_micro_credits"], initial - charged - probe_cost);
}

/// Each provider's circuit as `GET /admin/v1/providers` shows it.
async fn circuit(app: &TestApp, provider: &str) -> Value {
    let list = app.admin_ok("GET", "/providers", None).await;
    list.as_array()
        .and_then(|l| l.iter().find(|p| p["provider"] == provider))
        .cloned()
        .unwrap_or_else(|| panic!("no {provider} in {list}"))
}

fn closed(provider: &str, failures: u32) -> Value {
    json!({
        "provider": provider,
        "configured": true,
        "state": "closed",
        "consecutive_failures": failures,
    })
}

fn routes_called(upstream: &FakeUpstream) -> Vec<&'static str> {
    upstream.requests().iter().map(|r| r.route).collect()
}

/// One request per provider: the OpenRouter-only model, or the Claude model forced to Anthropic.
fn request_for(provider: &str, stream: bool) -> (Value, Option<&'static str>) {
    let (body, forced) = match provider {
        "openrouter" => (body_for(MINI, "Hi"), None),
        _ => (body_for(SONNET, "Hi"), Some("anthropic")),
    };
    (if stream { streamed(body) } else { body }, forced)
}

const ALL_CASES: &[(&str, bool)] =
    &[("openrouter", false), ("openrouter", true), ("anthropic", false), ("anthropic", true)];
const NON_STREAM: &[(&str, bool)] = &[("openrouter", false), ("anthropic", false)];

/// Sends one request per (provider, stream) case, each meeting `fault`, each on a license of its
/// own, all at once (so timeouts overlap); each must be the masked 503, must have reached its
/// provider exactly once (no retry, no fallback: Anthropic is forced) and cost nothing.
async fn assert_fault_is_masked(
    fault: Fault,
    cases: &[(&'static str, bool)],
    configure: impl FnOnce(&mut quantized::Settings),
) {
    let (app, upstream) = spawn_with_upstream(|s| {
        s.breaker.failure_threshold = 1000;
        configure(s);
    })
    .await;
    let mut licenses = Vec::new();
    for _ in cases {
        licenses.push(app.seed_license(Some(BALANCE)).await);
        upstream.push_fault(fault.clone());
    }

    let replies = join_all(cases.iter().zip(&licenses).map(|(&(provider, stream), seeded)| {
        let (body, forced) = request_for(provider, stream);
        let app = &app;
        async move { chat_via(app, &seeded.key, &body, forced).await }
    }))
    .await;

    for (&(provider, stream), r) in cases.iter().zip(&replies) {
        assert_unavailable(r, &format!("{fault:?} from {provider}, stream {stream}"));
    }
    let mut seen: Vec<(&str, bool)> =
        upstream.requests().iter().map(|q| (q.route, q.body["stream"] == true)).collect();
    seen.sort_unstable();
    let mut expected = cases.to_vec();
    expected.sort_unstable();
    assert_eq!(seen, expected, "each request reached its provider once");
    for seeded in &licenses {
        assert_billed(&app, &upstream, seeded, BALANCE, 0, 0).await;
    }
}

// =============================================================================================
// 1. Translation to Anthropic and back

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }})
}

#[actix_web::test]
async fn an_openai_request_reaches_anthropic_as_the_equivalent_messages_request() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    let body = json!({
        "model": SONNET,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": [
                {"type": "text", "text": "What are these, and the weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function",
                 "function": {"name": "get_weather",
                              "arguments": "{\"city\":\"Rome\",\"days\":2}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "21C"},
            {"role": "tool", "tool_call_id": "call_b", "content": "25C"},
        ],
        "tools": [weather_tool()],
        "tool_choice": "required",
        "parallel_tool_calls": false,
        "stop": ["END", "STOP"],
        "temperature": 1.5,
        "top_p": 0.9,
        "top_k": 40,
    });

    let r = app.chat(&seeded.key, &body).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_no_leak(&r);
    assert_eq!(routes_called(&upstream), ["anthropic"]);
    let sent = upstream.last_request().expect("sent");
    assert_eq!(sent.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert!(!sent.headers.iter().any(|(_, v)| v.contains(&seeded.key)), "client key forwarded");
    assert_eq!(
        sent.body,
        json!({
            "model": "claude-sonnet-4-20250514",
            // No max_tokens was asked for: the ceiling the balance pays for.
            "max_tokens": granted(SONNET, BALANCE, &body),
            "system": "Be brief.\nAnswer in French.",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What are these, and the weather?"},
                    {"type": "image", "source":
                        {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image",
                     "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_a", "name": "get_weather",
                     "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_b", "name": "get_weather",
                     "input": {"city": "Rome", "days": 2}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_a", "content": "21C"},
                    {"type": "tool_result", "tool_use_id": "call_b", "content": "25C"},
                ]},
            ],
            "tools": [{
                "name": "get_weather",
                "description": "Current weather",
                "input_schema":
                    {"type": "object",
                     "properties": {"city": {"type": "string"}},
                     "required": ["city"]},
            }],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["END", "STOP"],
            "temperature": 1,
            "top_p": 0.9,
            "top_k": 40,
        })
    );
    assert_eq!(r.json()["choices"][0]["message"]["content"], "Hello from the fake upstream");
    assert_billed(&app, &upstream, &seeded, BALANCE, cost(SONNET, 11, 7), 1).await;
}

#[actix_web::test]
async fn a_named_tool_choice_becomes_an_anthropic_tool_choice_and_max_tokens_is_kept() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    let mut body = body_for(SONNET, "Weather in Oslo?");
    body["tools"] = json!([weather_tool()]);
    body["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    body["stop"] = json!("END");
    body["max_tokens"] = json!(100);

    let r = app.chat(&seeded.key, &streamed(body)).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let sent = upstream.last_request().expect("sent");
    assert_eq!(sent.route, "anthropic");
    assert_eq!(sent.body["tool_choice"], json!({"type": "tool", "name": "get_weather"}));
    assert_eq!(sent.body["stop_sequences"], json!(["END"]));
    assert_eq!(sent.body["max_tokens"], 100, "a ceiling the balance covers is sent as asked");
    assert_eq!(sent.body["stream"], true);
    assert_eq!(content_of(&chunks_of(&r)), "Hello from the fake upstream");
    assert_billed(&app, &upstream, &seeded, BALANCE, cost(SONNET, 11, 7), 1).await;
}

#[actix_web::test]
async fn an_anthropic_tool_use_reply_becomes_openai_tool_calls() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    let arguments = r#"{"city":"Paris","unit":"celsius"}"#;
    upstream.set_reply(Answer {
        text: String::new(),
        tool_call: Some(("get_weather".into(), arguments.into())),
        ..Answer::default()
    });
    let mut body = body_for(SONNET, "Weather in Paris?");
    body["tools"] = json!([weather_tool()]);

    let r = app.chat(&seeded.key, &body).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_no_leak(&r);
    let reply = r.json();
    let choice = &reply["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 1);
    assert!(calls[0]["id"].as_str().is_some_and(|id| id.starts_with("toolu_")), "{}", calls[0]);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let text = calls[0]["function"]["arguments"].as_str().expect("arguments are a JSON string");
    let parsed: Value = serde_json::from_str(text).expect("arguments are JSON");
    assert_eq!(parsed, json!({"city": "Paris", "unit": "celsius"}));
    assert_eq!(reply["usage"]["prompt_tokens"], 11);
    assert_eq!(reply["usage"]["completion_tokens"], 7);
    assert_billed(&app, &upstream, &seeded, BALANCE, cost(SONNET, 11, 7), 1).await;
}

#[actix_web::test]
async fn an_anthropic_tool_use_stream_becomes_tool_call_deltas() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    let arguments = r#"{"city":"Paris","unit":"celsius"}"#;
    upstream.set_reply(Answer {
        text: String::new(),
        tool_call: Some(("get_weather".into(), arguments.into())),
        ..Answer::default()
    });
    let mut body = body_for(SONNET, "Weather in Paris?");
    body["tools"] = json!([weather_tool()]);

    let r = app.chat(&seeded.key, &streamed(body)).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_no_leak(&r);
    let chunks = chunks_of(&r);
    let calls: Vec<&Value> =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0)).collect();
    assert!(calls.len() >= 3, "a start and argument fragments: {calls:?}");
    assert_eq!(calls[0]["index"], 0);
    assert!(calls[0]["id"].as_str().is_some_and(|id| id.starts_with("toolu_")));
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert!(calls[1..].iter().all(|c| c["index"] == 0 && c.get("id").is_none()));
    let joined: String = calls.iter().filter_map(|c| c["function"]["arguments"].as_str()).collect();
    assert_eq!(joined, arguments);
    let finishes: Vec<&Value> =
        chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finishes, [&json!("tool_calls")]);
    let usage = &chunks.last().expect("usage chunk")["usage"];
    assert_eq!(usage["prompt_tokens"], 11);
    assert_eq!(usage["completion_tokens"], 7);
    assert_eq!(usage["credits_used"], cost(SONNET, 11, 7));
    assert_billed(&app, &upstream, &seeded, BALANCE, cost(SONNET, 11, 7), 1).await;
}

#[actix_web::test]
async fn anthropic_cache_reads_are_counted_in_prompt_tokens_and_billed() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    // 11 prompt tokens of which 4 were read from the cache: Anthropic says input_tokens 7.
    upstream.set_reply(Answer { cache_read_tokens: 4, ..Answer::default() });

    let plain = app.chat(&seeded.key, &body_for(SONNET, "Hi")).await;
    let stream = app.chat(&seeded.key, &streamed(body_for(SONNET, "Hi"))).await;

    assert_eq!(plain.status(), 200, "{}", plain.text);
    let usage = &plain.json()["usage"];
    assert_eq!(usage["prompt_tokens"], 11);
    assert_eq!(usage["completion_tokens"], 7);
    assert_eq!(usage["total_tokens"], 18);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 4);
    assert_eq!(usage["credits_used"], cost(SONNET, 11, 7));
    assert_eq!(stream.status(), 200, "{}", stream.text);
    let chunks = chunks_of(&stream);
    let usage = &chunks.last().expect("usage chunk")["usage"];
    assert_eq!(usage["prompt_tokens"], 11);
    assert_eq!(usage["completion_tokens"], 7);
    assert_eq!(usage["credits_used"], cost(SONNET, 11, 7));
    let rows = usage_rows(&app, &seeded.license_id);
    assert_eq!(
        rows,
        [
            row(SONNET, "anthropic", "completed", false, 11, 7),
            row(SONNET, "anthropic", "completed", true, 11, 7)
        ]
    );
    assert_billed(&app, &upstream, &seeded, BALANCE, 2 * cost(SONNET, 11, 7), 2).await;
}

#[actix_web::test]
async fn a_parameter_anthropic_cannot_honour_falls_over_to_openrouter() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    let mut penalty = body_for(SONNET, "Hi");
    penalty["frequency_penalty"] = json!(0.5);
    let mut bias = body_for(SONNET, "Hi");
    bias["logit_bias"] = json!({"50256": -100});

    let first = app.chat(&seeded.key, &penalty).await;
    let second = app.chat(&seeded.key, &streamed(bias)).await;

    assert_eq!(first.status(), 200, "{}", first.text);
    assert_eq!(first.json()["choices"][0]["message"]["content"], "Hello from the fake upstream");
    assert_eq!(second.status(), 200, "{}", second.text);
    assert_eq!(content_of(&chunks_of(&second)), "Hello from the fake upstream");
    // Anthropic was never called: the translation refused the field before any request.
    assert_eq!(routes_called(&upstream), ["openrouter", "openrouter"]);
    let sent = upstream.requests();
    assert_eq!(sent[0].body["model"], "anthropic/claude-sonnet-4");
    assert_eq!(sent[0].body["frequency_penalty"], 0.5);
    assert_eq!(sent[1].body["logit_bias"], json!({"50256": -100}));
    let rows = usage_rows(&app, &seeded.license_id);
    assert_eq!(
        rows,
        [
            row(SONNET, "openrouter", "completed", false, 11, 7),
            row(SONNET, "openrouter", "completed", true, 11, 7)
        ]
    );
    assert_billed(&app, &upstream, &seeded, BALANCE, 2 * cost(SONNET, 11, 7), 2).await;
}

#[actix_web::test]
async fn a_parameter_anthropic_cannot_honour_is_400_naming_it_when_anthropic_is_forced() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    let mut penalty = body_for(SONNET, "Hi");
    penalty["frequency_penalty"] = json!(0.5);
    let mut bias = streamed(body_for(SONNET, "Hi"));
    bias["logit_bias"] = json!({"50256": -100});

    let first = chat_via(&app, &seeded.key, &penalty, Some("anthropic")).await;
    let second = chat_via(&app, &seeded.key, &bias, Some("anthropic")).await;

    assert_eq!(first.status(), 400, "{}", first.text);
    assert_eq!(
        first.error_message(),
        "'frequency_penalty' is not supported by provider 'anthropic'"
    );
    assert_eq!(second.status(), 400, "{}", second.text);
    assert_eq!(second.error_message(), "'logit_bias' is not supported by provider 'anthropic'");
    assert_eq!(upstream.calls(), 0);
    assert_eq!(circuit(&app, "anthropic").await, closed("anthropic", 0));
    assert_billed(&app, &upstream, &seeded, BALANCE, 0, 0).await;
}

// =============================================================================================
// 2. Every upstream failure before output: a masked 503, nothing charged

#[actix_web::test]
async fn an_upstream_401_is_a_masked_503_and_costs_nothing() {
    assert_fault_is_masked(Fault::Status(401), ALL_CASES, |_| {}).await;
}

#[actix_web::test]
async fn an_upstream_403_is_a_masked_503_and_costs_nothing() {
    assert_fault_is_masked(Fault::Status(403), ALL_CASES, |_| {}).await;
}

#[actix_web::test]
async fn an_upstream_408_is_a_masked_503_and_costs_nothing() {
    assert_fault_is_masked(Fault::Status(408), ALL_CASES, |_| {}).await;
}

#[actix_web::test]
async fn an_upstream_429_is_a_masked_503_and_costs_nothing() {
    assert_fault_is_masked(Fault::Status(429), ALL_CASES, |_| {}).await;
}

#[actix_web::test]
async fn an_upstream_500_is_a_masked_503_and_costs_nothing() {
    assert_fault_is_masked(Fault::Status(500), ALL_CASES, |_| {}).await;
}

#[actix_web::test]
async fn an_upstream_502_is_a_masked_503_and_costs_nothing() {
    assert_fault_is_masked(Fault::Status(502), ALL_CASES, |_| {}).await;
}

#[actix_web::test]
async fn an_upstream_503_is_a_masked_503_and_costs_nothing() {
    assert_fault_is_masked(Fault::Status(503), ALL_CASES, |_| {}).await;
}

#[actix_web::test]
async fn an_upstream_529_is_a_masked_503_and_costs_nothing() {
    assert_fault_is_masked(Fault::Status(529), ALL_CASES, |_| {}).await;
}

#[actix_web::test]
async fn an_upstream_html_error_page_is_a_masked_503_and_costs_nothing() {
    let page = format!("<html><body>502 Bad Gateway ({SECRET_MARKER})</body></html>");
    assert_fault_is_masked(Fault::StatusWithBody(502, page), ALL_CASES, |_| {}).await;
}

#[actix_web::test]
async fn a_connection_reset_is_a_masked_503_and_costs_nothing() {
    assert_fault_is_masked(Fault::ResetConnection, ALL_CASES, |_| {}).await;
}

#[actix_web::test]
async fn an_upstream_slower_than_upstream_timeout_secs_is_a_masked_503_and_costs_nothing() {
    let fault = Fault::Delay(Duration::from_millis(2500));
    assert_fault_is_masked(fault, ALL_CASES, |s| s.limits.upstream_timeout_secs = 1).await;
}

#[actix_web::test]
async fn a_reply_body_that_stalls_past_upstream_timeout_secs_is_a_masked_503() {
    let fault = Fault::StallStream { after_chunks: 0, stall: Duration::from_millis(2500) };
    assert_fault_is_masked(fault, NON_STREAM, |s| s.limits.upstream_timeout_secs = 1).await;
}

#[actix_web::test]
async fn malformed_json_is_a_masked_503_and_costs_nothing() {
    assert_fault_is_masked(Fault::MalformedJson, ALL_CASES, |_| {}).await;
}

#[actix_web::test]
async fn json_of_the_wrong_shape_is_a_masked_503_and_costs_nothing() {
    assert_fault_is_masked(Fault::WrongShape, ALL_CASES, |_| {}).await;
}

#[actix_web::test]
async fn a_reply_body_cut_in_the_middle_is_a_masked_503_and_costs_nothing() {
    assert_fault_is_masked(Fault::CutStream { after_chunks: 0 }, NON_STREAM, |_| {}).await;
}

#[actix_web::test]
async fn an_error_reported_inside_a_reply_is_a_masked_503_and_costs_nothing() {
    // OpenRouter: a 200 whose choice carries `error`; Anthropic: 529 overloaded.
    assert_fault_is_masked(Fault::MidStreamError { after_chunks: 0 }, NON_STREAM, |_| {}).await;
}

#[actix_web::test]
async fn an_openrouter_error_event_before_the_first_chunk_is_a_masked_503() {
    let cases = &[("openrouter", true)];
    assert_fault_is_masked(Fault::MidStreamError { after_chunks: 0 }, cases, |_| {}).await;
}

#[actix_web::test]
async fn an_anthropic_error_event_before_the_first_chunk_is_a_masked_503() {
    let cases = &[("anthropic", true)];
    assert_fault_is_masked(Fault::MidStreamError { after_chunks: 0 }, cases, |_| {}).await;
}

#[actix_web::test]
async fn an_openrouter_stream_cut_before_its_first_chunk_is_a_masked_503() {
    let cases = &[("openrouter", true)];
    assert_fault_is_masked(Fault::CutStream { after_chunks: 0 }, cases, |_| {}).await;
}

#[actix_web::test]
async fn an_anthropic_stream_cut_before_its_first_chunk_is_a_masked_503() {
    let cases = &[("anthropic", true)];
    assert_fault_is_masked(Fault::CutStream { after_chunks: 0 }, cases, |_| {}).await;
}

#[actix_web::test]
async fn an_openrouter_stream_silent_past_the_idle_timeout_before_its_first_chunk_is_a_masked_503()
{
    let fault = Fault::StallStream { after_chunks: 0, stall: Duration::from_millis(2500) };
    let cases = &[("openrouter", true)];
    assert_fault_is_masked(fault, cases, |s| s.limits.stream_idle_timeout_secs = 1).await;
}

#[actix_web::test]
async fn an_anthropic_stream_silent_past_the_idle_timeout_before_its_first_chunk_is_a_masked_503() {
    let fault = Fault::StallStream { after_chunks: 0, stall: Duration::from_millis(2500) };
    let cases = &[("anthropic", true)];
    assert_fault_is_masked(fault, cases, |s| s.limits.stream_idle_timeout_secs = 1).await;
}

#[actix_web::test]
async fn an_upstream_model_not_found_is_404_with_our_model_id() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    upstream.set_default_fault(Some(Fault::ModelNotFound));

    let mut replies = Vec::new();
    for &(provider, stream) in ALL_CASES {
        let (body, forced) = request_for(provider, stream);
        replies.push((provider, chat_via(&app, &seeded.key, &body, forced).await));
    }
    // Unforced, the Claude model tries Anthropic, then OpenRouter: neither has it.
    let unforced = app.chat(&seeded.key, &body_for(SONNET, "Hi")).await;

    for (provider, r) in &replies {
        assert_eq!(r.status(), 404, "{provider}: {}", r.text);
        let model = if *provider == "openrouter" { MINI } else { SONNET };
        assert_eq!(r.error_message(), format!("Model '{model}' not found"));
        assert_no_leak(r);
    }
    assert_eq!(unforced.status(), 404, "{}", unforced.text);
    assert_eq!(unforced.error_message(), format!("Model '{SONNET}' not found"));
    assert_no_leak(&unforced);
    assert_eq!(
        routes_called(&upstream),
        ["openrouter", "openrouter", "anthropic", "anthropic", "anthropic", "openrouter"]
    );
    // Not the provider's fault: the circuits count no failure.
    assert_eq!(circuit(&app, "openrouter").await, closed("openrouter", 0));
    assert_eq!(circuit(&app, "anthropic").await, closed("anthropic", 0));
    assert_billed(&app, &upstream, &seeded, BALANCE, 0, 0).await;
}

#[actix_web::test]
async fn an_upstream_400_about_the_request_is_400_saying_what_was_wrong() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    let complaint = "messages: text content blocks must be non-empty";
    upstream.set_default_fault(Some(Fault::BadRequest(complaint.into())));

    let mut replies = Vec::new();
    for &(provider, stream) in ALL_CASES {
        let (body, forced) = request_for(provider, stream);
        replies.push((provider, chat_via(&app, &seeded.key, &body, forced).await));
    }
    // Unforced, a 400 from Anthropic is not fallen over: OpenRouter would say the same.
    let unforced = app.chat(&seeded.key, &body_for(SONNET, "Hi")).await;

    for (provider, r) in &replies {
        assert_eq!(r.status(), 400, "{provider}: {}", r.text);
        assert_eq!(r.error_message(), format!("The provider rejected the request: {complaint}"));
        assert_no_leak(r);
    }
    assert_eq!(unforced.status(), 400, "{}", unforced.text);
    assert_eq!(unforced.error_message(), format!("The provider rejected the request: {complaint}"));
    assert_eq!(
        routes_called(&upstream),
        ["openrouter", "openrouter", "anthropic", "anthropic", "anthropic"]
    );
    assert_eq!(circuit(&app, "openrouter").await, closed("openrouter", 0));
    assert_eq!(circuit(&app, "anthropic").await, closed("anthropic", 0));
    assert_billed(&app, &upstream, &seeded, BALANCE, 0, 0).await;
}

#[actix_web::test]
async fn when_every_route_fails_the_claude_model_is_503_after_trying_both_in_order() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    upstream.set_default_fault(Some(Fault::Status(500)));

    let plain = app.chat(&seeded.key, &body_for(SONNET, "Hi")).await;
    let stream = app.chat(&seeded.key, &streamed(body_for(SONNET, "Hi"))).await;

    assert_unavailable(&plain, "non-stream");
    assert_unavailable(&stream, "stream");
    assert_eq!(routes_called(&upstream), ["anthropic", "openrouter", "anthropic", "openrouter"]);
    assert_billed(&app, &upstream, &seeded, BALANCE, 0, 0).await;
}

// =============================================================================================
// 3. Failures after the stream began: error event, usage for what was delivered, [DONE]

/// A stream that fails after three content chunks: the client has those three, then exactly the
/// error event, then a usage chunk for what it got, then `[DONE]`, and pays only that.
async fn assert_failure_after_three_chunks(
    provider: &str,
    fault: Fault,
    configure: impl FnOnce(&mut quantized::Settings),
) {
    let (app, upstream) = spawn_with_upstream(|s| {
        s.breaker.failure_threshold = 1000;
        configure(s);
    })
    .await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    let model = if provider == "openrouter" { MINI } else { SONNET };
    upstream.push_fault(fault.clone());

    let r = app.chat(&seeded.key, &streamed(body_for(model, "Hi"))).await;

    assert_eq!(r.status(), 200, "{fault:?}: {}", r.text);
    assert_no_leak(&r);
    let events = sse_events(&r.text);
    let n = events.len();
    assert!(n >= 6, "{events:?}");
    assert_eq!(events[n - 1], "[DONE]");
    assert_eq!(events[n - 3], ERROR_EVENT, "{fault:?}: {events:?}");
    let chunks: Vec<Value> = events[..n - 3]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}")))
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c.get("error").is_none()));
    let with_text = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty()))
        .count();
    assert_eq!(with_text, 3);
    assert_eq!(content_of(&chunks), "Hello from the");
    // Anthropic gave the prompt size in message_start; OpenRouter gives it only at the end,
    // which never came.
    let prompt = if provider == "openrouter" { 0 } else { 11 };
    let charge = cost(model, prompt, 3);
    let usage_chunk: Value = serde_json::from_str(&events[n - 2]).expect("usage chunk");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["id"], chunks[0]["id"]);
    assert_eq!(usage_chunk["model"], model);
    assert_eq!(
        usage_chunk["usage"],
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": 3,
            "total_tokens": prompt + 3,
            "credits_used": charge,
            "credits_remaining": BALANCE - charge,
        })
    );
    assert_eq!(routes_called(&upstream), [provider], "never fallen over after the first byte");
    assert_eq!(
        usage_rows(&app, &seeded.license_id),
        [row(model, provider, "upstream_failed", true, prompt as i64, 3)]
    );
    assert_billed(&app, &upstream, &seeded, BALANCE, charge, 1).await;
}

#[actix_web::test]
async fn an_openrouter_stream_cut_after_three_chunks_ends_with_the_error_event_and_bills_them() {
    assert_failure_after_three_chunks("openrouter", Fault::CutStream { after_chunks: 3 }, |_| {})
        .await;
}

#[actix_web::test]
async fn an_anthropic_stream_cut_after_three_chunks_ends_with_the_error_event_and_bills_them() {
    assert_failure_after_three_chunks("anthropic", Fault::CutStream { after_chunks: 3 }, |_| {})
        .await;
}

#[actix_web::test]
async fn an_openrouter_error_event_after_three_chunks_ends_with_the_error_event_and_bills_them() {
    let fault = Fault::MidStreamError { after_chunks: 3 };
    assert_failure_after_three_chunks("openrouter", fault, |_| {}).await;
}

#[actix_web::test]
async fn an_anthropic_error_event_after_three_chunks_ends_with_the_error_event_and_bills_them() {
    let fault = Fault::MidStreamError { after_chunks: 3 };
    assert_failure_after_three_chunks("anthropic", fault, |_| {}).await;
}

#[actix_web::test]
async fn an_openrouter_stream_stalled_after_three_chunks_ends_with_the_error_event_and_bills_them()
{
    let fault = Fault::StallStream { after_chunks: 3, stall: Duration::from_millis(2500) };
    assert_failure_after_three_chunks("openrouter", fault, |s| {
        s.limits.stream_idle_timeout_secs = 1;
    })
    .await;
}

#[actix_web::test]
async fn an_anthropic_stream_stalled_after_three_chunks_ends_with_the_error_event_and_bills_them() {
    let fault = Fault::StallStream { after_chunks: 3, stall: Duration::from_millis(2500) };
    assert_failure_after_three_chunks("anthropic", fault, |s| {
        s.limits.stream_idle_timeout_secs = 1;
    })
    .await;
}

// =============================================================================================
// 4. Circuit breaker

/// The gateway with a circuit that opens after two failures and probes after one second.
async fn spawn_with_twitchy_breaker() -> (TestApp, FakeUpstream, Seeded) {
    let (app, upstream) = spawn_with_upstream(|s| {
        s.breaker.failure_threshold = 2;
        s.breaker.open_secs = 1;
    })
    .await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    (app, upstream, seeded)
}

/// Two 500s from OpenRouter: its circuit opens.
async fn open_openrouter_circuit(app: &TestApp, upstream: &FakeUpstream, seeded: &Seeded) {
    let before = upstream.calls();
    upstream.push_fault(Fault::Status(500));
    upstream.push_fault(Fault::Status(500));
    for _ in 0..2 {
        assert_unavailable(&app.chat(&seeded.key, &body_for(MINI, "Hi")).await, "500");
    }
    assert_eq!(upstream.calls(), before + 2);
}

#[actix_web::test]
async fn two_failures_open_the_circuit_and_the_next_request_is_503_without_calling_the_upstream() {
    let (app, upstream, seeded) = spawn_with_twitchy_breaker().await;
    assert_eq!(circuit(&app, "openrouter").await, closed("openrouter", 0));

    open_openrouter_circuit(&app, &upstream, &seeded).await;
    let started = std::time::Instant::now();
    let plain = app.chat(&seeded.key, &body_for(MINI, "Hi")).await;
    let stream = app.chat(&seeded.key, &streamed(body_for(MINI, "Hi"))).await;

    assert_unavailable(&plain, "open circuit");
    assert_unavailable(&stream, "open circuit, stream");
    assert!(started.elapsed() < Duration::from_millis(500), "refused at once");
    assert_eq!(upstream.calls(), 2, "the open circuit kept the upstream out of it");
    assert_eq!(
        circuit(&app, "openrouter").await,
        json!({
            "provider": "openrouter",
            "configured": true,
            "state": "open",
            "consecutive_failures": 2,
        })
    );
    assert_eq!(circuit(&app, "anthropic").await, closed("anthropic", 0));
    assert_billed(&app, &upstream, &seeded, BALANCE, 0, 0).await;
}

#[actix_web::test]
async fn after_open_secs_a_successful_probe_closes_the_circuit() {
    let (app, upstream, seeded) = spawn_with_twitchy_breaker().await;
    open_openrouter_circuit(&app, &upstream, &seeded).await;

    actix_web::rt::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(circuit(&app, "openrouter").await["state"], "half_open");
    let probe = app.chat(&seeded.key, &body_for(MINI, "Hi")).await;

    assert_eq!(probe.status(), 200, "{}", probe.text);
    assert_eq!(upstream.calls(), 3);
    assert_eq!(circuit(&app, "openrouter").await, closed("openrouter", 0));
    let next = app.chat(&seeded.key, &streamed(body_for(MINI, "Hi"))).await;
    assert_eq!(next.status(), 200, "{}", next.text);
    assert_eq!(upstream.calls(), 4);
    assert_billed(&app, &upstream, &seeded, BALANCE, 2 * cost(MINI, 11, 7), 2).await;
}

#[actix_web::test]
async fn a_failed_probe_opens_the_circuit_again() {
    let (app, upstream, seeded) = spawn_with_twitchy_breaker().await;
    open_openrouter_circuit(&app, &upstream, &seeded).await;

    actix_web::rt::time::sleep(Duration::from_millis(1100)).await;
    upstream.push_fault(Fault::Status(502));
    let probe = app.chat(&seeded.key, &body_for(MINI, "Hi")).await;

    assert_unavailable(&probe, "failed probe");
    assert_eq!(upstream.calls(), 3, "the probe was sent");
    assert_eq!(circuit(&app, "openrouter").await["state"], "open");
    let refused = app.chat(&seeded.key, &body_for(MINI, "Hi")).await;
    assert_unavailable(&refused, "open again");
    assert_eq!(upstream.calls(), 3, "open again: no request");
    assert_billed(&app, &upstream, &seeded, BALANCE, 0, 0).await;
}

#[actix_web::test]
async fn a_stream_that_fails_midway_counts_against_the_circuit() {
    let (app, upstream) = spawn_with_upstream(|s| s.breaker.failure_threshold = 1).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    upstream.push_fault(Fault::MidStreamError { after_chunks: 1 });

    let broken = app.chat(&seeded.key, &streamed(body_for(MINI, "Hi"))).await;
    let refused = app.chat(&seeded.key, &body_for(MINI, "Hi")).await;

    assert_eq!(broken.status(), 200, "{}", broken.text);
    assert!(sse_events(&broken.text).iter().any(|e| e == ERROR_EVENT));
    assert_eq!(circuit(&app, "openrouter").await["state"], "open");
    assert_unavailable(&refused, "open circuit");
    assert_eq!(upstream.calls(), 1);
    assert_billed(&app, &upstream, &seeded, BALANCE, cost(MINI, 0, 1), 1).await;
}

// =============================================================================================
// 5. Fallback: before the first byte, never after

#[actix_web::test]
async fn an_anthropic_500_is_served_by_openrouter_before_any_byte() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;

    upstream.push_fault(Fault::Status(500));
    let plain = app.chat(&seeded.key, &body_for(SONNET, "Hi")).await;
    upstream.push_fault(Fault::Status(529));
    let stream = app.chat(&seeded.key, &streamed(body_for(SONNET, "Hi"))).await;

    assert_eq!(plain.status(), 200, "{}", plain.text);
    assert_no_leak(&plain);
    assert_eq!(plain.json()["model"], SONNET);
    assert_eq!(plain.json()["choices"][0]["message"]["content"], "Hello from the fake upstream");
    assert_eq!(stream.status(), 200, "{}", stream.text);
    assert_no_leak(&stream);
    assert_eq!(content_of(&chunks_of(&stream)), "Hello from the fake upstream");
    assert_eq!(routes_called(&upstream), ["anthropic", "openrouter", "anthropic", "openrouter"]);
    let sent = upstream.requests();
    assert_eq!(sent[1].body["model"], "anthropic/claude-sonnet-4");
    assert_eq!(sent[3].body["stream"], true);
    assert_eq!(
        usage_rows(&app, &seeded.license_id),
        [
            row(SONNET, "openrouter", "completed", false, 11, 7),
            row(SONNET, "openrouter", "completed", true, 11, 7)
        ]
    );
    assert_eq!(circuit(&app, "anthropic").await, closed("anthropic", 2));
    assert_billed(&app, &upstream, &seeded, BALANCE, 2 * cost(SONNET, 11, 7), 2).await;
}

#[actix_web::test]
async fn an_anthropic_stream_that_breaks_before_its_first_chunk_is_served_by_openrouter() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    upstream.push_fault(Fault::MalformedJson);

    let r = app.chat(&seeded.key, &streamed(body_for(SONNET, "Hi"))).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_no_leak(&r);
    assert!(!r.text.contains("error"), "{}", r.text);
    assert_eq!(content_of(&chunks_of(&r)), "Hello from the fake upstream");
    assert_eq!(routes_called(&upstream), ["anthropic", "openrouter"]);
    assert_eq!(
        usage_rows(&app, &seeded.license_id),
        [row(SONNET, "openrouter", "completed", true, 11, 7)]
    );
    assert_billed(&app, &upstream, &seeded, BALANCE, cost(SONNET, 11, 7), 1).await;
}

#[actix_web::test]
async fn an_anthropic_stream_that_dies_before_any_content_is_served_by_openrouter() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    upstream.push_fault(Fault::CutStream { after_chunks: 0 });

    let r = app.chat(&seeded.key, &streamed(body_for(SONNET, "Hi"))).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert!(!r.text.contains("error"), "{}", r.text);
    assert_eq!(content_of(&chunks_of(&r)), "Hello from the fake upstream");
    assert_eq!(routes_called(&upstream), ["anthropic", "openrouter"]);
    assert_eq!(
        usage_rows(&app, &seeded.license_id),
        [row(SONNET, "openrouter", "completed", true, 11, 7)]
    );
    assert_billed(&app, &upstream, &seeded, BALANCE, cost(SONNET, 11, 7), 1).await;
}

#[actix_web::test]
async fn an_open_anthropic_circuit_sends_the_claude_model_straight_to_openrouter() {
    let (app, upstream) = spawn_with_upstream(|s| s.breaker.failure_threshold = 1).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    upstream.push_fault(Fault::Status(503));

    let first = app.chat(&seeded.key, &body_for(SONNET, "Hi")).await;
    let second = app.chat(&seeded.key, &streamed(body_for(SONNET, "Hi"))).await;

    assert_eq!(first.status(), 200, "{}", first.text);
    assert_eq!(second.status(), 200, "{}", second.text);
    assert_eq!(content_of(&chunks_of(&second)), "Hello from the fake upstream");
    assert_eq!(routes_called(&upstream), ["anthropic", "openrouter", "openrouter"]);
    assert_eq!(circuit(&app, "anthropic").await["state"], "open");
    assert_eq!(
        usage_rows(&app, &seeded.license_id),
        [
            row(SONNET, "openrouter", "completed", false, 11, 7),
            row(SONNET, "openrouter", "completed", true, 11, 7)
        ]
    );
    // The probe inside assert_billed goes to OpenRouter too, with the same ceiling.
    assert_billed(&app, &upstream, &seeded, BALANCE, 2 * cost(SONNET, 11, 7), 2).await;
    assert_eq!(upstream.last_request().expect("probe").route, "openrouter");
}

#[actix_web::test]
async fn a_failure_after_the_first_byte_is_never_fallen_over() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    upstream.push_fault(Fault::MidStreamError { after_chunks: 2 });

    let r = app.chat(&seeded.key, &streamed(body_for(SONNET, "Hi"))).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_no_leak(&r);
    let events = sse_events(&r.text);
    let n = events.len();
    assert_eq!(events[n - 1], "[DONE]");
    assert_eq!(events[n - 3], ERROR_EVENT);
    let chunks: Vec<Value> =
        events[..n - 3].iter().map(|e| serde_json::from_str(e).expect("chunk")).collect();
    assert_eq!(content_of(&chunks), "Hello from");
    assert_eq!(routes_called(&upstream), ["anthropic"], "OpenRouter was not called");
    let charge = cost(SONNET, 11, 2);
    let usage_chunk: Value = serde_json::from_str(&events[n - 2]).expect("usage chunk");
    assert_eq!(usage_chunk["usage"]["credits_used"], charge);
    assert_eq!(
        usage_rows(&app, &seeded.license_id),
        [row(SONNET, "anthropic", "upstream_failed", true, 11, 2)]
    );
    assert_billed(&app, &upstream, &seeded, BALANCE, charge, 1).await;
}

// =============================================================================================
// 6. X-Quantized-Provider

#[actix_web::test]
async fn x_quantized_provider_openrouter_forces_the_second_route_of_the_claude_model() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;

    let plain = chat_via(&app, &seeded.key, &body_for(SONNET, "Hi"), Some("openrouter")).await;
    let stream =
        chat_via(&app, &seeded.key, &streamed(body_for(SONNET, "Hi")), Some("openrouter")).await;

    assert_eq!(plain.status(), 200, "{}", plain.text);
    assert_eq!(plain.json()["model"], SONNET);
    assert_eq!(stream.status(), 200, "{}", stream.text);
    assert_eq!(content_of(&chunks_of(&stream)), "Hello from the fake upstream");
    assert_eq!(routes_called(&upstream), ["openrouter", "openrouter"]);
    assert!(upstream.requests().iter().all(|r| r.body["model"] == "anthropic/claude-sonnet-4"));
    assert_eq!(
        usage_rows(&app, &seeded.license_id),
        [
            row(SONNET, "openrouter", "completed", false, 11, 7),
            row(SONNET, "openrouter", "completed", true, 11, 7)
        ]
    );
    assert_billed(&app, &upstream, &seeded, BALANCE, 2 * cost(SONNET, 11, 7), 2).await;
}

#[actix_web::test]
async fn x_quantized_provider_anthropic_accepts_the_native_model_id() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    let native = "claude-sonnet-4-20250514";

    let plain = chat_via(&app, &seeded.key, &body_for(native, "Hi"), Some("anthropic")).await;
    let stream =
        chat_via(&app, &seeded.key, &streamed(body_for(native, "Hi")), Some("anthropic")).await;

    assert_eq!(plain.status(), 200, "{}", plain.text);
    assert_eq!(plain.json()["choices"][0]["message"]["content"], "Hello from the fake upstream");
    assert_eq!(stream.status(), 200, "{}", stream.text);
    assert_eq!(content_of(&chunks_of(&stream)), "Hello from the fake upstream");
    assert_eq!(routes_called(&upstream), ["anthropic", "anthropic"]);
    assert!(upstream.requests().iter().all(|r| r.body["model"] == native));
    assert_eq!(
        usage_rows(&app, &seeded.license_id),
        [
            row(SONNET, "anthropic", "completed", false, 11, 7),
            row(SONNET, "anthropic", "completed", true, 11, 7)
        ]
    );
    assert_billed(&app, &upstream, &seeded, BALANCE, 2 * cost(SONNET, 11, 7), 2).await;
}

#[actix_web::test]
async fn a_forced_provider_that_does_not_serve_the_model_is_404() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    let native = "claude-sonnet-4-20250514";
    let cases = [
        (MINI, Some("anthropic"), MINI),
        (MINI, Some("demo"), MINI),
        ("demo/echo", Some("openrouter"), "demo/echo"),
        (native, Some("openrouter"), native),
        (native, None, native),
    ];

    for (model, forced, named) in cases {
        let r = chat_via(&app, &seeded.key, &body_for(model, "Hi"), forced).await;

        assert_eq!(r.status(), 404, "{model} via {forced:?}: {}", r.text);
        assert_eq!(r.error_message(), format!("Model '{named}' not found"));
    }
    assert_eq!(upstream.calls(), 0);
    assert_billed(&app, &upstream, &seeded, BALANCE, 0, 0).await;
}

#[actix_web::test]
async fn an_unknown_or_unsuitable_provider_in_the_header_is_400() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;

    let unknown = chat_via(&app, &seeded.key, &body_for(SONNET, "Hi"), Some("bedrock")).await;
    let unsuitable = chat_via(&app, &seeded.key, &body_for(SONNET, "Hi"), Some("exa")).await;

    assert_eq!(unknown.status(), 400, "{}", unknown.text);
    assert_eq!(unknown.error_message(), "Unknown provider 'bedrock'");
    assert_eq!(unsuitable.status(), 400, "{}", unsuitable.text);
    assert_eq!(unsuitable.error_message(), "Provider 'exa' does not support this endpoint");
    assert_eq!(upstream.calls(), 0);
    assert_billed(&app, &upstream, &seeded, BALANCE, 0, 0).await;
}

#[actix_web::test]
async fn a_forced_provider_that_fails_is_503_without_falling_over() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    upstream.push_fault(Fault::Status(500));
    upstream.push_fault(Fault::Status(500));

    let anthropic = chat_via(&app, &seeded.key, &body_for(SONNET, "Hi"), Some("anthropic")).await;
    let openrouter = chat_via(&app, &seeded.key, &body_for(SONNET, "Hi"), Some("openrouter")).await;

    assert_unavailable(&anthropic, "forced anthropic");
    assert_unavailable(&openrouter, "forced openrouter");
    assert_eq!(routes_called(&upstream), ["anthropic", "openrouter"]);
    assert_billed(&app, &upstream, &seeded, BALANCE, 0, 0).await;
}

// =============================================================================================
// 7. A client that goes away mid-stream

/// Reads a streamed reply until two content chunks arrived, then drops it; returns the usage
/// row once the relay settled.
async fn disconnect_after_two_chunks(app: &TestApp, seeded: &Seeded, model: &str) -> UsageRow {
    let mut res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .insert_header(("Authorization", format!("Bearer {}", seeded.key)))
        .insert_header(("Content-Type", "application/json"))
        .send_body(streamed(body_for(model, "Hi")).to_string())
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let mut received = String::new();
    let content_chunks = |text: &str| {
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty()))
            .count()
    };
    while content_chunks(&received) < 2 {
        let chunk = res.next().await.expect("stream open").expect("chunk");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(res);

    for _ in 0..250 {
        if let Some(row) = usage_rows(app, &seeded.license_id).pop() {
            return row;
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no usage row 5 s after the client went away");
}

/// A reply of 100 words that pauses after the second, so the stream is still going when the
/// client leaves.
fn long_reply(upstream: &FakeUpstream) {
    let words: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
    upstream.set_reply(Answer {
        text: words.join(" "),
        completion_tokens: 100,
        ..Answer::default()
    });
    upstream.push_fault(Fault::StallStream { after_chunks: 2, stall: Duration::from_millis(300) });
}

#[actix_web::test]
async fn a_client_that_leaves_an_anthropic_stream_pays_for_what_it_was_sent_and_nothing_stays_held()
{
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    long_reply(&upstream);

    let row = disconnect_after_two_chunks(&app, &seeded, SONNET).await;

    assert_eq!(row.status, "client_disconnected");
    assert_eq!(
        (row.model.as_str(), row.provider.as_str(), row.stream),
        (SONNET, "anthropic", true)
    );
    assert_eq!(row.prompt_tokens, 11, "from message_start");
    assert!((2..100).contains(&row.completion_tokens), "billed {} of 100", row.completion_tokens);
    let charge = cost(SONNET, 11, row.completion_tokens as u64);
    assert_eq!(row.micro_credits, charge);
    // Not the provider's fault.
    assert_eq!(circuit(&app, "anthropic").await, closed("anthropic", 0));
    upstream.set_reply(Answer::default());
    assert_billed(&app, &upstream, &seeded, BALANCE, charge, 1).await;
}

#[actix_web::test]
async fn a_client_that_leaves_an_openrouter_stream_pays_for_what_it_was_sent_and_nothing_stays_held(
) {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    long_reply(&upstream);

    let row = disconnect_after_two_chunks(&app, &seeded, MINI).await;

    assert_eq!(row.status, "client_disconnected");
    assert_eq!((row.model.as_str(), row.provider.as_str(), row.stream), (MINI, "openrouter", true));
    assert_eq!(row.prompt_tokens, 0, "OpenRouter reports usage only at the end");
    assert!((2..100).contains(&row.completion_tokens), "billed {} of 100", row.completion_tokens);
    let charge = cost(MINI, 0, row.completion_tokens as u64);
    assert_eq!(row.micro_credits, charge);
    assert_eq!(circuit(&app, "openrouter").await, closed("openrouter", 0));
    upstream.set_reply(Answer::default());
    assert_billed(&app, &upstream, &seeded, BALANCE, charge, 1).await;
}
