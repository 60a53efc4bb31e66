//! /v1/embeddings and /v1/responses: the demo provider offline, OpenRouter through the fake.

use base64::Engine;
use serde_json::{json, Value};

use crate::fake_upstream::{Fault, SECRET_MARKER};
use crate::helpers::*;
use crate::upstreams::spawn_with_upstream;

fn embed(model: &str, input: Value) -> Value {
    json!({"model": model, "input": input})
}

#[actix_web::test]
async fn demo_embeddings_return_one_vector_per_input_billed_on_input_tokens_only() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(10_000)).await;

    let r = app
        .post(&seeded.key, "/v1/embeddings", &embed("demo/embed", json!(["hello world", "x"])))
        .await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let body = r.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "demo/embed");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        assert_eq!(item["embedding"].as_array().unwrap().len(), 16);
    }
    // 3 words × 0.5 µcr = 1.5 → 2
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 3, "credits_used": 2, "credits_remaining": 9_998})
    );
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], 9_998);
    assert_eq!(
        app.query_i64("SELECT prompt_tokens FROM usage WHERE endpoint = 'embeddings'", []),
        3
    );
}

#[actix_web::test]
async fn base64_embeddings_are_the_float_vectors_as_little_endian_f32() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(10_000)).await;
    let mut as_base64 = embed("demo/embed", json!("same text"));
    as_base64["encoding_format"] = json!("base64");
    as_base64["dimensions"] = json!(8);
    let mut as_float = as_base64.clone();
    as_float["encoding_format"] = json!("float");

    let floats = app.post(&seeded.key, "/v1/embeddings", &as_float).await.json();
    let encoded = app.post(&seeded.key, "/v1/embeddings", &as_base64).await.json();

    let expected: Vec<f32> = floats["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(expected.len(), 8);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> =
        bytes.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(decoded, expected);
}

#[actix_web::test]
async fn chat_and_embedding_models_are_not_interchangeable() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(10_000)).await;

    let chat_model = app.post(&seeded.key, "/v1/embeddings", &embed("demo/echo", json!("x"))).await;
    let embedding_model = app
        .chat(
            &seeded.key,
            &json!({"model": "demo/embed", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    let responses =
        app.post(&seeded.key, "/v1/responses", &json!({"model": "demo/embed", "input": "x"})).await;

    assert_eq!(chat_model.status(), 400);
    assert_eq!(
        chat_model.error_message(),
        "Model 'demo/echo' is a chat model, not an embedding model"
    );
    assert_eq!(embedding_model.status(), 400);
    assert_eq!(
        embedding_model.error_message(),
        "Model 'demo/embed' is an embedding model, not a chat model"
    );
    assert_eq!(responses.status(), 400);
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], 10_000);
}

#[actix_web::test]
async fn embeddings_validation_names_the_field() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(10_000)).await;
    let cases = [
        (json!({"input": "x"}), "field required: 'model'"),
        (json!({"model": "demo/embed"}), "field required: 'input'"),
        (
            json!({"model": "demo/embed", "input": [[1, 2]]}),
            "invalid type for 'input[0]': expected string",
        ),
        (
            json!({"model": "demo/embed", "input": "x", "input_type": "query"}),
            "unknown field: 'input_type'",
        ),
        (
            json!({"model": "demo/embed", "input": "x", "dimensions": 0}),
            "'dimensions' must be between 1 and 65536",
        ),
        (json!({"model": "nope", "input": "x"}), "Model 'nope' not found"),
    ];
    for (body, message) in cases {
        let r = app.post(&seeded.key, "/v1/embeddings", &body).await;
        assert!(matches!(r.status(), 400 | 404), "{body}: {}", r.text);
        assert_eq!(r.error_message(), message, "{body}");
    }
    let forced = app
        .post_with(
            &seeded.key,
            "/v1/embeddings",
            &embed("demo/embed", json!("x")),
            &[("X-Quantized-Provider", "anthropic")],
        )
        .await;
    assert_eq!(forced.status(), 400);
    assert_eq!(forced.error_message(), "Provider 'anthropic' does not support this endpoint");
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM usage", []), 0);
}

#[actix_web::test]
async fn openrouter_embeddings_are_put_in_input_order_and_billed_from_upstream_usage() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(10_000)).await;
    let mut body = embed("text-embedding-3-small", json!(["a", "b", "c"]));
    body["encoding_format"] = json!("base64");

    let r = app.post(&seeded.key, "/v1/embeddings", &body).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let sent = upstream.last_request().unwrap();
    assert_eq!(sent.body["model"], "openai/text-embedding-3-small");
    assert_eq!(sent.body["encoding_format"], "float");
    let reply = r.json();
    let first = base64::engine::general_purpose::STANDARD
        .decode(reply["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        f32::from_le_bytes([first[0], first[1], first[2], first[3]]),
        0.25,
        "vector of input 0 first"
    );
    // 11 × 0.00008 = 0.00088 → 1 µcr
    assert_eq!(
        reply["usage"],
        json!({"prompt_tokens": 11, "total_tokens": 11, "credits_used": 1, "credits_remaining": 9_999})
    );
}

#[actix_web::test]
async fn an_embeddings_upstream_failure_is_masked_and_free() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(10_000)).await;
    upstream.push_fault(Fault::Status(500));
    upstream.push_fault(Fault::MalformedJson);

    for _ in 0..2 {
        let r = app
            .post(&seeded.key, "/v1/embeddings", &embed("text-embedding-3-small", json!("x")))
            .await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.error_message(), "Service temporarily unavailable");
        assert!(!r.text.contains(SECRET_MARKER));
    }
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], 10_000);
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM usage", []), 0);
}

