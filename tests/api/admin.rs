//! The admin API (design §3): every endpoint's status and shape, its validation, the
//! ledger it writes, prices, models and public keys, driven over HTTP as an operator would.

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::*;

// ---- small arrangements shared by the tests below ----

/// The keys of a JSON object, sorted, to compare against a documented field list.
fn fields(value: &Value) -> Vec<String> {
    let obj = value.as_object().unwrap_or_else(|| panic!("not an object: {value}"));
    let mut keys: Vec<String> = obj.keys().cloned().collect();
    keys.sort();
    keys
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn assert_uuid(value: &Value) {
    let text = value.as_str().unwrap_or_else(|| panic!("id is not a string: {value}"));
    uuid::Uuid::parse_str(text).unwrap_or_else(|e| panic!("id {text} is not a UUID: {e}"));
}

fn assert_timestamp(value: &Value) {
    let text = value.as_str().unwrap_or_else(|| panic!("timestamp is not a string: {value}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text} is not RFC 3339: {e}"));
}

fn str_of<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or_else(|| panic!("no string '{field}' in {value}"))
}

fn array(value: &Value) -> &Vec<Value> {
    value.as_array().unwrap_or_else(|| panic!("not an array: {value}"))
}

async fn create_institution(app: &TestApp, alias: &str) -> Value {
    let r = app
        .admin(
            "POST",
            "/institutions",
            Some(json!({"alias": alias, "name": format!("{alias} University")})),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text);
    r.json()
}

async fn create_license_type(
    app: &TestApp,
    institution: &str,
    alias: &str,
    default: Option<i64>,
) -> Value {
    let r = app
        .admin(
            "POST",
            "/license-types",
            Some(json!({"alias": alias, "name": "Student", "institution": institution, "default_micro_credits": default})),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text);
    r.json()
}

async fn create_license(app: &TestApp, body: Value) -> Value {
    let r = app.admin("POST", "/licenses", Some(body)).await;
    assert_eq!(r.status(), 201, "{}", r.text);
    r.json()
}

async fn create_key(app: &TestApp, license_id: &str) -> Value {
    let r = app
        .admin("POST", &format!("/licenses/{license_id}/keys"), Some(json!({"name": "laptop"})))
        .await;
    assert_eq!(r.status(), 201, "{}", r.text);
    r.json()
}

/// A PEM SubjectPublicKeyInfo of an Ed25519 key (RFC 8410) around the given raw bytes.
fn ed25519_pem(raw: &[u8; 32]) -> String {
    let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    der.extend_from_slice(raw);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----")
}

/// The demo provider's token counts for one user message of `text`: prompt = words + 1
/// message; completion = the 8-word opening + the echoed words (at most 32).
fn demo_tokens(text: &str) -> (i64, i64) {
    let words = text.split_whitespace().count() as i64;
    (words + 1, 8 + words.min(32))
}

/// `ceil(prompt × input + completion × output)` with prices in units of 10⁻⁹ µcr per token.
fn ceil_cost(prompt: i64, completion: i64, input_units: i64, output_units: i64) -> i64 {
    let units = prompt * input_units + completion * output_units;
    (units + 999_999_999) / 1_000_000_000
}

// ---- 1. the operator flow ----

#[actix_web::test]
async fn operator_flow_runs_from_institution_to_a_revoked_key() {
    // Arrange: institution → license type → license → key
    let app = spawn_app().await;
    let inst = create_institution(&app, "acme").await;
    let lt = create_license_type(&app, "acme", "acme-student", Some(1_000)).await;
    let license = create_license(
        &app,
        json!({"institution": "acme", "license_type": "acme-student", "unique_id": "s-001"}),
    )
    .await;
    assert_eq!(license["institution_id"], inst["id"]);
    assert_eq!(license["license_type_id"], lt["id"]);
    assert_eq!(license["available_micro_credits"], 1_000);
    let license_id = str_of(&license, "license_id").to_string();
    let key = create_key(&app, &license_id).await;
    let secret = str_of(&key, "key").to_string();
    let key_id = str_of(&key, "id").to_string();

    // Act: one chat completion
    let chat = app.chat(&secret, &chat_body("Hello there")).await;

    // Assert: billed and recorded under the response's request id
    assert_eq!(chat.status(), 200, "{}", chat.text);
    let request_id = chat.header("x-request-id").expect("X-Request-Id");
    // 3 prompt tokens × 0.75 + 10 completion tokens × 2.5 = 27.25 → 28
    assert_eq!(chat.json()["usage"]["credits_used"], 28);
    let usage = app.admin_ok("GET", &format!("/licenses/{license_id}/usage"), None).await;
    let rows = array(&usage);
    assert_eq!(rows.len(), 1, "{usage}");
    let row = &rows[0];
    assert_eq!(
        fields(row),
        sorted(&[
            "request_id",
            "created_at",
            "endpoint",
            "model",
            "provider",
            "stream",
            "prompt_tokens",
            "completion_tokens",
            "micro_credits",
            "status"
        ])
    );
    assert_eq!(row["request_id"], request_id.as_str());
    assert_timestamp(&row["created_at"]);
    assert_eq!(row["endpoint"], "chat.completions");
    assert_eq!(row["model"], "demo/echo");
    assert_eq!(row["provider"], "demo");
    assert_eq!(row["stream"], false);
    assert_eq!(row["prompt_tokens"], 3);
    assert_eq!(row["completion_tokens"], 10);
    assert_eq!(row["micro_credits"], 28);
    assert_eq!(row["status"], "completed");

    // Act: top-up
    let topped = app
        .admin(
            "POST",
            &format!("/licenses/{license_id}/credits"),
            Some(json!({"micro_credits": 500, "note": "semester top-up"})),
        )
        .await;

    // Assert: the license after the change, and the caller sees it
    assert_eq!(topped.status(), 200, "{}", topped.text);
    assert_eq!(topped.json()["available_micro_credits"], 1_000 - 28 + 500);
    assert_eq!(topped.json()["used_micro_credits"], 28);
    let seen = app.license(&secret).await;
    assert_eq!(seen["available_micro_credits"], 1_472);
    assert_eq!(seen["used_micro_credits"], 28);
    assert_eq!(seen["license_id"], license_id.as_str());
    assert_eq!(seen["unique_id"], "s-001");
    assert_eq!(
        app.query_i64(
            "SELECT COUNT(*) FROM ledger_entries WHERE license_id = ?1 AND micro_credits = 500 AND note = 'semester top-up'",
            [&license_id],
        ),
        1
    );

    // Act: revoke the key
    let deleted = app.admin("DELETE", &format!("/keys/{key_id}"), None).await;

    // Assert: 204, kept but inactive, refused from the next request on
    assert_eq!(deleted.status(), 204, "{}", deleted.text);
    assert!(deleted.text.is_empty(), "204 has a body: {}", deleted.text);
    let refused = app.chat(&secret, &chat_body("Hello again")).await;
    assert_eq!(refused.status(), 401, "{}", refused.text);
    assert_eq!(refused.error_message(), "Invalid API key");
    assert_eq!(app.query_i64("SELECT active FROM api_keys WHERE id = ?1", [&key_id]), 0);
    let keys = app.admin_ok("GET", &format!("/licenses/{license_id}/keys"), None).await;
    assert_eq!(keys[0]["active"], false);
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM usage WHERE license_id = ?1", [&license_id]), 1);
}

// ---- 2. shapes and statuses ----

#[actix_web::test]
async fn create_institution_returns_201_with_the_documented_fields() {
    let app = spawn_app().await;

    let r =
        app.admin("POST", "/institutions", Some(json!({"alias": "tu-x", "name": "TU X"}))).await;

    assert_eq!(r.status(), 201, "{}", r.text);
    let inst = r.json();
    assert_eq!(fields(&inst), sorted(&["id", "alias", "name", "created_at"]));
    assert_uuid(&inst["id"]);
    assert_eq!(inst["alias"], "tu-x");
    assert_eq!(inst["name"], "TU X");
    assert_timestamp(&inst["created_at"]);
    let list = app.admin_ok("GET", "/institutions", None).await;
    assert_eq!(list, json!([inst]));
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM institutions WHERE alias = 'tu-x'", []), 1);
}

#[actix_web::test]
async fn create_license_type_returns_201_and_lists_it() {
    let app = spawn_app().await;
    let inst = create_institution(&app, "tu-x").await;

    let r = app
        .admin(
            "POST",
            "/license-types",
            Some(json!({"alias": "staff", "name": "Staff", "institution": "tu-x", "default_micro_credits": 5_000})),
        )
        .await;

    assert_eq!(r.status(), 201, "{}", r.text);
    let lt = r.json();
    assert_uuid(&lt["id"]);
    assert_eq!(lt["alias"], "staff");
    assert_eq!(lt["name"], "Staff");
    assert_eq!(lt["institution_id"], inst["id"]);
    assert_eq!(lt["default_micro_credits"], 5_000);
    assert_timestamp(&lt["created_at"]);
    let list = app.admin_ok("GET", "/license-types", None).await;
    assert_eq!(list, json!([lt]));
}

