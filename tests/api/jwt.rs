//! Institution-signed JWTs (quantized-api.md §2.2, gateway-design.md §0): a token signed with a
//! registered Ed25519 key opens `/v1/*`, provisions its license and ephemeral key on first use
//! and reuses them after; every other token is the same 401, creating and charging nothing.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::helpers::*;

// Fixed Ed25519 key pairs made with `openssl genpkey -algorithm ed25519` and
// `openssl pkey -pubout`; test keys only.
const PRIVATE_A: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ1/SJhFKfXZPHo+WFA46gInVGinN8QHlvChgzeG+O7T
-----END PRIVATE KEY-----
";
const PUBLIC_A: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAH3A4UdM5MTZaHFhfRHPYOpquxeYsMkW6+pM4Ox+AATo=
-----END PUBLIC KEY-----
";
const PRIVATE_B: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIMnAZHfHigSHZE7aSw5p3WtYgqTTI4plLHIZWrqTExp0
-----END PRIVATE KEY-----
";
const PUBLIC_B: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAxNea6GRE79BTbEzmQPr6tOqGT7GEgtwZqsk6nlslYfg=
-----END PUBLIC KEY-----
";
/// Registered for no institution: a stranger's key.
const PRIVATE_C: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIEERhk2vJS1uMr+1DwAJK/+mRy8To/kfQydtydo1i7m0
-----END PRIVATE KEY-----
";

const INVALID_KEY_BODY: &str = r#"{"error":{"message":"Invalid API key"}}"#;
const DEFAULT_CREDITS: i64 = 1_000_000;

/// The DER inside a PEM block (jsonwebtoken's `use_pem` feature is off in this build).
fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).expect("PEM body")
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A token as an institution's portal signs it: EdDSA with `private`, `kid` in the header.
fn sign(claims: &Value, private: &str, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = kid.map(Into::into);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&pem_body(private)))
        .expect("sign")
}

/// Any header over `claims`, signed with `alg` and `key`: for forgeries a real library refuses
/// to produce.
fn forge(header: &Value, claims: &Value, alg: Algorithm, key: &EncodingKey) -> String {
    let message = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).expect("sign");
    format!("{message}.{signature}")
}

/// An institution with key A registered as `k1`, and a license type of it.
struct Institution {
    alias: String,
    id: String,
    license_type: String,
    license_type_id: String,
    public_key_id: String,
}

async fn institution(app: &TestApp, default_micro_credits: Option<i64>) -> Institution {
    let n = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let alias = format!("uni-{n}");
    let license_type = format!("student-{n}");
    let inst = app
        .admin_ok("POST", "/institutions", Some(json!({"alias": alias, "name": "JWT University"})))
        .await;
    let lt = app
        .admin_ok(
            "POST",
            "/license-types",
            Some(json!({"alias": license_type, "name": "Student", "institution": alias,
                        "default_micro_credits": default_micro_credits})),
        )
        .await;
    let key = app
        .admin_ok(
            "POST",
            &format!("/institutions/{alias}/public-keys"),
            Some(json!({"public_key": PUBLIC_A, "kid": "k1"})),
        )
        .await;
    Institution {
        alias,
        id: inst["id"].as_str().expect("id").into(),
        license_type,
        license_type_id: lt["id"].as_str().expect("id").into(),
        public_key_id: key["id"].as_str().expect("id").into(),
    }
}

/// Claims naming `inst`, valid for ten minutes, with `extra` laid over them.
fn claims(inst: &Institution, extra: Value) -> Value {
    let mut claims = json!({
        "institution_id": inst.alias,
        "license_type_id": inst.license_type,
        "unique_id": "course-ai-101",
        "user_id": "ann",
        "exp": now() + 600,
    });
    for (k, v) in extra.as_object().expect("object") {
        claims[k] = v.clone();
    }
    claims
}

fn count(app: &TestApp, table: &str) -> i64 {
    app.query_i64(&format!("SELECT COUNT(*) FROM {table}"), [])
}

/// Licenses, API keys, usage rows, ledger entries, JWT identities: what a refusal must not add.
fn footprint(app: &TestApp) -> [i64; 5] {
    ["licenses", "api_keys", "usage", "ledger_entries", "jwt_identities"].map(|t| count(app, t))
}

