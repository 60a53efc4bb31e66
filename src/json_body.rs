//! Typed JSON bodies with the API's own error messages: serde does the parsing,
//! `serde_path_to_error` supplies the dotted field path, and the message follows the
//! formats of the design (§0): `unknown field: 'x'`, `field required: 'x'`, …

use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Deserialises `value` strictly (the target types use `deny_unknown_fields`).
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    // serde would also build a struct from an array; the API only takes objects.
    if !value.is_object() {
        return Err(ApiError::bad_request("invalid type for 'body': expected object"));
    }
    serde_path_to_error::deserialize(value).map_err(|err| ApiError::BadRequest(message(&err)))
}

fn message(err: &serde_path_to_error::Error<serde_json::Error>) -> String {
    translate(err.path().to_string(), err.inner().to_string())
}

/// Rewrites a serde error text (and the path where it happened, `.` for the top) into the
/// API's message formats. Also used for query strings.
pub fn translate(path: String, inner: String) -> String {
    let inner = inner.split(" at line ").next().unwrap_or(&inner);
    let quoted = |s: &str| s.split('`').nth(1).map(str::to_string);
    let join =
        |field: &str| if path == "." { field.to_string() } else { format!("{path}.{field}") };
    if let Some(rest) = inner.strip_prefix("unknown field ") {
        // serde reports the field in the path already for unknown keys
        let field = quoted(rest).unwrap_or_default();
        let full = if path.ends_with(&field) { path.clone() } else { join(&field) };
        return format!("unknown field: '{full}'");
    }
    if let Some(rest) = inner.strip_prefix("missing field ") {
        return format!("field required: '{}'", join(&quoted(rest).unwrap_or_default()));
    }
    if let Some(rest) = inner.strip_prefix("invalid type: ") {
        let expected = rest.split(", expected ").nth(1).unwrap_or("another type");
        let at = if path == "." { "body" } else { &path };
        return format!("invalid type for '{at}': expected {}", plain_type(expected));
    }
    if let Some(rest) = inner.strip_prefix("invalid value: ") {
        let expected = rest.split(", expected ").nth(1).unwrap_or("another value");
        return format!("invalid value for '{path}': expected {expected}");
    }
    if path == "." {
        inner.to_string()
    } else {
        format!("invalid value for '{path}': {inner}")
    }
}

/// serde says "a string", "i64", "u32"…; the API says string, integer, number, boolean.
fn plain_type(expected: &str) -> &str {
    match expected.trim_start_matches("a ").trim_start_matches("an ") {
        "string" | "borrowed string" => "string",
        "i64" | "u64" | "i32" | "u32" | "u16" | "u8" | "integer" => "integer",
        "f64" | "f32" => "number",
        "boolean" => "boolean",
        "sequence" => "array",
        s if s.starts_with("struct") || s == "map" => "object",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[allow(dead_code)]
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        provider: String,
    }

    #[allow(dead_code)]
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Body {
        alias: String,
        count: Option<i64>,
        routes: Option<Vec<Inner>>,
    }

    fn err(v: serde_json::Value) -> String {
        from_value::<Body>(v).unwrap_err().to_string()
    }

    #[test]
    fn messages_follow_the_design_formats() {
        assert_eq!(err(json!({})), "field required: 'alias'");
        assert_eq!(err(json!({"alias": "a", "bogus": 1})), "unknown field: 'bogus'");
        assert_eq!(err(json!({"alias": 5})), "invalid type for 'alias': expected string");
        assert_eq!(
            err(json!({"alias": "a", "count": "x"})),
            "invalid type for 'count': expected integer"
        );
        assert_eq!(
            err(json!({"alias": "a", "routes": [{"provider": 1}]})),
            "invalid type for 'routes[0].provider': expected string"
        );
        assert_eq!(
            err(json!({"alias": "a", "routes": [{}]})),
            "field required: 'routes[0].provider'"
        );
        assert_eq!(
            err(json!({"alias": "a", "routes": [{"provider": "x", "y": 1}]})),
            "unknown field: 'routes[0].y'"
        );
        assert_eq!(err(json!([1])), "invalid type for 'body': expected object");
    }
}