#[actix_web::test]
async fn create_license_returns_201_with_the_v1_license_fields_and_the_types_default() {
    let app = spawn_app().await;
    create_institution(&app, "tu-x").await;
    create_license_type(&app, "tu-x", "staff", Some(5_000)).await;

    let defaulted = app
        .admin(
            "POST",
            "/licenses",
            Some(json!({"institution": "tu-x", "license_type": "staff", "user_id": "u-7"})),
        )
        .await;
    let explicit = app
        .admin(
            "POST",
            "/licenses",
            Some(json!({"institution": "tu-x", "license_type": "staff", "unique_id": "id-9", "micro_credits": 42})),
        )
        .await;

    assert_eq!(defaulted.status(), 201, "{}", defaulted.text);
    assert_eq!(explicit.status(), 201, "{}", explicit.text);
    let (defaulted, explicit) = (defaulted.json(), explicit.json());
    assert_eq!(defaulted["available_micro_credits"], 5_000);
    assert_eq!(defaulted["used_micro_credits"], 0);
    assert_eq!(defaulted["user_id"], "u-7");
    assert_eq!(defaulted["unique_id"], Value::Null);
    assert_eq!(explicit["available_micro_credits"], 42);
    assert_eq!(explicit["unique_id"], "id-9");
    // The fields of GET /v1/license, with the same values the key holder sees.
    let license_id = str_of(&explicit, "license_id").to_string();
    assert_uuid(&explicit["license_id"]);
    let key = app.new_key(&license_id).await;
    let public = app.license(&key).await;
    for field in fields(&public) {
        assert_eq!(
            explicit[&field], public[&field],
            "field {field}: admin {explicit} vs /v1/license {public}"
        );
    }
    let fetched = app.admin_ok("GET", &format!("/licenses/{license_id}"), None).await;
    assert_eq!(fetched, explicit);
    // The opening balance is a ledger grant.
    assert_eq!(
        app.query_i64("SELECT SUM(micro_credits) FROM ledger_entries WHERE license_id = ?1 AND kind = 'grant'", [&license_id]),
        42
    );
}

#[actix_web::test]
async fn create_key_returns_201_with_the_secret_and_the_key_list_never_shows_it() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = app
        .admin(
            "POST",
            &format!("/licenses/{}/keys", seeded.license_id),
            Some(json!({"name": "ci runner", "expires_at": "2099-01-01T00:00:00+02:00"})),
        )
        .await;

    assert_eq!(r.status(), 201, "{}", r.text);
    let key = r.json();
    assert_eq!(fields(&key), sorted(&["id", "key", "name", "expires_at", "created_at"]));
    assert_uuid(&key["id"]);
    let secret = str_of(&key, "key").to_string();
    assert!(secret.starts_with("sk-quantized-"), "{secret}");
    assert!(secret.len() >= "sk-quantized-".len() + 22, "too short for 128 bits: {secret}");
    assert_eq!(key["name"], "ci runner");
    assert!(str_of(&key, "expires_at").starts_with("2098-12-31T22:00:00"), "{key}");
    assert_timestamp(&key["expires_at"]);
    assert_timestamp(&key["created_at"]);
    // Only the hash is stored.
    let stored: Vec<u8> = app
        .db()
        .query_row("SELECT key_hash FROM api_keys WHERE id = ?1", [str_of(&key, "id")], |r| {
            r.get(0)
        })
        .expect("key row");
    assert_eq!(stored, Sha256::digest(secret.as_bytes()).to_vec());

    // The list: documented fields, never the secret.
    let list = app.admin("GET", &format!("/licenses/{}/keys", seeded.license_id), None).await;
    assert_eq!(list.status(), 200, "{}", list.text);
    assert!(!list.text.contains(&secret), "secret listed: {}", list.text);
    assert!(!list.text.contains(&seeded.key), "secret listed: {}", list.text);
    assert!(
        !list.text.contains(&secret["sk-quantized-".len() + 8..]),
        "secret tail listed: {}",
        list.text
    );
    let list = list.json();
    let items = array(&list);
    assert_eq!(items.len(), 2, "{list}");
    for item in items {
        assert_eq!(
            fields(item),
            sorted(&[
                "id",
                "prefix",
                "name",
                "active",
                "expires_at",
                "ephemeral",
                "created_at",
                "last_used_at"
            ])
        );
        assert_eq!(item["active"], true);
        assert_eq!(item["ephemeral"], false);
    }
    let listed = items.iter().find(|i| i["id"] == key["id"]).expect("new key listed");
    let prefix = str_of(listed, "prefix");
    assert!(secret.starts_with(prefix) && prefix.len() < secret.len() / 2, "prefix {prefix}");
    assert_eq!(listed["name"], "ci runner");
    assert_eq!(listed["expires_at"], key["expires_at"]);
    assert_eq!(listed["last_used_at"], Value::Null);
}

#[actix_web::test]
async fn key_list_shows_last_used_at_once_the_key_was_used() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = app.chat(&seeded.key, &chat_body("Hi")).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let list = app.admin_ok("GET", &format!("/licenses/{}/keys", seeded.license_id), None).await;
    assert_eq!(list[0]["id"], seeded.key_id.as_str());
    assert_timestamp(&list[0]["last_used_at"]);
}

#[actix_web::test]
async fn create_key_with_no_body_fields_has_null_name_and_expiry() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(10)).await;

    let r =
        app.admin("POST", &format!("/licenses/{}/keys", seeded.license_id), Some(json!({}))).await;

    assert_eq!(r.status(), 201, "{}", r.text);
    assert_eq!(r.json()["name"], Value::Null);
    assert_eq!(r.json()["expires_at"], Value::Null);
}

#[actix_web::test]
async fn institution_and_license_type_references_accept_alias_or_uuid_everywhere() {
    let app = spawn_app().await;
    let inst = create_institution(&app, "tu-x").await;
    let inst_id = str_of(&inst, "id").to_string();
    // license type: institution by alias, then by UUID
    let by_alias = create_license_type(&app, "tu-x", "staff", Some(100)).await;
    let by_uuid = create_license_type(&app, &inst_id, "guest", Some(100)).await;
    assert_eq!(by_alias["institution_id"], inst_id.as_str());
    assert_eq!(by_uuid["institution_id"], inst_id.as_str());
    let guest_id = str_of(&by_uuid, "id").to_string();

    // license: both by alias, both by UUID
    let l1 = create_license(&app, json!({"institution": "tu-x", "license_type": "staff"})).await;
    let l2 = create_license(&app, json!({"institution": inst_id, "license_type": guest_id})).await;
    assert_eq!(l1["license_type_id"], by_alias["id"]);
    assert_eq!(l2["license_type_id"], guest_id.as_str());
    assert_eq!(l2["institution_id"], inst_id.as_str());

    // public keys: /institutions/{institution}/public-keys
    let pk = app
        .admin(
            "POST",
            "/institutions/tu-x/public-keys",
            Some(json!({"public_key": ed25519_pem(&[7; 32]), "kid": "a"})),
        )
        .await;
    assert_eq!(pk.status(), 201, "{}", pk.text);
    let listed_by_uuid =
        app.admin_ok("GET", &format!("/institutions/{inst_id}/public-keys"), None).await;
    assert_eq!(array(&listed_by_uuid).len(), 1);
    let listed_by_alias = app.admin_ok("GET", "/institutions/tu-x/public-keys", None).await;
    assert_eq!(listed_by_alias, listed_by_uuid);

    // prices: /license-types/{license_type}/…
    let prices = json!({"input_cost_per_micro_credit": 1, "output_cost_per_micro_credit": 2});
    for lt in ["staff", guest_id.as_str()] {
        let r = app
            .admin("PUT", &format!("/license-types/{lt}/prices/demo%2Fecho"), Some(prices.clone()))
            .await;
        assert_eq!(r.status(), 200, "{lt}: {}", r.text);
        let r = app
            .admin(
                "PUT",
                &format!("/license-types/{lt}/tool-prices/fetch"),
                Some(json!({"micro_credits": 10})),
            )
            .await;
        assert_eq!(r.status(), 200, "{lt}: {}", r.text);
    }
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM model_prices", []), 2);
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM tool_prices", []), 2);

    // list filters
    let by_alias = app.admin_ok("GET", "/licenses?institution=tu-x&license_type=guest", None).await;
    let by_uuid = app
        .admin_ok("GET", &format!("/licenses?institution={inst_id}&license_type={guest_id}"), None)
        .await;
    assert_eq!(by_alias, json!([l2]));
    assert_eq!(by_uuid, json!([l2]));
}

#[actix_web::test]
async fn admin_requests_without_the_admin_token_get_401() {
    let app = spawn_app().await;

    let none = app.raw("GET", "/admin/v1/institutions", &[], None).await;
    let wrong = app
        .raw("GET", "/admin/v1/institutions", &[("Authorization", "Bearer not-the-token")], None)
        .await;
    let seeded = app.seed_license(Some(10)).await;
    let api_key = app.get(&seeded.key, "/admin/v1/institutions").await;

    for r in [none, wrong, api_key] {
        assert_eq!(r.status(), 401, "{}", r.text);
        r.error_message();
    }
}