fn assert_invalid_key(r: &Reply, context: &str) {
    assert_eq!(r.status(), 401, "{context}: {}", r.text);
    assert_eq!(r.text, INVALID_KEY_BODY, "{context}");
    assert_eq!(r.error_message(), "Invalid API key", "{context}");
}

/// Sends `token` to chat and to `/v1/license`; both must be refused and leave no trace.
async fn assert_refused(app: &TestApp, token: &str, context: &str) {
    let before = footprint(app);

    let chat = app.chat(token, &chat_body("Hi")).await;
    let license = app.get(token, "/v1/license").await;

    assert_invalid_key(&chat, context);
    assert_invalid_key(&license, context);
    assert_eq!(footprint(app), before, "{context}: something was created or charged");
}

async fn chat_ok(app: &TestApp, token: &str) -> Value {
    let r = app.chat(token, &chat_body("Hello there")).await;
    assert_eq!(r.status(), 200, "{}", r.text);
    r.json()
}

// ---------------------------------------------------------------------------------------------
// Accepted tokens

#[actix_web::test]
async fn valid_token_gets_a_billed_chat_completion_on_a_new_license() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let exp = now() + 600;
    let token = sign(&claims(&inst, json!({"exp": exp})), PRIVATE_A, Some("k1"));

    let reply = chat_ok(&app, &token).await;
    let license = app.license(&token).await;

    let used = reply["usage"]["credits_used"].as_i64().expect("credits_used");
    assert!(used > 0);
    assert_eq!(reply["usage"]["credits_remaining"], DEFAULT_CREDITS - used);
    assert_eq!(license["institution_id"], inst.id.as_str());
    assert_eq!(license["license_type_id"], inst.license_type_id.as_str());
    assert_eq!(license["unique_id"], "course-ai-101");
    assert_eq!(license["user_id"], "ann");
    assert_eq!(license["available_micro_credits"], DEFAULT_CREDITS - used);
    assert_eq!(license["used_micro_credits"], used);
    let license_id = license["license_id"].as_str().expect("license_id");
    let keys = app.admin_ok("GET", &format!("/licenses/{license_id}/keys"), None).await;
    assert_eq!(keys.as_array().expect("array").len(), 1);
    assert_eq!(keys[0]["ephemeral"], true);
    let expected_expiry = time::OffsetDateTime::from_unix_timestamp(exp).expect("exp");
    assert_eq!(keys[0]["expires_at"], quantized::store::rfc3339(expected_expiry));
    let key_id = keys[0]["id"].as_str().expect("id");
    let billed = app.query_i64(
        "SELECT SUM(micro_credits) FROM usage WHERE license_id = ?1 AND api_key_id = ?2",
        [license_id, key_id],
    );
    assert_eq!(billed, used);
    let opening = app.query_i64(
        "SELECT SUM(micro_credits) FROM ledger_entries WHERE license_id = ?1 AND kind = 'grant'",
        [license_id],
    );
    assert_eq!(opening, DEFAULT_CREDITS);
}

#[actix_web::test]
async fn same_token_twice_uses_the_same_license_and_key() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let token = sign(&claims(&inst, json!({})), PRIVATE_A, Some("k1"));

    let first = chat_ok(&app, &token).await;
    let second = chat_ok(&app, &token).await;
    let license = app.license(&token).await;

    let spent = first["usage"]["credits_used"].as_i64().unwrap()
        + second["usage"]["credits_used"].as_i64().unwrap();
    assert_eq!(license["available_micro_credits"], DEFAULT_CREDITS - spent);
    assert_eq!(count(&app, "licenses"), 1);
    assert_eq!(count(&app, "api_keys"), 1);
    assert_eq!(count(&app, "usage"), 2);
}

#[actix_web::test]
async fn a_fresh_token_for_the_same_identity_reuses_license_and_key() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let morning = sign(&claims(&inst, json!({"iat": now() - 60})), PRIVATE_A, Some("k1"));
    let afternoon = sign(&claims(&inst, json!({"exp": now() + 3600})), PRIVATE_A, None);

    let first = app.license(&morning).await;
    let second = app.license(&afternoon).await;

    assert_ne!(morning, afternoon);
    assert_eq!(first["license_id"], second["license_id"]);
    assert_eq!(count(&app, "licenses"), 1);
    assert_eq!(count(&app, "api_keys"), 1);
}

