//! The public Errors page as the design settles it (quantized-api.md §4, gateway-design.md §0):
//! every status, its exact message in the `{"error":{"message":…}}` envelope, the order in
//! which checks apply, and that a refused request costs nothing.

use serde_json::{json, Value};

use crate::helpers::*;

const CHAT: &str = "/v1/chat/completions";

/// The committed balance the caller sees on `GET /v1/license`.
async fn balance(app: &TestApp, key: &str) -> Value {
    app.license(key).await["available_micro_credits"].clone()
}

fn usage_rows(app: &TestApp) -> i64 {
    app.query_i64("SELECT COUNT(*) FROM usage", [])
}

fn ledger_debits(app: &TestApp) -> i64 {
    app.query_i64("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'debit'", [])
}

/// A chat POST with a chosen `Content-Type` (or none) and raw body bytes.
async fn post_raw(app: &TestApp, key: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some(ct) = content_type {
        headers.push(("Content-Type", ct));
    }
    app.raw("POST", CHAT, &headers, Some(body.to_vec())).await
}

/// The demo body with `key` set to `value`.
fn chat_with(key: &str, value: Value) -> Value {
    let mut body = chat_body("Hello there");
    body[key] = value;
    body
}

/// A body for `model` whose only message is `message`.
fn chat_with_message(model: &str, message: Value) -> Value {
    json!({"model": model, "messages": [message]})
}

fn image_part() -> Value {
    json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}})
}

/// Asserts a chat body is refused with 400 and `message`, and that nothing was charged.
async fn assert_rejected(app: &TestApp, seeded: &Seeded, body: &Value, message: &str) {
    let before = balance(app, &seeded.key).await;

    let r = app.chat(&seeded.key, body).await;

    assert_eq!(r.status(), 400, "body {body}: {}", r.text);
    assert_eq!(r.error_message(), message, "body {body}");
    assert_eq!(balance(app, &seeded.key).await, before, "charged for a refused request: {body}");
    assert_eq!(usage_rows(app), 0, "usage recorded for a refused request: {body}");
}

// ---------------------------------------------------------------------------------------------
// 400: the body

#[actix_web::test]
async fn chat_rejects_a_body_without_model_as_field_required() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let body = json!({"messages": [{"role": "user", "content": "Hi"}]});

    assert_rejected(&app, &seeded, &body, "field required: 'model'").await;
}

#[actix_web::test]
async fn chat_rejects_a_null_model_as_field_required() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let body = json!({"model": null, "messages": [{"role": "user", "content": "Hi"}]});

    assert_rejected(&app, &seeded, &body, "field required: 'model'").await;
}

#[actix_web::test]
async fn chat_rejects_an_empty_model_name() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let body = json!({"model": "", "messages": [{"role": "user", "content": "Hi"}]});

    assert_rejected(&app, &seeded, &body, "'model' must not be empty").await;
}

#[actix_web::test]
async fn chat_rejects_a_body_without_messages_as_field_required() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let body = json!({"model": "demo/echo"});

    assert_rejected(&app, &seeded, &body, "field required: 'messages'").await;
}

#[actix_web::test]
async fn chat_rejects_a_message_without_content_with_its_dotted_path() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let body = chat_with_message("demo/echo", json!({"role": "user"}));

    assert_rejected(&app, &seeded, &body, "field required: 'messages[0].content'").await;
}

#[actix_web::test]
async fn chat_rejects_an_unknown_top_level_field_by_name() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let body = chat_with("foo", json!(1));

    assert_rejected(&app, &seeded, &body, "unknown field: 'foo'").await;
}

#[actix_web::test]
async fn chat_rejects_a_typo_of_a_known_field_instead_of_ignoring_it() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let body = chat_with("temprature", json!(0.5));

    assert_rejected(&app, &seeded, &body, "unknown field: 'temprature'").await;
}

#[actix_web::test]
async fn chat_rejects_an_unknown_field_inside_a_message_with_its_dotted_path() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let body = chat_with_message("demo/echo", json!({"role": "user", "content": "Hi", "foo": 1}));

    assert_rejected(&app, &seeded, &body, "unknown field: 'messages[0].foo'").await;
}