// ---- 3. validation ----

#[actix_web::test]
async fn create_institution_rejects_an_unknown_field_naming_it() {
    let app = spawn_app().await;

    let r = app
        .admin("POST", "/institutions", Some(json!({"alias": "a", "name": "A", "country": "DE"})))
        .await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "unknown field: 'country'");
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM institutions", []), 0);
}

#[actix_web::test]
async fn create_institution_rejects_a_missing_field_naming_it() {
    let app = spawn_app().await;

    let r = app.admin("POST", "/institutions", Some(json!({"alias": "a"}))).await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "field required: 'name'");
}

#[actix_web::test]
async fn create_institution_rejects_a_wrong_type_naming_the_field() {
    let app = spawn_app().await;

    let r = app.admin("POST", "/institutions", Some(json!({"alias": 12, "name": "A"}))).await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "invalid type for 'alias': expected string");
}

#[actix_web::test]
async fn admin_bodies_are_validated_strictly_on_every_create() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(100)).await;
    let lt_path = format!("/license-types/{}", seeded.license_type);
    let cases: Vec<(&str, String, Value, &str)> = vec![
        (
            "POST",
            "/license-types".into(),
            json!({"alias": "x", "name": "X", "institution": seeded.institution, "default_micro_credits": 1, "colour": "red"}),
            "unknown field: 'colour'",
        ),
        (
            "POST",
            "/license-types".into(),
            json!({"alias": "x", "name": "X", "default_micro_credits": 1}),
            "field required: 'institution'",
        ),
        (
            "POST",
            "/license-types".into(),
            json!({"alias": "x", "name": "X", "institution": seeded.institution, "default_micro_credits": "lots"}),
            "invalid type for 'default_micro_credits': expected integer",
        ),
        (
            "POST",
            "/licenses".into(),
            json!({"institution": seeded.institution, "license_type": seeded.license_type, "owner": "me"}),
            "unknown field: 'owner'",
        ),
        (
            "POST",
            "/licenses".into(),
            json!({"institution": seeded.institution}),
            "field required: 'license_type'",
        ),
        (
            "POST",
            "/licenses".into(),
            json!({"institution": seeded.institution, "license_type": seeded.license_type, "micro_credits": 1.5}),
            "invalid type for 'micro_credits': expected integer",
        ),
        (
            "POST",
            format!("/licenses/{}/keys", seeded.license_id),
            json!({"label": "x"}),
            "unknown field: 'label'",
        ),
        (
            "POST",
            format!("/licenses/{}/keys", seeded.license_id),
            json!({"name": 5}),
            "invalid type for 'name': expected string",
        ),
        (
            "POST",
            format!("/licenses/{}/credits", seeded.license_id),
            json!({"note": "x"}),
            "field required: 'micro_credits'",
        ),
        (
            "POST",
            format!("/licenses/{}/credits", seeded.license_id),
            json!({"micro_credits": "5"}),
            "invalid type for 'micro_credits': expected integer",
        ),
        (
            "POST",
            format!("/licenses/{}/credits", seeded.license_id),
            json!({"micro_credits": 5, "reason": "x"}),
            "unknown field: 'reason'",
        ),
        (
            "POST",
            format!("/institutions/{}/public-keys", seeded.institution),
            json!({"kid": "a"}),
            "field required: 'public_key'",
        ),
        (
            "PUT",
            format!("{lt_path}/prices/demo%2Fecho"),
            json!({"input_cost_per_micro_credit": 1}),
            "field required: 'output_cost_per_micro_credit'",
        ),
        (
            "PUT",
            format!("{lt_path}/prices/demo%2Fecho"),
            json!({"input_cost_per_micro_credit": 1, "output_cost_per_micro_credit": 1, "currency": "eur"}),
            "unknown field: 'currency'",
        ),
        (
            "PUT",
            format!("{lt_path}/tool-prices/fetch"),
            json!({}),
            "field required: 'micro_credits'",
        ),
        (
            "PUT",
            format!("{lt_path}/tool-prices/fetch"),
            json!({"micro_credits": "1"}),
            "invalid type for 'micro_credits': expected integer",
        ),
        (
            "PUT",
            "/models/demo%2Fx".into(),
            json!({"name": "X", "routes": []}),
            "field required: 'input_cost_per_micro_credit'",
        ),
    ];

    for (method, path, body, expected) in cases {
        let r = app.admin(method, &path, Some(body.clone())).await;

        assert_eq!(r.status(), 400, "{method} {path} {body}: {}", r.text);
        assert_eq!(r.error_message(), expected, "{method} {path} {body}");
    }
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM license_types", []), 1);
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM licenses", []), 1);
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM api_keys", []), 1);
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM ledger_entries", []), 1);
}

#[actix_web::test]
async fn create_license_type_requires_default_micro_credits() {
    let app = spawn_app().await;
    create_institution(&app, "tu-x").await;

    let r = app
        .admin(
            "POST",
            "/license-types",
            Some(json!({"alias": "s", "name": "S", "institution": "tu-x"})),
        )
        .await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "field required: 'default_micro_credits'");
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM license_types", []), 0);
}

#[actix_web::test]
async fn create_license_type_accepts_null_default_micro_credits_as_unlimited() {
    let app = spawn_app().await;
    create_institution(&app, "tu-x").await;

    let r = app
        .admin(
            "POST",
            "/license-types",
            Some(json!({"alias": "s", "name": "S", "institution": "tu-x", "default_micro_credits": null})),
        )
        .await;

    assert_eq!(r.status(), 201, "{}", r.text);
    assert_eq!(r.json()["default_micro_credits"], Value::Null);
    let license = create_license(&app, json!({"institution": "tu-x", "license_type": "s"})).await;
    assert_eq!(license["available_micro_credits"], Value::Null);
    let key = app.new_key(str_of(&license, "license_id")).await;
    assert_eq!(app.license(&key).await["available_micro_credits"], Value::Null);
    assert_eq!(
        app.query_i64(
            "SELECT COUNT(*) FROM licenses WHERE id = ?1 AND available_micro_credits IS NULL",
            [str_of(&license, "license_id")]
        ),
        1
    );
}

#[actix_web::test]
async fn create_license_type_rejects_a_negative_default() {
    let app = spawn_app().await;
    create_institution(&app, "tu-x").await;

    let r = app
        .admin(
            "POST",
            "/license-types",
            Some(json!({"alias": "s", "name": "S", "institution": "tu-x", "default_micro_credits": -1})),
        )
        .await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "'default_micro_credits' must not be negative");
}

#[actix_web::test]
async fn create_license_rejects_a_negative_balance() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1)).await;

    let r = app
        .admin(
            "POST",
            "/licenses",
            Some(json!({"institution": seeded.institution, "license_type": seeded.license_type, "micro_credits": -5})),
        )
        .await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "'micro_credits' must not be negative");
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM licenses", []), 1);
}

#[actix_web::test]
async fn admin_post_without_a_json_content_type_gets_400() {
    let app = spawn_app().await;
    let auth = format!("Bearer {ADMIN_TOKEN}");

    let r = app
        .raw(
            "POST",
            "/admin/v1/institutions",
            &[("Authorization", &auth), ("Content-Type", "text/plain")],
            Some(br#"{"alias": "a", "name": "A"}"#.to_vec()),
        )
        .await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "Content-Type must be application/json");
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM institutions", []), 0);
}

#[actix_web::test]
async fn credits_top_up_beyond_the_largest_balance_gets_409() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000)).await;

    let r = app
        .admin(
            "POST",
            &format!("/licenses/{}/credits", seeded.license_id),
            Some(json!({"micro_credits": i64::MAX})),
        )
        .await;

    assert_eq!(r.status(), 409, "{}", r.text);
    assert_eq!(r.error_message(), "Balance would overflow");
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], 1_000);
}

#[actix_web::test]
async fn create_institution_with_a_duplicate_alias_gets_409() {
    let app = spawn_app().await;
    create_institution(&app, "tu-x").await;

    let r =
        app.admin("POST", "/institutions", Some(json!({"alias": "tu-x", "name": "Another"}))).await;

    assert_eq!(r.status(), 409, "{}", r.text);
    assert_eq!(r.error_message(), "Institution alias 'tu-x' already exists");
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM institutions", []), 1);
}

#[actix_web::test]
async fn create_license_type_with_a_duplicate_alias_gets_409() {
    let app = spawn_app().await;
    create_institution(&app, "tu-x").await;
    create_license_type(&app, "tu-x", "staff", Some(1)).await;

    let r = app
        .admin(
            "POST",
            "/license-types",
            Some(json!({"alias": "staff", "name": "S", "institution": "tu-x", "default_micro_credits": 1})),
        )
        .await;

    assert_eq!(r.status(), 409, "{}", r.text);
    assert_eq!(r.error_message(), "License type alias 'staff' already exists");
}