#[actix_web::test]
async fn demo_responses_carry_usage_with_credits() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(10_000)).await;

    let r = app
        .post(
            &seeded.key,
            "/v1/responses",
            &json!({"model": "demo/echo", "input": "What is the capital of France?"}),
        )
        .await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let body = r.json();
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(
        body["output"][0]["content"][0]["text"],
        "Hello from the Quantized demo model! You said: What is the capital of France?"
    );
    // 6 words + 1 = 7 input tokens, 14 output: 7 × 0.75 + 14 × 2.5 = 40.25 → 41
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 7, "output_tokens": 14, "total_tokens": 21, "credits_used": 41, "credits_remaining": 9_959})
    );
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], 9_959);
}

/// (event name, data) pairs of a Responses SSE body; asserts the `event:` line matches `type`.
fn named_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut lines = block.lines();
            let name = lines
                .next()
                .and_then(|l| l.strip_prefix("event: "))
                .unwrap_or_else(|| panic!("no event line: {block}"));
            let data: Value = serde_json::from_str(
                lines.next().and_then(|l| l.strip_prefix("data: ")).expect("data line"),
            )
            .expect("data is JSON");
            assert_eq!(data["type"], name, "{block}");
            (name.to_string(), data)
        })
        .collect()
}

#[actix_web::test]
async fn demo_responses_stream_names_each_event_and_ends_with_completed_carrying_credits() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(10_000)).await;

    let r = app
        .post(
            &seeded.key,
            "/v1/responses",
            &json!({"model": "demo/echo", "input": "Hi there", "stream": true}),
        )
        .await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(r.header("content-type").as_deref(), Some("text/event-stream; charset=utf-8"));
    assert!(!r.text.contains("[DONE]"));
    let events = named_events(&r.text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello from the Quantized demo model! You said: Hi there");
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "response.completed");
    let usage = &data["response"]["usage"];
    // 2 + 1 input tokens, 10 output: 2.25 + 25 → 28
    assert_eq!(usage["input_tokens"], 3);
    assert_eq!(usage["output_tokens"], 10);
    assert_eq!(usage["credits_used"], 28);
    assert_eq!(usage["credits_remaining"], 10_000 - 28);
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], 10_000 - 28);
}

#[actix_web::test]
async fn openrouter_responses_pass_through_with_our_usage_and_no_costs() {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(100_000)).await;

    let plain = app.post(&seeded.key, "/v1/responses", &json!({"model": "openai/gpt-4.1-mini", "input": "Hi", "previous_response_id": "resp_prev"})).await;
    let streamed = app
        .post(
            &seeded.key,
            "/v1/responses",
            &json!({"model": "openai/gpt-4.1-mini", "input": "Hi", "stream": true}),
        )
        .await;

    assert_eq!(plain.status(), 200, "{}", plain.text);
    let sent = &upstream.requests()[0];
    assert_eq!(sent.body["model"], "openai/gpt-4.1-mini");
    assert_eq!(sent.body["previous_response_id"], "resp_prev");
    let body = plain.json();
    assert_eq!(body["output"][0]["content"][0]["text"], "Hello from the fake upstream");
    let usage = &body["usage"];
    assert!(usage.get("cost").is_none());
    assert_eq!(usage["input_tokens_details"], json!({"cached_tokens": 0}));
    // 11 × 0.0016 + 7 × 0.0064 = 0.0624 → 1
    assert_eq!(
        (
            usage["input_tokens"].clone(),
            usage["output_tokens"].clone(),
            usage["credits_used"].clone()
        ),
        (json!(11), json!(7), json!(1))
    );
    assert_eq!(streamed.status(), 200, "{}", streamed.text);
    let events = named_events(&streamed.text);
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "response.completed");
    assert_eq!(data["response"]["usage"]["credits_used"], 1);
    assert_eq!(data["response"]["usage"]["credits_remaining"], 100_000 - 2);
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], 100_000 - 2);
}

#[actix_web::test]
async fn a_responses_stream_cut_after_output_ends_with_an_error_event_and_bills_what_was_delivered()
{
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(100_000)).await;
    upstream.push_fault(Fault::CutStream { after_chunks: 0 });

    let r = app
        .post(
            &seeded.key,
            "/v1/responses",
            &json!({"model": "openai/gpt-4.1-mini", "input": "Hi", "stream": true}),
        )
        .await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let events = named_events(&r.text);
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "error");
    assert_eq!(data["message"], "Service temporarily unavailable");
    // 5 words delivered × 0.0064 = 0.032 → 1 µcr; no upstream usage, so no prompt billed
    assert_eq!(app.query_i64("SELECT completion_tokens FROM usage", []), 5);
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], 100_000 - 1);
}

#[actix_web::test]
async fn responses_through_anthropic_are_refused_and_an_anthropic_first_model_is_served_by_openrouter(
) {
    let (app, upstream) = spawn_with_upstream(|_| {}).await;
    let seeded = app.seed_license(Some(100_000)).await;
    let body = json!({"model": "anthropic/claude-sonnet-4-20250514", "input": "Hi"});

    let forced = app
        .post_with(&seeded.key, "/v1/responses", &body, &[("X-Quantized-Provider", "anthropic")])
        .await;
    let routed = app.post(&seeded.key, "/v1/responses", &body).await;

    assert_eq!(forced.status(), 400);
    assert_eq!(forced.error_message(), "Provider 'anthropic' does not support this endpoint");
    assert_eq!(routed.status(), 200, "{}", routed.text);
    let routes: Vec<&str> = upstream.requests().iter().map(|r| r.route).collect();
    assert_eq!(routes, ["openrouter"]);
    assert_eq!(upstream.last_request().unwrap().body["model"], "anthropic/claude-sonnet-4");
}