#[actix_web::test]
async fn chat_rejects_an_unknown_field_inside_a_content_part_with_its_dotted_path() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let body = chat_with_message(
        "demo/echo",
        json!({"role": "user", "content": [{"type": "text", "text": "Hi", "bar": true}]}),
    );

    assert_rejected(&app, &seeded, &body, "unknown field: 'messages[0].content[0].bar'").await;
}

#[actix_web::test]
async fn chat_rejects_wrong_types_naming_the_expected_type() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let cases = [
        (chat_with("temperature", json!("hot")), "invalid type for 'temperature': expected number"),
        (chat_with("top_p", json!(true)), "invalid type for 'top_p': expected number"),
        (chat_with("model", json!(5)), "invalid type for 'model': expected string"),
        (chat_with("messages", json!("Hi")), "invalid type for 'messages': expected array"),
        (chat_with("max_tokens", json!(1.5)), "invalid type for 'max_tokens': expected integer"),
        (chat_with("max_tokens", json!("10")), "invalid type for 'max_tokens': expected integer"),
        (chat_with("stream", json!("yes")), "invalid type for 'stream': expected boolean"),
        (chat_with("messages", json!(["Hi"])), "invalid type for 'messages[0]': expected object"),
        (
            chat_with_message("demo/echo", json!({"role": "user", "content": 5})),
            "invalid type for 'messages[0].content': expected string or array",
        ),
    ];

    for (body, message) in &cases {
        assert_rejected(&app, &seeded, body, message).await;
    }
}

#[actix_web::test]
async fn chat_rejects_out_of_range_parameters_naming_the_bounds() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let cases = [
        (chat_with("temperature", json!(2.5)), "'temperature' must be between 0 and 2"),
        (chat_with("temperature", json!(-0.1)), "'temperature' must be between 0 and 2"),
        (chat_with("top_p", json!(1.5)), "'top_p' must be between 0 and 1"),
        (chat_with("top_p", json!(-1)), "'top_p' must be between 0 and 1"),
        (
            chat_with("frequency_penalty", json!(-2.5)),
            "'frequency_penalty' must be between -2 and 2",
        ),
        (chat_with("frequency_penalty", json!(3)), "'frequency_penalty' must be between -2 and 2"),
        (chat_with("presence_penalty", json!(2.01)), "'presence_penalty' must be between -2 and 2"),
        (chat_with("presence_penalty", json!(-3)), "'presence_penalty' must be between -2 and 2"),
        (chat_with("max_tokens", json!(0)), "'max_tokens' must be between 1 and 4294967295"),
        (chat_with("max_tokens", json!(-1)), "'max_tokens' must be between 1 and 4294967295"),
        (
            chat_with("max_completion_tokens", json!(0)),
            "'max_completion_tokens' must be between 1 and 4294967295",
        ),
    ];

    for (body, message) in &cases {
        assert_rejected(&app, &seeded, body, message).await;
    }
}

#[actix_web::test]
async fn chat_accepts_parameters_at_the_edges_of_their_ranges() {
    let app = spawn_app().await;
    let seeded = app.seed_license(None).await;
    let cases = [
        ("temperature", json!(0)),
        ("temperature", json!(2)),
        ("top_p", json!(0)),
        ("top_p", json!(1)),
        ("frequency_penalty", json!(-2)),
        ("frequency_penalty", json!(2)),
        ("presence_penalty", json!(-2)),
        ("presence_penalty", json!(2)),
        ("max_tokens", json!(1)),
    ];

    for (field, value) in cases {
        let r = app.chat(&seeded.key, &chat_with(field, value.clone())).await;

        assert_eq!(r.status(), 200, "{field} = {value}: {}", r.text);
    }
}

#[actix_web::test]
async fn chat_rejects_an_unknown_role_listing_the_allowed_ones() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let body = chat_with_message("demo/echo", json!({"role": "wizard", "content": "Hi"}));

    assert_rejected(
        &app,
        &seeded,
        &body,
        "invalid value for 'messages[0].role': expected one of system, developer, user, assistant, tool",
    )
    .await;
}

