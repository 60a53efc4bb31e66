//! Institution-signed JWTs (quantized-api.md §2.2, gateway-design.md §0): an institution's
//! portal signs a short-lived token with its Ed25519 key; on first use the gateway turns it
//! into a license and an ephemeral API key, and later tokens for the same identity reuse them.
//!
//! Verification trusts nothing in the token before the signature checks out: the algorithm
//! is fixed here (EdDSA), and the unverified payload is read only to learn which
//! institution's keys to try.

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rusqlite::Connection;
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

use super::AuthContext;
use crate::store::{self, jwt::Provision, organisations};

/// Longest token we parse at all. Real tokens are a few hundred bytes; the bound keeps
/// base64 and JSON decoding of hostile input cheap.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// True for a compact JWS: three non-empty base64url segments within the size bound. It
/// only routes the token to this module (API keys are told apart by their prefix);
/// verification decides the rest.
pub fn looks_like_jws(token: &str) -> bool {
    let base64url = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    token.len() <= MAX_TOKEN_BYTES
        && token.split('.').count() == 3
        && token.split('.').all(base64url)
}

/// Why a token was refused. Logged, never shown: the client always reads `Invalid API key`.
#[derive(Debug, PartialEq, Eq, derive_more::Display)]
pub enum Rejection {
    #[display("malformed token: {_0}")]
    Malformed(String),
    #[display("algorithm {_0} is not EdDSA")]
    Algorithm(String),
    #[display("institution {_0:?} not found")]
    UnknownInstitution(String),
    #[display("institution has no active key with kid {_0:?}")]
    UnknownKid(String),
    #[display("institution has no active public key")]
    NoKeys,
    #[display("signature does not verify with the institution's keys")]
    BadSignature,
    #[display("expired")]
    Expired,
    #[display("not valid yet (nbf)")]
    NotYetValid,
    #[display("issued in the future (iat)")]
    IssuedInFuture,
    #[display("license type {_0:?} not found")]
    UnknownLicenseType(String),
    #[display("license type {_0:?} belongs to another institution")]
    ForeignLicenseType(String),
    #[display("license is deactivated")]
    LicenseInactive,
    #[display("ephemeral key is deactivated")]
    KeyInactive,
}

/// The claims we read (quantized-api.md §2.2). Others (`iss`, `aud`, `sub`, `jti`, …) are
/// allowed and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Claims {
    /// Institution UUID or alias.
    pub institution_id: String,
    /// License type UUID or alias; must belong to the institution.
    pub license_type_id: String,
    #[serde(default, deserialize_with = "optional_text")]
    pub unique_id: Option<String>,
    #[serde(default, deserialize_with = "optional_text")]
    pub user_id: Option<String>,
    #[serde(default, deserialize_with = "optional_text")]
    pub salt: Option<String>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub exp: Option<i64>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub nbf: Option<i64>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub iat: Option<i64>,
}

/// An empty string counts as absent: portals fill optional fields with "" as often as they
/// leave them out, and an empty `unique_id` must not become one license shared by everyone.
fn optional_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// RFC 7519 NumericDate: seconds, possibly fractional (rounded, as jsonwebtoken does).
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    if let Some(n) = number.as_i64() {
        return Ok(Some(n));
    }
    match number.as_f64() {
        Some(f) if f.is_finite() => {
            Ok(Some(f.round().clamp(i64::MIN as f64, i64::MAX as f64) as i64))
        }
        _ => Err(serde::de::Error::custom("a NumericDate must be a number of seconds")),
    }
}

/// Judges `exp`, `nbf` and `iat` against `now`, allowing `leeway` seconds of clock skew.
/// jsonwebtoken checks `exp` and `nbf` too, against the system clock; repeating them here keeps
/// the rule in one pure function, and adds `iat`, which jsonwebtoken ignores.
pub fn check_times(claims: &Claims, now: i64, leeway: i64) -> Result<(), Rejection> {
    if claims.exp.is_some_and(|exp| exp.saturating_add(leeway) <= now) {
        return Err(Rejection::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(Rejection::NotYetValid);
    }
    if claims.iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(Rejection::IssuedInFuture);
    }
    Ok(())
}

