//! OpenAI Chat Completions ⇄ Anthropic Messages translation (upstreams.md §2, §3). Pure
//! functions: the HTTP call lives elsewhere.
//!
//! The principle: a parameter Anthropic cannot honour is translated or refused
//! ([`UpstreamError::Unsupported`], so the gateway can pick another route), never silently
//! dropped when dropping it would change the answer. Fields that cannot change the answer
//! (`seed`, OpenAI `metadata`, `stream_options`, `name`, `refusal`, …) are dropped.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::providers::sse::SseEvent;
use crate::providers::{StreamItem, TokenUsage, UpstreamError};

const IMAGE_TYPES: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp"];
/// Upstream text we quote to clients or logs is cut here; Anthropic's messages are short.
const MAX_QUOTE: usize = 1000;

fn unsupported(field: &str) -> UpstreamError {
    UpstreamError::Unsupported(format!("'{field}' is not supported by provider 'anthropic'"))
}

fn bad_request(message: String) -> UpstreamError {
    UpstreamError::BadRequest(message)
}

fn malformed(what: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Unavailable(format!("malformed anthropic response: {what}"))
}

/// The gateway's validation treats JSON `null` as absent, so every lookup here does too.
fn get<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn get_str<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    get(map, key).and_then(Value::as_str)
}

fn get_obj<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Map<String, Value>> {
    get(map, key).and_then(Value::as_object)
}

fn get_array<'a>(map: &'a Map<String, Value>, key: &str) -> &'a [Value] {
    get(map, key).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------
// Request

/// OpenAI chat request body (already validated by the gateway) → Anthropic `/v1/messages` body.
/// `max_tokens` is the ceiling the gateway decided; the body's own limits are ignored.
pub fn to_messages_request(
    body: &Map<String, Value>,
    upstream_model: &str,
    max_tokens: u64,
    stream: bool,
) -> Result<Value, UpstreamError> {
    refuse_unsupported(body)?;
    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());
    out.insert("max_tokens".into(), max_tokens.into());
    let (system, messages) = translate_messages(get_array(body, "messages"))?;
    if let Some(system) = system {
        out.insert("system".into(), system);
    }
    out.insert("messages".into(), messages.into());
    translate_tools(body, &mut out)?;
    if let Some(stop) = stop_sequences(body)? {
        out.insert("stop_sequences".into(), stop);
    }
    if let Some(t) = get(body, "temperature") {
        // Anthropic's range is 0–1; its own OpenAI layer caps rather than refuses.
        let capped = t.as_f64().is_some_and(|t| t > 1.0);
        out.insert("temperature".into(), if capped { 1.into() } else { t.clone() });
    }
    if let Some(p) = get(body, "top_p") {
        out.insert("top_p".into(), p.clone());
    }
    if let Some(k) = get(body, "top_k").and_then(Value::as_f64) {
        // 0 means "no top-k" in OpenRouter's dialect; Anthropic wants a positive integer.
        if k.fract() != 0.0 {
            return Err(bad_request("'top_k' must be an integer".into()));
        }
        if k >= 1.0 {
            out.insert("top_k".into(), (k as u64).into());
        }
    }
    if let Some(user) = get_str(body, "user").filter(|u| !u.is_empty()) {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    if let Some(format) = get_obj(body, "response_format") {
        if get_str(format, "type") == Some("json_schema") {
            let schema = get_obj(format, "json_schema").and_then(|s| get(s, "schema"));
            let Some(schema) = schema else {
                return Err(bad_request(
                    "field required: 'response_format.json_schema.schema'".into(),
                ));
            };
            let format = json!({ "type": "json_schema", "schema": schema });
            out.insert("output_config".into(), json!({ "format": format }));
        }
    }
    if stream {
        out.insert("stream".into(), true.into());
    }
    Ok(Value::Object(out))
}

fn refuse_unsupported(body: &Map<String, Value>) -> Result<(), UpstreamError> {
    let number = |key| get(body, key).and_then(Value::as_f64);
    let reasoning = get_obj(body, "reasoning").is_some_and(wants_reasoning);
    let json_object =
        get_obj(body, "response_format").is_some_and(|f| get_str(f, "type") == Some("json_object"));
    let refused = [
        ("frequency_penalty", number("frequency_penalty").is_some_and(|x| x != 0.0)),
        ("presence_penalty", number("presence_penalty").is_some_and(|x| x != 0.0)),
        ("repetition_penalty", number("repetition_penalty").is_some_and(|x| x != 1.0)),
        ("logit_bias", get_obj(body, "logit_bias").is_some_and(|b| !b.is_empty())),
        ("logprobs", get(body, "logprobs").and_then(Value::as_bool) == Some(true)),
        ("top_logprobs", number("top_logprobs").is_some_and(|x| x > 0.0)),
        ("audio", get(body, "audio").is_some()),
        ("modalities", get_array(body, "modalities").iter().any(|m| m != "text")),
        ("web_search_options", get(body, "web_search_options").is_some()),
        ("reasoning", reasoning),
        ("response_format", json_object),
    ];
    match refused.iter().find(|(_, refused)| *refused) {
        Some((field, _)) => Err(unsupported(field)),
        None => Ok(()),
    }
}

/// OpenRouter's `reasoning` object: any of effort, `enabled: true` or a token budget turns it on,
/// unless it is explicitly off.
fn wants_reasoning(r: &Map<String, Value>) -> bool {
    let effort = get_str(r, "effort");
    let enabled = get(r, "enabled").and_then(Value::as_bool);
    let budget = get(r, "max_tokens").and_then(Value::as_u64).is_some_and(|n| n > 0);
    let off = enabled == Some(false) || effort == Some("none");
    enabled == Some(true) || effort.is_some_and(|e| e != "none") || (budget && !off)
}

fn translate_messages(messages: &[Value]) -> Result<(Option<Value>, Vec<Value>), UpstreamError> {
    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    // The last entry of `out` is a user turn opened by tool results, still open for more.
    let mut tool_turn = false;
    for (i, m) in messages.iter().enumerate() {
        let Some(m) = m.as_object() else { continue };
        let path = format!("messages[{i}]");
        let (role, content) = match get_str(m, "role").unwrap_or_default() {
            "system" | "developer" => {
                system.push(system_part(m));
                continue;
            }
            "user" => match user_content(m, &path)? {
                Value::String(text) if tool_turn => {
                    ("user", json!([{ "type": "text", "text": text }]))
                }
                content => ("user", content),
            },
            "assistant" => match assistant_blocks(m, &path)? {
                blocks if blocks.is_empty() => continue,
                blocks => ("assistant", Value::Array(blocks)),
            },
            "tool" => ("tool", json!([tool_result(m)])),
            _ => continue,
        };
        let open =
            out.last_mut().and_then(|m| m.get_mut("content")?.as_array_mut()).filter(|_| tool_turn);
        match (open, content) {
            (Some(open), Value::Array(blocks)) if role != "assistant" => open.extend(blocks),
            (_, content) => {
                let anthropic_role = if role == "assistant" { "assistant" } else { "user" };
                out.push(json!({ "role": anthropic_role, "content": content }));
            }
        }
        tool_turn = role == "tool";
    }
    if out.is_empty() {
        return Err(bad_request("at least one user message is required".into()));
    }
    Ok((system_value(system), out))
}

/// A system message's text and the `cache_control` of its last part that has one.
fn system_part(m: &Map<String, Value>) -> (String, Option<Value>) {
    match get(m, "content") {
        Some(Value::String(text)) => (text.clone(), None),
        _ => {
            let parts = get_array(m, "content").iter().filter_map(Value::as_object);
            let text = parts.clone().filter_map(|p| get_str(p, "text")).collect();
            (text, parts.filter_map(|p| get(p, "cache_control")).next_back().cloned())
        }
    }
}