#[actix_web::test]
async fn create_institution_rejects_an_invalid_alias() {
    let app = spawn_app().await;

    let r =
        app.admin("POST", "/institutions", Some(json!({"alias": "has space", "name": "A"}))).await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "'alias' must be 1 to 64 letters, digits, '-', '_' or '.'");
}

#[actix_web::test]
async fn institution_alias_that_is_another_institutions_uuid_cannot_hijack_lookups() {
    let app = spawn_app().await;
    let first = create_institution(&app, "first").await;
    let first_id = str_of(&first, "id").to_string();

    let r = app
        .admin("POST", "/institutions", Some(json!({"alias": first_id, "name": "Impostor"})))
        .await;

    // Either the alias is refused, or a lookup by the UUID still finds the first institution.
    if r.status() == 201 {
        let impostor_id = str_of(&r.json(), "id").to_string();
        let lt = create_license_type(&app, &first_id, "staff", Some(1)).await;
        assert_eq!(
            lt["institution_id"],
            first_id.as_str(),
            "the license type went to the impostor {impostor_id} instead of {first_id}"
        );
    } else {
        assert!(matches!(r.status(), 400 | 409), "{}", r.text);
        r.error_message();
    }
}

#[actix_web::test]
async fn create_license_with_a_license_type_of_another_institution_gets_400() {
    let app = spawn_app().await;
    create_institution(&app, "tu-x").await;
    create_institution(&app, "tu-y").await;
    create_license_type(&app, "tu-y", "y-staff", Some(1)).await;

    let r = app
        .admin("POST", "/licenses", Some(json!({"institution": "tu-x", "license_type": "y-staff"})))
        .await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "License type 'y-staff' does not belong to institution 'tu-x'");
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM licenses", []), 0);
}

#[actix_web::test]
async fn unknown_institution_license_type_license_and_key_get_404() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(100)).await;
    let missing = uuid::Uuid::new_v4().to_string();
    let cases: Vec<(&str, String, Option<Value>, String)> = vec![
        (
            "POST",
            "/license-types".into(),
            Some(
                json!({"alias": "x", "name": "X", "institution": "nowhere", "default_micro_credits": 1}),
            ),
            "Institution 'nowhere' not found".into(),
        ),
        (
            "POST",
            "/licenses".into(),
            Some(json!({"institution": "nowhere", "license_type": seeded.license_type})),
            "Institution 'nowhere' not found".into(),
        ),
        (
            "POST",
            "/licenses".into(),
            Some(json!({"institution": seeded.institution, "license_type": "nothing"})),
            "License type 'nothing' not found".into(),
        ),
        (
            "GET",
            "/institutions/nowhere/public-keys".into(),
            None,
            "Institution 'nowhere' not found".into(),
        ),
        (
            "POST",
            "/institutions/nowhere/public-keys".into(),
            Some(json!({"public_key": ed25519_pem(&[1; 32])})),
            "Institution 'nowhere' not found".into(),
        ),
        (
            "PUT",
            "/license-types/nothing/prices/demo%2Fecho".into(),
            Some(json!({"input_cost_per_micro_credit": 1, "output_cost_per_micro_credit": 1})),
            "License type 'nothing' not found".into(),
        ),
        (
            "PUT",
            "/license-types/nothing/tool-prices/web-search".into(),
            Some(json!({"micro_credits": 1})),
            "License type 'nothing' not found".into(),
        ),
        (
            "GET",
            "/licenses?institution=nowhere".into(),
            None,
            "Institution 'nowhere' not found".into(),
        ),
        (
            "GET",
            "/licenses?license_type=nothing".into(),
            None,
            "License type 'nothing' not found".into(),
        ),
        ("GET", format!("/licenses/{missing}"), None, format!("License '{missing}' not found")),
        (
            "POST",
            format!("/licenses/{missing}/credits"),
            Some(json!({"micro_credits": 5})),
            format!("License '{missing}' not found"),
        ),
        (
            "POST",
            format!("/licenses/{missing}/keys"),
            Some(json!({})),
            format!("License '{missing}' not found"),
        ),
        (
            "GET",
            format!("/licenses/{missing}/keys"),
            None,
            format!("License '{missing}' not found"),
        ),
        (
            "GET",
            format!("/licenses/{missing}/usage"),
            None,
            format!("License '{missing}' not found"),
        ),
        ("DELETE", format!("/keys/{missing}"), None, format!("Key '{missing}' not found")),
        (
            "DELETE",
            format!("/public-keys/{missing}"),
            None,
            format!("Public key '{missing}' not found"),
        ),
    ];

    for (method, path, body, expected) in cases {
        let r = app.admin(method, &path, body).await;

        assert_eq!(r.status(), 404, "{method} {path}: {}", r.text);
        assert_eq!(r.error_message(), expected, "{method} {path}");
    }
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM licenses", []), 1);
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM api_keys", []), 1);
}

#[actix_web::test]
async fn credits_removal_below_zero_gets_409_and_leaves_the_balance_unchanged() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000)).await;
    let path = format!("/licenses/{}/credits", seeded.license_id);

    let r = app.admin("POST", &path, Some(json!({"micro_credits": -1_001}))).await;

    assert_eq!(r.status(), 409, "{}", r.text);
    assert_eq!(r.error_message(), "Balance cannot go below zero");
    let license = app.admin_ok("GET", &format!("/licenses/{}", seeded.license_id), None).await;
    assert_eq!(license["available_micro_credits"], 1_000);
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], 1_000);
    assert_eq!(
        app.query_i64(
            "SELECT COUNT(*) FROM ledger_entries WHERE license_id = ?1",
            [&seeded.license_id]
        ),
        1
    );
}

#[actix_web::test]
async fn credits_removal_down_to_exactly_zero_is_allowed() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000)).await;

    let r = app
        .admin(
            "POST",
            &format!("/licenses/{}/credits", seeded.license_id),
            Some(json!({"micro_credits": -1_000})),
        )
        .await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(r.json()["available_micro_credits"], 0);
    assert_eq!(r.json()["used_micro_credits"], 0);
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], 0);
    assert_eq!(
        app.query_i64(
            "SELECT COUNT(*) FROM ledger_entries WHERE license_id = ?1 AND micro_credits = -1000",
            [&seeded.license_id]
        ),
        1
    );
}

#[actix_web::test]
async fn credits_change_of_zero_gets_400() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000)).await;

    let r = app
        .admin(
            "POST",
            &format!("/licenses/{}/credits", seeded.license_id),
            Some(json!({"micro_credits": 0})),
        )
        .await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "'micro_credits' must not be zero");
    assert_eq!(
        app.query_i64(
            "SELECT COUNT(*) FROM ledger_entries WHERE license_id = ?1",
            [&seeded.license_id]
        ),
        1
    );
}

#[actix_web::test]
async fn credits_change_on_an_unlimited_license_gets_409() {
    let app = spawn_app().await;
    let seeded = app.seed_license(None).await;

    let r = app
        .admin(
            "POST",
            &format!("/licenses/{}/credits", seeded.license_id),
            Some(json!({"micro_credits": 500})),
        )
        .await;

    assert_eq!(r.status(), 409, "{}", r.text);
    assert_eq!(r.error_message(), "License is unlimited; its balance cannot change");
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], Value::Null);
    assert_eq!(
        app.query_i64(
            "SELECT COUNT(*) FROM ledger_entries WHERE license_id = ?1",
            [&seeded.license_id]
        ),
        0
    );
}

#[actix_web::test]
async fn create_key_rejects_an_expiry_that_is_not_rfc_3339() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(10)).await;

    let r = app
        .admin(
            "POST",
            &format!("/licenses/{}/keys", seeded.license_id),
            Some(json!({"expires_at": "tomorrow"})),
        )
        .await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "invalid value for 'expires_at': expected an RFC 3339 timestamp");
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM api_keys", []), 1);
}

#[actix_web::test]
async fn usage_limit_out_of_range_gets_400_and_limit_returns_the_newest_first() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let first = app.chat(&seeded.key, &chat_body("one")).await;
    let second = app.chat(&seeded.key, &chat_body("one two")).await;
    assert_eq!(first.status(), 200, "{}", first.text);
    assert_eq!(second.status(), 200, "{}", second.text);

    let zero =
        app.admin("GET", &format!("/licenses/{}/usage?limit=0", seeded.license_id), None).await;
    let newest =
        app.admin_ok("GET", &format!("/licenses/{}/usage?limit=1", seeded.license_id), None).await;
    let all = app.admin_ok("GET", &format!("/licenses/{}/usage", seeded.license_id), None).await;

    assert_eq!(zero.status(), 400, "{}", zero.text);
    assert_eq!(zero.error_message(), "'limit' must be between 1 and 1000");
    assert_eq!(array(&newest).len(), 1);
    assert_eq!(newest[0]["request_id"], second.header("x-request-id").expect("id").as_str());
    assert_eq!(array(&all).len(), 2);
    assert_eq!(all[1]["request_id"], first.header("x-request-id").expect("id").as_str());
}

// ---- 4. the ledger ----