#[actix_web::test]
async fn two_unique_ids_get_two_licenses() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let ai = sign(&claims(&inst, json!({"unique_id": "ai-101"})), PRIVATE_A, Some("k1"));
    let ml = sign(&claims(&inst, json!({"unique_id": "ml-201"})), PRIVATE_A, Some("k1"));

    chat_ok(&app, &ai).await;
    let ai_license = app.license(&ai).await;
    let ml_license = app.license(&ml).await;

    assert_ne!(ai_license["license_id"], ml_license["license_id"]);
    assert_eq!(ml_license["unique_id"], "ml-201");
    assert_eq!(ml_license["available_micro_credits"], DEFAULT_CREDITS);
    assert_eq!(count(&app, "licenses"), 2);
}

#[actix_web::test]
async fn one_unique_id_with_two_user_ids_is_one_license_with_a_key_each() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let ann = sign(&claims(&inst, json!({"user_id": "ann"})), PRIVATE_A, Some("k1"));
    let bob = sign(&claims(&inst, json!({"user_id": "bob"})), PRIVATE_A, Some("k1"));

    let by_ann = chat_ok(&app, &ann).await;
    let seen_by_bob = app.license(&bob).await;
    let seen_by_ann = app.license(&ann).await;

    assert_eq!(seen_by_ann["license_id"], seen_by_bob["license_id"]);
    assert_eq!(seen_by_ann["user_id"], "ann");
    assert_eq!(seen_by_bob["user_id"], "bob");
    assert_eq!(seen_by_bob["unique_id"], "course-ai-101");
    assert_eq!(seen_by_bob["available_micro_credits"], by_ann["usage"]["credits_remaining"]);
    assert_eq!(count(&app, "licenses"), 1);
    assert_eq!(count(&app, "api_keys"), 2);
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM licenses WHERE user_id IS NULL", []), 1);
}

#[actix_web::test]
async fn without_unique_id_each_user_id_gets_its_own_license() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let ann = sign(&claims(&inst, json!({"unique_id": null, "user_id": "ann"})), PRIVATE_A, None);
    let bob = sign(&claims(&inst, json!({"unique_id": null, "user_id": "bob"})), PRIVATE_A, None);

    let ann_license = app.license(&ann).await;
    let bob_license = app.license(&bob).await;

    assert_ne!(ann_license["license_id"], bob_license["license_id"]);
    assert_eq!(ann_license["unique_id"], Value::Null);
    assert_eq!(ann_license["user_id"], "ann");
}

#[actix_web::test]
async fn without_unique_id_or_user_id_the_token_itself_names_the_license() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let anonymous = json!({"unique_id": null, "user_id": null});
    let one = sign(&claims(&inst, anonymous.clone()), PRIVATE_A, Some("k1"));
    let other = sign(
        &claims(&inst, json!({"unique_id": null, "user_id": null, "exp": now() + 900})),
        PRIVATE_A,
        Some("k1"),
    );

    let first = app.license(&one).await;
    let again = app.license(&one).await;
    let different = app.license(&other).await;

    assert_eq!(first["license_id"], again["license_id"]);
    assert_ne!(first["license_id"], different["license_id"]);
    assert_eq!(first["unique_id"], Value::Null);
    assert_eq!(first["user_id"], Value::Null);
}

#[actix_web::test]
async fn a_new_salt_rotates_the_ephemeral_key_on_the_same_license() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let salted = sign(&claims(&inst, json!({"salt": "s1"})), PRIVATE_A, Some("k1"));
    let resalted = sign(&claims(&inst, json!({"salt": "s2"})), PRIVATE_A, Some("k1"));

    chat_ok(&app, &salted).await;
    chat_ok(&app, &resalted).await;

    assert_eq!(count(&app, "licenses"), 1);
    assert_eq!(count(&app, "api_keys"), 2);
    assert_eq!(app.query_i64("SELECT COUNT(DISTINCT api_key_id) FROM usage", []), 2);
    let salts =
        app.query_i64("SELECT COUNT(*) FROM jwt_ephemeral_keys WHERE salt IN ('s1', 's2')", []);
    assert_eq!(salts, 2);
}