#[actix_web::test]
async fn chat_rejects_an_empty_messages_array() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let body = json!({"model": "demo/echo", "messages": []});

    assert_rejected(&app, &seeded, &body, "'messages' must not be empty").await;
}

#[actix_web::test]
async fn chat_rejects_malformed_json_with_an_invalid_json_message() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r =
        post_raw(&app, &seeded.key, Some("application/json"), br#"{"model": "demo/echo","#).await;

    assert_eq!(r.status(), 400, "{}", r.text);
    let message = r.error_message();
    assert!(message.starts_with("invalid JSON"), "{message}");
    assert_eq!(usage_rows(&app), 0);
    assert_eq!(balance(&app, &seeded.key).await, 1_000_000);
}

#[actix_web::test]
async fn chat_rejects_a_json_array_body_as_not_an_object() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let body = json!([{"model": "demo/echo", "messages": [{"role": "user", "content": "Hi"}]}]);

    assert_rejected(&app, &seeded, &body, "invalid type for 'body': expected object").await;
}

#[actix_web::test]
async fn chat_rejects_a_json_scalar_body_as_not_an_object() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    for body in [json!("hello"), json!(42), json!(null)] {
        assert_rejected(&app, &seeded, &body, "invalid type for 'body': expected object").await;
    }
}

#[actix_web::test]
async fn chat_rejects_an_empty_body() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = post_raw(&app, &seeded.key, Some("application/json"), b"").await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "request body is empty: expected a JSON object");
    assert_eq!(usage_rows(&app), 0);
}

#[actix_web::test]
async fn chat_rejects_a_body_without_a_content_type() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let body = chat_body("Hi").to_string().into_bytes();

    let r = post_raw(&app, &seeded.key, None, &body).await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "Content-Type must be application/json");
    assert_eq!(usage_rows(&app), 0);
    assert_eq!(balance(&app, &seeded.key).await, 1_000_000);
}

#[actix_web::test]
async fn chat_rejects_a_json_body_sent_with_another_content_type() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let body = chat_body("Hi").to_string().into_bytes();

    for content_type in ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"] {
        let r = post_raw(&app, &seeded.key, Some(content_type), &body).await;

        assert_eq!(r.status(), 400, "{content_type}: {}", r.text);
        assert_eq!(r.error_message(), "Content-Type must be application/json", "{content_type}");
    }
    assert_eq!(usage_rows(&app), 0);
}

#[actix_web::test]
async fn chat_accepts_application_json_with_a_charset_parameter() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let body = chat_body("Hi").to_string().into_bytes();

    let r = post_raw(&app, &seeded.key, Some("application/json; charset=utf-8"), &body).await;

    assert_eq!(r.status(), 200, "{}", r.text);
}

// ---------------------------------------------------------------------------------------------
// 400: the modality pre-check

#[actix_web::test]
async fn chat_rejects_an_image_part_for_a_text_only_model() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let body = chat_with_message(
        "demo/echo",
        json!({"role": "user", "content": [{"type": "text", "text": "What is this?"}, image_part()]}),
    );

    assert_rejected(&app, &seeded, &body, "Model 'demo/echo' does not support image input").await;
}

#[actix_web::test]
async fn chat_accepts_an_image_part_for_a_model_that_takes_images() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let body = chat_with_message(
        "demo/echo-vision",
        json!({"role": "user", "content": [{"type": "text", "text": "What is this?"}, image_part()]}),
    );

    let r = app.chat(&seeded.key, &body).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(r.json()["model"], "demo/echo-vision");
    assert_eq!(usage_rows(&app), 1);
}