#[actix_web::test]
async fn ledger_balances_equal_the_sum_of_their_entries_after_grants_debits_and_removals() {
    let app = spawn_app().await;
    let a = app.seed_license(Some(10_000)).await;
    let b = app.seed_license(Some(500)).await;
    let unlimited = app.seed_license(None).await;
    let zero = create_license(
        &app,
        json!({"institution": a.institution, "license_type": a.license_type, "micro_credits": 0}),
    )
    .await;
    let zero_id = str_of(&zero, "license_id").to_string();
    let zero_key = app.new_key(&zero_id).await;

    // debits, some concurrent
    let texts = ["Hello there", "one two three four", "a", "the quick brown fox jumps", "x y"];
    let requests: Vec<(&String, Value)> = texts
        .iter()
        .flat_map(|t| {
            [(&a.key, chat_body(t)), (&b.key, chat_body(t)), (&unlimited.key, chat_body(t))]
        })
        .collect();
    let replies =
        futures_util::future::join_all(requests.iter().map(|(key, body)| app.chat(key, body)))
            .await;
    for r in &replies {
        assert!(r.status() == 200 || r.status() == 402, "{}", r.text);
    }
    // grants and removals, then small ones racing against chats
    for (license, amount) in
        [(&a.license_id, 2_500), (&b.license_id, 1_000), (&a.license_id, -700), (&zero_id, 300)]
    {
        let r = app
            .admin(
                "POST",
                &format!("/licenses/{license}/credits"),
                Some(json!({"micro_credits": amount})),
            )
            .await;
        assert_eq!(r.status(), 200, "{license} {amount}: {}", r.text);
    }
    let racing_path = format!("/licenses/{}/credits", a.license_id);
    let changes = (0..10).map(|i| {
        let amount = if i % 2 == 0 { 50 } else { -20 };
        app.admin("POST", &racing_path, Some(json!({"micro_credits": amount})))
    });
    let racing_body = chat_body("racing a top up");
    let chats = (0..10).map(|_| app.chat(&a.key, &racing_body));
    let (changes, chats) = futures_util::future::join(
        futures_util::future::join_all(changes),
        futures_util::future::join_all(chats),
    )
    .await;
    for r in changes.iter().chain(chats.iter()) {
        assert_eq!(r.status(), 200, "{}", r.text);
    }
    let refused = app
        .admin(
            "POST",
            &format!("/licenses/{}/credits", b.license_id),
            Some(json!({"micro_credits": -100_000})),
        )
        .await;
    assert_eq!(refused.status(), 409, "{}", refused.text);
    // more debits after the changes
    for key in [&a.key, &b.key, &unlimited.key, &zero_key] {
        let r = app.chat(key, &chat_body("after the top up")).await;
        assert_eq!(r.status(), 200, "{}", r.text);
    }

    // Assert, for every license, from the database
    let db = app.db();
    let mut stmt = db
        .prepare(
            "SELECT l.id, l.available_micro_credits, l.used_micro_credits,
                    (SELECT SUM(e.micro_credits) FROM ledger_entries e WHERE e.license_id = l.id),
                    (SELECT SUM(e.micro_credits) FROM ledger_entries e WHERE e.license_id = l.id AND e.kind = 'debit'),
                    (SELECT SUM(u.micro_credits) FROM usage u WHERE u.license_id = l.id),
                    (SELECT COUNT(*) FROM usage u WHERE u.license_id = l.id)
             FROM licenses l",
        )
        .expect("prepare");
    type Row = (String, Option<i64>, i64, Option<i64>, Option<i64>, Option<i64>, i64);
    let rows: Vec<Row> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(rows.len(), 4);
    for (id, available, used, entries, debits, usage, requests) in rows {
        assert!(requests >= 1, "license {id} has no usage");
        assert!(used > 0, "license {id} was never charged");
        if id == unlimited.license_id {
            assert_eq!(available, None, "unlimited license {id}");
        } else {
            assert_eq!(
                available,
                Some(entries.unwrap_or(0)),
                "license {id}: balance vs sum of ledger entries"
            );
        }
        assert_eq!(used, -debits.unwrap_or(0), "license {id}: used vs debit entries");
        assert_eq!(usage.unwrap_or(0), used, "license {id}: usage rows vs used");
    }
    // and the live balances agree with what was committed
    for (key, license_id) in
        [(&a.key, &a.license_id), (&b.key, &b.license_id), (&zero_key, &zero_id)]
    {
        let live = app.license(key).await;
        let committed = app.admin_ok("GET", &format!("/licenses/{license_id}"), None).await;
        assert_eq!(
            live["available_micro_credits"], committed["available_micro_credits"],
            "{license_id}"
        );
        assert_eq!(live["used_micro_credits"], committed["used_micro_credits"], "{license_id}");
    }
}

#[actix_web::test]
async fn ledger_entries_cannot_be_updated_or_deleted() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000)).await;
    let r = app.chat(&seeded.key, &chat_body("Hello there")).await;
    assert_eq!(r.status(), 200, "{}", r.text);
    let before = app.query_i64("SELECT SUM(micro_credits) FROM ledger_entries", []);
    let conn = rusqlite::Connection::open(&app.db_path).expect("open db read-write");
    conn.busy_timeout(std::time::Duration::from_secs(5)).expect("busy timeout");

    let update =
        conn.execute("UPDATE ledger_entries SET micro_credits = micro_credits + 1000000", []);
    let delete = conn.execute("DELETE FROM ledger_entries WHERE kind = 'debit'", []);

    let update = update.expect_err("UPDATE on ledger_entries succeeded");
    assert!(update.to_string().contains("append-only"), "{update}");
    let delete = delete.expect_err("DELETE on ledger_entries succeeded");
    assert!(delete.to_string().contains("append-only"), "{delete}");
    assert_eq!(app.query_i64("SELECT SUM(micro_credits) FROM ledger_entries", []), before);
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM ledger_entries", []), 2);
}

// ---- 5. prices ----

#[actix_web::test]
async fn model_price_with_an_encoded_slash_is_stored_exactly_and_shown_to_keys_of_that_type() {
    let app = spawn_app().await;
    let priced = app.seed_license(Some(1_000_000)).await;
    let other = app.seed_license(Some(1_000_000)).await;

    let r = app
        .admin(
            "PUT",
            &format!("/license-types/{}/prices/demo%2Fecho", priced.license_type),
            Some(json!({"input_cost_per_micro_credit": 0.0016, "output_cost_per_micro_credit": 1.75})),
        )
        .await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let price = r.json();
    assert_eq!(price["model_id"], "demo/echo");
    assert_eq!(price["input_cost_per_micro_credit"], json!(0.0016));
    assert_eq!(price["output_cost_per_micro_credit"], json!(1.75));
    assert!(r.text.contains("0.0016"), "{}", r.text);
    // stored as exact units of 10⁻⁹ µcr per token
    let lt_id =
        app.license(&priced.key).await["license_type_id"].as_str().expect("lt id").to_string();
    assert_eq!(price["license_type_id"], lt_id.as_str());
    assert_eq!(
        app.query_i64("SELECT input_price FROM model_prices WHERE license_type_id = ?1 AND model_id = 'demo/echo'", [&lt_id]),
        1_600_000
    );
    assert_eq!(
        app.query_i64("SELECT output_price FROM model_prices WHERE license_type_id = ?1 AND model_id = 'demo/echo'", [&lt_id]),
        1_750_000_000
    );
    // /v1/models: the override for this type, the default for the other
    let cost_of = |models: &Value| {
        array(models).iter().find(|m| m["id"] == "demo/echo").expect("demo/echo listed")["cost"]
            .clone()
    };
    let mine = app.get(&priced.key, "/v1/models").await;
    assert_eq!(mine.status(), 200, "{}", mine.text);
    assert!(mine.text.contains("0.0016"), "{}", mine.text);
    assert_eq!(
        cost_of(&mine.json()),
        json!({"input_cost_per_micro_credit": 0.0016, "output_cost_per_micro_credit": 1.75})
    );
    let theirs = app.get(&other.key, "/v1/models").await;
    assert_eq!(
        cost_of(&theirs.json()),
        json!({"input_cost_per_micro_credit": 0.75, "output_cost_per_micro_credit": 2.5})
    );
}

#[actix_web::test]
async fn model_price_accepts_a_raw_slash_and_a_decimal_string() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000)).await;

    let r = app
        .admin(
            "PUT",
            &format!("/license-types/{}/prices/demo/echo", seeded.license_type),
            Some(json!({"input_cost_per_micro_credit": "0.0016", "output_cost_per_micro_credit": "0.000000001"})),
        )
        .await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(r.json()["model_id"], "demo/echo");
    assert_eq!(r.json()["input_cost_per_micro_credit"], json!(0.0016));
    assert_eq!(
        app.query_i64("SELECT input_price FROM model_prices WHERE model_id = 'demo/echo'", []),
        1_600_000
    );
    assert_eq!(
        app.query_i64("SELECT output_price FROM model_prices WHERE model_id = 'demo/echo'", []),
        1
    );
}