#[actix_web::test]
async fn uuids_and_aliases_name_the_same_license() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let by_alias = sign(&claims(&inst, json!({})), PRIVATE_A, Some("k1"));
    let by_uuid = sign(
        &claims(&inst, json!({"institution_id": inst.id, "license_type_id": inst.license_type_id})),
        PRIVATE_A,
        Some("k1"),
    );

    let first = app.license(&by_alias).await;
    let second = app.license(&by_uuid).await;

    assert_eq!(first["license_id"], second["license_id"]);
}

#[actix_web::test]
async fn a_license_type_without_default_gives_an_unlimited_license() {
    let app = spawn_app().await;
    let inst = institution(&app, None).await;
    let token = sign(&claims(&inst, json!({})), PRIVATE_A, Some("k1"));

    chat_ok(&app, &token).await;
    let license = app.license(&token).await;

    assert_eq!(license["available_micro_credits"], Value::Null);
    assert_eq!(count(&app, "ledger_entries"), 1, "the debit; no opening grant for unlimited");
}

#[actix_web::test]
async fn a_license_type_with_no_credits_gives_402_not_401() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(0)).await;
    let token = sign(&claims(&inst, json!({})), PRIVATE_A, Some("k1"));

    let r = app.chat(&token, &chat_body("Hi")).await;

    assert_eq!(r.status(), 402, "{}", r.text);
    assert_eq!(r.error_message(), "Insufficient credits");
    assert_eq!(count(&app, "usage"), 0);
}

#[actix_web::test]
async fn without_kid_every_active_key_of_the_institution_is_tried() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    app.admin_ok(
        "POST",
        &format!("/institutions/{}/public-keys", inst.alias),
        Some(json!({"public_key": PUBLIC_B})),
    )
    .await;
    let by_b = sign(&claims(&inst, json!({})), PRIVATE_B, None);
    let by_a = sign(&claims(&inst, json!({"user_id": "bob"})), PRIVATE_A, None);

    chat_ok(&app, &by_b).await;
    chat_ok(&app, &by_a).await;

    assert_eq!(count(&app, "licenses"), 1);
}

#[actix_web::test]
async fn an_expiry_within_the_leeway_is_still_accepted() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let token = sign(&claims(&inst, json!({"exp": now() - 5, "nbf": now() + 5})), PRIVATE_A, None);

    chat_ok(&app, &token).await;
}

#[actix_web::test]
async fn api_keys_and_jwts_work_side_by_side() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(DEFAULT_CREDITS)).await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let token = sign(&claims(&inst, json!({})), PRIVATE_A, Some("k1"));

    chat_ok(&app, &seeded.key).await;
    chat_ok(&app, &token).await;

    assert_ne!(
        app.license(&seeded.key).await["license_id"],
        app.license(&token).await["license_id"]
    );
}

// ---------------------------------------------------------------------------------------------
// Refused tokens: 401 `Invalid API key`, nothing created, nothing charged

#[actix_web::test]
async fn expired_token_is_refused() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;

    let token = sign(&claims(&inst, json!({"exp": now() - 120})), PRIVATE_A, Some("k1"));

    assert_refused(&app, &token, "expired").await;
}

#[actix_web::test]
async fn token_not_valid_yet_is_refused() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;

    let nbf = sign(&claims(&inst, json!({"nbf": now() + 600})), PRIVATE_A, Some("k1"));
    let iat = sign(&claims(&inst, json!({"iat": now() + 600})), PRIVATE_A, Some("k1"));

    assert_refused(&app, &nbf, "nbf in the future").await;
    assert_refused(&app, &iat, "iat in the future").await;
}

#[actix_web::test]
async fn token_signed_with_a_key_the_institution_did_not_register_is_refused() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;

    let with_kid = sign(&claims(&inst, json!({})), PRIVATE_C, Some("k1"));
    let without_kid = sign(&claims(&inst, json!({})), PRIVATE_C, None);

    assert_refused(&app, &with_kid, "wrong key, kid k1").await;
    assert_refused(&app, &without_kid, "wrong key, no kid").await;
}

