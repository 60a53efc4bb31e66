//! `POST /v1/chat/completions` request bodies (quantized-api.md §3.4, gateway-design.md §0).

use serde_json::{Map, Value};

use super::{
    each, empty, not_one_of, number, object, one_of, required, string, wrong_type, Fields, Invalid,
};

/// Which non-text content parts appear in the messages, for the modality pre-check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputModalities {
    pub image: bool,
    pub audio: bool,
    pub video: bool,
}

#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    pub stream: bool,
    /// the effective output ceiling asked by the client: min of max_tokens and max_completion_tokens when both present
    pub max_tokens: Option<u32>,
    pub uses: InputModalities,
    /// the validated request object, unchanged (it is forwarded upstream)
    pub body: Map<String, Value>,
}

const FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "stop",
    "seed",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "response_format",
    "modalities",
    "audio",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning",
    "web_search_options",
    "stream",
    "stream_options",
    "user",
    "metadata",
];

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];
const TEXT_ONLY: &[&str] = &["text"];
const USER_PARTS: &[&str] = &["text", "image_url", "input_audio", "video_url", "file"];
const ASSISTANT_PARTS: &[&str] = &["text", "refusal"];
const ASSISTANT_KEYS: &[&str] = &[
    "role",
    "content",
    "name",
    "refusal",
    "tool_calls",
    "function_call",
    "audio",
    "annotations",
    "reasoning",
    "reasoning_details",
];
const U32_MAX: i64 = u32::MAX as i64;

pub fn chat_request(body: Value) -> Result<ChatRequest, Invalid> {
    let Value::Object(body) = body else {
        return Err(wrong_type("body", "object"));
    };
    let checked = check(&Fields::new(&body, ""))?;
    Ok(ChatRequest {
        model: checked.model,
        stream: checked.stream,
        max_tokens: checked.max_tokens,
        uses: checked.uses,
        body,
    })
}

/// What `check` learns, kept apart from the body so the body can be moved afterwards.
struct Checked {
    model: String,
    stream: bool,
    max_tokens: Option<u32>,
    uses: InputModalities,
}

fn check(f: &Fields) -> Result<Checked, Invalid> {
    let model = f.req_str("model")?;
    if model.is_empty() {
        return Err(empty(&f.at("model")));
    }
    let messages = f.req_array("messages")?;
    if messages.is_empty() {
        return Err(empty(&f.at("messages")));
    }
    f.only(FIELDS)?;

    let mut uses = InputModalities::default();
    each(messages, &f.at("messages"), |m, p| message(m, p, &mut uses))?;

    let max_tokens = f.int("max_tokens", 1, U32_MAX)?;
    let max_completion_tokens = f.int("max_completion_tokens", 1, U32_MAX)?;
    f.num("temperature", 0.0, 2.0)?;
    f.num("top_p", 0.0, 1.0)?;
    f.num("top_k", 0.0, u32::MAX.into())?;
    f.num("frequency_penalty", -2.0, 2.0)?;
    f.num("presence_penalty", -2.0, 2.0)?;
    f.num("repetition_penalty", 0.0, 2.0)?;
    f.opt("stop", |v, p| match v {
        Value::String(_) => Ok(()),
        Value::Array(items) => each(items, p, |s, p| string(s, p).map(drop)),
        _ => Err(wrong_type(p, "string or array")),
    })?;
    f.int("seed", i64::MIN, i64::MAX)?;
    f.bool("logprobs")?;
    f.int("top_logprobs", 0, 20)?;
    if let Some(bias) = f.object("logit_bias")? {
        for (token, value) in bias.map() {
            number(value, &bias.at(token), -100.0, 100.0)?;
        }
    }
    if let Some(format) = f.object("response_format")? {
        response_format(&format)?;
    }
    f.list("modalities", |v, p| one_of(v, p, &["text", "audio"]).map(drop))?;
    f.object("audio")?;
    f.list("tools", tool)?;
    f.opt("tool_choice", tool_choice)?;
    f.bool("parallel_tool_calls")?;
    if let Some(reasoning) = f.object("reasoning")? {
        reasoning.only(&["effort", "max_tokens", "exclude", "enabled"])?;
        reasoning.one_of("effort", &["none", "minimal", "low", "medium", "high"])?;
        reasoning.int("max_tokens", 0, U32_MAX)?;
        reasoning.bool("exclude")?;
        reasoning.bool("enabled")?;
    }
    f.object("web_search_options")?;
    let stream = f.bool("stream")?.unwrap_or(false);
    if let Some(options) = f.object("stream_options")? {
        options.only(&["include_usage"])?;
        options.bool("include_usage")?;
    }
    f.str("user")?;
    f.object("metadata")?;

    // Both limits are in 1..=u32::MAX, so the conversion cannot fail.
    let max_tokens = match (max_tokens, max_completion_tokens) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
    .and_then(|n| u32::try_from(n).ok());
    Ok(Checked { model: model.to_owned(), stream, max_tokens, uses })
}

fn response_format(format: &Fields) -> Result<(), Invalid> {
    let kind = format.req_one_of("type", &["text", "json_object", "json_schema"])?;
    if kind != "json_schema" {
        return format.only(&["type"]);
    }
    format.only(&["type", "json_schema"])?;
    let schema = format.req_object("json_schema")?;
    schema.only(&["name", "description", "schema", "strict"])?;
    schema.req_str("name")?;
    schema.str("description")?;
    schema.object("schema")?;
    schema.bool("strict")?;
    Ok(())
}