/// What a token stands for (gateway-design.md §0), as opaque strings for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The license within (institution, license type): `unique_id`, else `user_id`, else the
    /// SHA-256 of the token, so the same token reuses its license. The prefix keeps a course
    /// called "alice" apart from a user called "alice".
    pub license: String,
    /// The ephemeral key within the license: (`user_id`, `salt`) as a JSON pair, where an
    /// absent value (`null`) differs from any string. A new salt means a new key.
    pub key: String,
}

impl Identity {
    pub fn of(claims: &Claims, token: &str) -> Identity {
        let license = match (&claims.unique_id, &claims.user_id) {
            (Some(unique_id), _) => format!("unique_id:{unique_id}"),
            (None, Some(user_id)) => format!("user_id:{user_id}"),
            (None, None) => {
                let digest = Sha256::digest(token.as_bytes());
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                format!("token:{hex}")
            }
        };
        let key = serde_json::json!([claims.user_id, claims.salt]).to_string();
        Identity { license, key }
    }
}

/// The institution named in the payload, read before the signature is checked: it only says
/// whose keys to try, and the same payload is then verified under them.
fn claimed_institution(token: &str) -> Result<String, Rejection> {
    #[derive(Deserialize)]
    struct Unverified {
        institution_id: String,
    }
    let payload = token.split('.').nth(1).unwrap_or_default();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| Rejection::Malformed("payload is not base64url".into()))?;
    let unverified: Unverified =
        serde_json::from_slice(&json).map_err(|e| Rejection::Malformed(format!("payload: {e}")))?;
    Ok(unverified.institution_id)
}

fn validation(leeway: u64) -> Validation {
    // The algorithm is ours, never the header's: HS256 with the public key as the secret,
    // `none`, RSA and ECDSA all fail here whatever the token claims.
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.leeway = leeway;
    // `exp` is optional in the spec; when present it is enforced.
    validation.required_spec_claims.clear();
    validation.validate_nbf = true;
    // `iss`/`aud` are not ours to require (gateway-design.md §0); a token naming an audience
    // is still accepted, since the institution's own key vouches for it.
    validation.validate_aud = false;
    validation
}

/// Verifies the signature with the key `kid` names, or with each active key when the header
/// has no `kid`, then decodes the claims.
pub fn verify(
    token: &str,
    keys: &[organisations::VerificationKey],
    kid: Option<&str>,
    leeway: u64,
) -> Result<Claims, Rejection> {
    let candidates: Vec<_> = match kid {
        Some(kid) => keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect(),
        None => keys.iter().collect(),
    };
    if candidates.is_empty() {
        return Err(kid.map_or(Rejection::NoKeys, |kid| Rejection::UnknownKid(kid.into())));
    }
    let validation = validation(leeway);
    for key in candidates {
        // jsonwebtoken slices the first 32 bytes without checking; a short key would panic.
        if key.raw.len() != 32 {
            continue;
        }
        match jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_ed_der(&key.raw),
            &validation,
        ) {
            Ok(data) => return Ok(data.claims),
            Err(e) => match e.kind() {
                // The next key may be the one that signed it.
                ErrorKind::InvalidSignature => continue,
                // The signature is good (checked first), so the claims are judged as they are.
                ErrorKind::ExpiredSignature => return Err(Rejection::Expired),
                ErrorKind::ImmatureSignature => return Err(Rejection::NotYetValid),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    return Err(Rejection::Algorithm("other than EdDSA".into()))
                }
                other => return Err(Rejection::Malformed(format!("{other:?}"))),
            },
        }
    }
    Err(Rejection::BadSignature)
}

/// Verifies the token and returns the caller it stands for, provisioning its license and
/// ephemeral key on first use. `Ok(Err(_))` is a refusal (401); `Err(_)` is our failure.
pub fn authenticate(
    conn: &mut Connection,
    token: &str,
    leeway: u64,
    now: i64,
) -> anyhow::Result<Result<AuthContext, Rejection>> {
    Ok(match authenticate_inner(conn, token, leeway, now) {
        Ok(context) => Ok(context),
        Err(Failure::Refused(reason)) => Err(reason),
        Err(Failure::Internal(err)) => return Err(err),
    })
}

