//! `POST /v1/embeddings` bodies (quantized-api.md §3.6).

use serde_json::{Map, Value};

use super::{each, empty, string, wrong_type, Fields, Invalid};

/// Most inputs one request may carry (OpenAI's own limit).
pub const MAX_INPUTS: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Float,
    /// Little-endian f32s in base64: the official OpenAI SDKs ask for this by default.
    Base64,
}

#[derive(Debug, Clone)]
pub struct EmbeddingsRequest {
    pub model: String,
    /// The texts, in order: a string input is one text.
    pub inputs: Vec<String>,
    pub dimensions: Option<u32>,
    pub encoding: Encoding,
    /// The validated body, forwarded upstream (with `encoding_format` set to float).
    pub body: Map<String, Value>,
}

const FIELDS: &[&str] = &["model", "input", "dimensions", "encoding_format", "user"];

pub fn embeddings_request(body: Value) -> Result<EmbeddingsRequest, Invalid> {
    let f = Fields::body(&body)?;
    let model = f.req_str("model")?;
    if model.is_empty() {
        return Err(empty("model"));
    }
    let input = f.require("input")?;
    f.only(FIELDS)?;
    let inputs = match input {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) => {
            if items.is_empty() {
                return Err(empty("input"));
            }
            if items.len() > MAX_INPUTS {
                return Err(format!("'input' must have at most {MAX_INPUTS} items"));
            }
            // Token arrays are not accepted in this version (quantized-api.md §3.6).
            each(items, "input", |v, p| string(v, p).map(drop))?;
            items.iter().filter_map(Value::as_str).map(str::to_string).collect()
        }
        _ => return Err(wrong_type("input", "string or array")),
    };
    let dimensions = f.int("dimensions", 1, 65_536)?.map(|d| d as u32);
    let encoding = match f.one_of("encoding_format", &["float", "base64"])? {
        Some("base64") => Encoding::Base64,
        _ => Encoding::Float,
    };
    f.str("user")?;
    let model = model.to_string();
    let Value::Object(body) = body else { return Err(wrong_type("body", "object")) };
    Ok(EmbeddingsRequest { model, inputs, dimensions, encoding, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        embeddings_request(v).unwrap_err()
    }

    #[test]
    fn accepts_a_string_or_strings() {
        let r = embeddings_request(json!({"model": "m", "input": "one"})).unwrap();
        assert_eq!(r.inputs, ["one"]);
        assert_eq!(r.encoding, Encoding::Float);
        let r = embeddings_request(json!({"model": "m", "input": ["a", "b"], "dimensions": 8,
            "encoding_format": "base64", "user": "u"}))
        .unwrap();
        assert_eq!(r.inputs, ["a", "b"]);
        assert_eq!(r.dimensions, Some(8));
        assert_eq!(r.encoding, Encoding::Base64);
    }

    #[test]
    fn messages_name_the_field() {
        assert_eq!(err(json!({"input": "x"})), "field required: 'model'");
        assert_eq!(err(json!({"model": "m"})), "field required: 'input'");
        assert_eq!(
            err(json!({"model": "m", "input": "x", "input_type": "q"})),
            "unknown field: 'input_type'"
        );
        assert_eq!(
            err(json!({"model": "m", "input": [1, 2]})),
            "invalid type for 'input[0]': expected string"
        );
        assert_eq!(
            err(json!({"model": "m", "input": 5})),
            "invalid type for 'input': expected string or array"
        );
        assert_eq!(err(json!({"model": "m", "input": []})), "'input' must not be empty");
        assert_eq!(
            err(json!({"model": "m", "input": "x", "dimensions": 0})),
            "'dimensions' must be between 1 and 65536"
        );
        assert_eq!(
            err(json!({"model": "m", "input": "x", "encoding_format": "int8"})),
            "invalid value for 'encoding_format': expected one of float, base64"
        );
    }
}