#[actix_web::test]
async fn chat_rejects_audio_and_video_parts_for_a_model_that_takes_only_images() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let audio =
        json!({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}});
    let video = json!({"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}});

    for (part, modality) in [(audio, "audio"), (video, "video")] {
        let body =
            chat_with_message("demo/echo-vision", json!({"role": "user", "content": [part]}));

        assert_rejected(
            &app,
            &seeded,
            &body,
            &format!("Model 'demo/echo-vision' does not support {modality} input"),
        )
        .await;
    }
}

#[actix_web::test]
async fn chat_lets_file_parts_through_to_a_text_only_model() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let file = json!({"type": "file", "file": {"filename": "paper.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}});
    let body = chat_with_message(
        "demo/echo",
        json!({"role": "user", "content": [{"type": "text", "text": "Summarise"}, file]}),
    );

    let r = app.chat(&seeded.key, &body).await;

    assert_eq!(r.status(), 200, "{}", r.text);
}

// ---------------------------------------------------------------------------------------------
// X-Quantized-Provider

#[actix_web::test]
async fn chat_rejects_an_unknown_provider_header() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = app
        .post_with(&seeded.key, CHAT, &chat_body("Hi"), &[("X-Quantized-Provider", "bogus")])
        .await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "Unknown provider 'bogus'");
    assert_eq!(usage_rows(&app), 0);
}

#[actix_web::test]
async fn chat_rejects_a_provider_that_does_not_serve_chat() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = app
        .post_with(&seeded.key, CHAT, &chat_body("Hi"), &[("X-Quantized-Provider", "exa")])
        .await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "Provider 'exa' does not support this endpoint");
    assert_eq!(usage_rows(&app), 0);
}

#[actix_web::test]
async fn chat_answers_not_found_when_the_forced_provider_does_not_serve_the_model() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    for provider in ["openrouter", "anthropic"] {
        let r = app
            .post_with(&seeded.key, CHAT, &chat_body("Hi"), &[("X-Quantized-Provider", provider)])
            .await;

        assert_eq!(r.status(), 404, "{provider}: {}", r.text);
        assert_eq!(r.error_message(), "Model 'demo/echo' not found", "{provider}");
    }
    assert_eq!(usage_rows(&app), 0);
    assert_eq!(balance(&app, &seeded.key).await, 1_000_000);
}

#[actix_web::test]
async fn chat_serves_the_request_when_the_forced_provider_serves_the_model() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = app
        .post_with(&seeded.key, CHAT, &chat_body("Hi"), &[("X-Quantized-Provider", "demo")])
        .await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(r.json()["model"], "demo/echo");
    assert_eq!(usage_rows(&app), 1);
}

// ---------------------------------------------------------------------------------------------
// 401, 402, 404, 405, 413, 503

#[actix_web::test]
async fn chat_answers_invalid_api_key_for_an_unknown_key() {
    let app = spawn_app().await;

    let r = app.chat("sk-quantized-doesnotexist", &chat_body("Hi")).await;

    assert_eq!(r.status(), 401, "{}", r.text);
    assert_eq!(r.error_message(), "Invalid API key");
    assert_eq!(usage_rows(&app), 0);
}

#[actix_web::test]
async fn chat_answers_insufficient_credits_when_the_balance_is_zero() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(0)).await;

    let r = app.chat(&seeded.key, &chat_body("Hi")).await;

    assert_eq!(r.status(), 402, "{}", r.text);
    assert_eq!(r.error_message(), "Insufficient credits");
    assert_eq!(balance(&app, &seeded.key).await, 0);
    assert_eq!(usage_rows(&app), 0);
    assert_eq!(ledger_debits(&app), 0);
}

#[actix_web::test]
async fn chat_answers_insufficient_credits_when_not_even_sixteen_output_tokens_fit() {
    let app = spawn_app().await;
    // 16 output tokens of demo/echo cost 16 × 2.5 = 40 µcr before any prompt is paid.
    let seeded = app.seed_license(Some(39)).await;

    let r = app.chat(&seeded.key, &chat_body("Hi")).await;

    assert_eq!(r.status(), 402, "{}", r.text);
    assert_eq!(r.error_message(), "Insufficient credits");
    assert_eq!(balance(&app, &seeded.key).await, 39);
    assert_eq!(usage_rows(&app), 0);
    assert_eq!(ledger_debits(&app), 0);
}

#[actix_web::test]
async fn streaming_chat_answers_insufficient_credits_as_json_before_any_event() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(0)).await;

    let r = app.chat(&seeded.key, &chat_with("stream", json!(true))).await;

    assert_eq!(r.status(), 402, "{}", r.text);
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(r.error_message(), "Insufficient credits");
    assert_eq!(usage_rows(&app), 0);
}