/// The plain string form unless a part asked for a cache breakpoint, which only the block form
/// can carry; then one block per system message.
fn system_value(parts: Vec<(String, Option<Value>)>) -> Option<Value> {
    if parts.iter().all(|(_, cache_control)| cache_control.is_none()) {
        let joined = parts.into_iter().map(|(text, _)| text).collect::<Vec<_>>().join("\n");
        return (!joined.is_empty()).then_some(Value::String(joined));
    }
    let blocks = parts.into_iter().filter(|(text, _)| !text.is_empty());
    Some(blocks.map(|(text, cache_control)| text_block(text, cache_control)).collect())
}

fn text_block(text: String, cache_control: Option<Value>) -> Value {
    let mut block = json!({ "type": "text", "text": text });
    if let (Some(cc), Some(map)) = (cache_control, block.as_object_mut()) {
        map.insert("cache_control".into(), cc);
    }
    block
}

fn text_part(part: &Map<String, Value>) -> Value {
    let text = get_str(part, "text").unwrap_or_default().to_owned();
    text_block(text, get(part, "cache_control").cloned())
}

/// The content parts of a message with their index.
fn parts(m: &Map<String, Value>) -> impl Iterator<Item = (usize, &Map<String, Value>)> {
    get_array(m, "content").iter().enumerate().filter_map(|(j, p)| Some((j, p.as_object()?)))
}

fn user_content(m: &Map<String, Value>, path: &str) -> Result<Value, UpstreamError> {
    if let Some(Value::String(text)) = get(m, "content") {
        return Ok(Value::String(text.clone()));
    }
    let mut blocks = Vec::new();
    for (j, part) in parts(m) {
        let at = format!("{path}.content[{j}]");
        blocks.push(match get_str(part, "type").unwrap_or_default() {
            "image_url" => {
                let url = get_obj(part, "image_url").and_then(|i| get_str(i, "url"));
                image_block(url.unwrap_or_default(), &format!("{at}.image_url.url"))?
            }
            "file" => document_block(get_obj(part, "file"), &format!("{at}.file"))?,
            kind @ ("input_audio" | "video_url") => {
                return Err(unsupported(&format!("{at}.{kind}")))
            }
            _ => text_part(part),
        });
    }
    Ok(Value::Array(blocks))
}

/// Splits `data:<media type>;base64,<data>`; `None` when `url` is no base64 data URL.
fn data_url(url: &str) -> Option<(String, &str)> {
    if !url.get(..5)?.eq_ignore_ascii_case("data:") {
        return None;
    }
    let (media_type, data) = url[5..].split_once(";base64,")?;
    Some((media_type.trim().to_ascii_lowercase(), data))
}

fn image_block(url: &str, path: &str) -> Result<Value, UpstreamError> {
    if let Some((media_type, data)) = data_url(url) {
        if !IMAGE_TYPES.contains(&media_type.as_str()) {
            let allowed = IMAGE_TYPES.join(", ");
            let msg =
                format!("'{path}': image type '{media_type}' is not supported; use {allowed}");
            return Err(bad_request(msg));
        }
        let source = json!({ "type": "base64", "media_type": media_type, "data": data });
        return Ok(json!({ "type": "image", "source": source }));
    }
    if url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")) {
        return Ok(json!({ "type": "image", "source": { "type": "url", "url": url } }));
    }
    Err(bad_request(format!("'{path}' must be an https URL or a base64 data URL")))
}

fn document_block(file: Option<&Map<String, Value>>, path: &str) -> Result<Value, UpstreamError> {
    let Some(file_data) = file.and_then(|f| get_str(f, "file_data")) else {
        // A file id refers to OpenAI's file store, which Anthropic cannot read.
        return Err(unsupported(&format!("{path}.file_id")));
    };
    let Some((media_type, data)) = data_url(file_data) else {
        return Err(bad_request(format!("'{path}.file_data' must be a base64 data URL")));
    };
    if media_type != "application/pdf" {
        return Err(unsupported(&format!("{path}.file_data")));
    }
    let source = json!({ "type": "base64", "media_type": media_type, "data": data });
    Ok(json!({ "type": "document", "source": source }))
}

fn assistant_blocks(m: &Map<String, Value>, path: &str) -> Result<Vec<Value>, UpstreamError> {
    // A legacy call has no id, so no tool_result could ever answer it; replayed audio is an
    // answer we cannot show the model. Dropping either would hide part of the conversation.
    if let Some(field) = ["function_call", "audio"].into_iter().find(|f| get(m, f).is_some()) {
        return Err(unsupported(&format!("{path}.{field}")));
    }
    let mut blocks = Vec::new();
    if let Some(Value::String(text)) = get(m, "content").filter(|c| c != &"") {
        blocks.push(json!({ "type": "text", "text": text }));
    }
    // Refusal parts are dropped: Anthropic has no way to replay them.
    let texts = parts(m).map(|(_, p)| p).filter(|p| get_str(p, "type") == Some("text"));
    blocks.extend(texts.filter(|p| get_str(p, "text") != Some("")).map(text_part));
    for (j, call) in get_array(m, "tool_calls").iter().enumerate() {
        let Some(call) = call.as_object() else { continue };
        blocks.push(tool_use_block(call, &format!("{path}.tool_calls[{j}].function.arguments"))?);
    }
    Ok(blocks)
}

fn tool_use_block(call: &Map<String, Value>, path: &str) -> Result<Value, UpstreamError> {
    let function = get_obj(call, "function");
    let field = |key| function.and_then(|f| get_str(f, key)).unwrap_or_default();
    let arguments = field("arguments").trim();
    let input = if arguments.is_empty() {
        json!({})
    } else {
        serde_json::from_str::<Value>(arguments)
            .map_err(|_| bad_request(format!("'{path}' is not valid JSON")))?
    };
    if !input.is_object() {
        return Err(bad_request(format!("'{path}' must be a JSON object")));
    }
    let id = get_str(call, "id").unwrap_or_default();
    Ok(json!({ "type": "tool_use", "id": id, "name": field("name"), "input": input }))
}

fn tool_result(m: &Map<String, Value>) -> Value {
    let content = match get(m, "content") {
        Some(Value::String(text)) => Value::String(text.clone()),
        _ => parts(m).map(|(_, part)| text_part(part)).collect(),
    };
    let id = get_str(m, "tool_call_id").unwrap_or_default();
    json!({ "type": "tool_result", "tool_use_id": id, "content": content })
}