#[actix_web::test]
async fn chat_is_billed_at_the_license_types_override_and_other_types_keep_the_default() {
    let app = spawn_app().await;
    let priced = app.seed_license(Some(1_000_000)).await;
    let other = app.seed_license(Some(1_000_000)).await;
    let r = app
        .admin(
            "PUT",
            &format!("/license-types/{}/prices/demo%2Fecho", priced.license_type),
            Some(json!({"input_cost_per_micro_credit": 0.0016, "output_cost_per_micro_credit": 1.75})),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text);
    let text = "one two three four five";
    let (prompt, completion) = demo_tokens(text);
    assert_eq!((prompt, completion), (6, 13));
    // 6 × 0.0016 + 13 × 1.75 = 0.0096 + 22.75 = 22.7596 → 23
    let expected = ceil_cost(prompt, completion, 1_600_000, 1_750_000_000);
    assert_eq!(expected, 23);
    // 6 × 0.75 + 13 × 2.5 = 4.5 + 32.5 = 37
    let default = ceil_cost(prompt, completion, 750_000_000, 2_500_000_000);
    assert_eq!(default, 37);

    let mine = app.chat(&priced.key, &chat_body(text)).await;
    let theirs = app.chat(&other.key, &chat_body(text)).await;

    assert_eq!(mine.status(), 200, "{}", mine.text);
    assert_eq!(theirs.status(), 200, "{}", theirs.text);
    assert_eq!(mine.json()["usage"]["prompt_tokens"], prompt);
    assert_eq!(mine.json()["usage"]["completion_tokens"], completion);
    assert_eq!(mine.json()["usage"]["credits_used"], expected);
    assert_eq!(theirs.json()["usage"]["credits_used"], default);
    assert_eq!(app.license(&priced.key).await["available_micro_credits"], 1_000_000 - expected);
    assert_eq!(app.license(&other.key).await["available_micro_credits"], 1_000_000 - default);
    let usage = app.admin_ok("GET", &format!("/licenses/{}/usage", priced.license_id), None).await;
    assert_eq!(usage[0]["micro_credits"], expected);
    assert_eq!(
        app.query_i64(
            "SELECT micro_credits FROM ledger_entries WHERE license_id = ?1 AND kind = 'debit'",
            [&priced.license_id]
        ),
        -expected
    );
}

#[actix_web::test]
async fn chat_cost_that_is_a_whole_number_exactly_is_not_rounded_up() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000)).await;
    let r = app
        .admin(
            "PUT",
            &format!("/license-types/{}/prices/demo%2Fecho", seeded.license_type),
            Some(json!({"input_cost_per_micro_credit": 0.2, "output_cost_per_micro_credit": 1.1})),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text);
    let text = (1..=20).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    let (prompt, completion) = demo_tokens(&text);
    assert_eq!((prompt, completion), (21, 28));
    // 21 × 0.2 + 28 × 1.1 = 4.2 + 30.8 = 35 exactly (in f64 it is 35.00000000000001, ceil 36)
    let expected = ceil_cost(prompt, completion, 200_000_000, 1_100_000_000);
    assert_eq!(expected, 35);

    let r = app.chat(&seeded.key, &chat_body(&text)).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(r.json()["usage"]["prompt_tokens"], prompt);
    assert_eq!(r.json()["usage"]["completion_tokens"], completion);
    assert_eq!(r.json()["usage"]["credits_used"], expected);
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], 1_000 - expected);
}

#[actix_web::test]
async fn model_price_rejects_prices_it_cannot_store_exactly_and_unknown_models() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000)).await;
    let path = |model: &str| format!("/license-types/{}/prices/{model}", seeded.license_type);

    let negative = app
        .admin(
            "PUT",
            &path("demo%2Fecho"),
            Some(json!({"input_cost_per_micro_credit": -1, "output_cost_per_micro_credit": 1})),
        )
        .await;
    let too_fine = app
        .admin(
            "PUT",
            &path("demo%2Fecho"),
            Some(json!({"input_cost_per_micro_credit": 1, "output_cost_per_micro_credit": "0.0000000001"})),
        )
        .await;
    let unknown = app
        .admin(
            "PUT",
            &path("nobody%2Fnothing"),
            Some(json!({"input_cost_per_micro_credit": 1, "output_cost_per_micro_credit": 1})),
        )
        .await;

    assert_eq!(negative.status(), 400, "{}", negative.text);
    assert!(
        negative.error_message().starts_with("'input_cost_per_micro_credit'"),
        "{}",
        negative.text
    );
    assert_eq!(too_fine.status(), 400, "{}", too_fine.text);
    assert!(
        too_fine.error_message().starts_with("'output_cost_per_micro_credit'"),
        "{}",
        too_fine.text
    );
    assert_eq!(unknown.status(), 404, "{}", unknown.text);
    assert_eq!(unknown.error_message(), "Model 'nobody/nothing' not found");
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM model_prices", []), 0);
}

#[actix_web::test]
async fn tool_price_is_set_per_license_type() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000)).await;
    let lt_id = app.license(&seeded.key).await["license_type_id"].as_str().expect("lt").to_string();

    let search = app
        .admin(
            "PUT",
            &format!("/license-types/{}/tool-prices/web-search", seeded.license_type),
            Some(json!({"micro_credits": 5_000})),
        )
        .await;
    let fetch = app
        .admin(
            "PUT",
            &format!("/license-types/{lt_id}/tool-prices/fetch"),
            Some(json!({"micro_credits": 0})),
        )
        .await;
    let again = app
        .admin(
            "PUT",
            &format!("/license-types/{}/tool-prices/web-search", seeded.license_type),
            Some(json!({"micro_credits": 6_000})),
        )
        .await;

    assert_eq!(search.status(), 200, "{}", search.text);
    assert_eq!(
        search.json(),
        json!({"license_type_id": lt_id, "tool": "web-search", "micro_credits": 5_000})
    );
    assert_eq!(fetch.status(), 200, "{}", fetch.text);
    assert_eq!(fetch.json()["micro_credits"], 0);
    assert_eq!(again.status(), 200, "{}", again.text);
    assert_eq!(
        app.query_i64("SELECT micro_credits FROM tool_prices WHERE license_type_id = ?1 AND tool = 'web-search'", [&lt_id]),
        6_000
    );
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM tool_prices", []), 2);
}

#[actix_web::test]
async fn tool_price_for_an_unknown_tool_gets_404_and_a_negative_price_400() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000)).await;

    let unknown = app
        .admin(
            "PUT",
            &format!("/license-types/{}/tool-prices/image-generation", seeded.license_type),
            Some(json!({"micro_credits": 5})),
        )
        .await;
    let negative = app
        .admin(
            "PUT",
            &format!("/license-types/{}/tool-prices/fetch", seeded.license_type),
            Some(json!({"micro_credits": -5})),
        )
        .await;

    assert_eq!(unknown.status(), 404, "{}", unknown.text);
    assert_eq!(
        unknown.error_message(),
        "Unknown tool 'image-generation': expected one of web-search, fetch"
    );
    assert_eq!(negative.status(), 400, "{}", negative.text);
    assert_eq!(negative.error_message(), "'micro_credits' must not be negative");
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM tool_prices", []), 0);
}

// ---- 6. models ----