fn tool(value: &Value, path: &str) -> Result<(), Invalid> {
    let tool = object(value, path)?;
    tool.only(&["type", "function"])?;
    tool.req_one_of("type", &["function"])?;
    let function = tool.req_object("function")?;
    function.only(&["name", "description", "parameters", "strict"])?;
    function.req_str("name")?;
    function.str("description")?;
    function.object("parameters")?;
    function.bool("strict")?;
    Ok(())
}

fn tool_choice(value: &Value, path: &str) -> Result<(), Invalid> {
    match value {
        Value::String(_) => one_of(value, path, &["auto", "none", "required"]).map(drop),
        Value::Object(map) => {
            let choice = Fields::new(map, path);
            choice.only(&["type", "function"])?;
            choice.req_one_of("type", &["function"])?;
            let function = choice.req_object("function")?;
            function.only(&["name"])?;
            function.req_str("name").map(drop)
        }
        _ => Err(wrong_type(path, "string or object")),
    }
}

fn message(value: &Value, path: &str, uses: &mut InputModalities) -> Result<(), Invalid> {
    let m = object(value, path)?;
    // The role decides which keys are allowed, so it is checked before them.
    match m.req_one_of("role", ROLES)? {
        "system" | "developer" => {
            m.only(&["role", "content", "name"])?;
            required_content(&m, TEXT_ONLY, uses)?;
            m.str("name")?;
        }
        "user" => {
            m.only(&["role", "content", "name"])?;
            required_content(&m, USER_PARTS, uses)?;
            m.str("name")?;
        }
        "tool" => {
            m.only(&["role", "content", "tool_call_id"])?;
            required_content(&m, TEXT_ONLY, uses)?;
            m.req_str("tool_call_id")?;
        }
        _ => assistant(&m, uses)?,
    }
    Ok(())
}

/// Accepts what the OpenAI SDKs send back when a client replays the assistant message it got.
fn assistant(m: &Fields, uses: &mut InputModalities) -> Result<(), Invalid> {
    m.only(ASSISTANT_KEYS)?;
    let has_content = content(m, ASSISTANT_PARTS, uses)?;
    m.str("name")?;
    m.str("refusal")?;
    let calls = m.list("tool_calls", tool_call)?;
    m.object("function_call")?;
    m.object("audio")?;
    m.array("annotations")?;
    m.str("reasoning")?;
    m.array("reasoning_details")?;
    if !has_content && calls.is_none_or(<[Value]>::is_empty) {
        return Err(required(&m.at("content")));
    }
    Ok(())
}

fn tool_call(value: &Value, path: &str) -> Result<(), Invalid> {
    let call = object(value, path)?;
    // `index` is not in OpenAI's request schema, but clients that rebuild the message from a
    // stream copy it from the deltas.
    call.only(&["id", "type", "function", "index"])?;
    call.req_str("id")?;
    call.req_one_of("type", &["function"])?;
    let function = call.req_object("function")?;
    function.only(&["name", "arguments"])?;
    function.req_str("name")?;
    function.req_str("arguments")?;
    call.int("index", 0, U32_MAX)?;
    Ok(())
}

fn required_content(m: &Fields, kinds: &[&str], uses: &mut InputModalities) -> Result<(), Invalid> {
    if content(m, kinds, uses)? {
        Ok(())
    } else {
        Err(required(&m.at("content")))
    }
}

/// Checks `content` if present (a string or an array of parts of `kinds`); tells whether it was.
fn content(m: &Fields, kinds: &[&str], uses: &mut InputModalities) -> Result<bool, Invalid> {
    let Some(value) = m.get("content") else {
        return Ok(false);
    };
    let path = m.at("content");
    match value {
        Value::String(_) => {}
        Value::Array(parts) => each(parts, &path, |part, p| content_part(part, p, kinds, uses))?,
        _ => return Err(wrong_type(&path, "string or array")),
    }
    Ok(true)
}