fn translate_tools(
    body: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), UpstreamError> {
    let mut tools = Vec::new();
    for function in get_array(body, "tools").iter().filter_map(|t| t.get("function")?.as_object()) {
        let mut tool = Map::new();
        tool.insert("name".into(), get_str(function, "name").unwrap_or_default().into());
        if let Some(description) = get(function, "description") {
            tool.insert("description".into(), description.clone());
        }
        let schema = get(function, "parameters").cloned();
        let schema = schema.unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
        tool.insert("input_schema".into(), schema);
        // OpenAI's strict tool inputs map onto Anthropic's own; dropping it would lose the
        // guarantee that arguments match the schema.
        if get(function, "strict").and_then(Value::as_bool) == Some(true) {
            tool.insert("strict".into(), true.into());
        }
        tools.push(Value::Object(tool));
    }
    let mut choice = match get(body, "tool_choice") {
        Some(Value::String(s)) if s == "required" => Some(json!({ "type": "any" })),
        Some(Value::String(s)) => Some(json!({ "type": s })),
        Some(Value::Object(c)) => {
            let name = get_obj(c, "function").and_then(|f| get_str(f, "name"));
            Some(json!({ "type": "tool", "name": name.unwrap_or_default() }))
        }
        _ => None,
    };
    if tools.is_empty() {
        // Without tools "auto" and "none" mean the same thing; forcing a call cannot work.
        return match choice.as_ref().and_then(|c| c["type"].as_str()) {
            Some("any" | "tool") => Err(bad_request("'tool_choice' requires 'tools'".into())),
            _ => Ok(()),
        };
    }
    if get(body, "parallel_tool_calls").and_then(Value::as_bool) == Some(false) {
        let c = choice.get_or_insert_with(|| json!({ "type": "auto" }));
        if let Some(c) = c.as_object_mut().filter(|c| c.get("type") != Some(&json!("none"))) {
            c.insert("disable_parallel_tool_use".into(), true.into());
        }
    }
    out.insert("tools".into(), tools.into());
    if let Some(choice) = choice {
        out.insert("tool_choice".into(), choice);
    }
    Ok(())
}

/// Anthropic rejects empty or whitespace-only stop sequences, so those cannot be honoured.
fn stop_sequences(body: &Map<String, Value>) -> Result<Option<Value>, UpstreamError> {
    let stops: Vec<(String, &str)> = match get(body, "stop") {
        Some(Value::String(s)) => vec![("stop".into(), s)],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((format!("stop[{i}]"), s.as_str()?)))
            .collect(),
        _ => return Ok(None),
    };
    if let Some((path, _)) = stops.iter().find(|(_, s)| s.trim().is_empty()) {
        return Err(unsupported(path));
    }
    let stops: Vec<Value> = stops.into_iter().map(|(_, s)| s.into()).collect();
    Ok((!stops.is_empty()).then_some(Value::Array(stops)))
}

// ---------------------------------------------------------------------------------------------
// Response

fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// Anthropic's three input counters kept apart: they are priced differently.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    input: u64,
    cache_write: u64,
    cache_read: u64,
    output: u64,
}

impl Usage {
    /// Overwrites the counters present in `u` (Anthropic's counts are cumulative).
    fn update(&mut self, u: &Map<String, Value>) -> Result<(), UpstreamError> {
        let fields = [
            ("input_tokens", &mut self.input),
            ("cache_creation_input_tokens", &mut self.cache_write),
            ("cache_read_input_tokens", &mut self.cache_read),
            ("output_tokens", &mut self.output),
        ];
        for (key, slot) in fields {
            if let Some(v) = get(u, key) {
                *slot = v.as_u64().ok_or_else(|| malformed(format_args!("usage.{key} = {v}")))?;
            }
        }
        Ok(())
    }

    fn token_usage(&self) -> TokenUsage {
        TokenUsage {
            prompt_tokens: self
                .input
                .saturating_add(self.cache_write)
                .saturating_add(self.cache_read),
            completion_tokens: self.output,
        }
    }

    fn openai(&self) -> Value {
        let t = self.token_usage();
        json!({
            "prompt_tokens": t.prompt_tokens,
            "completion_tokens": t.completion_tokens,
            "total_tokens": t.prompt_tokens.saturating_add(t.completion_tokens),
            "prompt_tokens_details": {
                "cached_tokens": self.cache_read,
                "cache_write_tokens": self.cache_write,
            },
        })
    }
}

fn need<T>(value: Option<T>, what: &str) -> Result<T, UpstreamError> {
    value.ok_or_else(|| malformed(what))
}