#[actix_web::test]
async fn token_signed_with_another_institutions_key_is_refused() {
    let app = spawn_app().await;
    let victim = institution(&app, Some(DEFAULT_CREDITS)).await;
    let other = institution(&app, Some(DEFAULT_CREDITS)).await;
    app.admin_ok(
        "POST",
        &format!("/institutions/{}/public-keys", other.alias),
        Some(json!({"public_key": PUBLIC_B, "kid": "k2"})),
    )
    .await;

    let token = sign(&claims(&victim, json!({})), PRIVATE_B, Some("k2"));

    assert_refused(&app, &token, "other institution's key").await;
}

#[actix_web::test]
async fn token_with_an_unknown_kid_is_refused() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;

    let token = sign(&claims(&inst, json!({})), PRIVATE_A, Some("k9"));

    assert_refused(&app, &token, "unknown kid").await;
}

#[actix_web::test]
async fn token_for_an_unknown_institution_is_refused() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;

    let unknown = sign(&claims(&inst, json!({"institution_id": "no-such-uni"})), PRIVATE_A, None);
    let wrong_case = sign(
        &claims(&inst, json!({"institution_id": inst.alias.to_uppercase()})),
        PRIVATE_A,
        Some("k1"),
    );
    let missing = sign(
        &json!({"license_type_id": inst.license_type, "exp": now() + 600}),
        PRIVATE_A,
        Some("k1"),
    );

    assert_refused(&app, &unknown, "unknown institution").await;
    assert_refused(&app, &wrong_case, "alias in another case").await;
    assert_refused(&app, &missing, "no institution_id").await;
}

#[actix_web::test]
async fn token_naming_a_license_type_of_another_institution_is_refused() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let other = institution(&app, Some(DEFAULT_CREDITS)).await;

    let foreign =
        sign(&claims(&inst, json!({"license_type_id": other.license_type})), PRIVATE_A, Some("k1"));
    let unknown = sign(&claims(&inst, json!({"license_type_id": "no-such-type"})), PRIVATE_A, None);
    let not_text = sign(&claims(&inst, json!({"license_type_id": 42})), PRIVATE_A, None);

    assert_refused(&app, &foreign, "license type of another institution").await;
    assert_refused(&app, &unknown, "unknown license type").await;
    assert_refused(&app, &not_text, "license type not a string").await;
}

#[actix_web::test]
async fn token_with_alg_none_is_refused() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64url(claims(&inst, json!({})).to_string().as_bytes());
    let real = sign(&claims(&inst, json!({})), PRIVATE_A, Some("k1"));
    let real_signature = real.rsplit('.').next().expect("signature");

    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}.{real_signature}"),
        format!("{}.{payload}.", b64url(br#"{"alg":"None"}"#)),
    ] {
        assert_refused(&app, &token, &format!("alg none: {token}")).await;
    }
}

#[actix_web::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let raw_public = &pem_body(PUBLIC_A)[12..];
    let claims = claims(&inst, json!({}));

    // The classic key-confusion attack: the verifier's public key used as an HMAC secret.
    for (name, secret) in [
        ("raw key bytes", raw_public.to_vec()),
        ("PEM text", PUBLIC_A.as_bytes().to_vec()),
        ("DER", pem_body(PUBLIC_A)),
    ] {
        let key = EncodingKey::from_secret(&secret);
        for kid in [None, Some("k1")] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = kid.map(Into::into);
            let token = jsonwebtoken::encode(&header, &claims, &key).expect("sign");

            assert_refused(&app, &token, &format!("HS256 with {name}, kid {kid:?}")).await;
        }
    }
}

