//! `POST /v1/responses` bodies: the Rev A field list (quantized-api.md §3.5, design §0).

use serde_json::{Map, Value};

use super::chat::InputModalities;
use super::{each, empty, object, string, wrong_type, Fields, Invalid};

#[derive(Debug, Clone)]
pub struct ResponsesRequest {
    pub model: String,
    pub stream: bool,
    pub max_output_tokens: Option<u32>,
    pub uses: InputModalities,
    /// The validated body, forwarded upstream.
    pub body: Map<String, Value>,
}

const FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "top_k",
    "frequency_penalty",
    "presence_penalty",
    "previous_response_id",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "store",
    "stream",
    "metadata",
    "user",
    "reasoning",
    "text",
    "truncation",
    "include",
    "service_tier",
    "background",
];

pub fn responses_request(body: Value) -> Result<ResponsesRequest, Invalid> {
    let f = Fields::body(&body)?;
    let model = f.req_str("model")?;
    if model.is_empty() {
        return Err(empty("model"));
    }
    let input = f.require("input")?;
    f.only(FIELDS)?;
    let mut uses = InputModalities::default();
    match input {
        Value::String(_) => {}
        Value::Array(items) => {
            if items.is_empty() {
                return Err(empty("input"));
            }
            each(items, "input", |item, path| input_item(item, path, &mut uses))?;
        }
        _ => return Err(wrong_type("input", "string or array")),
    }
    f.str("instructions")?;
    let max_output_tokens = f.int("max_output_tokens", 1, u32::MAX as i64)?.map(|v| v as u32);
    f.num("temperature", 0.0, 2.0)?;
    f.num("top_p", 0.0, 1.0)?;
    f.num("top_k", 0.0, u32::MAX as f64)?;
    f.num("frequency_penalty", -2.0, 2.0)?;
    f.num("presence_penalty", -2.0, 2.0)?;
    f.str("previous_response_id")?;
    f.list("tools", |v, p| object(v, p).map(drop))?;
    f.opt("tool_choice", |v, p| match v {
        Value::String(_) | Value::Object(_) => Ok(()),
        _ => Err(wrong_type(p, "string or object")),
    })?;
    f.bool("parallel_tool_calls")?;
    f.bool("store")?;
    let stream = f.bool("stream")?.unwrap_or(false);
    f.object("metadata")?;
    f.str("user")?;
    if let Some(reasoning) = f.object("reasoning")? {
        reasoning.only(&["effort", "exclude", "summary", "max_tokens", "enabled"])?;
        reasoning.one_of("effort", &["none", "minimal", "low", "medium", "high"])?;
        reasoning.bool("exclude")?;
        reasoning.bool("enabled")?;
        reasoning.str("summary")?;
        reasoning.int("max_tokens", 0, u32::MAX as i64)?;
    }
    f.object("text")?;
    f.one_of("truncation", &["auto", "disabled"])?;
    f.list("include", |v, p| string(v, p).map(drop))?;
    f.str("service_tier")?;
    f.bool("background")?;
    let model = model.to_string();
    let Value::Object(body) = body else { return Err(wrong_type("body", "object")) };
    Ok(ResponsesRequest { model, stream, max_output_tokens, uses, body })
}

/// An input item: a message (`role` + `content`) or another typed item (function call
/// outputs and the like, passed through). Records which non-text parts appear.
fn input_item(item: &Value, path: &str, uses: &mut InputModalities) -> Result<(), Invalid> {
    let f = object(item, path)?;
    if f.get("role").is_none() && f.get("type").is_none() {
        return Err(super::required(&f.at("role")));
    }
    if f.get("role").is_some() {
        f.one_of("role", &["user", "assistant", "system", "developer"])?;
        let content = f.require("content")?;
        if let Value::Array(parts) = content {
            each(parts, &f.at("content"), |part, p| {
                let part = object(part, p)?;
                match part.str("type")? {
                    Some("input_image") => uses.image = true,
                    Some("input_audio") => uses.audio = true,
                    _ => {}
                }
                Ok(())
            })?;
        } else if !content.is_string() {
            return Err(wrong_type(&f.at("content"), "string or array"));
        }
    }
    // Items of other types (function call outputs, …) are the upstream's to judge.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        responses_request(v).unwrap_err()
    }

    #[test]
    fn accepts_the_documented_forms() {
        let r = responses_request(json!({"model": "m", "input": "What is the capital of France?"}))
            .unwrap();
        assert!(!r.stream);
        let r = responses_request(json!({"model": "m", "stream": true, "max_output_tokens": 50,
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"},
                                                   {"type": "input_image", "image_url": "https://x/y.png"}]}],
            "instructions": "Be brief", "reasoning": {"effort": "low", "exclude": false}, "store": false}))
        .unwrap();
        assert!(r.stream && r.uses.image);
        assert_eq!(r.max_output_tokens, Some(50));
    }

    #[test]
    fn messages_name_the_field() {
        assert_eq!(err(json!({"input": "x"})), "field required: 'model'");
        assert_eq!(err(json!({"model": "m"})), "field required: 'input'");
        assert_eq!(err(json!({"model": "m", "input": "x", "n": 2})), "unknown field: 'n'");
        assert_eq!(
            err(json!({"model": "m", "input": "x", "max_output_tokens": 0})),
            "'max_output_tokens' must be between 1 and 4294967295"
        );
        assert_eq!(
            err(json!({"model": "m", "input": "x", "temperature": 3})),
            "'temperature' must be between 0 and 2"
        );
        assert_eq!(
            err(json!({"model": "m", "input": 5})),
            "invalid type for 'input': expected string or array"
        );
        assert_eq!(
            err(json!({"model": "m", "input": [{"role": "robot", "content": "x"}]})),
            "invalid value for 'input[0].role': expected one of user, assistant, system, developer"
        );
        assert_eq!(
            err(json!({"model": "m", "input": [{"content": "x"}]})),
            "field required: 'input[0].role'"
        );
    }
}