fn into_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Anthropic non-streaming response → OpenAI `chat.completion` (without credit fields) and the
/// billable usage. `model` is the id reported to the client.
pub fn from_messages_response(
    resp: &Value,
    model: &str,
) -> Result<(Map<String, Value>, TokenUsage), UpstreamError> {
    let resp = need(resp.as_object(), "not an object")?;
    let id = need(get_str(resp, "id"), "no id")?;
    let blocks = need(get(resp, "content").and_then(Value::as_array), "no content array")?;
    let usage_fields = need(get_obj(resp, "usage"), "no usage")?;
    // Billing must not default a missing count to zero.
    if ["input_tokens", "output_tokens"].iter().any(|k| get(usage_fields, k).is_none()) {
        return Err(malformed("usage without input_tokens or output_tokens"));
    }
    let mut usage = Usage::default();
    usage.update(usage_fields)?;

    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in blocks.iter().filter_map(Value::as_object) {
        match get_str(block, "type") {
            Some("text") => {
                let t = need(get_str(block, "text"), "text block without text")?;
                text.get_or_insert_with(String::new).push_str(t);
            }
            Some("tool_use") => {
                let id = need(get_str(block, "id"), "tool_use without id")?;
                let name = need(get_str(block, "name"), "tool_use without name")?;
                let arguments = get(block, "input").unwrap_or(&json!({})).to_string();
                let function = json!({ "name": name, "arguments": arguments });
                tool_calls.push(json!({ "id": id, "type": "function", "function": function }));
            }
            // Thinking, redacted thinking and server-tool blocks have no Chat Completions form.
            _ => {}
        }
    }
    let mut message = into_map(json!({ "role": "assistant", "content": text }));
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), tool_calls.into());
    }
    let finish_reason = finish_reason(get_str(resp, "stop_reason"));
    let completion = json!({
        "id": id,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [{ "index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason }],
        "usage": usage.openai(),
    });
    Ok((into_map(completion), usage.token_usage()))
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// Translates one Anthropic event stream into `chat.completion.chunk`s (upstreams.md §3.4).
pub struct StreamTranslator {
    model: String,
    created: u64,
    /// From `message_start`; `None` until then.
    id: Option<String>,
    /// Anthropic content block index → OpenAI `tool_calls[].index`.
    tool_index: HashMap<u64, u64>,
    usage: Usage,
    finish_sent: bool,
    finished: bool,
}

impl StreamTranslator {
    pub fn new(model: &str) -> Self {
        StreamTranslator {
            model: model.to_owned(),
            created: now(),
            id: None,
            tool_index: HashMap::new(),
            usage: Usage::default(),
            finish_sent: false,
            finished: false,
        }
    }

    /// True once `message_stop` was seen.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Feeds one SSE event; returns what to relay, in order (`Ok(vec![])` for ping/unknown).
    pub fn on_event(&mut self, event: &SseEvent) -> Result<Vec<StreamItem>, UpstreamError> {
        let parse = || {
            serde_json::from_str::<Map<String, Value>>(&event.data)
                .map_err(|e| malformed(format_args!("event data is not a JSON object: {e}")))
        };
        // Anthropic always names its events; the JSON `type` is the fallback for bare `data:`.
        let name = match &event.event {
            Some(name) => name.clone(),
            None => get_str(&parse()?, "type").unwrap_or_default().to_owned(),
        };
        let known = ["content_block_start", "content_block_delta", "message_delta", "message_stop"];
        if name == "error" {
            let (kind, message) = error_fields(event.data.as_bytes());
            return Err(UpstreamError::Unavailable(format!(
                "anthropic stream error {kind}: {message}"
            )));
        }
        // ping, content_block_stop and event types added after this was written carry nothing.
        if self.finished || (name != "message_start" && !known.contains(&name.as_str())) {
            return Ok(Vec::new());
        }
        let data = parse()?;
        if (name == "message_start") == self.id.is_some() {
            let problem = if self.id.is_some() { "repeated" } else { "before message_start" };
            return Err(malformed(format_args!("'{name}' {problem}")));
        }
        match name.as_str() {
            "message_start" => self.message_start(&data),
            "content_block_start" => self.block_start(&data),
            "content_block_delta" => self.block_delta(&data),
            "message_delta" => self.message_delta(&data),
            _ => Ok(self.message_stop()),
        }
    }

    fn message_start(
        &mut self,
        data: &Map<String, Value>,
    ) -> Result<Vec<StreamItem>, UpstreamError> {
        let message = need(get_obj(data, "message"), "message_start without message")?;
        self.id = Some(need(get_str(message, "id"), "message without id")?.to_owned());
        if let Some(usage) = get_obj(message, "usage") {
            self.usage.update(usage)?;
        }
        // The output count here is a placeholder; only the input side is billable yet.
        let input = TokenUsage { completion_tokens: 0, ..self.usage.token_usage() };
        let role = self.chunk(json!({ "role": "assistant", "content": "" }), None, 0);
        Ok(vec![role, StreamItem::Usage(input)])
    }

    fn block_start(&mut self, data: &Map<String, Value>) -> Result<Vec<StreamItem>, UpstreamError> {
        let index = need(get(data, "index").and_then(Value::as_u64), "no block index")?;
        let block = need(get_obj(data, "content_block"), "no content_block")?;
        match get_str(block, "type") {
            Some("text") => Ok(self.text(get_str(block, "text").unwrap_or_default())),
            Some("tool_use") => {
                let id = need(get_str(block, "id"), "tool_use without id")?;
                let name = need(get_str(block, "name"), "tool_use without name")?;
                let k = self.tool_index.len() as u64;
                self.tool_index.insert(index, k);
                let function = json!({ "name": name, "arguments": "" });
                let call =
                    json!({ "index": k, "id": id, "type": "function", "function": function });
                Ok(vec![self.chunk(json!({ "tool_calls": [call] }), None, 0)])
            }
            _ => Ok(Vec::new()),
        }
    }

    fn block_delta(&mut self, data: &Map<String, Value>) -> Result<Vec<StreamItem>, UpstreamError> {
        let index = need(get(data, "index").and_then(Value::as_u64), "no block index")?;
        let delta = need(get_obj(data, "delta"), "no delta")?;
        match get_str(delta, "type") {
            Some("text_delta") => Ok(self.text(get_str(delta, "text").unwrap_or_default())),
            Some("input_json_delta") => {
                let k = *need(self.tool_index.get(&index), "input_json_delta outside a tool_use")?;
                let fragment = get_str(delta, "partial_json").unwrap_or_default();
                if fragment.is_empty() {
                    return Ok(Vec::new());
                }
                let call = json!({ "index": k, "function": { "arguments": fragment } });
                Ok(vec![self.chunk(json!({ "tool_calls": [call] }), None, 1)])
            }
            // thinking, signature and citations have no Chat Completions form.
            _ => Ok(Vec::new()),
        }
    }

    fn message_delta(
        &mut self,
        data: &Map<String, Value>,
    ) -> Result<Vec<StreamItem>, UpstreamError> {
        if let Some(usage) = get_obj(data, "usage") {
            self.usage.update(usage)?;
        }
        let mut items = vec![StreamItem::Usage(self.usage.token_usage())];
        let stop_reason = get_obj(data, "delta").and_then(|d| get_str(d, "stop_reason"));
        if let Some(reason) = stop_reason.filter(|_| !self.finish_sent) {
            self.finish_sent = true;
            items.push(self.chunk(json!({}), Some(finish_reason(Some(reason))), 0));
        }
        Ok(items)
    }

    fn message_stop(&mut self) -> Vec<StreamItem> {
        self.finished = true;
        // Clients expect exactly one finish_reason; a stream that never said why it stopped
        // gets the one a null stop_reason maps to.
        if std::mem::replace(&mut self.finish_sent, true) {
            return Vec::new();
        }
        vec![self.chunk(json!({}), Some(finish_reason(None)), 0)]
    }

    fn text(&self, text: &str) -> Vec<StreamItem> {
        if text.is_empty() {
            return Vec::new();
        }
        vec![self.chunk(json!({ "content": text }), None, 1)]
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, completion_tokens: u64) -> StreamItem {
        let chunk = into_map(json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        }));
        StreamItem::Chunk { chunk, completion_tokens }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// `error.type` and `error.message` of an Anthropic error body; for a body that is not the
/// JSON envelope (a proxy's HTML page, say), the start of the raw text.
fn error_fields(body: &[u8]) -> (String, String) {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error")).and_then(Value::as_object);
    match error {
        Some(e) => (
            get_str(e, "type").unwrap_or("unknown").to_owned(),
            quote(get_str(e, "message").unwrap_or_default()),
        ),
        None => ("(not JSON)".to_owned(), quote(&String::from_utf8_lossy(body))),
    }
}

fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTE) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Anthropic answers a bad model id with 404, but some paths say so in a 400; both are the
/// client's "model not found".
fn about_missing_model(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("model")
        && ["not found", "does not exist", "unknown model", "no such model", "invalid model"]
            .iter()
            .any(|p| m.contains(p))
}

/// Classifies a non-2xx Anthropic response (status and raw body, which may not be JSON).
pub fn classify_error(status: u16, body: &[u8]) -> UpstreamError {
    let (kind, message) = error_fields(body);
    match (status, kind.as_str()) {
        (404, "not_found_error") => UpstreamError::ModelNotFound,
        (400, "invalid_request_error" | "not_found_error") if about_missing_model(&message) => {
            UpstreamError::ModelNotFound
        }
        (400, "invalid_request_error") => {
            UpstreamError::BadRequest(format!("The provider rejected the request: {message}"))
        }
        (413, _) => UpstreamError::BadRequest("Request too large for the provider".into()),
        _ => UpstreamError::Unavailable(format!("anthropic {status} {kind}: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::sse::SseParser;

    fn body(v: Value) -> Map<String, Value> {
        into_map(v)
    }

    fn translate(v: Value) -> Result<Value, UpstreamError> {
        to_messages_request(&body(v), "claude-sonnet-4-20250514", 300, false)
    }

    /// A minimal request with `extra` fields merged in.
    fn with(extra: Value) -> Result<Value, UpstreamError> {
        let mut b = body(json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}));
        b.extend(into_map(extra));
        to_messages_request(&b, "up", 100, false)
    }

    fn minimal() -> Value {
        json!({"model": "up", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]})
    }

    /// The messages of a translated request whose messages are `messages`.
    fn messages(messages: Value) -> Result<Value, UpstreamError> {
        translate(json!({"model": "m", "messages": messages})).map(|r| r["messages"].clone())
    }

    fn unsupported_field(r: Result<Value, UpstreamError>) -> String {
        match r {
            Err(UpstreamError::Unsupported(m)) => {
                let field = m.strip_suffix("' is not supported by provider 'anthropic'");
                field.and_then(|f| f.strip_prefix('\'')).expect(&m).to_owned()
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    fn bad_request_text(r: Result<Value, UpstreamError>) -> String {
        match r {
            Err(UpstreamError::BadRequest(m)) => m,
            other => panic!("expected BadRequest, got {other:?}"),
        }
    }

    #[test]
    fn worked_example() {
        let input = json!({"model":"anthropic/claude-sonnet-4","max_tokens":300,"stop":"END","parallel_tool_calls":false,
         "tool_choice":"required",
         "messages":[
          {"role":"system","content":"Be brief."},
          {"role":"user","content":[{"type":"text","text":"Weather in Paris and Rome?"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]},
          {"role":"assistant","content":null,"tool_calls":[
            {"id":"call_a","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
            {"id":"call_b","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Rome\"}"}}]},
          {"role":"tool","tool_call_id":"call_a","content":"21C"},
          {"role":"tool","tool_call_id":"call_b","content":"25C"}],
         "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]});
        let expected = json!({"model":"claude-sonnet-4-20250514","max_tokens":300,"stop_sequences":["END"],
         "system":"Be brief.",
         "tool_choice":{"type":"any","disable_parallel_tool_use":true},
         "messages":[
          {"role":"user","content":[{"type":"text","text":"Weather in Paris and Rome?"},
            {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}]},
          {"role":"assistant","content":[
            {"type":"tool_use","id":"call_a","name":"get_weather","input":{"city":"Paris"}},
            {"type":"tool_use","id":"call_b","name":"get_weather","input":{"city":"Rome"}}]},
          {"role":"user","content":[
            {"type":"tool_result","tool_use_id":"call_a","content":"21C"},
            {"type":"tool_result","tool_use_id":"call_b","content":"25C"}]}],
         "tools":[{"name":"get_weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}]});
        assert_eq!(translate(input.clone()).unwrap(), expected);
        // The body's own limits and stream flag are not ours to follow.
        let mut streamed = expected;
        streamed["stream"] = json!(true);
        streamed["max_tokens"] = json!(77);
        let got = to_messages_request(&body(input), "claude-sonnet-4-20250514", 77, true);
        assert_eq!(got.unwrap(), streamed);
    }

    #[test]
    fn sampling_and_simple_fields() {
        let r = with(json!({
            "temperature": 1.7, "top_p": 0.9, "top_k": 40, "user": "u-1",
            "stop": ["END", "\n\nHuman:"], "max_tokens": 5, "max_completion_tokens": 6,
        }))
        .unwrap();
        assert_eq!(r["temperature"], json!(1));
        assert_eq!(r["top_p"], json!(0.9));
        assert_eq!(r["top_k"], json!(40));
        assert_eq!(r["metadata"], json!({"user_id": "u-1"}));
        assert_eq!(r["stop_sequences"], json!(["END", "\n\nHuman:"]));
        assert_eq!(r["max_tokens"], json!(100));
        assert_eq!(with(json!({"temperature": 0.3})).unwrap()["temperature"], json!(0.3));
        assert_eq!(with(json!({"temperature": 0})).unwrap()["temperature"], json!(0));
        // top_k 0 means "off"; a whole float is an integer.
        assert_eq!(with(json!({"top_k": 0})).unwrap(), minimal());
        assert_eq!(with(json!({"top_k": 5.0})).unwrap()["top_k"], json!(5));
        assert!(bad_request_text(with(json!({"top_k": 2.5}))).contains("top_k"));
        assert_eq!(with(json!({"stop": []})).unwrap(), minimal());
        assert_eq!(with(json!({"user": ""})).unwrap(), minimal());
    }

    #[test]
    fn harmless_fields_are_dropped() {
        let r = with(json!({
            "seed": 7, "metadata": {"k": "v"}, "stream_options": {"include_usage": true},
            "stream": true, "frequency_penalty": 0, "presence_penalty": 0.0,
            "repetition_penalty": 1, "logit_bias": {}, "logprobs": false, "top_logprobs": 0,
            "modalities": ["text"], "reasoning": {"effort": "none"},
            "response_format": {"type": "text"}, "tools": [], "tool_choice": "auto",
            "parallel_tool_calls": false, "temperature": null, "audio": null,
            "web_search_options": null, "stop": null,
        }));
        assert_eq!(r.unwrap(), minimal());
        for reasoning in [json!({"enabled": false}), json!({"exclude": true}), json!({})] {
            assert_eq!(with(json!({"reasoning": reasoning})).unwrap(), minimal());
        }
        let named = messages(json!([
            {"role": "user", "content": "Hi", "name": "bob"},
            {"role": "assistant", "content": "Yo", "name": "bot", "refusal": null,
             "annotations": [], "reasoning": "thought"},
        ]));
        let expected = json!([
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "Yo"}]},
        ]);
        assert_eq!(named.unwrap(), expected);
    }

    #[test]
    fn unsupported_parameters_are_refused() {
        let cases = [
            (json!({"frequency_penalty": 0.5}), "frequency_penalty"),
            (json!({"presence_penalty": -1}), "presence_penalty"),
            (json!({"repetition_penalty": 1.1}), "repetition_penalty"),
            (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"top_logprobs": 3}), "top_logprobs"),
            (json!({"audio": {"voice": "alloy", "format": "mp3"}}), "audio"),
            (json!({"modalities": ["text", "audio"]}), "modalities"),
            (json!({"web_search_options": {}}), "web_search_options"),
            (json!({"reasoning": {"effort": "low"}}), "reasoning"),
            (json!({"reasoning": {"enabled": true}}), "reasoning"),
            (json!({"reasoning": {"max_tokens": 2000}}), "reasoning"),
            (json!({"response_format": {"type": "json_object"}}), "response_format"),
            (json!({"stop": " \n"}), "stop"),
            (json!({"stop": ["END", ""]}), "stop[1]"),
        ];
        for (extra, field) in cases {
            assert_eq!(unsupported_field(with(extra.clone())), field, "{extra}");
        }
    }

    #[test]
    fn unsupported_parts_are_refused() {
        let user = |part: Value| messages(json!([{"role": "user", "content": ["x", part]}]));
        let cases = [
            (
                json!({"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}),
                "messages[0].content[1].input_audio",
            ),
            (
                json!({"type": "video_url", "video_url": {"url": "https://v.example/a.mp4"}}),
                "messages[0].content[1].video_url",
            ),
            (
                json!({"type": "file", "file": {"file_id": "file-abc"}}),
                "messages[0].content[1].file.file_id",
            ),
            (
                json!({"type": "file", "file": {"file_data": "data:text/plain;base64,aGk="}}),
                "messages[0].content[1].file.file_data",
            ),
        ];
        for (part, field) in cases {
            assert_eq!(unsupported_field(user(part.clone())), field, "{part}");
        }
        let assistant = |extra: Value| {
            let mut m = json!({"role": "assistant", "content": "ok"});
            m.as_object_mut().unwrap().extend(into_map(extra));
            messages(json!([{"role": "user", "content": "Hi"}, m]))
        };
        let call = json!({"function_call": {"name": "f", "arguments": "{}"}});
        assert_eq!(unsupported_field(assistant(call)), "messages[1].function_call");
        assert_eq!(
            unsupported_field(assistant(json!({"audio": {"id": "a1"}}))),
            "messages[1].audio"
        );
    }

    #[test]
    fn bad_requests() {
        let image = |url: &str| {
            let part = json!({"type": "image_url", "image_url": {"url": url, "detail": "high"}});
            messages(json!([{"role": "user", "content": [part]}]))
        };
        let text = bad_request_text(image("data:image/bmp;base64,Qk0="));
        assert!(
            text.contains("messages[0].content[0].image_url.url") && text.contains("image/bmp"),
            "{text}"
        );
        let text = bad_request_text(image("http://example.com/cat.png"));
        assert_eq!(
            text,
            "'messages[0].content[0].image_url.url' must be an https URL or a base64 data URL"
        );
        bad_request_text(image("data:image/png,rawbytes"));
        bad_request_text(image("ftp://example.com/cat.png"));

        let call = |arguments: &str| {
            messages(json!([
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "ok", "tool_calls": [
                    {"id": "c0", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
                {"role": "tool", "tool_call_id": "c0", "content": "r"},
                {"role": "tool", "tool_call_id": "c1", "content": "r"},
            ]))
        };
        let text = bad_request_text(call("{\"city\": "));
        assert_eq!(text, "'messages[1].tool_calls[1].function.arguments' is not valid JSON");
        let text = bad_request_text(call("[1, 2]"));
        assert_eq!(text, "'messages[1].tool_calls[1].function.arguments' must be a JSON object");
        assert_eq!(call("").unwrap()[1]["content"][2]["input"], json!({}));
        assert_eq!(call("  ").unwrap()[1]["content"][2]["input"], json!({}));

        let only_system = messages(json!([
            {"role": "system", "content": "a"},
            {"role": "developer", "content": [{"type": "text", "text": "b"}]},
        ]));
        assert_eq!(bad_request_text(only_system), "at least one user message is required");
        let skipped = messages(
            json!([{"role": "system", "content": "a"}, {"role": "assistant", "content": null}]),
        );
        assert_eq!(bad_request_text(skipped), "at least one user message is required");

        let text = bad_request_text(with(json!({"tool_choice": "required"})));
        assert_eq!(text, "'tool_choice' requires 'tools'");
        let schema = json!({"type": "json_schema", "json_schema": {"name": "x"}});
        let text = bad_request_text(with(json!({"response_format": schema})));
        assert_eq!(text, "field required: 'response_format.json_schema.schema'");
        let pdf = json!({"type": "file", "file": {"filename": "a.pdf", "file_data": "JVBERi0="}});
        let text = bad_request_text(messages(json!([{"role": "user", "content": [pdf]}])));
        assert_eq!(text, "'messages[0].content[0].file.file_data' must be a base64 data URL");
    }

    #[test]
    fn content_parts() {
        let got = messages(json!([{"role": "user", "content": [
            {"type": "text", "text": "Look", "cache_control": {"type": "ephemeral"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/sky.jpg", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "DATA:Image/JPEG;base64,/9j/"}},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
        ]}]));
        let expected = json!([{"role": "user", "content": [
            {"type": "text", "text": "Look", "cache_control": {"type": "ephemeral"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/sky.jpg"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
        ]}]);
        assert_eq!(got.unwrap(), expected);
    }

    #[test]
    fn system_hoisting() {
        let r = translate(json!({"messages": [
            {"role": "system", "content": "One."},
            {"role": "user", "content": "Hi"},
            {"role": "developer", "content": [{"type": "text", "text": "Two"}, {"type": "text", "text": "!"}]},
            {"role": "assistant", "content": "Yo"},
            {"role": "system", "content": "Three."},
        ]}))
        .unwrap();
        assert_eq!(r["system"], json!("One.\nTwo!\nThree."));
        assert_eq!(r["messages"].as_array().unwrap().len(), 2);
        // A cache breakpoint needs the block form.
        let r = translate(json!({"messages": [
            {"role": "system", "content": "One."},
            {"role": "system", "content": [{"type": "text", "text": "Long", "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": "Hi"},
        ]}))
        .unwrap();
        let expected = json!([
            {"type": "text", "text": "One."},
            {"type": "text", "text": "Long", "cache_control": {"type": "ephemeral"}},
        ]);
        assert_eq!(r["system"], expected);
        assert!(translate(json!({"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}]}))
            .unwrap()
            .get("system")
            .is_none());
    }

    #[test]
    fn conversation_shapes() {
        let got = messages(json!([
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": null},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me check."}, {"type": "refusal", "refusal": "no"}],
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "r1"}, {"type": "text", "text": "r2"}]},
            {"role": "user", "content": "thanks"},
            {"role": "assistant", "content": ""},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
            {"role": "user", "content": [{"type": "text", "text": "again"}]},
            {"role": "assistant", "content": "Sure,"},
        ]));
        let expected = json!([
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": [{"type": "text", "text": "r1"}, {"type": "text", "text": "r2"}]},
                {"type": "text", "text": "thanks"}]},
            {"role": "user", "content": [{"type": "text", "text": "again"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Sure,"}]},
        ]);
        assert_eq!(got.unwrap(), expected);
    }

    #[test]
    fn tools_and_tool_choice() {
        let tools = json!([
            {"type": "function", "function": {"name": "a", "description": "A", "strict": true,
             "parameters": {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}}},
            {"type": "function", "function": {"name": "b", "strict": false}},
        ]);
        let r = with(json!({"tools": tools})).unwrap();
        let expected = json!([
            {"name": "a", "description": "A", "strict": true,
             "input_schema": {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}},
            {"name": "b", "input_schema": {"type": "object", "properties": {}}},
        ]);
        assert_eq!(r["tools"], expected);
        assert!(r.get("tool_choice").is_none());
        let choice = |c: Value, parallel: Value| {
            with(json!({"tools": tools, "tool_choice": c, "parallel_tool_calls": parallel}))
                .unwrap()["tool_choice"]
                .clone()
        };
        assert_eq!(choice(json!("auto"), json!(true)), json!({"type": "auto"}));
        assert_eq!(choice(json!("none"), json!(false)), json!({"type": "none"}));
        assert_eq!(choice(json!("required"), json!(null)), json!({"type": "any"}));
        let named = json!({"type": "function", "function": {"name": "b"}});
        assert_eq!(
            choice(named.clone(), json!(false)),
            json!({"type": "tool", "name": "b", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            choice(json!(null), json!(false)),
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            bad_request_text(with(json!({"tool_choice": named}))),
            "'tool_choice' requires 'tools'"
        );
    }

    #[test]
    fn structured_output() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": false});
        let format = json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": schema}});
        let r = with(json!({"response_format": format})).unwrap();
        assert_eq!(
            r["output_config"],
            json!({"format": {"type": "json_schema", "schema": schema}})
        );
    }

    // --- responses

    const RESPONSE: &str = r#"{
      "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
      "model": "claude-sonnet-4-20250514",
      "content": [
        {"type": "text", "text": "Let me look that up."},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"city": "Paris"}}
      ],
      "stop_reason": "tool_use", "stop_sequence": null,
      "usage": {"input_tokens": 2095, "output_tokens": 503, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0, "service_tier": "standard"}
    }"#;

    fn response(text: &str) -> (Value, TokenUsage) {
        let (mut completion, usage) = from_messages_response(
            &serde_json::from_str(text).unwrap(),
            "anthropic/claude-sonnet-4",
        )
        .unwrap();
        assert!(completion["created"].as_u64().unwrap() > 1_700_000_000);
        completion["created"] = json!(1735689600);
        (Value::Object(completion), usage)
    }

    #[test]
    fn response_example() {
        let (completion, usage) = response(RESPONSE);
        let expected = json!({
          "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
          "object": "chat.completion",
          "created": 1735689600,
          "model": "anthropic/claude-sonnet-4",
          "choices": [{
            "index": 0,
            "message": {
              "role": "assistant",
              "content": "Let me look that up.",
              "tool_calls": [{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
                              "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]
            },
            "logprobs": null,
            "finish_reason": "tool_calls"
          }],
          "usage": {"prompt_tokens": 2095, "completion_tokens": 503, "total_tokens": 2598,
                    "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0}}
        });
        assert_eq!(completion, expected);
        assert_eq!(usage, TokenUsage { prompt_tokens: 2095, completion_tokens: 503 });
    }

    #[test]
    fn response_text_only_thinking_and_cache() {
        let (c, usage) = response(
            r#"{"id": "msg_1", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}],
              "stop_reason": "end_turn",
              "usage": {"input_tokens": 10, "cache_creation_input_tokens": 200,
                        "cache_read_input_tokens": 3000, "output_tokens": 7}}"#,
        );
        assert_eq!(
            c["choices"][0]["message"],
            json!({"role": "assistant", "content": "Hello world"})
        );
        assert_eq!(
            c["usage"],
            json!({"prompt_tokens": 3210, "completion_tokens": 7, "total_tokens": 3217,
                   "prompt_tokens_details": {"cached_tokens": 3000, "cache_write_tokens": 200}})
        );
        assert_eq!(usage, TokenUsage { prompt_tokens: 3210, completion_tokens: 7 });
        let (c, _) = response(
            r#"{"id": "m", "content": [], "stop_reason": "max_tokens", "usage": {"input_tokens": 1, "output_tokens": 1}}"#,
        );
        assert_eq!(c["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(c["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn huge_counts_saturate() {
        let max = u64::MAX;
        let resp = json!({"id": "m", "content": [], "usage": {"input_tokens": max,
            "cache_read_input_tokens": max, "output_tokens": max}});
        let (c, usage) = from_messages_response(&resp, "x").unwrap();
        assert_eq!(usage, TokenUsage { prompt_tokens: max, completion_tokens: max });
        assert_eq!(c["usage"]["total_tokens"], json!(max));
    }

    #[test]
    fn malformed_responses() {
        let bad = [
            json!([]),
            json!({"content": [], "usage": {"input_tokens": 1, "output_tokens": 1}}),
            json!({"id": "m", "usage": {"input_tokens": 1, "output_tokens": 1}}),
            json!({"id": "m", "content": []}),
            json!({"id": "m", "content": [], "usage": {"input_tokens": -1, "output_tokens": 1}}),
            json!({"id": "m", "content": [], "usage": {"input_tokens": 1}}),
            json!({"id": "m", "content": [{"type": "tool_use", "name": "f"}], "usage": {"input_tokens": 1, "output_tokens": 1}}),
        ];
        for resp in bad {
            match from_messages_response(&resp, "x") {
                Err(UpstreamError::Unavailable(m)) => assert!(m.starts_with("malformed"), "{m}"),
                other => panic!("{resp}: {other:?}"),
            }
        }
    }

    #[test]
    fn finish_reasons() {
        let table = [
            (Some("end_turn"), "stop"),
            (Some("stop_sequence"), "stop"),
            (Some("max_tokens"), "length"),
            (Some("tool_use"), "tool_calls"),
            (Some("refusal"), "content_filter"),
            (Some("pause_turn"), "stop"),
            (Some("model_context_window_exceeded"), "length"),
            (Some("something_new"), "stop"),
            (None, "stop"),
        ];
        for (reason, expected) in table {
            assert_eq!(finish_reason(reason), expected);
        }
    }

    // --- streams

    /// Items as JSON, to compare whole sequences: chunks with their token estimate, usages.
    fn items_json(items: Vec<StreamItem>) -> Vec<Value> {
        items
            .into_iter()
            .map(|item| match item {
                StreamItem::Chunk { chunk, completion_tokens } => {
                    json!({"chunk": chunk, "tokens": completion_tokens})
                }
                StreamItem::Usage(u) => json!({"usage": [u.prompt_tokens, u.completion_tokens]}),
                StreamItem::Final(event) => json!({"final": event}),
            })
            .collect()
    }

    fn translator() -> StreamTranslator {
        let mut t = StreamTranslator::new("claude-sonnet-4-20250514");
        assert!(t.created > 1_700_000_000);
        t.created = 1735689600;
        t
    }

    /// Runs `sse` through the parser and a translator, feeding it in pieces cut at `cuts`.
    fn run(sse: &str, cuts: &[usize]) -> (Vec<Value>, bool) {
        let mut parser = SseParser::new(1 << 16);
        let mut t = translator();
        let mut items = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain([&sse.len()]) {
            for event in parser.push(&sse.as_bytes()[start..end]).unwrap() {
                items.extend(t.on_event(&event).unwrap());
            }
            start = end;
        }
        (items_json(items), t.finished())
    }

    const TEXT_STREAM: &str = "event: message_start
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-20250514\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}

event: content_block_start
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}

event: ping
data: {\"type\":\"ping\"}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"!\"}}

event: content_block_stop
data: {\"type\":\"content_block_stop\",\"index\":0}

event: message_delta
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}

event: message_stop
data: {\"type\":\"message_stop\"}

";

    /// The tool-use stream of upstreams.md §2.4, after a text block at index 0 as §3.4 shows.
    const TOOL_STREAM: &str = "event: message_start
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-20250514\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}

event: content_block_start
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me check.\"}}

event: content_block_stop
data: {\"type\":\"content_block_stop\",\"index\":0}

event: content_block_start
data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\",\"input\":{}}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"Par\"}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"is\\\"}\"}}

event: content_block_stop
data: {\"type\":\"content_block_stop\",\"index\":1}

event: message_delta
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}

event: message_stop
data: {\"type\":\"message_stop\"}

";

    fn chunk(id: &str, delta: Value, finish: Value, tokens: u64) -> Value {
        json!({"chunk": {"id": id, "object": "chat.completion.chunk", "created": 1735689600,
                         "model": "claude-sonnet-4-20250514",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]},
               "tokens": tokens})
    }

    #[test]
    fn text_stream() {
        let id = "msg_01XFDUDYJgAACzvnptvVoYEL";
        let expected = vec![
            chunk(id, json!({"role": "assistant", "content": ""}), Value::Null, 0),
            json!({"usage": [25, 0]}),
            chunk(id, json!({"content": "Hello"}), Value::Null, 1),
            chunk(id, json!({"content": "!"}), Value::Null, 1),
            json!({"usage": [25, 15]}),
            chunk(id, json!({}), json!("stop"), 0),
        ];
        assert_eq!(run(TEXT_STREAM, &[]), (expected, true));
    }

    #[test]
    fn tool_stream() {
        let tool_delta = |v: Value| json!({"tool_calls": [v]});
        let expected = vec![
            chunk("msg_01", json!({"role": "assistant", "content": ""}), Value::Null, 0),
            json!({"usage": [25, 0]}),
            chunk("msg_01", json!({"content": "Let me check."}), Value::Null, 1),
            chunk(
                "msg_01",
                tool_delta(
                    json!({"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                                  "function": {"name": "get_weather", "arguments": ""}}),
                ),
                Value::Null,
                0,
            ),
            chunk(
                "msg_01",
                tool_delta(json!({"index": 0, "function": {"arguments": "{\"city\": \"Par"}})),
                Value::Null,
                1,
            ),
            chunk(
                "msg_01",
                tool_delta(json!({"index": 0, "function": {"arguments": "is\"}"}})),
                Value::Null,
                1,
            ),
            json!({"usage": [25, 89]}),
            chunk("msg_01", json!({}), json!("tool_calls"), 0),
        ];
        assert_eq!(run(TOOL_STREAM, &[]), (expected, true));
    }

    #[test]
    fn streams_split_anywhere() {
        for sse in [TEXT_STREAM, TOOL_STREAM] {
            let whole = run(sse, &[]);
            for i in 0..=sse.len() {
                assert_eq!(run(sse, &[i]), whole, "cut at {i}");
            }
            // Many small reads, also cutting "\r\n" apart.
            let crlf = sse.replace('\n', "\r\n");
            for step in [1, 2, 3, 7, 64] {
                let cuts: Vec<usize> = (step..crlf.len()).step_by(step).collect();
                assert_eq!(run(&crlf, &cuts), whole, "step {step}");
            }
        }
    }

    fn feed(
        t: &mut StreamTranslator,
        name: Option<&str>,
        data: Value,
    ) -> Result<Vec<Value>, UpstreamError> {
        let event = SseEvent { event: name.map(str::to_owned), data: data.to_string() };
        t.on_event(&event).map(items_json)
    }

    fn start(t: &mut StreamTranslator, usage: Value) {
        let message = json!({"type": "message_start", "message": {"id": "msg_x", "usage": usage}});
        assert_eq!(feed(t, Some("message_start"), message).unwrap().len(), 2);
    }

    #[test]
    fn stream_usage_with_cache_counters() {
        let mut t = translator();
        let usage = json!({"input_tokens": 5, "cache_creation_input_tokens": 100,
                           "cache_read_input_tokens": 2000, "output_tokens": 1});
        let message = json!({"type": "message_start", "message": {"id": "msg_x", "usage": usage}});
        let items = feed(&mut t, Some("message_start"), message).unwrap();
        assert_eq!(items[1], json!({"usage": [2105, 0]}));
        // Counts are cumulative: present values overwrite, absent ones stay.
        let delta = json!({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 10, "input_tokens": 7}});
        assert_eq!(
            feed(&mut t, Some("message_delta"), delta).unwrap(),
            vec![json!({"usage": [2107, 10]})]
        );
        let delta = json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 12}});
        let items = feed(&mut t, Some("message_delta"), delta.clone()).unwrap();
        assert_eq!(items[0], json!({"usage": [2107, 12]}));
        assert_eq!(items[1]["chunk"]["choices"][0]["finish_reason"], "length");
        // A second stop reason does not make a second finish chunk, nor does message_stop.
        assert_eq!(feed(&mut t, Some("message_delta"), delta).unwrap().len(), 1);
        assert!(!t.finished());
        assert_eq!(
            feed(&mut t, Some("message_stop"), json!({"type": "message_stop"})).unwrap(),
            Vec::<Value>::new()
        );
        assert!(t.finished());
    }

    #[test]
    fn stream_edge_cases() {
        let mut t = translator();
        // Pings and unknown events are fine anywhere, even before message_start.
        assert_eq!(
            feed(&mut t, Some("ping"), json!({"type": "ping"})).unwrap(),
            Vec::<Value>::new()
        );
        assert_eq!(
            t.on_event(&SseEvent { event: Some("future".into()), data: "not json".into() })
                .unwrap()
                .len(),
            0
        );
        start(&mut t, json!({"input_tokens": 3, "output_tokens": 1}));
        let thinking = [
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": "Hi"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "citations_delta", "citation": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": ""}}),
        ];
        let mut items = Vec::new();
        for data in thinking {
            // A bare `data:` event is recognised by its JSON type.
            items.extend(feed(&mut t, None, data).unwrap());
        }
        assert_eq!(items, vec![chunk("msg_x", json!({"content": "Hi"}), Value::Null, 1)]);
        // No message_delta with a stop reason: message_stop still closes the choice.
        let items = feed(&mut t, Some("message_stop"), json!({"type": "message_stop"})).unwrap();
        assert_eq!(items, vec![chunk("msg_x", json!({}), json!("stop"), 0)]);
        assert!(t.finished());
        let late = json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "x"}});
        assert_eq!(feed(&mut t, Some("content_block_delta"), late).unwrap(), Vec::<Value>::new());
    }

    fn unavailable(r: Result<Vec<Value>, UpstreamError>) -> String {
        match r {
            Err(UpstreamError::Unavailable(m)) => m,
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn stream_errors() {
        let mut t = translator();
        let delta = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}});
        let m = unavailable(feed(&mut t, Some("content_block_delta"), delta));
        assert_eq!(m, "malformed anthropic response: 'content_block_delta' before message_start");

        let mut t = translator();
        start(&mut t, json!({"input_tokens": 3, "output_tokens": 1}));
        let bad = SseEvent { event: Some("content_block_delta".into()), data: "{\"type\":".into() };
        assert!(unavailable(t.on_event(&bad).map(items_json)).starts_with("malformed"));
        let m =
            unavailable(feed(&mut t, Some("message_start"), json!({"message": {"id": "again"}})));
        assert!(m.starts_with("malformed"), "{m}");
        let orphan = json!({"type": "content_block_delta", "index": 4, "delta": {"type": "input_json_delta", "partial_json": "{"}});
        assert!(
            unavailable(feed(&mut t, Some("content_block_delta"), orphan)).starts_with("malformed")
        );
        let error = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        let m = unavailable(feed(&mut t, Some("error"), error));
        assert_eq!(m, "anthropic stream error overloaded_error: Overloaded");
        assert!(!t.finished());
        let raw = SseEvent { event: Some("error".into()), data: "boom".into() };
        assert!(unavailable(t.on_event(&raw).map(items_json)).contains("boom"));
    }

    // --- errors

    fn envelope(kind: &str, message: &str) -> Vec<u8> {
        json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn error_classification() {
        let not_found = envelope("not_found_error", "model: claude-9");
        assert!(matches!(classify_error(404, &not_found), UpstreamError::ModelNotFound));
        let invalid = envelope("invalid_request_error", "messages: roles must alternate");
        match classify_error(400, &invalid) {
            UpstreamError::BadRequest(m) => {
                assert_eq!(m, "The provider rejected the request: messages: roles must alternate")
            }
            other => panic!("{other:?}"),
        }
        for message in ["model: Model 'claude-9' not found", "The model `claude-9` does not exist"]
        {
            let body = envelope("invalid_request_error", message);
            assert!(
                matches!(classify_error(400, &body), UpstreamError::ModelNotFound),
                "{message}"
            );
        }
        // Mentioning the model is not enough.
        let body = envelope(
            "invalid_request_error",
            "temperature and top_p cannot both be specified for this model",
        );
        assert!(matches!(classify_error(400, &body), UpstreamError::BadRequest(_)));
        match classify_error(413, b"<html>413 Request Entity Too Large</html>") {
            UpstreamError::BadRequest(m) => assert_eq!(m, "Request too large for the provider"),
            other => panic!("{other:?}"),
        }
        let cases: [(u16, Vec<u8>, &str); 9] = [
            (
                401,
                envelope("authentication_error", "invalid x-api-key"),
                "anthropic 401 authentication_error: invalid x-api-key",
            ),
            (403, envelope("permission_error", "nope"), "anthropic 403 permission_error: nope"),
            (408, envelope("timeout_error", "slow"), "anthropic 408 timeout_error: slow"),
            (
                409,
                envelope("invalid_request_error", "conflict"),
                "anthropic 409 invalid_request_error: conflict",
            ),
            (
                429,
                envelope("rate_limit_error", "slow down"),
                "anthropic 429 rate_limit_error: slow down",
            ),
            (500, envelope("api_error", "oops"), "anthropic 500 api_error: oops"),
            (
                529,
                envelope("overloaded_error", "Overloaded"),
                "anthropic 529 overloaded_error: Overloaded",
            ),
            (
                502,
                b"<html>Bad Gateway</html>".to_vec(),
                "anthropic 502 (not JSON): <html>Bad Gateway</html>",
            ),
            (404, b"Not Found".to_vec(), "anthropic 404 (not JSON): Not Found"),
        ];
        for (status, body, expected) in cases {
            match classify_error(status, &body) {
                UpstreamError::Unavailable(m) => assert_eq!(m, expected),
                other => panic!("{status}: {other:?}"),
            }
        }
        // Long or invalid UTF-8 bodies are cut and decoded lossily, never a panic.
        let long = vec![b'\xE9'; 5000];
        match classify_error(503, &long) {
            UpstreamError::Unavailable(m) => assert!(m.chars().count() < 1100),
            other => panic!("{other:?}"),
        }
    }
}