#[actix_web::test]
async fn admin_models_list_the_seeded_catalog_with_the_documented_fields() {
    let app = spawn_app().await;

    let r = app.admin("GET", "/models", None).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let models = r.json();
    let ids: Vec<&str> = array(&models).iter().filter_map(|m| m["id"].as_str()).collect();
    for id in [
        "openai/gpt-4.1-mini",
        "openai/gpt-4.1-nano",
        "anthropic/claude-sonnet-4-20250514",
        "demo/echo",
        "demo/echo-vision",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let documented = sorted(&[
        "id",
        "name",
        "kind",
        "context_window",
        "max_output_tokens",
        "input_cost_per_micro_credit",
        "output_cost_per_micro_credit",
        "routes",
        "active",
        "input_modality",
        "output_modality",
        "description",
        "model_author",
        "supported_features",
    ]);
    for model in array(&models) {
        assert_eq!(fields(model), documented, "{model}");
    }
    let echo = array(&models).iter().find(|m| m["id"] == "demo/echo").expect("demo/echo");
    assert_eq!(echo["kind"], "chat");
    assert_eq!(echo["context_window"], 8192);
    assert_eq!(echo["max_output_tokens"], 256);
    assert_eq!(echo["input_cost_per_micro_credit"], json!(0.75));
    assert_eq!(echo["output_cost_per_micro_credit"], json!(2.5));
    assert_eq!(echo["routes"], json!([{"provider": "demo", "upstream_model": "echo"}]));
    assert_eq!(echo["active"], true);
    assert_eq!(
        echo["input_modality"],
        json!({"text": true, "image": false, "audio": false, "video": false})
    );
    assert_eq!(echo["model_author"], "demo");
    let mini = array(&models).iter().find(|m| m["id"] == "openai/gpt-4.1-mini").expect("mini");
    assert_eq!(mini["input_cost_per_micro_credit"], json!(0.0016));
    assert_eq!(mini["input_modality"]["image"], true);
}

#[actix_web::test]
async fn put_model_creates_a_demo_model_that_is_listed_and_serves_chat() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = app
        .admin(
            "PUT",
            "/models/demo%2Fnew",
            Some(json!({
                "name": "Demo New",
                "input_cost_per_micro_credit": 1,
                "output_cost_per_micro_credit": "2",
                "max_output_tokens": 64,
                "routes": [{"provider": "demo", "upstream_model": "echo"}],
            })),
        )
        .await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let model = r.json();
    assert_eq!(model["id"], "demo/new");
    assert_eq!(model["kind"], "chat");
    assert_eq!(model["active"], true);
    assert_eq!(
        model["input_modality"],
        json!({"text": true, "image": false, "audio": false, "video": false})
    );
    assert_eq!(model["model_author"], "demo");
    assert_eq!(model["routes"], json!([{"provider": "demo", "upstream_model": "echo"}]));
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM models WHERE id = 'demo/new'", []), 1);
    let admin_list = app.admin_ok("GET", "/models", None).await;
    assert_eq!(array(&admin_list).iter().find(|m| m["id"] == "demo/new"), Some(&model));
    let listed = app.get(&seeded.key, "/v1/models").await;
    let listed = listed.json();
    let public =
        array(&listed).iter().find(|m| m["id"] == "demo/new").expect("demo/new in /v1/models");
    assert_eq!(
        public["cost"],
        json!({"input_cost_per_micro_credit": 1.0, "output_cost_per_micro_credit": 2.0})
    );
    let chat = app
        .chat(
            &seeded.key,
            &json!({"model": "demo/new", "messages": [{"role": "user", "content": "Hello there"}]}),
        )
        .await;
    assert_eq!(chat.status(), 200, "{}", chat.text);
    assert_eq!(chat.json()["model"], "demo/new");
    // 3 × 1 + 10 × 2 = 23
    assert_eq!(chat.json()["usage"]["credits_used"], 23);
}

#[actix_web::test]
async fn put_model_with_active_false_hides_it_from_keys() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let body = json!({
        "id": "demo/new",
        "name": "Demo New",
        "input_cost_per_micro_credit": 1,
        "output_cost_per_micro_credit": 2,
        "routes": [{"provider": "demo", "upstream_model": "echo"}],
    });
    app.admin_ok("PUT", "/models/demo%2Fnew", Some(body.clone())).await;
    let mut inactive = body;
    inactive["active"] = json!(false);

    let r = app.admin("PUT", "/models/demo%2Fnew", Some(inactive)).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(r.json()["active"], false);
    let listed = app.get(&seeded.key, "/v1/models").await.json();
    assert!(array(&listed).iter().all(|m| m["id"] != "demo/new"), "{listed}");
    assert!(array(&listed).iter().any(|m| m["id"] == "demo/echo"), "{listed}");
    let chat = app
        .chat(
            &seeded.key,
            &json!({"model": "demo/new", "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    assert_eq!(chat.status(), 404, "{}", chat.text);
    assert_eq!(chat.error_message(), "Model 'demo/new' not found");
    let admin_list = app.admin_ok("GET", "/models", None).await;
    let admin_view =
        array(&admin_list).iter().find(|m| m["id"] == "demo/new").expect("still in the admin list");
    assert_eq!(admin_view["active"], false);
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM usage", []), 0);
}

#[actix_web::test]
async fn put_model_with_an_unknown_route_provider_gets_400() {
    let app = spawn_app().await;

    let r = app
        .admin(
            "PUT",
            "/models/demo%2Fnew",
            Some(json!({
                "name": "Demo New",
                "input_cost_per_micro_credit": 1,
                "output_cost_per_micro_credit": 2,
                "routes": [{"provider": "demo", "upstream_model": "echo"}, {"provider": "skynet", "upstream_model": "t800"}],
            })),
        )
        .await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(
        r.error_message(),
        "invalid value for 'routes[1].provider': expected one of openrouter, anthropic, demo"
    );
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM models WHERE id = 'demo/new'", []), 0);
}

#[actix_web::test]
async fn put_model_whose_body_id_differs_from_the_path_gets_400() {
    let app = spawn_app().await;

    let r = app
        .admin(
            "PUT",
            "/models/demo%2Fnew",
            Some(json!({
                "id": "demo/other",
                "name": "Demo",
                "input_cost_per_micro_credit": 1,
                "output_cost_per_micro_credit": 2,
                "routes": [{"provider": "demo", "upstream_model": "echo"}],
            })),
        )
        .await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(
        r.error_message(),
        "'id' ('demo/other') does not match the model id in the path ('demo/new')"
    );
    assert_eq!(
        app.query_i64("SELECT COUNT(*) FROM models WHERE id IN ('demo/new', 'demo/other')", []),
        0
    );
}

#[actix_web::test]
async fn put_model_rejects_unknown_fields_and_empty_routes() {
    let app = spawn_app().await;
    let base = json!({
        "name": "Demo",
        "input_cost_per_micro_credit": 1,
        "output_cost_per_micro_credit": 2,
        "routes": [{"provider": "demo", "upstream_model": "echo"}],
    });
    let mut unknown = base.clone();
    unknown["temperature"] = json!(1);
    let mut nested = base.clone();
    nested["routes"][0]["weight"] = json!(1);
    let mut empty = base.clone();
    empty["routes"] = json!([]);
    let mut kind = base;
    kind["kind"] = json!("image");

    let unknown = app.admin("PUT", "/models/demo%2Fnew", Some(unknown)).await;
    let nested = app.admin("PUT", "/models/demo%2Fnew", Some(nested)).await;
    let empty = app.admin("PUT", "/models/demo%2Fnew", Some(empty)).await;
    let kind = app.admin("PUT", "/models/demo%2Fnew", Some(kind)).await;

    assert_eq!(unknown.status(), 400, "{}", unknown.text);
    assert_eq!(unknown.error_message(), "unknown field: 'temperature'");
    assert_eq!(nested.status(), 400, "{}", nested.text);
    assert_eq!(nested.error_message(), "unknown field: 'routes[0].weight'");
    assert_eq!(empty.status(), 400, "{}", empty.text);
    assert_eq!(empty.error_message(), "'routes' must not be empty");
    assert_eq!(kind.status(), 400, "{}", kind.text);
    assert!(kind.error_message().contains("'kind'"), "{}", kind.text);
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM models WHERE id = 'demo/new'", []), 0);
}

#[actix_web::test]
async fn put_model_accepts_a_raw_slash_in_the_model_id() {
    let app = spawn_app().await;

    let r = app
        .admin(
            "PUT",
            "/models/demo/raw",
            Some(json!({
                "name": "Raw",
                "input_cost_per_micro_credit": 1,
                "output_cost_per_micro_credit": 2,
                "routes": [{"provider": "demo", "upstream_model": "echo"}],
            })),
        )
        .await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(r.json()["id"], "demo/raw");
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM models WHERE id = 'demo/raw'", []), 1);
}

#[actix_web::test]
async fn put_model_rejects_an_empty_name() {
    let app = spawn_app().await;

    let r = app
        .admin(
            "PUT",
            "/models/demo%2Fnameless",
            Some(json!({
                "name": " ",
                "input_cost_per_micro_credit": 1,
                "output_cost_per_micro_credit": 2,
                "routes": [{"provider": "demo", "upstream_model": "echo"}],
            })),
        )
        .await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "'name' must be 1 to 200 characters");
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM models WHERE id = 'demo/nameless'", []), 0);
}

// ---- 7. public keys ----

#[actix_web::test]
async fn public_keys_are_added_listed_and_deleted() {
    let app = spawn_app().await;
    create_institution(&app, "tu-x").await;
    let raw: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let raw_b64 = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);

    // Act: add one PEM key with a kid and one raw key without
    let pem = app
        .admin(
            "POST",
            "/institutions/tu-x/public-keys",
            Some(json!({"public_key": ed25519_pem(&raw), "kid": "2025-01"})),
        )
        .await;
    let bare = app
        .admin("POST", "/institutions/tu-x/public-keys", Some(json!({"public_key": raw_b64})))
        .await;

    // Assert
    assert_eq!(pem.status(), 201, "{}", pem.text);
    let pem = pem.json();
    assert_eq!(fields(&pem), sorted(&["id", "kid", "created_at"]));
    assert_uuid(&pem["id"]);
    assert_eq!(pem["kid"], "2025-01");
    assert_timestamp(&pem["created_at"]);
    assert_eq!(bare.status(), 201, "{}", bare.text);
    let bare = bare.json();
    assert_eq!(bare["kid"], Value::Null);
    let pem_id = str_of(&pem, "id").to_string();
    let stored: Vec<u8> = app
        .db()
        .query_row("SELECT public_key FROM institution_public_keys WHERE id = ?1", [&pem_id], |r| {
            r.get(0)
        })
        .expect("stored key");
    assert_eq!(stored, raw.to_vec());
    let list = app.admin_ok("GET", "/institutions/tu-x/public-keys", None).await;
    let ids: Vec<&Value> = array(&list).iter().map(|k| &k["id"]).collect();
    assert_eq!(ids, vec![&pem["id"], &bare["id"]]);
    assert_eq!(list[0]["kid"], "2025-01");

    // duplicate kid
    let dup = app
        .admin(
            "POST",
            "/institutions/tu-x/public-keys",
            Some(json!({"public_key": ed25519_pem(&[3; 32]), "kid": "2025-01"})),
        )
        .await;
    assert_eq!(dup.status(), 409, "{}", dup.text);
    assert_eq!(dup.error_message(), "Institution 'tu-x' already has a key with kid '2025-01'");

    // delete
    let deleted = app.admin("DELETE", &format!("/public-keys/{pem_id}"), None).await;
    assert_eq!(deleted.status(), 204, "{}", deleted.text);
    assert!(deleted.text.is_empty());
    let list = app.admin_ok("GET", "/institutions/tu-x/public-keys", None).await;
    assert_eq!(array(&list).len(), 1);
    assert_eq!(list[0]["id"], bare["id"]);
    let again = app.admin("DELETE", &format!("/public-keys/{pem_id}"), None).await;
    assert_eq!(again.status(), 404, "{}", again.text);
    assert_eq!(again.error_message(), format!("Public key '{pem_id}' not found"));
    assert_eq!(
        app.query_i64("SELECT COUNT(*) FROM institution_public_keys WHERE active = 1", []),
        1
    );
}