#[actix_web::test]
async fn chat_serves_a_balance_too_small_for_the_full_ceiling_but_enough_for_a_short_reply() {
    let app = spawn_app().await;
    // Far below demo/echo's 256-token ceiling (640 µcr of output), above prompt + 16 tokens.
    let seeded = app.seed_license(Some(100)).await;

    let r = app.chat(&seeded.key, &chat_body("Hello there")).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(r.json()["usage"]["credits_used"], 28);
    assert_eq!(balance(&app, &seeded.key).await, 72);
}

#[actix_web::test]
async fn chat_answers_not_found_for_an_unknown_model() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let body =
        json!({"model": "nonexistent-model", "messages": [{"role": "user", "content": "Hi"}]});

    let r = app.chat(&seeded.key, &body).await;

    assert_eq!(r.status(), 404, "{}", r.text);
    assert_eq!(r.error_message(), "Model 'nonexistent-model' not found");
    assert_eq!(usage_rows(&app), 0);
    assert_eq!(balance(&app, &seeded.key).await, 1_000_000);
}

#[actix_web::test]
async fn unknown_route_answers_not_found_in_the_envelope() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let under_v1 = app.get(&seeded.key, "/v1/nope").await;
    let top_level = app.raw("GET", "/nope", &[], None).await;

    assert_eq!(under_v1.status(), 404, "{}", under_v1.text);
    assert_eq!(under_v1.error_message(), "No route for GET /v1/nope");
    assert_eq!(top_level.status(), 404, "{}", top_level.text);
    assert_eq!(top_level.error_message(), "No route for GET /nope");
}

#[actix_web::test]
async fn wrong_method_answers_method_not_allowed_in_the_envelope() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let auth = format!("Bearer {}", seeded.key);
    let cases = [
        ("GET", CHAT),
        ("PUT", CHAT),
        ("DELETE", "/v1/license"),
        ("POST", "/v1/models"),
        ("POST", "/health"),
    ];

    for (method, path) in cases {
        let r = app.raw(method, path, &[("Authorization", &auth)], None).await;

        assert_eq!(r.status(), 405, "{method} {path}: {}", r.text);
        assert_eq!(r.error_message(), "Method not allowed", "{method} {path}");
    }
    assert_eq!(usage_rows(&app), 0);
}

#[actix_web::test]
async fn wrong_method_response_names_the_allowed_methods() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = app.get(&seeded.key, CHAT).await;

    assert_eq!(r.status(), 405, "{}", r.text);
    assert_eq!(r.error_message(), "Method not allowed");
    assert_eq!(r.header("allow").as_deref(), Some("POST"));
}

#[actix_web::test]
async fn health_answers_a_head_request_like_a_get() {
    let app = spawn_app().await;

    let r = app.raw("HEAD", "/health", &[], None).await;

    assert_eq!(r.status(), 200, "{:?}", r.headers);
    assert!(r.text.is_empty(), "HEAD carries no body: {}", r.text);
}

#[actix_web::test]
async fn chat_answers_payload_too_large_above_the_configured_limit() {
    let app = spawn_app_with(|s| s.limits.max_body_bytes = 1024).await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let big = chat_body(&"word ".repeat(400));
    assert!(big.to_string().len() > 1024);

    let r = app.chat(&seeded.key, &big).await;

    assert_eq!(r.status(), 413, "{}", r.text);
    assert_eq!(r.error_message(), "Request body too large: the limit is 1024 bytes");
    assert_eq!(usage_rows(&app), 0);
    assert_eq!(balance(&app, &seeded.key).await, 1_000_000);
}

#[actix_web::test]
async fn chat_serves_a_body_of_exactly_the_limit_and_refuses_one_byte_more() {
    let app = spawn_app_with(|s| s.limits.max_body_bytes = 1024).await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let sized = |len: usize| {
        let base = chat_body("").to_string().len();
        let body = chat_body(&"w".repeat(len - base));
        assert_eq!(body.to_string().len(), len);
        body
    };

    let at_limit = app.chat(&seeded.key, &sized(1024)).await;
    let over_limit = app.chat(&seeded.key, &sized(1025)).await;

    assert_eq!(at_limit.status(), 200, "{}", at_limit.text);
    assert_eq!(over_limit.status(), 413, "{}", over_limit.text);
    assert_eq!(over_limit.error_message(), "Request body too large: the limit is 1024 bytes");
    assert_eq!(usage_rows(&app), 1);
}