#[actix_web::test]
async fn token_whose_header_lies_about_its_algorithm_is_refused() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let claims = claims(&inst, json!({}));
    let hmac = EncodingKey::from_secret(&pem_body(PUBLIC_A)[12..]);
    let ed = EncodingKey::from_ed_der(&pem_body(PRIVATE_A));

    let says_eddsa_is_hmac =
        forge(&json!({"alg": "EdDSA", "kid": "k1"}), &claims, Algorithm::HS256, &hmac);
    let says_hmac_is_eddsa =
        forge(&json!({"alg": "HS256", "kid": "k1"}), &claims, Algorithm::EdDSA, &ed);
    let says_rsa_is_eddsa =
        forge(&json!({"alg": "RS256", "kid": "k1"}), &claims, Algorithm::EdDSA, &ed);
    let says_ecdsa_is_eddsa =
        forge(&json!({"alg": "ES256", "kid": "k1"}), &claims, Algorithm::EdDSA, &ed);
    let lowercase = forge(&json!({"alg": "eddsa", "kid": "k1"}), &claims, Algorithm::EdDSA, &ed);

    for (name, token) in [
        ("EdDSA header, HMAC signature", says_eddsa_is_hmac),
        ("HS256 header, EdDSA signature", says_hmac_is_eddsa),
        ("RS256 header, EdDSA signature", says_rsa_is_eddsa),
        ("ES256 header, EdDSA signature", says_ecdsa_is_eddsa),
        ("alg in lower case", lowercase),
    ] {
        assert_refused(&app, &token, name).await;
    }
}

#[actix_web::test]
async fn token_with_a_changed_payload_is_refused() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let real = sign(&claims(&inst, json!({})), PRIVATE_A, Some("k1"));
    let parts: Vec<&str> = real.split('.').collect();
    let richer = b64url(claims(&inst, json!({"unique_id": "someone-else"})).to_string().as_bytes());

    let token = format!("{}.{richer}.{}", parts[0], parts[2]);

    assert_refused(&app, &token, "payload swapped under a real signature").await;
}

#[actix_web::test]
async fn malformed_or_truncated_token_is_refused() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let real = sign(&claims(&inst, json!({})), PRIVATE_A, Some("k1"));
    let parts: Vec<&str> = real.split('.').collect();
    let padded_payload = base64::engine::general_purpose::URL_SAFE
        .encode(claims(&inst, json!({})).to_string().as_bytes());

    for (name, token) in [
        ("payload with '!'", format!("{}.{}!.{}", parts[0], parts[1], parts[2])),
        ("standard base64 '+'", format!("{}.{}+/.{}", parts[0], parts[1], parts[2])),
        ("padded payload", format!("{}.{}.{}", parts[0], padded_payload, parts[2])),
        ("payload not JSON", format!("{}.{}.{}", parts[0], b64url(b"not json"), parts[2])),
        ("header not JSON", format!("{}.{}.{}", b64url(b"{"), parts[1], parts[2])),
        ("last character cut", real[..real.len() - 1].to_string()),
        ("half the signature", real[..real.len() - parts[2].len() / 2].to_string()),
        ("signature removed", format!("{}.{}.", parts[0], parts[1])),
        ("two segments", format!("{}.{}", parts[0], parts[1])),
        ("four segments", format!("{real}.{}", parts[2])),
        ("dots only", "..".to_string()),
    ] {
        assert_refused(&app, &token, name).await;
    }
}

#[actix_web::test]
async fn huge_token_is_refused_even_when_validly_signed() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;

    let token = sign(&claims(&inst, json!({"padding": "x".repeat(10_000)})), PRIVATE_A, Some("k1"));

    assert!(token.len() > 8 * 1024);
    assert_refused(&app, &token, "huge token").await;
}

// ---------------------------------------------------------------------------------------------
// Lifecycle: revocation, expiry, concurrency

#[actix_web::test]
async fn deleted_public_key_stops_its_tokens_on_the_next_request() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let token = sign(&claims(&inst, json!({})), PRIVATE_A, Some("k1"));
    chat_ok(&app, &token).await;
    let before = footprint(&app);

    let deleted = app.admin("DELETE", &format!("/public-keys/{}", inst.public_key_id), None).await;
    let chat = app.chat(&token, &chat_body("Hi")).await;
    let license = app.get(&token, "/v1/license").await;

    assert_eq!(deleted.status(), 204, "{}", deleted.text);
    assert_invalid_key(&chat, "chat after the key was deleted");
    assert_invalid_key(&license, "license after the key was deleted");
    assert_eq!(footprint(&app), before);
}

