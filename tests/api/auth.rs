//! Authentication (quantized-api.md §2, gateway-design.md §3): which bearer tokens open
//! `/v1/*` and `/admin/v1/*`, and that every refusal is the same 401 body, costing nothing.

use serde_json::json;

use crate::helpers::*;

/// The only 401 body the API ever sends.
const INVALID_KEY_BODY: &str = r#"{"error":{"message":"Invalid API key"}}"#;

fn assert_invalid_key(r: &Reply, context: &str) {
    assert_eq!(r.status(), 401, "{context}: {}", r.text);
    assert_eq!(r.text, INVALID_KEY_BODY, "{context}");
    assert_eq!(r.error_message(), "Invalid API key", "{context}");
}

fn usage_rows(app: &TestApp) -> i64 {
    app.query_i64("SELECT COUNT(*) FROM usage", [])
}

/// A chat request with exactly this `Authorization` header value (or none).
async fn chat_with_authorization(app: &TestApp, authorization: Option<&str>) -> Reply {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(value) = authorization {
        headers.push(("Authorization", value));
    }
    app.raw(
        "POST",
        "/v1/chat/completions",
        &headers,
        Some(chat_body("Hi").to_string().into_bytes()),
    )
    .await
}

/// A key on `license_id` with the given `expires_at` (RFC 3339).
async fn key_expiring_at(app: &TestApp, license_id: &str, expires_at: &str) -> String {
    let created = app
        .admin_ok(
            "POST",
            &format!("/licenses/{license_id}/keys"),
            Some(json!({"expires_at": expires_at})),
        )
        .await;
    created["key"].as_str().expect("key").to_string()
}

fn rfc3339_in(seconds: i64) -> String {
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(seconds);
    at.replace_nanosecond(0)
        .expect("zero nanoseconds")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339")
}

// ---------------------------------------------------------------------------------------------
// Malformed or absent credentials

#[actix_web::test]
async fn chat_refuses_a_request_without_authorization_header() {
    let app = spawn_app().await;

    let r = chat_with_authorization(&app, None).await;

    assert_invalid_key(&r, "no Authorization");
    assert_eq!(usage_rows(&app), 0);
}

#[actix_web::test]
async fn chat_refuses_a_valid_key_sent_with_the_basic_scheme() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = chat_with_authorization(&app, Some(&format!("Basic {}", seeded.key))).await;

    assert_invalid_key(&r, "Basic scheme");
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], 1_000_000);
}

#[actix_web::test]
async fn chat_refuses_a_valid_key_sent_without_a_scheme() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = chat_with_authorization(&app, Some(&seeded.key)).await;

    assert_invalid_key(&r, "bare key");
}

#[actix_web::test]
async fn chat_refuses_a_bearer_header_with_an_empty_token() {
    let app = spawn_app().await;

    for value in ["Bearer", "Bearer ", "Bearer    "] {
        let r = chat_with_authorization(&app, Some(value)).await;

        assert_invalid_key(&r, &format!("{value:?}"));
    }
}

#[actix_web::test]
async fn chat_refuses_an_unknown_key_with_the_right_prefix() {
    let app = spawn_app().await;
    app.seed_license(Some(1_000_000)).await;

    let r = app
        .chat("sk-quantized-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefg", &chat_body("Hi"))
        .await;

    assert_invalid_key(&r, "unknown key");
    assert_eq!(usage_rows(&app), 0);
}

#[actix_web::test]
async fn chat_refuses_a_token_that_is_not_a_key() {
    let app = spawn_app().await;

    for token in ["hello", "sk-proj-0123456789", "sk-quantized-", "eyJhbGciOiJub25lIn0.e30.", "🙂"]
    {
        let r = app.chat(token, &chat_body("Hi")).await;

        assert_invalid_key(&r, token);
    }
}

#[actix_web::test]
async fn chat_refuses_a_token_with_bytes_that_are_not_ascii() {
    let app = spawn_app().await;

    let r = chat_with_authorization(&app, Some("Bearer sk-quantized-clé-ключ")).await;

    assert_invalid_key(&r, "non-ASCII token");
}