#[actix_web::test]
async fn chat_answers_payload_too_large_for_a_chunked_body_without_content_length() {
    let app = spawn_app_with(|s| s.limits.max_body_bytes = 1024).await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let bytes = chat_body(&"word ".repeat(400)).to_string().into_bytes();
    let chunks: Vec<Result<actix_web::web::Bytes, std::io::Error>> =
        bytes.chunks(256).map(|c| Ok(actix_web::web::Bytes::copy_from_slice(c))).collect();

    let mut res = app
        .client
        .post(app.url(CHAT))
        .insert_header(("Authorization", format!("Bearer {}", seeded.key)))
        .insert_header(("Content-Type", "application/json"))
        .send_stream(futures_util::stream::iter(chunks))
        .await
        .expect("request sent");
    let body = res.body().await.expect("body read");
    let r = Reply {
        status: res.status(),
        headers: res.headers().clone(),
        text: String::from_utf8_lossy(&body).into_owned(),
    };

    assert_eq!(r.status(), 413, "{}", r.text);
    assert_eq!(r.error_message(), "Request body too large: the limit is 1024 bytes");
    assert_eq!(usage_rows(&app), 0);
}

#[actix_web::test]
async fn chat_masks_an_unconfigured_upstream_as_service_unavailable_and_charges_nothing() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(100)).await;
    // openai/gpt-4.1-mini's only route is openrouter, which has no api_key in the tests.
    let body =
        json!({"model": "openai/gpt-4.1-mini", "messages": [{"role": "user", "content": "Hi"}]});

    let r = app.chat(&seeded.key, &body).await;

    assert_eq!(r.status(), 503, "{}", r.text);
    assert_eq!(r.error_message(), "Service temporarily unavailable");
    assert!(!r.text.to_lowercase().contains("openrouter"), "{}", r.text);
    assert_eq!(balance(&app, &seeded.key).await, 100);
    assert_eq!(usage_rows(&app), 0);
    assert_eq!(ledger_debits(&app), 0);
}

#[actix_web::test]
async fn chat_leaves_no_hold_behind_after_a_masked_upstream_failure() {
    let app = spawn_app().await;
    // 100 µcr: enough for one short demo reply only if nothing else is held.
    let seeded = app.seed_license(Some(100)).await;
    let unavailable =
        json!({"model": "openai/gpt-4.1-mini", "messages": [{"role": "user", "content": "Hi"}]});
    for _ in 0..3 {
        let r = app.chat(&seeded.key, &unavailable).await;
        assert_eq!(r.status(), 503, "{}", r.text);
    }

    let r = app.chat(&seeded.key, &chat_body("Hello there")).await;

    assert_eq!(r.status(), 200, "a hold outlived its request: {}", r.text);
    assert_eq!(r.json()["usage"]["credits_remaining"], 72);
}

#[actix_web::test]
async fn streaming_chat_masks_an_unconfigured_upstream_before_any_event() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let body = json!({"model": "openai/gpt-4.1-mini", "stream": true,
        "messages": [{"role": "user", "content": "Hi"}]});

    let r = app.chat(&seeded.key, &body).await;

    assert_eq!(r.status(), 503, "{}", r.text);
    assert_eq!(r.error_message(), "Service temporarily unavailable");
    assert_eq!(balance(&app, &seeded.key).await, 1_000_000);
    assert_eq!(usage_rows(&app), 0);
}

// ---------------------------------------------------------------------------------------------
// Ordering: 401 → 400 → 404 → 402

#[actix_web::test]
async fn bad_key_is_reported_before_a_bad_body() {
    let app = spawn_app().await;

    let r = app.chat("sk-quantized-doesnotexist", &json!({"foo": 1})).await;

    assert_eq!(r.status(), 401, "{}", r.text);
    assert_eq!(r.error_message(), "Invalid API key");
}