#[actix_web::test]
async fn deactivated_ephemeral_key_stops_its_tokens_on_the_next_request() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let token = sign(&claims(&inst, json!({})), PRIVATE_A, Some("k1"));
    let license = app.license(&token).await;
    let license_id = license["license_id"].as_str().expect("license_id");
    let keys = app.admin_ok("GET", &format!("/licenses/{license_id}/keys"), None).await;

    let deleted =
        app.admin("DELETE", &format!("/keys/{}", keys[0]["id"].as_str().unwrap()), None).await;
    let chat = app.chat(&token, &chat_body("Hi")).await;

    assert_eq!(deleted.status(), 204, "{}", deleted.text);
    assert_invalid_key(&chat, "chat after the ephemeral key was deactivated");
    assert_eq!(count(&app, "usage"), 0);
}

#[actix_web::test]
async fn ephemeral_key_expires_with_the_token() {
    let app = spawn_app_with(|s| s.auth.jwt_leeway_secs = 0).await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let exp = now() + 2;
    let token = sign(&claims(&inst, json!({"exp": exp})), PRIVATE_A, Some("k1"));
    chat_ok(&app, &token).await;
    let expires_at: String = app
        .db()
        .query_row("SELECT expires_at FROM api_keys WHERE ephemeral = 1", [], |r| r.get(0))
        .expect("ephemeral key");

    actix_web::rt::time::sleep(std::time::Duration::from_millis(3_100)).await;
    let after = app.chat(&token, &chat_body("Hi")).await;

    let exp_time = time::OffsetDateTime::from_unix_timestamp(exp).expect("exp");
    assert_eq!(expires_at, quantized::store::rfc3339(exp_time));
    assert_invalid_key(&after, "token used after its exp");
    assert_eq!(count(&app, "usage"), 1);
}

/// Sends `request` (raw HTTP/1.1) `n` times at once: every connection is opened first, then
/// the requests are written back to back, so they reach the gateway within microseconds of
/// each other rather than one TCP handshake apart. Returns each response's status code.
async fn burst(app: &TestApp, request: String, n: usize) -> Vec<u16> {
    use std::io::{Read, Write};
    let address = app.address.trim_start_matches("http://").to_string();
    actix_web::rt::task::spawn_blocking(move || {
        let mut streams: Vec<_> =
            (0..n).map(|_| std::net::TcpStream::connect(&address).expect("connect")).collect();
        for stream in &mut streams {
            stream.write_all(request.as_bytes()).expect("write");
        }
        streams
            .into_iter()
            .map(|mut stream| {
                let mut response = String::new();
                stream.read_to_string(&mut response).expect("read");
                response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
            })
            .collect()
    })
    .await
    .expect("burst")
}

fn http_request(method: &str, path: &str, token: &str, body: Option<&Value>) -> String {
    let body = body.map(Value::to_string).unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[actix_web::test]
async fn twenty_concurrent_first_requests_create_exactly_one_license() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let token = sign(&claims(&inst, json!({})), PRIVATE_A, Some("k1"));
    let request =
        http_request("POST", "/v1/chat/completions", &token, Some(&chat_body("Hello there")));

    let statuses = burst(&app, request, 20).await;

    assert_eq!(statuses, vec![200; 20]);
    assert_eq!(count(&app, "licenses"), 1);
    assert_eq!(count(&app, "api_keys"), 1);
    assert_eq!(count(&app, "jwt_identities"), 1);
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'grant'", []), 1);
    let spent = app.query_i64("SELECT SUM(micro_credits) FROM usage", []);
    assert_eq!(count(&app, "usage"), 20);
    assert_eq!(app.license(&token).await["available_micro_credits"], DEFAULT_CREDITS - spent);
}

#[actix_web::test]
async fn concurrent_first_requests_of_many_users_share_one_course_license() {
    let app = spawn_app().await;
    let inst = institution(&app, Some(DEFAULT_CREDITS)).await;
    let tokens: Vec<String> = (0..20)
        .map(|i| sign(&claims(&inst, json!({"user_id": format!("student-{i}")})), PRIVATE_A, None))
        .collect();

    let replies =
        futures_util::future::join_all(tokens.iter().map(|t| app.get(t, "/v1/license"))).await;

    for r in &replies {
        assert_eq!(r.status(), 200, "{}", r.text);
    }
    assert_eq!(count(&app, "licenses"), 1);
    assert_eq!(count(&app, "api_keys"), 20);
}