#[actix_web::test]
async fn chat_refuses_a_very_long_token() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let padded_real_key = format!("{}{}", seeded.key, "A".repeat(10_000));
    let long_unknown = format!("sk-quantized-{}", "x".repeat(100_000));

    for token in [&padded_real_key, &long_unknown] {
        let r = app.chat(token, &chat_body("Hi")).await;

        assert_invalid_key(&r, &format!("token of {} bytes", token.len()));
    }
    assert_eq!(usage_rows(&app), 0);
}

#[actix_web::test]
async fn chat_refuses_a_real_key_whose_case_was_changed() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let secret = seeded.key.strip_prefix("sk-quantized-").expect("prefix");
    let swapped: String =
        secret
            .chars()
            .map(|c| {
                if c.is_ascii_uppercase() {
                    c.to_ascii_lowercase()
                } else {
                    c.to_ascii_uppercase()
                }
            })
            .collect();
    assert_ne!(swapped, secret, "the key has letters");

    let upper_prefix = format!("SK-QUANTIZED-{secret}");
    let swapped_secret = format!("sk-quantized-{swapped}");
    for token in [&upper_prefix, &swapped_secret] {
        let r = app.chat(token, &chat_body("Hi")).await;

        assert_invalid_key(&r, token);
    }
    assert_eq!(usage_rows(&app), 0);
}

#[actix_web::test]
async fn chat_refuses_a_real_key_cut_short_or_extended_by_one_character() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let short = &seeded.key[..seeded.key.len() - 1];
    let long = format!("{}A", seeded.key);
    for token in [short, long.as_str()] {
        let r = app.chat(token, &chat_body("Hi")).await;

        assert_invalid_key(&r, token);
    }
}

#[actix_web::test]
async fn every_v1_endpoint_refuses_a_missing_key() {
    let app = spawn_app().await;

    for (method, path) in
        [("GET", "/v1/models"), ("GET", "/v1/license"), ("POST", "/v1/chat/completions")]
    {
        let r = app
            .raw(method, path, &[("Content-Type", "application/json")], Some(b"{}".to_vec()))
            .await;

        assert_invalid_key(&r, &format!("{method} {path}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Accepted forms

#[actix_web::test]
async fn chat_accepts_the_bearer_scheme_in_any_case() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = chat_with_authorization(&app, Some(&format!("{scheme} {}", seeded.key))).await;

        assert_eq!(r.status(), 200, "{scheme}: {}", r.text);
    }
    assert_eq!(usage_rows(&app), 3);
}

// ---------------------------------------------------------------------------------------------
// Key lifecycle

#[actix_web::test]
async fn deactivated_key_is_refused_from_the_very_next_request() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let warm = app.chat(&seeded.key, &chat_body("Hi")).await;
    assert_eq!(warm.status(), 200, "{}", warm.text);

    let deleted = app.admin("DELETE", &format!("/keys/{}", seeded.key_id), None).await;
    let chat = app.chat(&seeded.key, &chat_body("Hi")).await;
    let license = app.get(&seeded.key, "/v1/license").await;

    assert_eq!(deleted.status(), 204, "{}", deleted.text);
    assert_eq!(deleted.text, "");
    assert_invalid_key(&chat, "chat after deactivation");
    assert_invalid_key(&license, "license after deactivation");
    assert_eq!(usage_rows(&app), 1);
}

#[actix_web::test]
async fn deactivating_a_key_keeps_the_license_and_its_balance_for_its_other_keys() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let other = app.new_key(&seeded.license_id).await;
    let first = app.chat(&seeded.key, &chat_body("Hello there")).await;
    assert_eq!(first.status(), 200, "{}", first.text);

    let deleted = app.admin("DELETE", &format!("/keys/{}", seeded.key_id), None).await;
    let r = app.chat(&other, &chat_body("Hello there")).await;

    assert_eq!(deleted.status(), 204, "{}", deleted.text);
    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(r.json()["usage"]["credits_remaining"], 1_000_000 - 28 - 28);
    assert_eq!(app.license(&other).await["license_id"], seeded.license_id.as_str());
}

#[actix_web::test]
async fn key_whose_expiry_has_passed_is_refused() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let expired = key_expiring_at(&app, &seeded.license_id, "2000-01-01T00:00:00Z").await;

    let chat = app.chat(&expired, &chat_body("Hi")).await;
    let license = app.get(&expired, "/v1/license").await;

    assert_invalid_key(&chat, "expired key on chat");
    assert_invalid_key(&license, "expired key on license");
    assert_eq!(usage_rows(&app), 0);
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], 1_000_000);
}