#[actix_web::test]
async fn bad_key_is_reported_before_a_wrong_content_type_or_an_unknown_provider() {
    let app = spawn_app().await;
    let headers = [
        ("Authorization", "Bearer sk-quantized-doesnotexist"),
        ("Content-Type", "text/plain"),
        ("X-Quantized-Provider", "bogus"),
    ];

    let r = app.raw("POST", CHAT, &headers, Some(b"not json".to_vec())).await;

    assert_eq!(r.status(), 401, "{}", r.text);
    assert_eq!(r.error_message(), "Invalid API key");
}

#[actix_web::test]
async fn unknown_model_is_reported_before_insufficient_credits() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(0)).await;
    let body =
        json!({"model": "nonexistent-model", "messages": [{"role": "user", "content": "Hi"}]});

    let r = app.chat(&seeded.key, &body).await;

    assert_eq!(r.status(), 404, "{}", r.text);
    assert_eq!(r.error_message(), "Model 'nonexistent-model' not found");
}

#[actix_web::test]
async fn bad_body_is_reported_before_insufficient_credits() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(0)).await;

    let r = app.chat(&seeded.key, &chat_with("temperature", json!(5))).await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "'temperature' must be between 0 and 2");
}

#[actix_web::test]
async fn modality_mismatch_is_reported_before_insufficient_credits() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(0)).await;
    let body = chat_with_message("demo/echo", json!({"role": "user", "content": [image_part()]}));

    let r = app.chat(&seeded.key, &body).await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "Model 'demo/echo' does not support image input");
}

// ---------------------------------------------------------------------------------------------
// Headers and health

#[actix_web::test]
async fn every_error_response_carries_a_request_id_and_a_json_body() {
    let app = spawn_app_with(|s| s.limits.max_body_bytes = 1024).await;
    let rich = app.seed_license(Some(1_000_000)).await;
    let broke = app.seed_license(Some(0)).await;
    let unknown_model =
        json!({"model": "nonexistent-model", "messages": [{"role": "user", "content": "Hi"}]});
    let unavailable =
        json!({"model": "openai/gpt-4.1-mini", "messages": [{"role": "user", "content": "Hi"}]});

    let replies = [
        (400, app.chat(&rich.key, &json!({"messages": []})).await),
        (400, post_raw(&app, &rich.key, Some("text/plain"), b"{}").await),
        (401, app.chat("sk-quantized-nope", &chat_body("Hi")).await),
        (401, app.raw("GET", "/v1/license", &[], None).await),
        (401, app.raw("GET", "/admin/v1/institutions", &[], None).await),
        (402, app.chat(&broke.key, &chat_body("Hi")).await),
        (404, app.chat(&rich.key, &unknown_model).await),
        (404, app.raw("GET", "/v1/nope", &[], None).await),
        (405, app.get(&rich.key, CHAT).await),
        (413, app.chat(&rich.key, &chat_body(&"word ".repeat(400))).await),
        (503, app.chat(&rich.key, &unavailable).await),
    ];

    let mut seen = std::collections::HashSet::new();
    for (status, r) in &replies {
        assert_eq!(r.status(), *status, "{}", r.text);
        r.error_message();
        assert_eq!(r.header("content-type").as_deref(), Some("application/json"), "{status}");
        let id =
            r.header("x-request-id").unwrap_or_else(|| panic!("{status} without X-Request-Id"));
        assert!(id.starts_with("req_"), "{status}: {id}");
        assert!(seen.insert(id.clone()), "request id {id} reused");
    }
}

#[actix_web::test]
async fn health_answers_ok_without_authentication() {
    let app = spawn_app().await;

    let r = app.raw("GET", "/health", &[], None).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(r.json(), json!({"status": "ok"}));
    assert!(r.header("x-request-id").is_some());
}

#[actix_web::test]
async fn health_ignores_an_invalid_authorization_header() {
    let app = spawn_app().await;

    let r = app.raw("GET", "/health", &[("Authorization", "Bearer sk-quantized-nope")], None).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(r.json(), json!({"status": "ok"}));
}