enum Failure {
    Refused(Rejection),
    Internal(anyhow::Error),
}

impl From<Rejection> for Failure {
    fn from(r: Rejection) -> Self {
        Failure::Refused(r)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Internal(e)
    }
}

fn authenticate_inner(
    conn: &mut Connection,
    token: &str,
    leeway: u64,
    now: i64,
) -> Result<AuthContext, Failure> {
    if !looks_like_jws(token) {
        return Err(Rejection::Malformed("not a compact JWS within the size bound".into()).into());
    }
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| Rejection::Malformed(format!("header: {e}")))?;
    if header.alg != Algorithm::EdDSA {
        return Err(Rejection::Algorithm(format!("{:?}", header.alg)).into());
    }
    let claimed = claimed_institution(token)?;
    let institution = organisations::find_institution(conn, &claimed)?
        .ok_or(Rejection::UnknownInstitution(claimed))?;
    let keys = organisations::verification_keys(conn, &institution.id)?;
    let claims = verify(token, &keys, header.kid.as_deref(), leeway)?;
    let skew = i64::try_from(leeway).unwrap_or(i64::MAX);
    check_times(&claims, now, skew)?;
    let license_type = organisations::find_license_type(conn, &claims.license_type_id)?
        .ok_or_else(|| Rejection::UnknownLicenseType(claims.license_type_id.clone()))?;
    if license_type.institution_id != institution.id {
        return Err(Rejection::ForeignLicenseType(claims.license_type_id.clone()).into());
    }

    let identity = Identity::of(&claims, token);
    // A year beyond what `time` can represent means "never" in practice.
    let expires_at = claims
        .exp
        .and_then(|exp| time::OffsetDateTime::from_unix_timestamp(exp).ok())
        .map(store::rfc3339);
    let provisioned = store::jwt::resolve(
        conn,
        &Provision {
            institution_id: &institution.id,
            license_type_id: &license_type.id,
            license_identity: &identity.license,
            key_identity: &identity.key,
            unique_id: claims.unique_id.as_deref(),
            // On a shared (unique_id) license the user is a property of the key, not the license.
            license_user_id: claims.user_id.as_deref().filter(|_| claims.unique_id.is_none()),
            micro_credits: license_type.default_micro_credits,
            key_user_id: claims.user_id.as_deref(),
            salt: claims.salt.as_deref(),
            expires_at: expires_at.as_deref(),
        },
    )?;
    if !provisioned.license_active {
        return Err(Rejection::LicenseInactive.into());
    }
    if !provisioned.key_active {
        return Err(Rejection::KeyInactive.into());
    }
    Ok(AuthContext {
        key_id: provisioned.key_id,
        license_id: provisioned.license_id,
        institution_id: institution.id,
        license_type_id: license_type.id,
        unique_id: claims.unique_id,
        user_id: claims.user_id,
        // The same instant `check_times` refuses from, so a cached answer expires exactly
        // when a fresh verification would start failing.
        expires_at: claims.exp.map(|exp| exp.saturating_add(skew)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: serde_json::Value) -> Result<Claims, serde_json::Error> {
        serde_json::from_value(json)
    }

    fn base() -> Claims {
        claims(serde_json::json!({"institution_id": "uni", "license_type_id": "student"})).unwrap()
    }

    #[test]
    fn jws_shape_is_three_nonempty_base64url_segments_within_the_bound() {
        assert!(looks_like_jws("eyJh.eyJp.c2ln"));
        assert!(looks_like_jws("a-_.b.c"));
        for bad in ["a.b", "a.b.c.d", "a..c", "a.b.", ".b.c", "a.b=.c", "a.b+.c", "a b.c.d", ""] {
            assert!(!looks_like_jws(bad), "{bad:?}");
        }
        let huge = format!("{}.b.c", "a".repeat(MAX_TOKEN_BYTES));
        assert!(!looks_like_jws(&huge));
    }

    #[test]
    fn claims_require_institution_and_license_type_and_ignore_others() {
        assert!(claims(serde_json::json!({"license_type_id": "s"})).is_err());
        assert!(claims(serde_json::json!({"institution_id": "u"})).is_err());
        assert!(claims(serde_json::json!({"institution_id": 7, "license_type_id": "s"})).is_err());
        let c = claims(serde_json::json!({
            "institution_id": "u", "license_type_id": "s", "iss": "portal", "aud": ["x"], "sub": "1"
        }))
        .unwrap();
        assert_eq!(c.unique_id, None);
    }

    #[test]
    fn empty_strings_count_as_absent() {
        let c = claims(serde_json::json!({
            "institution_id": "u", "license_type_id": "s", "unique_id": "", "user_id": null, "salt": ""
        }))
        .unwrap();
        assert_eq!((c.unique_id, c.user_id, c.salt), (None, None, None));
    }

    #[test]
    fn numeric_dates_accept_integers_and_fractions_but_not_text() {
        let c = claims(serde_json::json!({
            "institution_id": "u", "license_type_id": "s", "exp": 1_700_000_000, "nbf": 1.6e9, "iat": 10.4
        }))
        .unwrap();
        assert_eq!((c.exp, c.nbf, c.iat), (Some(1_700_000_000), Some(1_600_000_000), Some(10)));
        assert!(claims(
            serde_json::json!({"institution_id": "u", "license_type_id": "s", "exp": "soon"})
        )
        .is_err());
    }

    #[test]
    fn exp_is_enforced_with_the_leeway() {
        let c = Claims { exp: Some(1_000), ..base() };
        assert_eq!(check_times(&c, 999, 0), Ok(()));
        assert_eq!(check_times(&c, 1_000, 0), Err(Rejection::Expired));
        assert_eq!(check_times(&c, 1_029, 30), Ok(()));
        assert_eq!(check_times(&c, 1_030, 30), Err(Rejection::Expired));
        assert_eq!(check_times(&Claims { exp: Some(i64::MAX), ..base() }, 0, 30), Ok(()));
    }

    #[test]
    fn nbf_and_iat_in_the_future_beyond_the_leeway_are_refused() {
        let nbf = Claims { nbf: Some(1_030), ..base() };
        let iat = Claims { iat: Some(1_031), ..base() };
        assert_eq!(check_times(&nbf, 1_000, 30), Ok(()));
        assert_eq!(check_times(&nbf, 999, 30), Err(Rejection::NotYetValid));
        assert_eq!(check_times(&iat, 1_000, 30), Err(Rejection::IssuedInFuture));
        assert_eq!(check_times(&iat, 1_001, 30), Ok(()));
        assert_eq!(check_times(&base(), 0, 0), Ok(()));
    }

    #[test]
    fn the_license_is_unique_id_else_user_id_else_the_token() {
        let course =
            Claims { unique_id: Some("ai-101".into()), user_id: Some("ann".into()), ..base() };
        let course_bob = Claims { user_id: Some("bob".into()), ..course.clone() };
        let ann = Claims { user_id: Some("ann".into()), ..base() };
        let named_like_a_user = Claims { unique_id: Some("ann".into()), ..base() };

        assert_eq!(Identity::of(&course, "t1").license, "unique_id:ai-101");
        assert_eq!(Identity::of(&course, "t1").license, Identity::of(&course_bob, "t2").license);
        assert_eq!(Identity::of(&ann, "t1").license, "user_id:ann");
        assert_ne!(Identity::of(&ann, "t").license, Identity::of(&named_like_a_user, "t").license);
        let anonymous = Identity::of(&base(), "abc").license;
        assert_eq!(
            anonymous,
            "token:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(anonymous, Identity::of(&base(), "abd").license);
    }

    #[test]
    fn the_key_is_user_id_and_salt_and_absent_differs_from_empty() {
        let plain = Claims { user_id: Some("ann".into()), ..base() };
        let salted = Claims { salt: Some("s1".into()), ..plain.clone() };
        let resalted = Claims { salt: Some("s2".into()), ..plain.clone() };
        let no_user = Claims { salt: Some("ann".into()), ..base() };

        assert_eq!(Identity::of(&plain, "x").key, r#"["ann",null]"#);
        assert_ne!(Identity::of(&salted, "x").key, Identity::of(&resalted, "x").key);
        assert_ne!(Identity::of(&plain, "x").key, Identity::of(&no_user, "x").key);
        assert_eq!(Identity::of(&salted, "one").key, Identity::of(&salted, "two").key);
    }

    #[test]
    fn the_unverified_institution_comes_from_the_payload() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!("{}.{}.sig", b64("{}"), b64(r#"{"institution_id":"uni"}"#));
        assert_eq!(claimed_institution(&token), Ok("uni".into()));
        let no_inst = format!("{}.{}.sig", b64("{}"), b64(r#"{"x":1}"#));
        assert!(matches!(claimed_institution(&no_inst), Err(Rejection::Malformed(_))));
        assert!(matches!(claimed_institution("a.!!!.c"), Err(Rejection::Malformed(_))));
    }

    /// PKCS#8 bodies and raw public keys of two fixed test keys (`openssl genpkey -algorithm
    /// ed25519`); the integration tests carry the same pairs as PEM.
    const PRIVATE_A: &str = "MC4CAQAwBQYDK2VwBCIEIJ1/SJhFKfXZPHo+WFA46gInVGinN8QHlvChgzeG+O7T";
    const PUBLIC_A: &str = "H3A4UdM5MTZaHFhfRHPYOpquxeYsMkW6+pM4Ox+AATo=";
    const PRIVATE_B: &str = "MC4CAQAwBQYDK2VwBCIEIMnAZHfHigSHZE7aSw5p3WtYgqTTI4plLHIZWrqTExp0";
    const PUBLIC_B: &str = "xNea6GRE79BTbEzmQPr6tOqGT7GEgtwZqsk6nlslYfg=";

    fn b64(text: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(text).unwrap()
    }

    fn key(kid: Option<&str>, public: &str) -> organisations::VerificationKey {
        organisations::VerificationKey { kid: kid.map(Into::into), raw: b64(public) }
    }

    fn signed(private: &str, kid: Option<&str>) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
        header.kid = kid.map(Into::into);
        let claims = serde_json::json!({"institution_id": "u", "license_type_id": "s"});
        let key = jsonwebtoken::EncodingKey::from_ed_der(&b64(private));
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    #[test]
    fn without_kid_each_active_key_is_tried() {
        let keys = [key(Some("a"), PUBLIC_A), key(None, PUBLIC_B)];

        assert_eq!(verify(&signed(PRIVATE_B, None), &keys, None, 0).unwrap().institution_id, "u");
        assert!(verify(&signed(PRIVATE_A, None), &keys, None, 0).is_ok());
    }

    #[test]
    fn with_kid_only_that_key_is_tried() {
        let keys = [key(Some("a"), PUBLIC_A), key(Some("b"), PUBLIC_B)];

        assert!(verify(&signed(PRIVATE_B, Some("b")), &keys, Some("b"), 0).is_ok());
        assert_eq!(
            verify(&signed(PRIVATE_B, Some("a")), &keys, Some("a"), 0),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        let keys = [key(None, PUBLIC_A)];
        let claims = serde_json::json!({"institution_id": "u", "license_type_id": "s"});
        let secret = jsonwebtoken::EncodingKey::from_secret(&b64(PUBLIC_A));
        let forged =
            jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &secret)
                .unwrap();

        assert!(matches!(verify(&forged, &keys, None, 0), Err(Rejection::Algorithm(_))));
    }

    #[test]
    fn a_short_stored_key_is_skipped_not_a_panic() {
        let keys = [organisations::VerificationKey { kid: None, raw: vec![1; 5] }];
        assert_eq!(verify(&signed(PRIVATE_A, None), &keys, None, 0), Err(Rejection::BadSignature));
    }

    #[test]
    fn verify_without_keys_names_the_reason() {
        assert_eq!(verify("a.b.c", &[], None, 0), Err(Rejection::NoKeys));
        let keys = [organisations::VerificationKey { kid: Some("k1".into()), raw: vec![0; 32] }];
        assert_eq!(verify("a.b.c", &keys, Some("k2"), 0), Err(Rejection::UnknownKid("k2".into())));
    }
}