#[actix_web::test]
async fn key_whose_expiry_is_in_the_future_works() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let valid = key_expiring_at(&app, &seeded.license_id, &rfc3339_in(365 * 24 * 3600)).await;

    let r = app.chat(&valid, &chat_body("Hello there")).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(r.json()["usage"]["credits_used"], 28);
}

#[actix_web::test]
async fn key_used_before_its_expiry_is_refused_once_it_has_passed() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let soon = key_expiring_at(&app, &seeded.license_id, &rfc3339_in(2)).await;
    let before = app.chat(&soon, &chat_body("Hi")).await;
    assert_eq!(before.status(), 200, "{}", before.text);

    actix_web::rt::time::sleep(std::time::Duration::from_millis(3_100)).await;
    let after = app.chat(&soon, &chat_body("Hi")).await;

    assert_invalid_key(&after, "key used after its expiry");
    assert_eq!(usage_rows(&app), 1);
}

#[actix_web::test]
async fn two_keys_of_one_license_share_its_balance() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let second = app.new_key(&seeded.license_id).await;

    let by_first = app.chat(&seeded.key, &chat_body("Hello there")).await;
    let seen_by_second = app.license(&second).await;
    let by_second = app.chat(&second, &chat_body("Hello there")).await;
    let seen_by_first = app.license(&seeded.key).await;

    assert_eq!(by_first.status(), 200, "{}", by_first.text);
    assert_eq!(by_second.status(), 200, "{}", by_second.text);
    assert_eq!(seen_by_second["license_id"], seeded.license_id.as_str());
    assert_eq!(seen_by_second["available_micro_credits"], 1_000_000 - 28);
    assert_eq!(by_second.json()["usage"]["credits_remaining"], 1_000_000 - 56);
    assert_eq!(seen_by_first["available_micro_credits"], 1_000_000 - 56);
    assert_eq!(seen_by_first["used_micro_credits"], 56);
}

#[actix_web::test]
async fn keys_of_another_license_do_not_see_or_spend_its_balance() {
    let app = spawn_app().await;
    let rich = app.seed_license(Some(1_000_000)).await;
    let broke = app.seed_license(Some(0)).await;

    let r = app.chat(&broke.key, &chat_body("Hi")).await;

    assert_eq!(r.status(), 402, "{}", r.text);
    assert_eq!(r.error_message(), "Insufficient credits");
    assert_eq!(app.license(&broke.key).await["license_id"], broke.license_id.as_str());
    assert_eq!(app.license(&rich.key).await["available_micro_credits"], 1_000_000);
}

// ---------------------------------------------------------------------------------------------
// Admin API

#[actix_web::test]
async fn admin_api_refuses_a_request_without_a_token() {
    let app = spawn_app().await;

    let list = app.raw("GET", "/admin/v1/institutions", &[], None).await;
    let create = app
        .raw(
            "POST",
            "/admin/v1/institutions",
            &[("Content-Type", "application/json")],
            Some(json!({"alias": "sneaky", "name": "Sneaky"}).to_string().into_bytes()),
        )
        .await;

    assert_invalid_key(&list, "GET without token");
    assert_invalid_key(&create, "POST without token");
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM institutions", []), 0);
}

#[actix_web::test]
async fn admin_api_refuses_a_wrong_token() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let near_miss = format!("{ADMIN_TOKEN}x");
    let prefix = &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1];

    for token in ["wrong", near_miss.as_str(), prefix, seeded.key.as_str()] {
        let auth = format!("Bearer {token}");
        let r = app.raw("GET", "/admin/v1/institutions", &[("Authorization", &auth)], None).await;

        assert_invalid_key(&r, token);
    }
    let basic = format!("Basic {ADMIN_TOKEN}");
    let r = app.raw("GET", "/admin/v1/institutions", &[("Authorization", &basic)], None).await;
    assert_invalid_key(&r, "admin token with Basic scheme");
}

#[actix_web::test]
async fn admin_token_is_not_an_api_key() {
    let app = spawn_app().await;

    let r = app.chat(ADMIN_TOKEN, &chat_body("Hi")).await;

    assert_invalid_key(&r, "admin token on /v1");
}

#[actix_web::test]
async fn admin_api_accepts_its_token() {
    let app = spawn_app().await;

    let r = app.admin("GET", "/institutions", None).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(r.json(), json!([]));
}