#[actix_web::test]
async fn public_key_kid_can_be_reused_once_its_key_was_deleted_and_in_another_institution() {
    let app = spawn_app().await;
    create_institution(&app, "tu-x").await;
    create_institution(&app, "tu-y").await;
    let first = app
        .admin_ok(
            "POST",
            "/institutions/tu-x/public-keys",
            Some(json!({"public_key": ed25519_pem(&[1; 32]), "kid": "k"})),
        )
        .await;

    let other_institution = app
        .admin(
            "POST",
            "/institutions/tu-y/public-keys",
            Some(json!({"public_key": ed25519_pem(&[1; 32]), "kid": "k"})),
        )
        .await;
    app.admin_ok("DELETE", &format!("/public-keys/{}", str_of(&first, "id")), None).await;
    let rotated = app
        .admin(
            "POST",
            "/institutions/tu-x/public-keys",
            Some(json!({"public_key": ed25519_pem(&[2; 32]), "kid": "k"})),
        )
        .await;

    assert_eq!(other_institution.status(), 201, "{}", other_institution.text);
    assert_eq!(rotated.status(), 201, "{}", rotated.text);
}

#[actix_web::test]
async fn public_key_that_is_not_an_ed25519_key_gets_400() {
    let app = spawn_app().await;
    create_institution(&app, "tu-x").await;
    let expected = "'public_key' must be an Ed25519 public key: PEM (-----BEGIN PUBLIC KEY-----) or base64 of 32 bytes";
    let rsa = "-----BEGIN PUBLIC KEY-----\nMFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf\n-----END PUBLIC KEY-----";
    let short = base64::engine::general_purpose::STANDARD.encode([1u8; 31]);

    for garbage in [
        "not a key",
        "",
        short.as_str(),
        rsa,
        "-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----",
    ] {
        let r = app
            .admin("POST", "/institutions/tu-x/public-keys", Some(json!({"public_key": garbage})))
            .await;

        assert_eq!(r.status(), 400, "{garbage:?}: {}", r.text);
        assert_eq!(r.error_message(), expected, "{garbage:?}");
    }
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM institution_public_keys", []), 0);
}

// ---- 8. license filters ----

#[actix_web::test]
async fn list_licenses_filters_by_institution_license_type_and_unique_id() {
    let app = spawn_app().await;
    create_institution(&app, "tu-x").await;
    create_institution(&app, "tu-y").await;
    create_license_type(&app, "tu-x", "x-staff", Some(1)).await;
    create_license_type(&app, "tu-x", "x-student", Some(1)).await;
    create_license_type(&app, "tu-y", "y-staff", Some(1)).await;
    let x_staff_1 = create_license(
        &app,
        json!({"institution": "tu-x", "license_type": "x-staff", "unique_id": "alice"}),
    )
    .await;
    let x_staff_2 = create_license(
        &app,
        json!({"institution": "tu-x", "license_type": "x-staff", "unique_id": "bob"}),
    )
    .await;
    let x_student = create_license(
        &app,
        json!({"institution": "tu-x", "license_type": "x-student", "unique_id": "alice"}),
    )
    .await;
    let y_staff = create_license(
        &app,
        json!({"institution": "tu-y", "license_type": "y-staff", "unique_id": "alice"}),
    )
    .await;
    let ids = |list: &Value| -> Vec<String> {
        let mut ids: Vec<String> =
            array(list).iter().map(|l| str_of(l, "license_id").to_string()).collect();
        ids.sort();
        ids
    };
    let expect = |licenses: &[&Value]| -> Vec<String> {
        let mut ids: Vec<String> =
            licenses.iter().map(|l| str_of(l, "license_id").to_string()).collect();
        ids.sort();
        ids
    };

    let all = app.admin_ok("GET", "/licenses", None).await;
    let tu_x = app.admin_ok("GET", "/licenses?institution=tu-x", None).await;
    let x_staff = app.admin_ok("GET", "/licenses?license_type=x-staff", None).await;
    let alice = app.admin_ok("GET", "/licenses?unique_id=alice", None).await;
    let alice_at_x = app.admin_ok("GET", "/licenses?institution=tu-x&unique_id=alice", None).await;
    let all_three = app
        .admin_ok("GET", "/licenses?institution=tu-x&license_type=x-staff&unique_id=bob", None)
        .await;
    let nobody = app.admin_ok("GET", "/licenses?unique_id=carol", None).await;
    let mismatch =
        app.admin_ok("GET", "/licenses?institution=tu-y&license_type=x-staff", None).await;

    assert_eq!(ids(&all), expect(&[&x_staff_1, &x_staff_2, &x_student, &y_staff]));
    assert_eq!(ids(&tu_x), expect(&[&x_staff_1, &x_staff_2, &x_student]));
    assert_eq!(ids(&x_staff), expect(&[&x_staff_1, &x_staff_2]));
    assert_eq!(ids(&alice), expect(&[&x_staff_1, &x_student, &y_staff]));
    assert_eq!(ids(&alice_at_x), expect(&[&x_staff_1, &x_student]));
    assert_eq!(all_three, json!([x_staff_2]));
    assert_eq!(nobody, json!([]));
    assert_eq!(mismatch, json!([]));
}

#[actix_web::test]
async fn list_licenses_rejects_an_unknown_query_parameter_with_400() {
    let app = spawn_app().await;

    let r = app.admin("GET", "/licenses?owner=alice", None).await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert!(r.error_message().contains("owner"), "{}", r.text);
}

#[actix_web::test]
async fn admin_query_parameter_errors_use_the_documented_messages() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(100)).await;

    let unknown = app.admin("GET", "/licenses?owner=alice", None).await;
    let wrong_type =
        app.admin("GET", &format!("/licenses/{}/usage?limit=many", seeded.license_id), None).await;

    assert_eq!(unknown.status(), 400, "{}", unknown.text);
    assert_eq!(unknown.error_message(), "unknown field: 'owner'");
    assert_eq!(wrong_type.status(), 400, "{}", wrong_type.text);
    assert_eq!(wrong_type.error_message(), "invalid type for 'limit': expected integer");
}

#[actix_web::test]
async fn usage_pages_linked_by_before_visit_every_request_exactly_once() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(100_000_000)).await;
    let bodies: Vec<Value> = (0..40).map(|i| chat_body(&format!("request {i}"))).collect();
    let replies =
        futures_util::future::join_all(bodies.iter().map(|b| app.chat(&seeded.key, b))).await;
    let mut expected: Vec<String> =
        replies.iter().map(|r| r.header("x-request-id").expect("request id")).collect();
    expected.sort();
    assert!(replies.iter().all(|r| r.status() == 200));

    // Act: walk the pages the way the API suggests, 5 at a time
    let mut seen: Vec<String> = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..40 {
        let path = match &before {
            Some(b) => format!("/licenses/{}/usage?limit=5&before={b}", seeded.license_id),
            None => format!("/licenses/{}/usage?limit=5", seeded.license_id),
        };
        let page = app.admin_ok("GET", &path, None).await;
        let Some(last) = array(&page).last() else { break };
        before = Some(str_of(last, "request_id").to_string());
        seen.extend(array(&page).iter().map(|row| str_of(row, "request_id").to_string()));
    }

    // Assert: every usage row once, none skipped
    seen.sort();
    assert_eq!(
        seen.len(),
        40,
        "saw {} of 40 rows; {} distinct created_at values",
        seen.len(),
        app.query_i64("SELECT COUNT(DISTINCT created_at) FROM usage", [])
    );
    assert_eq!(seen, expected);
}