fn content_part(
    value: &Value,
    path: &str,
    kinds: &[&str],
    uses: &mut InputModalities,
) -> Result<(), Invalid> {
    let part = object(value, path)?;
    let kind = part.req_one_of("type", kinds)?;
    match kind {
        "text" => {
            part.only(&["type", "text", "cache_control"])?;
            part.req_str("text")?;
            part.object("cache_control")?;
        }
        "image_url" => {
            part.only(&["type", "image_url"])?;
            let image = part.req_object("image_url")?;
            image.only(&["url", "detail"])?;
            image.req_str("url")?;
            image.one_of("detail", &["auto", "low", "high"])?;
            uses.image = true;
        }
        "input_audio" => {
            part.only(&["type", "input_audio"])?;
            let audio = part.req_object("input_audio")?;
            audio.only(&["data", "format"])?;
            audio.req_str("data")?;
            audio.req_str("format")?;
            uses.audio = true;
        }
        "video_url" => {
            part.only(&["type", "video_url"])?;
            let video = part.req_object("video_url")?;
            video.only(&["url"])?;
            video.req_str("url")?;
            uses.video = true;
        }
        // PDFs are parsed upstream for every model, so they count as no modality.
        "file" => {
            part.only(&["type", "file"])?;
            let file = part.req_object("file")?;
            file.only(&["filename", "file_data", "file_id"])?;
            file.str("filename")?;
            file.str("file_data")?;
            file.str("file_id")?;
        }
        "refusal" => {
            part.only(&["type", "refusal"])?;
            part.req_str("refusal")?;
        }
        // `req_one_of` only lets through the kinds above.
        _ => return Err(not_one_of(&part.at("type"), kinds)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"model": "openai/gpt-4.1-mini", "messages": [{"role": "user", "content": "Hi"}]})
    }

    /// The base body with `key` set to `value`.
    fn with(key: &str, value: Value) -> Value {
        let mut body = base();
        body[key] = value;
        body
    }

    /// The base body whose only message is `message`.
    fn msg(message: Value) -> Value {
        with("messages", json!([message]))
    }

    fn err(body: Value) -> String {
        match chat_request(body.clone()) {
            Ok(_) => panic!("accepted: {body}"),
            Err(e) => e,
        }
    }

    fn ok(body: Value) -> ChatRequest {
        match chat_request(body.clone()) {
            Ok(r) => r,
            Err(e) => panic!("rejected {body}: {e}"),
        }
    }

    fn check_cases(cases: &[(Value, &str)]) {
        for (body, want) in cases {
            assert_eq!(err(body.clone()), *want, "body: {body}");
        }
    }

    #[test]
    fn minimal_request() {
        let r = ok(base());
        assert_eq!(r.model, "openai/gpt-4.1-mini");
        assert!(!r.stream);
        assert_eq!(r.max_tokens, None);
        assert_eq!(r.uses, InputModalities::default());
        assert_eq!(Value::Object(r.body), base());
    }

    #[test]
    fn body_and_required_fields() {
        check_cases(&[
            (json!([]), "invalid type for 'body': expected object"),
            (json!("hi"), "invalid type for 'body': expected object"),
            (json!(null), "invalid type for 'body': expected object"),
            (json!({}), "field required: 'model'"),
            (json!({"messages": []}), "field required: 'model'"),
            (json!({"model": null, "messages": []}), "field required: 'model'"),
            (json!({"model": "m"}), "field required: 'messages'"),
            (json!({"model": "m", "messages": null}), "field required: 'messages'"),
            (json!({"model": 1, "messages": []}), "invalid type for 'model': expected string"),
            (json!({"model": "", "messages": []}), "'model' must not be empty"),
            (json!({"model": "m", "messages": {}}), "invalid type for 'messages': expected array"),
            (json!({"model": "m", "messages": []}), "'messages' must not be empty"),
        ]);
    }

    #[test]
    fn problem_order() {
        check_cases(&[
            // Required fields come before unknown ones...
            (json!({"foo": 1}), "field required: 'model'"),
            (json!({"model": "m", "foo": 1}), "field required: 'messages'"),
            (json!({"model": "m", "messages": [], "foo": 1}), "'messages' must not be empty"),
            // ...unknown ones before the values of known ones...
            (
                json!({"model": "m", "messages": [{}], "temperature": "x", "foo": 1}),
                "unknown field: 'foo'",
            ),
            // ...then messages, then the other fields in the documented order.
            (
                json!({"model": "m", "messages": [{}], "temperature": "x"}),
                "field required: 'messages[0].role'",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}, 1],
                       "temperature": "x"}),
                "invalid type for 'messages[1]': expected object",
            ),
            (
                with("max_tokens", json!(0)).tap("temperature", json!(9)),
                "'max_tokens' must be between 1 and 4294967295",
            ),
            (
                with("temperature", json!(9)).tap("stream", json!(1)),
                "'temperature' must be between 0 and 2",
            ),
        ]);
    }

    trait Tap {
        fn tap(self, key: &str, value: Value) -> Value;
    }

    impl Tap for Value {
        fn tap(mut self, key: &str, value: Value) -> Value {
            self[key] = value;
            self
        }
    }

    #[test]
    fn unknown_top_level_fields() {
        check_cases(&[
            (with("foo", json!(1)), "unknown field: 'foo'"),
            (with("foo", json!(null)), "unknown field: 'foo'"),
            (with("n", json!(1)), "unknown field: 'n'"),
            (with("functions", json!([])), "unknown field: 'functions'"),
        ]);
    }

    #[test]
    fn every_documented_field_is_accepted() {
        let body = json!({
            "model": "m",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 100,
            "max_completion_tokens": 200,
            "temperature": 0.7,
            "top_p": 1,
            "top_k": 40,
            "frequency_penalty": -2,
            "presence_penalty": 2.0,
            "repetition_penalty": 1.1,
            "stop": ["\n", "END"],
            "seed": -42,
            "logprobs": true,
            "top_logprobs": 20,
            "logit_bias": {"50256": -100, "1": 100, "2": 0.5},
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "x", "description": "d", "schema": {"type": "object"}, "strict": true}},
            "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": "wav"},
            "tools": [{"type": "function", "function": {
                "name": "f", "description": "d", "parameters": {}, "strict": false}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "parallel_tool_calls": false,
            "reasoning": {"effort": "minimal", "max_tokens": 0, "exclude": true, "enabled": true},
            "web_search_options": {"search_context_size": "low"},
            "stream": true,
            "stream_options": {"include_usage": true},
            "user": "u-1",
            "metadata": {"k": "v"}
        });
        let r = ok(body.clone());
        assert!(r.stream);
        assert_eq!(r.max_tokens, Some(100));
        assert_eq!(Value::Object(r.body), body);
        for field in FIELDS {
            assert!(body.get(field).is_some(), "{field} missing from the test body");
        }
    }

    #[test]
    fn null_optional_fields_are_absent() {
        let mut body = base();
        for field in &FIELDS[2..] {
            body[*field] = Value::Null;
        }
        let r = ok(body);
        assert!(!r.stream);
        assert_eq!(r.max_tokens, None);
    }

    #[test]
    fn field_types() {
        let cases: &[(&str, Value, &str)] = &[
            ("max_tokens", json!("1"), "integer"),
            ("max_tokens", json!(5.0), "integer"),
            ("max_tokens", json!(5.5), "integer"),
            ("max_completion_tokens", json!(true), "integer"),
            ("temperature", json!("0.5"), "number"),
            ("top_p", json!([]), "number"),
            ("top_k", json!("4"), "number"),
            ("frequency_penalty", json!({}), "number"),
            ("presence_penalty", json!(false), "number"),
            ("repetition_penalty", json!("1"), "number"),
            ("stop", json!(1), "string or array"),
            ("stop", json!({}), "string or array"),
            ("seed", json!(1.5), "integer"),
            ("seed", json!("1"), "integer"),
            ("logprobs", json!(1), "boolean"),
            ("logprobs", json!("true"), "boolean"),
            ("top_logprobs", json!(1.5), "integer"),
            ("logit_bias", json!([]), "object"),
            ("response_format", json!("json_object"), "object"),
            ("modalities", json!("text"), "array"),
            ("audio", json!("alloy"), "object"),
            ("tools", json!({}), "array"),
            ("tool_choice", json!(1), "string or object"),
            ("tool_choice", json!([]), "string or object"),
            ("parallel_tool_calls", json!("yes"), "boolean"),
            ("reasoning", json!("high"), "object"),
            ("web_search_options", json!(true), "object"),
            ("stream", json!("true"), "boolean"),
            ("stream_options", json!(true), "object"),
            ("user", json!(7), "string"),
            ("metadata", json!([]), "object"),
        ];
        for (field, value, expected) in cases {
            assert_eq!(
                err(with(field, value.clone())),
                format!("invalid type for '{field}': expected {expected}"),
                "{field} = {value}"
            );
        }
    }

    #[test]
    fn field_ranges() {
        let cases: &[(&str, Value, &str)] = &[
            ("max_tokens", json!(0), "1 and 4294967295"),
            ("max_tokens", json!(-1), "1 and 4294967295"),
            ("max_tokens", json!(4294967296_u64), "1 and 4294967295"),
            ("max_tokens", json!(1e20), "1 and 4294967295"),
            ("max_completion_tokens", json!(0), "1 and 4294967295"),
            ("max_completion_tokens", json!(u64::MAX), "1 and 4294967295"),
            ("temperature", json!(-0.01), "0 and 2"),
            ("temperature", json!(2.5), "0 and 2"),
            ("top_p", json!(1.01), "0 and 1"),
            ("top_p", json!(-1), "0 and 1"),
            ("top_k", json!(-1), "0 and 4294967295"),
            ("top_k", json!(5e9), "0 and 4294967295"),
            ("frequency_penalty", json!(-2.5), "-2 and 2"),
            ("frequency_penalty", json!(3), "-2 and 2"),
            ("presence_penalty", json!(-3), "-2 and 2"),
            ("presence_penalty", json!(2.1), "-2 and 2"),
            ("repetition_penalty", json!(-0.1), "0 and 2"),
            ("repetition_penalty", json!(2.1), "0 and 2"),
            ("seed", json!(u64::MAX), "-9223372036854775808 and 9223372036854775807"),
            ("top_logprobs", json!(21), "0 and 20"),
            ("top_logprobs", json!(-1), "0 and 20"),
        ];
        for (field, value, bounds) in cases {
            assert_eq!(
                err(with(field, value.clone())),
                format!("'{field}' must be between {bounds}"),
                "{field} = {value}"
            );
        }
        let huge: Value = serde_json::from_str("99999999999999999999").unwrap_or_default();
        assert_eq!(err(with("max_tokens", huge)), "'max_tokens' must be between 1 and 4294967295");
        for (field, value) in [
            ("max_tokens", json!(1)),
            ("max_tokens", json!(u32::MAX)),
            ("temperature", json!(0)),
            ("temperature", json!(2)),
            ("top_p", json!(0.0)),
            ("top_k", json!(0)),
            ("top_k", json!(4294967295_u64)),
            ("frequency_penalty", json!(-2)),
            ("presence_penalty", json!(2)),
            ("repetition_penalty", json!(0)),
            ("seed", json!(i64::MIN)),
            ("seed", json!(i64::MAX)),
            ("top_logprobs", json!(0)),
        ] {
            ok(with(field, value));
        }
    }

    #[test]
    fn max_tokens_rule() {
        let cases = [
            (json!(null), json!(null), None),
            (json!(50), json!(null), Some(50)),
            (json!(null), json!(70), Some(70)),
            (json!(50), json!(70), Some(50)),
            (json!(90), json!(70), Some(70)),
            (json!(u32::MAX), json!(u32::MAX), Some(u32::MAX)),
        ];
        for (a, b, want) in cases {
            let body = with("max_tokens", a.clone()).tap("max_completion_tokens", b.clone());
            assert_eq!(ok(body).max_tokens, want, "{a} / {b}");
        }
        let no_keys = ok(base());
        assert_eq!(no_keys.max_tokens, None);
    }

    #[test]
    fn stop_logit_bias_modalities() {
        ok(with("stop", json!("END")));
        ok(with("stop", json!([])));
        check_cases(&[
            (with("stop", json!(["a", 1])), "invalid type for 'stop[1]': expected string"),
            (with("stop", json!([null])), "invalid type for 'stop[0]': expected string"),
            (
                with("logit_bias", json!({"50256": "x"})),
                "invalid type for 'logit_bias.50256': expected number",
            ),
            (
                with("logit_bias", json!({"50256": null})),
                "invalid type for 'logit_bias.50256': expected number",
            ),
            (with("logit_bias", json!({"7": -101})), "'logit_bias.7' must be between -100 and 100"),
            (
                with("modalities", json!(["text", "image"])),
                "invalid value for 'modalities[1]': expected one of text, audio",
            ),
            (with("modalities", json!([1])), "invalid type for 'modalities[0]': expected string"),
        ]);
    }

    #[test]
    fn response_format_shapes() {
        for format in [
            json!({"type": "text"}),
            json!({"type": "json_object"}),
            json!({"type": "json_schema", "json_schema": {"name": "x"}}),
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": null}}),
        ] {
            ok(with("response_format", format));
        }
        let rf = |v: Value| with("response_format", v);
        check_cases(&[
            (rf(json!({})), "field required: 'response_format.type'"),
            (
                rf(json!({"type": "xml"})),
                "invalid value for 'response_format.type': expected one of text, json_object, json_schema",
            ),
            (rf(json!({"type": 1})), "invalid type for 'response_format.type': expected string"),
            (rf(json!({"type": "text", "x": 1})), "unknown field: 'response_format.x'"),
            (
                rf(json!({"type": "json_object", "json_schema": {"name": "x"}})),
                "unknown field: 'response_format.json_schema'",
            ),
            (rf(json!({"type": "json_schema"})), "field required: 'response_format.json_schema'"),
            (
                rf(json!({"type": "json_schema", "json_schema": []})),
                "invalid type for 'response_format.json_schema': expected object",
            ),
            (
                rf(json!({"type": "json_schema", "json_schema": {}})),
                "field required: 'response_format.json_schema.name'",
            ),
            (
                rf(json!({"type": "json_schema", "json_schema": {"name": "x", "extra": 1}})),
                "unknown field: 'response_format.json_schema.extra'",
            ),
            (
                rf(json!({"type": "json_schema", "json_schema": {"name": 1}})),
                "invalid type for 'response_format.json_schema.name': expected string",
            ),
            (
                rf(json!({"type": "json_schema", "json_schema": {"name": "x", "description": 1}})),
                "invalid type for 'response_format.json_schema.description': expected string",
            ),
            (
                rf(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": "s"}})),
                "invalid type for 'response_format.json_schema.schema': expected object",
            ),
            (
                rf(json!({"type": "json_schema", "json_schema": {"name": "x", "strict": "y"}})),
                "invalid type for 'response_format.json_schema.strict': expected boolean",
            ),
        ]);
    }

    #[test]
    fn tools_and_tool_choice() {
        for choice in ["auto", "none", "required"] {
            ok(with("tool_choice", json!(choice)));
        }
        ok(with("tools", json!([{"type": "function", "function": {"name": "f"}}])));
        ok(with("tools", json!([])));
        let tools = |v: Value| with("tools", json!([v]));
        let choice = |v: Value| with("tool_choice", v);
        check_cases(&[
            (with("tools", json!(["f"])), "invalid type for 'tools[0]': expected object"),
            (tools(json!({"function": {"name": "f"}})), "field required: 'tools[0].type'"),
            (
                tools(json!({"type": "web", "function": {"name": "f"}})),
                "invalid value for 'tools[0].type': expected one of function",
            ),
            (tools(json!({"type": "function"})), "field required: 'tools[0].function'"),
            (
                tools(json!({"type": "function", "function": {"name": "f"}, "x": 1})),
                "unknown field: 'tools[0].x'",
            ),
            (
                tools(json!({"type": "function", "function": {}})),
                "field required: 'tools[0].function.name'",
            ),
            (
                tools(json!({"type": "function", "function": {"name": "f", "x": 1}})),
                "unknown field: 'tools[0].function.x'",
            ),
            (
                tools(json!({"type": "function", "function": {"name": "f", "description": 1}})),
                "invalid type for 'tools[0].function.description': expected string",
            ),
            (
                tools(json!({"type": "function", "function": {"name": "f", "parameters": []}})),
                "invalid type for 'tools[0].function.parameters': expected object",
            ),
            (
                tools(json!({"type": "function", "function": {"name": "f", "strict": 1}})),
                "invalid type for 'tools[0].function.strict': expected boolean",
            ),
            (
                choice(json!("any")),
                "invalid value for 'tool_choice': expected one of auto, none, required",
            ),
            (choice(json!({})), "field required: 'tool_choice.type'"),
            (
                choice(json!({"type": "tool", "function": {"name": "f"}})),
                "invalid value for 'tool_choice.type': expected one of function",
            ),
            (choice(json!({"type": "function"})), "field required: 'tool_choice.function'"),
            (
                choice(json!({"type": "function", "function": {}})),
                "field required: 'tool_choice.function.name'",
            ),
            (
                choice(json!({"type": "function", "function": {"name": "f", "d": 1}})),
                "unknown field: 'tool_choice.function.d'",
            ),
            (
                choice(json!({"type": "function", "function": {"name": "f"}, "x": 1})),
                "unknown field: 'tool_choice.x'",
            ),
        ]);
    }

    #[test]
    fn reasoning_and_stream_options() {
        for effort in ["none", "minimal", "low", "medium", "high"] {
            ok(with("reasoning", json!({ "effort": effort })));
        }
        ok(with("reasoning", json!({})));
        ok(with("stream_options", json!({})));
        let r = |v: Value| with("reasoning", v);
        check_cases(&[
            (
                r(json!({"effort": "max"})),
                "invalid value for 'reasoning.effort': expected one of none, minimal, low, medium, high",
            ),
            (r(json!({"max_tokens": -1})), "'reasoning.max_tokens' must be between 0 and 4294967295"),
            (r(json!({"max_tokens": "1"})), "invalid type for 'reasoning.max_tokens': expected integer"),
            (r(json!({"exclude": 1})), "invalid type for 'reasoning.exclude': expected boolean"),
            (r(json!({"enabled": "no"})), "invalid type for 'reasoning.enabled': expected boolean"),
            (r(json!({"budget": 1})), "unknown field: 'reasoning.budget'"),
            (
                with("stream_options", json!({"include_usage": "yes"})),
                "invalid type for 'stream_options.include_usage': expected boolean",
            ),
            (
                with("stream_options", json!({"include_obfuscation": true})),
                "unknown field: 'stream_options.include_obfuscation'",
            ),
        ]);
    }

    #[test]
    fn message_shapes() {
        check_cases(&[
            (with("messages", json!(["hi"])), "invalid type for 'messages[0]': expected object"),
            (msg(json!({"content": "x"})), "field required: 'messages[0].role'"),
            (msg(json!({"role": null, "content": "x"})), "field required: 'messages[0].role'"),
            (msg(json!({"role": 1})), "invalid type for 'messages[0].role': expected string"),
            (
                msg(json!({"role": "function", "content": "x"})),
                "invalid value for 'messages[0].role': expected one of system, developer, user, assistant, tool",
            ),
            (msg(json!({"role": "user", "content": "x", "foo": 1})), "unknown field: 'messages[0].foo'"),
            (msg(json!({"role": "user"})), "field required: 'messages[0].content'"),
            (msg(json!({"role": "user", "content": null})), "field required: 'messages[0].content'"),
            (
                msg(json!({"role": "user", "content": 1})),
                "invalid type for 'messages[0].content': expected string or array",
            ),
            (
                msg(json!({"role": "user", "content": {"type": "text", "text": "x"}})),
                "invalid type for 'messages[0].content': expected string or array",
            ),
            (
                msg(json!({"role": "user", "content": "x", "name": 1})),
                "invalid type for 'messages[0].name': expected string",
            ),
            (msg(json!({"role": "system"})), "field required: 'messages[0].content'"),
            (msg(json!({"role": "developer", "content": null})), "field required: 'messages[0].content'"),
            (
                msg(json!({"role": "system", "content": "x", "name": false})),
                "invalid type for 'messages[0].name': expected string",
            ),
            (
                msg(json!({"role": "system", "content": "x", "tool_calls": []})),
                "unknown field: 'messages[0].tool_calls'",
            ),
            (
                msg(json!({"role": "user", "content": "x", "tool_call_id": "t"})),
                "unknown field: 'messages[0].tool_call_id'",
            ),
            (msg(json!({"role": "tool", "content": "x"})), "field required: 'messages[0].tool_call_id'"),
            (msg(json!({"role": "tool", "tool_call_id": "t"})), "field required: 'messages[0].content'"),
            (
                msg(json!({"role": "tool", "content": "x", "tool_call_id": 1})),
                "invalid type for 'messages[0].tool_call_id': expected string",
            ),
            (
                msg(json!({"role": "tool", "content": "x", "tool_call_id": "t", "name": "f"})),
                "unknown field: 'messages[0].name'",
            ),
        ]);
        let conversation = json!([
            {"role": "system", "content": "Be brief.", "name": "sys"},
            {"role": "developer", "content": [{"type": "text", "text": "Rules"}]},
            {"role": "user", "content": "Hi", "name": null},
            {"role": "assistant", "content": "Hello"},
            {"role": "tool", "content": [{"type": "text", "text": "42"}], "tool_call_id": "c1"},
        ]);
        ok(with("messages", conversation));
    }

    #[test]
    fn second_message_paths() {
        let body = with(
            "messages",
            json!([
                {"role": "user", "content": "x"},
                {"role": "user", "content": [{"type": "text", "text": "a"},
                                             {"type": "image_url", "image_url": {}}]}
            ]),
        );
        assert_eq!(err(body), "field required: 'messages[1].content[1].image_url.url'");
    }

    #[test]
    fn content_parts() {
        let user = |part: Value| msg(json!({"role": "user", "content": [part]}));
        let part =
            |v: Value| msg(json!({"role": "user", "content": [{"type": "text", "text": "a"}, v]}));
        check_cases(&[
            (user(json!("x")), "invalid type for 'messages[0].content[0]': expected object"),
            (user(json!({"text": "x"})), "field required: 'messages[0].content[0].type'"),
            (
                part(json!({"type": "audio"})),
                "invalid value for 'messages[0].content[1].type': expected one of text, image_url, input_audio, video_url, file",
            ),
            (
                part(json!({"type": "refusal", "refusal": "no"})),
                "invalid value for 'messages[0].content[1].type': expected one of text, image_url, input_audio, video_url, file",
            ),
            (part(json!({"type": "text"})), "field required: 'messages[0].content[1].text'"),
            (
                part(json!({"type": "text", "text": 1})),
                "invalid type for 'messages[0].content[1].text': expected string",
            ),
            (
                part(json!({"type": "text", "text": "a", "cache_control": "x"})),
                "invalid type for 'messages[0].content[1].cache_control': expected object",
            ),
            (
                part(json!({"type": "text", "text": "a", "image_url": {}})),
                "unknown field: 'messages[0].content[1].image_url'",
            ),
            (part(json!({"type": "image_url"})), "field required: 'messages[0].content[1].image_url'"),
            (
                part(json!({"type": "image_url", "image_url": "https://x"})),
                "invalid type for 'messages[0].content[1].image_url': expected object",
            ),
            (
                part(json!({"type": "image_url", "image_url": {"detail": "low"}})),
                "field required: 'messages[0].content[1].image_url.url'",
            ),
            (
                part(json!({"type": "image_url", "image_url": {"url": 1}})),
                "invalid type for 'messages[0].content[1].image_url.url': expected string",
            ),
            (
                part(json!({"type": "image_url", "image_url": {"url": "u", "detail": "max"}})),
                "invalid value for 'messages[0].content[1].image_url.detail': expected one of auto, low, high",
            ),
            (
                part(json!({"type": "image_url", "image_url": {"url": "u", "size": 1}})),
                "unknown field: 'messages[0].content[1].image_url.size'",
            ),
            (
                part(json!({"type": "input_audio", "input_audio": {"format": "wav"}})),
                "field required: 'messages[0].content[1].input_audio.data'",
            ),
            (
                part(json!({"type": "input_audio", "input_audio": {"data": "AA=="}})),
                "field required: 'messages[0].content[1].input_audio.format'",
            ),
            (
                part(json!({"type": "input_audio", "input_audio": {"data": "A", "format": "wav", "x": 1}})),
                "unknown field: 'messages[0].content[1].input_audio.x'",
            ),
            (part(json!({"type": "input_audio"})), "field required: 'messages[0].content[1].input_audio'"),
            (
                part(json!({"type": "video_url", "video_url": {}})),
                "field required: 'messages[0].content[1].video_url.url'",
            ),
            (
                part(json!({"type": "video_url", "video_url": {"url": "u", "detail": "low"}})),
                "unknown field: 'messages[0].content[1].video_url.detail'",
            ),
            (part(json!({"type": "file"})), "field required: 'messages[0].content[1].file'"),
            (
                part(json!({"type": "file", "file": {"filename": 1}})),
                "invalid type for 'messages[0].content[1].file.filename': expected string",
            ),
            (
                part(json!({"type": "file", "file": {"file_data": "d", "url": "u"}})),
                "unknown field: 'messages[0].content[1].file.url'",
            ),
        ]);
        let by_role = |role: &str| {
            msg(json!({"role": role, "tool_call_id": "t",
            "content": [{"type": "image_url", "image_url": {"url": "u"}}]}))
        };
        assert_eq!(
            err(msg(json!({"role": "system",
                "content": [{"type": "image_url", "image_url": {"url": "u"}}]}))),
            "invalid value for 'messages[0].content[0].type': expected one of text"
        );
        assert_eq!(
            err(by_role("tool")),
            "invalid value for 'messages[0].content[0].type': expected one of text"
        );
        assert_eq!(
            err(msg(json!({"role": "assistant",
                "content": [{"type": "image_url", "image_url": {"url": "u"}}]}))),
            "invalid value for 'messages[0].content[0].type': expected one of text, refusal"
        );
    }

    #[test]
    fn uses_records_modalities() {
        let uses = |parts: Value| ok(msg(json!({"role": "user", "content": parts}))).uses;
        let image = json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "auto"}});
        let audio = json!({"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}});
        let video = json!({"type": "video_url", "video_url": {"url": "https://v"}});
        let file = json!({"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,AA"}});
        let text = json!({"type": "text", "text": "t", "cache_control": {"type": "ephemeral"}});
        let none = InputModalities::default();
        assert_eq!(uses(json!([text.clone(), file.clone()])), none);
        assert_eq!(uses(json!([image.clone()])), InputModalities { image: true, ..none });
        assert_eq!(uses(json!([audio.clone()])), InputModalities { audio: true, ..none });
        assert_eq!(uses(json!([video.clone()])), InputModalities { video: true, ..none });
        assert_eq!(
            uses(json!([text, image, audio, video, file])),
            InputModalities { image: true, audio: true, video: true }
        );
        assert_eq!(uses(json!([])), none);
        // Parts spread across several messages all count.
        let body = with(
            "messages",
            json!([
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "video_url", "video_url": {"url": "v"}}]},
            ]),
        );
        assert_eq!(ok(body).uses, InputModalities { image: true, video: true, audio: false });
    }

    #[test]
    fn assistant_messages() {
        let call = json!({"id": "call_1", "type": "function",
                          "function": {"name": "f", "arguments": "{}"}});
        for message in [
            json!({"role": "assistant", "content": "x"}),
            json!({"role": "assistant", "content": [{"type": "text", "text": "x"},
                                                    {"type": "refusal", "refusal": "no"}]}),
            json!({"role": "assistant", "content": null, "tool_calls": [call.clone()]}),
            json!({"role": "assistant", "tool_calls": [call.clone()]}),
            json!({"role": "assistant", "content": "x", "tool_calls": []}),
            json!({"role": "assistant", "content": "", "name": "bot", "refusal": "no",
                   "function_call": {"name": "f", "arguments": "{}"}, "audio": {"id": "a1"},
                   "annotations": [{"type": "url_citation"}], "reasoning": "because",
                   "reasoning_details": [{"type": "reasoning.text", "text": "t"}]}),
            // Clients that rebuild the message from stream deltas keep each call's index.
            json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "c", "type": "function",
                   "function": {"name": "f", "arguments": ""}}]}),
        ] {
            ok(msg(message));
        }
        let a = |v: Value| msg(v);
        let calls = |c: Value| msg(json!({"role": "assistant", "tool_calls": [c]}));
        check_cases(&[
            (a(json!({"role": "assistant"})), "field required: 'messages[0].content'"),
            (
                a(json!({"role": "assistant", "content": null})),
                "field required: 'messages[0].content'",
            ),
            (
                a(json!({"role": "assistant", "tool_calls": []})),
                "field required: 'messages[0].content'",
            ),
            (
                a(json!({"role": "assistant", "tool_calls": null})),
                "field required: 'messages[0].content'",
            ),
            (
                a(json!({"role": "assistant", "tool_calls": {}})),
                "invalid type for 'messages[0].tool_calls': expected array",
            ),
            (
                a(json!({"role": "assistant", "content": 1})),
                "invalid type for 'messages[0].content': expected string or array",
            ),
            (
                a(json!({"role": "assistant", "content": "x", "refusal": 1})),
                "invalid type for 'messages[0].refusal': expected string",
            ),
            (
                a(json!({"role": "assistant", "content": "x", "function_call": "f"})),
                "invalid type for 'messages[0].function_call': expected object",
            ),
            (
                a(json!({"role": "assistant", "content": "x", "audio": "a"})),
                "invalid type for 'messages[0].audio': expected object",
            ),
            (
                a(json!({"role": "assistant", "content": "x", "annotations": {}})),
                "invalid type for 'messages[0].annotations': expected array",
            ),
            (
                a(json!({"role": "assistant", "content": "x", "reasoning": {}})),
                "invalid type for 'messages[0].reasoning': expected string",
            ),
            (
                a(json!({"role": "assistant", "content": "x", "reasoning_details": "r"})),
                "invalid type for 'messages[0].reasoning_details': expected array",
            ),
            (
                a(json!({"role": "assistant", "content": "x", "tool_call_id": "t"})),
                "unknown field: 'messages[0].tool_call_id'",
            ),
            (
                a(json!({"role": "assistant", "content": [{"type": "refusal"}]})),
                "field required: 'messages[0].content[0].refusal'",
            ),
            (
                a(
                    json!({"role": "assistant", "content": [{"type": "refusal", "refusal": "n", "text": "t"}]}),
                ),
                "unknown field: 'messages[0].content[0].text'",
            ),
            (calls(json!("c")), "invalid type for 'messages[0].tool_calls[0]': expected object"),
            (
                calls(json!({"type": "function", "function": {"name": "f", "arguments": ""}})),
                "field required: 'messages[0].tool_calls[0].id'",
            ),
            (
                calls(json!({"id": "c", "function": {"name": "f", "arguments": ""}})),
                "field required: 'messages[0].tool_calls[0].type'",
            ),
            (
                calls(
                    json!({"id": "c", "type": "custom", "function": {"name": "f", "arguments": ""}}),
                ),
                "invalid value for 'messages[0].tool_calls[0].type': expected one of function",
            ),
            (
                calls(json!({"id": "c", "type": "function"})),
                "field required: 'messages[0].tool_calls[0].function'",
            ),
            (
                calls(json!({"id": "c", "type": "function", "function": {"arguments": ""}})),
                "field required: 'messages[0].tool_calls[0].function.name'",
            ),
            (
                calls(json!({"id": "c", "type": "function", "function": {"name": "f"}})),
                "field required: 'messages[0].tool_calls[0].function.arguments'",
            ),
            (
                calls(
                    json!({"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}),
                ),
                "invalid type for 'messages[0].tool_calls[0].function.arguments': expected string",
            ),
            (
                calls(json!({"id": "c", "type": "function",
                             "function": {"name": "f", "arguments": "", "x": 1}})),
                "unknown field: 'messages[0].tool_calls[0].function.x'",
            ),
            (
                calls(json!({"id": "c", "type": "function", "extra": 1,
                             "function": {"name": "f", "arguments": ""}})),
                "unknown field: 'messages[0].tool_calls[0].extra'",
            ),
            (
                calls(json!({"id": "c", "type": "function", "index": -1,
                             "function": {"name": "f", "arguments": ""}})),
                "'messages[0].tool_calls[0].index' must be between 0 and 4294967295",
            ),
        ]);
    }

    /// What `ChatCompletionMessage.model_dump()` of the OpenAI Python SDK gives back.
    #[test]
    fn sdk_round_trip() {
        let body = json!({
            "model": "openai/gpt-4.1-mini",
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "content": null,
                    "refusal": null,
                    "role": "assistant",
                    "annotations": null,
                    "audio": null,
                    "function_call": null,
                    "tool_calls": [{
                        "id": "call_abc",
                        "function": {"arguments": "{\"city\":\"Paris\"}", "name": "weather"},
                        "type": "function"
                    }],
                    "reasoning": null
                },
                {"role": "tool", "tool_call_id": "call_abc", "content": "18C, sunny"}
            ],
            "tools": [{"type": "function", "function": {"name": "weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "auto",
            "stream": false,
            "max_completion_tokens": 64
        });
        let r = ok(body.clone());
        assert_eq!(r.max_tokens, Some(64));
        assert!(!r.stream);
        assert_eq!(Value::Object(r.body), body);
    }
}
