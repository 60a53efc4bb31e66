//! Hostile input: a few thousand generated malformed or mutated requests (a seeded generator,
//! `HOSTILE_SEED=n` to try another seed), protocol garbage, header floods, oversized bodies and
//! slow clients. Every answer must be a 4xx — the JSON error envelope wherever the gateway itself
//! answers — the server must keep serving, and nothing may be charged or created.
//!
//! Raw-socket cases run in `spawn_blocking`: the server under test lives on the test's runtime.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use serde_json::{json, Map, Value};

use crate::helpers::*;
use crate::stress::{assert_nothing_held, books, send};

// =============================================================================================
// A small seeded generator (SplitMix64): no new crates, and every failure names its seed.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// In `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const SEED: u64 = 0x4057_11E5;

fn seed() -> u64 {
    std::env::var("HOSTILE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(SEED)
}

/// What the license under attack starts with; it must still have exactly this at the end.
const BALANCE: i64 = 1_000_000;

// =============================================================================================
// Cases sent through the HTTP client

/// A request the gateway must refuse with `status` and a message starting with `message`.
struct Case {
    class: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    status: u16,
    message: String,
}

fn preview(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(160)]).into_owned();
    if bytes.len() > 160 {
        format!("{text}… ({} bytes)", bytes.len())
    } else {
        text
    }
}

/// The message of an exact error envelope `{"error":{"message":"…"}}`.
fn envelope_message(text: &str) -> Result<String, String> {
    let body: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text}"))?;
    let message = body
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get("error"))
        .and_then(Value::as_object)
        .filter(|e| e.len() == 1)
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("not the error envelope: {text}"))?;
    Ok(message.to_string())
}

/// Who is attacking: a license with `BALANCE` and its key.
struct Target {
    key: String,
}

impl Target {
    fn headers(&self) -> Vec<(String, String)> {
        vec![
            ("Authorization".into(), format!("Bearer {}", self.key)),
            ("Content-Type".into(), "application/json".into()),
        ]
    }

    fn post(
        &self,
        class: &'static str,
        path: &str,
        body: Vec<u8>,
        status: u16,
        message: &str,
    ) -> Case {
        Case {
            class,
            method: "POST",
            path: path.into(),
            headers: self.headers(),
            body: Some(body),
            status,
            message: message.into(),
        }
    }

    fn chat(&self, class: &'static str, body: Vec<u8>, status: u16, message: &str) -> Case {
        self.post(class, "/v1/chat/completions", body, status, message)
    }
}

/// Sends every case (16 at a time) and checks each answer; returns how many were sent per class.
async fn refuse_all(app: &TestApp, seed: u64, cases: Vec<Case>) -> BTreeMap<&'static str, usize> {
    let total = cases.len();
    let answers: Vec<(Case, Result<Reply, String>)> = stream::iter(cases)
        .map(|case| async move {
            let headers: Vec<(&str, &str)> =
                case.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let r =
                send(&app.client, case.method, &app.url(&case.path), &headers, case.body.clone())
                    .await;
            (case, r)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut failures = Vec::new();
    let mut per_class = BTreeMap::new();
    for (case, answer) in &answers {
        *per_class.entry(case.class).or_insert(0) += 1;
        if let Err(problem) = check(case, answer) {
            let body = case.body.as_deref().map(preview).unwrap_or_default();
            failures.push(format!(
                "[{}] {} {}: {problem}\n    body: {body}",
                case.class, case.method, case.path
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {total} hostile requests were answered wrongly; the first ones:\n{}",
        failures.len(),
        failures.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
    per_class
}

fn check(case: &Case, answer: &Result<Reply, String>) -> Result<(), String> {
    let r = answer.as_ref().map_err(|e| format!("transport failure: {e}"))?;
    let message = envelope_message(&r.text).map_err(|e| format!("status {}, {e}", r.status()))?;
    if r.status() != case.status || !message.starts_with(&case.message) {
        return Err(format!(
            "expected {} {:?}…, got {} {message:?}",
            case.status,
            case.message,
            r.status()
        ));
    }
    Ok(())
}

// =============================================================================================
// Generators

const WORDS: &[&str] = &[
    "hello",
    "world",
    "ünïcödé",
    "日本語",
    "🎉",
    "tab\there",
    "quote\"d",
    "back\\slash",
    "€",
    "a",
    "new\nline",
    "\u{0}nul",
    "\u{7f}",
    "ж",
    "",
];

fn text(rng: &mut Rng) -> String {
    let n = 1 + rng.below(6);
    (0..n).map(|_| *rng.pick(WORDS)).collect::<Vec<_>>().join(" ")
}

/// A valid chat request for demo/echo with a random selection of optional fields.
fn valid_chat(rng: &mut Rng) -> Value {
    let mut messages = Vec::new();
    for i in 0..1 + rng.below(3) {
        let role = if i == 0 { *rng.pick(&["system", "user"]) } else { "user" };
        let content = if role == "user" && rng.chance(30) {
            json!([{"type": "text", "text": text(rng)}])
        } else {
            json!(text(rng))
        };
        messages.push(json!({"role": role, "content": content}));
    }
    if rng.chance(30) {
        messages.push(json!({"role": "assistant", "content": text(rng)}));
        messages.push(json!({"role": "user", "content": text(rng)}));
    }
    let mut body = json!({"model": "demo/echo", "messages": messages});
    let optional: [(&str, Value); 9] = [
        ("temperature", json!(0.7)),
        ("top_p", json!(0.9)),
        ("max_tokens", json!(1 + rng.below(100))),
        ("stream", json!(rng.chance(50))),
        ("stop", json!(["\n\n", "END"])),
        ("seed", json!(rng.next_u64() as i64)),
        ("user", json!("student-42")),
        ("metadata", json!({"course": "cs101"})),
        ("presence_penalty", json!(-0.5)),
    ];
    for (key, value) in optional {
        if rng.chance(25) {
            body[key] = value;
        }
    }
    body
}

fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes).is_ok()
}

/// Byte-level damage to a valid body: a cut, a deletion, a stray structural character, a random
/// byte, a repeated slice or a swap (or several).
fn damage(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    let rounds = if rng.chance(20) { 2 + rng.below(4) } else { 1 };
    for _ in 0..rounds {
        let len = bytes.len();
        if len < 2 {
            break;
        }
        match rng.below(6) {
            0 => bytes.truncate(1 + rng.below(len - 1)),
            1 => {
                let at = rng.below(len);
                let n = (1 + rng.below(4)).min(len - at);
                bytes.drain(at..at + n);
            }
            2 => {
                let at = rng.below(len + 1);
                bytes.insert(at, *rng.pick(b"{}[]:,\"\\ \x00-.e"));
            }
            3 => {
                let at = rng.below(len);
                bytes[at] = rng.below(256) as u8;
            }
            4 => {
                let from = rng.below(len);
                let n = (1 + rng.below(20)).min(len - from);
                let slice = bytes[from..from + n].to_vec();
                let at = rng.below(len + 1);
                bytes.splice(at..at, slice);
            }
            _ => {
                let (a, b) = (rng.below(len), rng.below(len));
                bytes.swap(a, b);
            }
        }
    }
    bytes
}

/// Byte sequences that are never valid UTF-8.
const BAD_UTF8: &[&[u8]] = &[
    b"\x80",
    b"\xbf",
    b"\xc0\x80",
    b"\xc1\xbf",
    b"\xe0\x80\x80",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xfe",
    b"\xff",
    b"\xc3",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xc3\x28",
];

/// A valid body with an invalid UTF-8 sequence put inside one of its strings (or anywhere).
fn bad_utf8(rng: &mut Rng) -> Vec<u8> {
    let mut bytes = valid_chat(rng).to_string().into_bytes();
    let quotes: Vec<usize> =
        bytes.iter().enumerate().filter(|(_, b)| **b == b'"').map(|(i, _)| i + 1).collect();
    let at = if rng.chance(80) { *rng.pick(&quotes) } else { rng.below(bytes.len() + 1) };
    let bad = *rng.pick(BAD_UTF8);
    bytes.splice(at..at, bad.iter().copied());
    bytes
}

/// Nesting deeper than serde_json's limit of 128, at the top or inside the body, closed or not.
fn too_deep(rng: &mut Rng) -> Vec<u8> {
    let depth = if rng.chance(70) {
        129 + rng.below(400)
    } else {
        *rng.pick(&[1_000, 4_096, 20_000, 100_000])
    };
    let open = |rng: &mut Rng| if rng.chance(50) { "[" } else { "{\"k\":" };
    let mut opened = Vec::with_capacity(depth);
    let mut nest = String::with_capacity(depth * 6);
    for _ in 0..depth {
        let o = open(rng);
        nest.push_str(o);
        opened.push(o);
    }
    nest.push('1');
    if rng.chance(80) {
        for o in opened.iter().rev() {
            nest.push(if *o == "[" { ']' } else { '}' });
        }
    }
    let body = match rng.below(4) {
        0 => nest,
        1 => format!(
            r#"{{"model":"demo/echo","messages":[{{"role":"user","content":"hi"}}],"metadata":{{"x":{nest}}}}}"#
        ),
        2 => format!(r#"{{"model":"demo/echo","messages":[{{"role":"user","content":{nest}}}]}}"#),
        _ => format!(r#"{{"model":"demo/echo","messages":{nest}}}"#),
    };
    body.into_bytes()
}

/// Number literals serde_json cannot take: out of f64's range or not JSON numbers at all.
fn bad_number(rng: &mut Rng) -> Vec<u8> {
    let huge = format!("1{}", "0".repeat(310 + rng.below(5000)));
    let literals = [
        "1e400".to_string(),
        "-1e400".into(),
        "1.5e99999".into(),
        huge.clone(),
        format!("-{huge}"),
        format!("{huge}.5"),
        "NaN".into(),
        "Infinity".into(),
        "-Infinity".into(),
        "01".into(),
        "1.".into(),
        ".5".into(),
        "+1".into(),
        "0x10".into(),
        "1e".into(),
        "1e+".into(),
        "--1".into(),
        "1_000".into(),
        "１".into(),
        "1.2.3".into(),
    ];
    let literal = rng.pick(&literals).clone();
    let field = *rng.pick(&["max_tokens", "temperature", "seed", "top_p", "n"]);
    format!(r#"{{"model":"demo/echo","messages":[{{"role":"user","content":"hi"}}],"{field}":{literal}}}"#)
        .into_bytes()
}

/// Hand-written syntax errors of the kinds parsers disagree on.
fn syntax_oddities() -> Vec<Vec<u8>> {
    let ok = r#"{"model":"demo/echo","messages":[{"role":"user","content":"hi"}]}"#;
    let mut bodies: Vec<Vec<u8>> = [
        r#"{"model":"demo/echo","messages":[{"role":"user","content":"hi"}],}"#.to_string(),
        r#"{"model":"demo/echo","messages":[{"role":"user","content":"hi"},]}"#.into(),
        r#"{'model':'demo/echo','messages':[{'role':'user','content':'hi'}]}"#.into(),
        r#"{model:"demo/echo",messages:[{role:"user",content:"hi"}]}"#.into(),
        format!("// comment\n{ok}"),
        format!("/* c */{ok}"),
        format!("{ok} x"),
        format!("{ok}{ok}"),
        format!("{ok}]"),
        format!("x{ok}"),
        r#"{"model":"demo/echo","messages":[{"role":"user","content":"hi}]}"#.into(),
        r#"{"model":"demo/echo","messages":[{"role":"user","content":"a\x41"}]}"#.into(),
        r#"{"model":"demo/echo","messages":[{"role":"user","content":"\u12"}]}"#.into(),
        r#"{"model":"demo/echo","messages":[{"role":"user","content":"\uZZZZ"}]}"#.into(),
        r#"{"model":"demo/echo","messages":[{"role":"user","content":"\ud800"}]}"#.into(),
        r#"{"model":"demo/echo","messages":[{"role":"user","content":"\udc00"}]}"#.into(),
        r#"{"model":"demo/echo","messages":[{"role":"user","content":"\ud800\u0041"}]}"#.into(),
        "{\"model\":\"demo/echo\",\"messages\":[{\"role\":\"user\",\"content\":\"a\u{1}b\"}]}"
            .into(),
        "{\"model\":\"demo/echo\",\"messages\":[{\"role\":\"user\",\"content\":\"a\nb\"}]}".into(),
        r#"{"model":"demo/echo","messages":[{"role":"user","content":"hi"}]"#.into(),
        r#"{"model":"demo/echo","messages":[{"role":"user","content":"hi"}"#.into(),
        r#"{"model":"demo/echo" "messages":[]}"#.into(),
        r#"{"model"::"demo/echo"}"#.into(),
        r#"{"model":"demo/echo",,"messages":[]}"#.into(),
        r#"{"model":undefined}"#.into(),
        r#"{"model":True}"#.into(),
        r#"{"model":nul}"#.into(),
        r#"{"model":"demo/echo","messages":[{"role":"user","content":"hi"}],"stream":tru}"#.into(),
        "[".into(),
        "{".into(),
        "\"".into(),
        "]".into(),
        "}".into(),
        ":".into(),
        " \t\r\n ".into(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend_from_slice(ok.as_bytes());
    bodies.push(bom);
    let mut utf16 = vec![0xff, 0xfe];
    for unit in ok.encode_utf16() {
        utf16.extend_from_slice(&unit.to_le_bytes());
    }
    bodies.push(utf16);
    bodies.push(b"{\"model\":\"demo/echo\"\x00}".to_vec());
    bodies
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Str,
    Int,
    Float,
    Bool,
    Arr,
    Obj,
}

const KINDS: [Kind; 6] = [Kind::Str, Kind::Int, Kind::Float, Kind::Bool, Kind::Arr, Kind::Obj];

fn value_of(rng: &mut Rng, kind: Kind, depth: usize) -> Value {
    let any = |rng: &mut Rng, depth: usize| {
        let kind = *rng.pick(&KINDS);
        if depth >= 3 {
            json!(rng.below(10))
        } else {
            value_of(rng, kind, depth + 1)
        }
    };
    match kind {
        Kind::Str => match rng.below(4) {
            0 => json!(""),
            1 => json!("x".repeat(rng.below(5000))),
            _ => json!(text(rng)),
        },
        Kind::Int => json!(*rng.pick(&[0, 1, -1, 7, i64::MAX, i64::MIN, 4_294_967_296])),
        Kind::Float => json!(*rng.pick(&[0.5, -3.25, 1.5e-300, 12_345.678, -0.000_1])),
        Kind::Bool => json!(rng.chance(50)),
        Kind::Arr => Value::Array((0..rng.below(4)).map(|_| any(rng, depth)).collect()),
        Kind::Obj => {
            let mut map = Map::new();
            for i in 0..rng.below(4) {
                map.insert(format!("k{i}"), any(rng, depth));
            }
            Value::Object(map)
        }
    }
}

/// A random value of one of `kinds`.
fn random_of(rng: &mut Rng, kinds: &[Kind]) -> Value {
    let kind = *rng.pick(kinds);
    value_of(rng, kind, 0)
}

/// The chat fields, the kinds of value each accepts and, for numbers, the bounds that the
/// values in `outside` break.
struct FieldSpec {
    name: &'static str,
    accepts: &'static [Kind],
    outside: &'static [&'static str],
}

const INTEGER: &[Kind] = &[Kind::Int];
const NUMBER: &[Kind] = &[Kind::Int, Kind::Float];
const STRING: &[Kind] = &[Kind::Str];
const BOOLEAN: &[Kind] = &[Kind::Bool];
const OBJECT: &[Kind] = &[Kind::Obj];
const ARRAY: &[Kind] = &[Kind::Arr];

const CHAT_FIELDS: &[FieldSpec] = &[
    FieldSpec { name: "model", accepts: STRING, outside: &[] },
    FieldSpec { name: "messages", accepts: ARRAY, outside: &[] },
    FieldSpec {
        name: "max_tokens",
        accepts: INTEGER,
        outside: &["0", "-1", "4294967296", "1e30", "123456789012345678901234567890", "-1e300"],
    },
    FieldSpec {
        name: "max_completion_tokens",
        accepts: INTEGER,
        outside: &["0", "-5", "18446744073709551615", "1e19"],
    },
    FieldSpec {
        name: "temperature",
        accepts: NUMBER,
        outside: &["-0.001", "2.0001", "1e308", "-1e308", "3", "1.7976931348623157e308"],
    },
    FieldSpec { name: "top_p", accepts: NUMBER, outside: &["1.01", "-1", "1e300", "-5e-324"] },
    FieldSpec { name: "top_k", accepts: NUMBER, outside: &["-1", "1e20", "4294967296"] },
    FieldSpec { name: "frequency_penalty", accepts: NUMBER, outside: &["2.5", "-2.5", "-1e300"] },
    FieldSpec { name: "presence_penalty", accepts: NUMBER, outside: &["-3", "1e300"] },
    FieldSpec { name: "repetition_penalty", accepts: NUMBER, outside: &["-0.1", "2.5"] },
    FieldSpec { name: "stop", accepts: &[Kind::Str, Kind::Arr], outside: &[] },
    FieldSpec {
        name: "seed",
        accepts: INTEGER,
        outside: &["18446744073709551615", "1e19", "-1e19", "99999999999999999999"],
    },
    FieldSpec { name: "logprobs", accepts: BOOLEAN, outside: &[] },
    FieldSpec { name: "top_logprobs", accepts: INTEGER, outside: &["21", "-1", "1e10"] },
    FieldSpec { name: "logit_bias", accepts: OBJECT, outside: &[] },
    FieldSpec { name: "response_format", accepts: OBJECT, outside: &[] },
    FieldSpec { name: "modalities", accepts: ARRAY, outside: &[] },
    FieldSpec { name: "audio", accepts: OBJECT, outside: &[] },
    FieldSpec { name: "tools", accepts: ARRAY, outside: &[] },
    FieldSpec { name: "tool_choice", accepts: &[Kind::Str, Kind::Obj], outside: &[] },
    FieldSpec { name: "parallel_tool_calls", accepts: BOOLEAN, outside: &[] },
    FieldSpec { name: "reasoning", accepts: OBJECT, outside: &[] },
    FieldSpec { name: "web_search_options", accepts: OBJECT, outside: &[] },
    FieldSpec { name: "stream", accepts: BOOLEAN, outside: &[] },
    FieldSpec { name: "stream_options", accepts: OBJECT, outside: &[] },
    FieldSpec { name: "user", accepts: STRING, outside: &[] },
    FieldSpec { name: "metadata", accepts: OBJECT, outside: &[] },
];

/// Raw JSON text of `body` with `field` set to the literal `value` (added at the end).
fn with_literal(body: &Value, field: &str, value: &str) -> Vec<u8> {
    let mut body = body.clone();
    if let Some(map) = body.as_object_mut() {
        map.remove(field);
    }
    let text = body.to_string();
    let head = &text[..text.len() - 1];
    format!("{head},\"{field}\":{value}}}").into_bytes()
}

/// Valid JSON that breaks the chat schema in exactly one generated way, with the answer the
/// gateway must give: (body, status, message prefix).
fn schema_violation(rng: &mut Rng) -> (Vec<u8>, u16, String) {
    let mut body = valid_chat(rng);
    let n_messages = body["messages"].as_array().map_or(1, Vec::len);
    let i = rng.below(n_messages);
    let at = format!("messages[{i}]");
    let set = |body: &mut Value, key: &str, v: Value| body[key] = v;
    match rng.below(12) {
        // A value of a kind the field does not take.
        0..=3 => {
            let spec = rng.pick(CHAT_FIELDS);
            let wrong: Vec<Kind> =
                KINDS.iter().copied().filter(|k| !spec.accepts.contains(k)).collect();
            let kind = *rng.pick(&wrong);
            let value = value_of(rng, kind, 0);
            set(&mut body, spec.name, value);
            (body.to_string().into_bytes(), 400, format!("invalid type for '{}'", spec.name))
        }
        // A number outside its bounds.
        4 | 5 => {
            let specs: Vec<&FieldSpec> =
                CHAT_FIELDS.iter().filter(|s| !s.outside.is_empty()).collect();
            let spec = *rng.pick(&specs);
            let literal = *rng.pick(spec.outside);
            (
                with_literal(&body, spec.name, literal),
                400,
                format!("'{}' must be between", spec.name),
            )
        }
        // A field no version of the API has.
        6 => {
            let key = format!(
                "{}{}",
                rng.pick(&["x_", "", "Model", "messages ", "__proto__", "ü"]),
                rng.below(1000)
            );
            set(&mut body, &key, random_of(rng, &KINDS));
            (body.to_string().into_bytes(), 400, format!("unknown field: '{key}'"))
        }
        // A required field missing or empty.
        7 => {
            let (key, message) = match rng.below(4) {
                0 => ("model", "field required: 'model'"),
                1 => ("messages", "field required: 'messages'"),
                2 => ("model", "'model' must not be empty"),
                _ => ("messages", "'messages' must not be empty"),
            };
            let map = body.as_object_mut().expect("object");
            if message.starts_with("field") {
                if rng.chance(50) {
                    map.remove(key);
                } else {
                    map.insert(key.into(), Value::Null);
                }
            } else {
                map.insert(key.into(), if key == "model" { json!("") } else { json!([]) });
            }
            (body.to_string().into_bytes(), 400, message.into())
        }
        // A broken message.
        8 | 9 => {
            let message = &mut body["messages"][i];
            let expected = match rng.below(8) {
                0 => {
                    let kinds = [Kind::Str, Kind::Int, Kind::Float, Kind::Bool, Kind::Arr];
                    *message = random_of(rng, &kinds);
                    format!("invalid type for '{at}': expected object")
                }
                1 => {
                    message.as_object_mut().expect("object").remove("role");
                    format!("field required: '{at}.role'")
                }
                2 => {
                    message["role"] = json!(rng.pick(&["", "User", "bot", "function", "root"]));
                    format!("invalid value for '{at}.role'")
                }
                3 => {
                    message["role"] = random_of(rng, &[Kind::Int, Kind::Bool, Kind::Obj]);
                    format!("invalid type for '{at}.role'")
                }
                4 => {
                    let kinds = [Kind::Int, Kind::Float, Kind::Bool, Kind::Obj];
                    message["content"] = random_of(rng, &kinds);
                    format!("invalid type for '{at}.content'")
                }
                5 => {
                    message.as_object_mut().expect("object").remove("content");
                    format!("field required: '{at}.content'")
                }
                6 => {
                    message[format!("extra{}", rng.below(100))] = json!(1);
                    format!("unknown field: '{at}.extra")
                }
                _ => {
                    // Nested arrays where a message should be, within serde's depth limit.
                    let depth = 1 + rng.below(100);
                    let mut v = json!("x");
                    for _ in 0..depth {
                        v = json!([v]);
                    }
                    *message = v;
                    format!("invalid type for '{at}': expected object")
                }
            };
            (body.to_string().into_bytes(), 400, expected)
        }
        // A model that is not in the catalog.
        10 => {
            let long = "m".repeat(10_000);
            let model = rng
                .pick(&[
                    "demo/echo ",
                    "DEMO/ECHO",
                    " demo/echo",
                    "../demo/echo",
                    "demo/",
                    "日本/語",
                    "demo%2Fecho",
                    &long,
                ])
                .to_string();
            set(&mut body, "model", json!(model));
            (
                body.to_string().into_bytes(),
                404,
                format!("Model '{}", &model[..model.len().min(20)]),
            )
        }
        // Not an object at all.
        _ => {
            let kinds = [Kind::Str, Kind::Int, Kind::Float, Kind::Bool, Kind::Arr];
            let mut value = random_of(rng, &kinds);
            if rng.chance(10) {
                value = Value::Null;
            }
            (value.to_string().into_bytes(), 400, "invalid type for 'body': expected object".into())
        }
    }
}

/// The body-level hostile cases that apply to any JSON endpoint, mutated from `valid`.
fn generic_cases(
    rng: &mut Rng,
    target: &Target,
    path: &str,
    method: &'static str,
    valid: &Value,
    n: usize,
    headers: &[(String, String)],
) -> Vec<Case> {
    let mut cases = Vec::new();
    let oddities = syntax_oddities();
    while cases.len() < n {
        let (class, body) = match rng.below(5) {
            0 | 1 => ("damaged", damage(rng, valid.to_string().into_bytes())),
            2 => {
                let mut bytes = valid.to_string().into_bytes();
                let at = rng.below(bytes.len() + 1);
                bytes.splice(at..at, rng.pick(BAD_UTF8).iter().copied());
                ("invalid UTF-8", bytes)
            }
            3 => ("too deep", too_deep(rng)),
            _ => ("syntax", rng.pick(&oddities).clone()),
        };
        if is_json(&body) || body.is_empty() {
            continue;
        }
        let mut case = target.post(class, path, body, 400, "invalid JSON: ");
        case.method = method;
        case.headers = headers.to_vec();
        cases.push(case);
    }
    let mut non_object =
        target.post("not an object", path, b"[1,2]".to_vec(), 400, "invalid type for 'body'");
    non_object.method = method;
    non_object.headers = headers.to_vec();
    cases.push(non_object);
    let mut empty = target.post("empty", path, Vec::new(), 400, "request body is empty");
    empty.method = method;
    empty.headers = headers.to_vec();
    cases.push(empty);
    let mut wrong_type = target.post(
        "content type",
        path,
        valid.to_string().into_bytes(),
        400,
        "Content-Type must be application/json",
    );
    wrong_type.method = method;
    wrong_type.headers = headers.iter().filter(|(k, _)| k != "Content-Type").cloned().collect();
    wrong_type.headers.push(("Content-Type".into(), "text/plain".into()));
    cases.push(wrong_type);
    cases
}

/// Row counts of every table a request could add to, to show that nothing was created.
fn table_counts(app: &TestApp) -> Vec<(&'static str, i64)> {
    [
        "institutions",
        "license_types",
        "licenses",
        "api_keys",
        "usage",
        "ledger_entries",
        "models",
        "model_prices",
    ]
    .into_iter()
    .map(|t| (t, app.query_i64(&format!("SELECT COUNT(*) FROM {t}"), [])))
    .collect()
}

/// The attacked license was charged nothing and holds nothing; then the gateway still serves
/// a real request.
async fn assert_unharmed(app: &TestApp, seeded: &Seeded) {
    let b = books(&app.db(), &seeded.license_id);
    assert_eq!(
        (b.usage_rows, b.usage_sum, b.used, b.debits, b.grants, b.available),
        (0, 0, 0, 0, BALANCE, Some(BALANCE)),
        "the hostile license's books changed"
    );
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], BALANCE);
    assert_nothing_held(app, &seeded.license_id, BALANCE).await;
    assert_still_serving(app).await;
}

async fn assert_still_serving(app: &TestApp) {
    let health = app.raw("GET", "/health", &[], None).await;
    assert_eq!(health.status(), 200, "{}", health.text);
    let fresh = app.seed_license(Some(100_000)).await;
    let r = app.chat(&fresh.key, &chat_body("still there?")).await;
    assert_eq!(r.status(), 200, "{}", r.text);
}

// =============================================================================================
// Tests through the HTTP client

/// About 2,700 generated chat bodies: damaged bytes, invalid UTF-8, nesting past the parser's
/// limit, numbers out of range, syntax oddities, and valid JSON that breaks the schema in one
/// generated way (wrong types, out of range, unknown or missing fields, broken messages, unknown
/// models, non-objects), plus content types, empty bodies, bad keys, paths and methods.
#[actix_web::test]
async fn thousands_of_malformed_chat_requests_are_4xx_envelopes_and_cost_nothing() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    let target = Target { key: seeded.key.clone() };
    let seed = seed();
    let mut rng = Rng::new(seed);
    let mut cases = Vec::new();

    let push_invalid = |cases: &mut Vec<Case>, class, body: Vec<u8>| {
        if !body.is_empty() && !is_json(&body) {
            cases.push(target.chat(class, body, 400, "invalid JSON: "));
        }
    };
    for _ in 0..800 {
        let body = valid_chat(&mut rng).to_string().into_bytes();
        push_invalid(&mut cases, "damaged", damage(&mut rng, body));
    }
    for _ in 0..300 {
        push_invalid(&mut cases, "invalid UTF-8", bad_utf8(&mut rng));
    }
    for _ in 0..150 {
        push_invalid(&mut cases, "too deep", too_deep(&mut rng));
    }
    for _ in 0..150 {
        push_invalid(&mut cases, "bad number", bad_number(&mut rng));
    }
    for body in syntax_oddities() {
        push_invalid(&mut cases, "syntax", body);
    }
    for _ in 0..1000 {
        let (body, status, message) = schema_violation(&mut rng);
        assert!(is_json(&body), "the generator made invalid JSON: {}", preview(&body));
        cases.push(target.chat("schema", body, status, &message));
    }
    let hi = chat_body("hi").to_string().into_bytes();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
        Some("application/json-patch+json"),
        Some("json"),
        Some(""),
        Some("application/ json"),
        Some("text/json"),
    ] {
        let mut case = target.chat("content type", hi.clone(), 400, "Content-Type must be");
        case.headers.retain(|(k, _)| k != "Content-Type");
        if let Some(ct) = content_type {
            case.headers.push(("Content-Type".into(), ct.into()));
        }
        cases.push(case);
    }
    cases.push(target.chat("empty", Vec::new(), 400, "request body is empty"));
    // Bad credentials are refused before the body is looked at.
    let long_key = format!("sk-quantized-{}", "a".repeat(8000));
    for auth in [
        String::new(),
        "Bearer".into(),
        "Bearer ".into(),
        format!("Bearer {}x", seeded.key),
        format!("bearer{}", seeded.key),
        format!("Basic {}", seeded.key),
        format!("Bearer {long_key}"),
        "Bearer sk-quantized-".into(),
        "Bearer \t".into(),
        format!("Bearer {} {}", seeded.key, seeded.key),
    ] {
        let body = valid_chat(&mut rng).to_string().into_bytes();
        let mut case = target.chat("bad key", body, 401, "Invalid API key");
        case.headers.retain(|(k, _)| k != "Authorization");
        if !auth.is_empty() {
            case.headers.push(("Authorization".into(), auth));
        }
        cases.push(case);
    }
    // A forced provider that is unknown, or one that does not serve demo/echo.
    for (provider, status, message) in [
        ("nonexistent", 400, "Unknown provider 'nonexistent'"),
        ("", 400, "Unknown provider ''"),
        ("DEMO", 400, "Unknown provider 'DEMO'"),
        ("exa", 400, "Provider 'exa' does not support this endpoint"),
        ("openrouter", 404, "Model 'demo/echo' not found"),
        ("anthropic", 404, "Model 'demo/echo' not found"),
    ] {
        let mut case = target.chat("forced provider", hi.clone(), status, message);
        case.headers.push(("X-Quantized-Provider".into(), provider.into()));
        cases.push(case);
    }
    // Paths that do not exist and methods a resource does not take.
    for _ in 0..120 {
        let segment: String =
            (0..1 + rng.below(60)).map(|_| format!("%{:02X}", rng.below(256))).collect();
        let path = match rng.below(5) {
            0 => format!("/v1/{segment}"),
            1 => format!("/v1/chat/completions/{segment}"),
            2 => format!("/{}", "a/".repeat(1 + rng.below(2000))),
            3 => format!("/admin/v1/nothing/{segment}"),
            _ => format!("/v2/chat/completions?{segment}"),
        };
        let mut case = target.chat("no route", hi.clone(), 404, "No route for POST");
        case.path = path;
        cases.push(case);
    }
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"] {
        let mut case = target.chat("method", hi.clone(), 405, "Method not allowed");
        case.method = method;
        cases.push(case);
    }
    let before = table_counts(&app);

    let sent = refuse_all(&app, seed, cases).await;

    assert_eq!(table_counts(&app), before, "a hostile request created something");
    assert_unharmed(&app, &seeded).await;
    eprintln!(
        "hostile chat bodies (seed {seed}): {sent:?}, total {}",
        sent.values().sum::<usize>()
    );
}

/// (name, method, path, a valid body, the headers to send).
type Endpoint<'a> = (&'static str, &'static str, String, Value, &'a [(String, String)]);

/// The same damage against every other endpoint that reads a JSON body, the admin API's too:
/// nothing is created, changed or charged.
#[actix_web::test]
async fn malformed_bodies_on_every_json_endpoint_are_400_envelopes_and_change_nothing() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    let target = Target { key: seeded.key.clone() };
    let seed = seed() ^ 0xE4D;
    let mut rng = Rng::new(seed);
    let user = target.headers();
    let admin = vec![
        ("Authorization".into(), format!("Bearer {ADMIN_TOKEN}")),
        ("Content-Type".into(), "application/json".into()),
    ];
    let id = &seeded.license_id;
    let endpoints: Vec<Endpoint> = vec![
        (
            "responses",
            "POST",
            "/v1/responses".into(),
            json!({"model": "demo/echo", "input": "hello there"}),
            &user,
        ),
        (
            "embeddings",
            "POST",
            "/v1/embeddings".into(),
            json!({"model": "demo/embed", "input": ["a", "b"]}),
            &user,
        ),
        (
            "institutions",
            "POST",
            "/admin/v1/institutions".into(),
            json!({"alias": "evil-u", "name": "Evil"}),
            &admin,
        ),
        (
            "license types",
            "POST",
            "/admin/v1/license-types".into(),
            json!({"alias": "evil-t", "name": "E", "institution": seeded.institution, "default_micro_credits": 5}),
            &admin,
        ),
        (
            "licenses",
            "POST",
            "/admin/v1/licenses".into(),
            json!({"institution": seeded.institution, "license_type": seeded.license_type, "micro_credits": 5}),
            &admin,
        ),
        (
            "credits",
            "POST",
            format!("/admin/v1/licenses/{id}/credits"),
            json!({"micro_credits": 1_000_000, "note": "free money"}),
            &admin,
        ),
        (
            "models",
            "PUT",
            "/admin/v1/models/demo%2Fecho".into(),
            json!({"name": "Hijacked", "input_cost_per_micro_credit": "0", "output_cost_per_micro_credit": "0", "routes": [{"provider": "demo", "upstream_model": "echo"}]}),
            &admin,
        ),
        (
            "prices",
            "PUT",
            format!("/admin/v1/license-types/{}/prices/demo%2Fecho", seeded.license_type),
            json!({"input_cost_per_micro_credit": "0", "output_cost_per_micro_credit": "0"}),
            &admin,
        ),
    ];
    let mut cases = Vec::new();
    for (_, method, path, valid, headers) in &endpoints {
        cases.extend(generic_cases(&mut rng, &target, path, method, valid, 70, headers));
    }
    let before = table_counts(&app);
    let prices_before =
        app.query_i64("SELECT input_price + output_price FROM models WHERE id = 'demo/echo'", []);

    let sent = refuse_all(&app, seed, cases).await;

    assert_eq!(table_counts(&app), before, "a hostile request created something");
    assert_eq!(
        app.query_i64("SELECT input_price + output_price FROM models WHERE id = 'demo/echo'", []),
        prices_before
    );
    assert_unharmed(&app, &seeded).await;
    eprintln!(
        "hostile bodies on {} endpoints (seed {seed}): {sent:?}, total {}",
        endpoints.len(),
        sent.values().sum::<usize>()
    );
}

/// JSON with a key given twice is ambiguous (parsers differ on which one wins), so the issue
/// asks for a 4xx; the gateway must not guess, and must not bill a request it had to guess at.
#[actix_web::test]
async fn duplicate_keys_are_refused_and_cost_nothing() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    let target = Target { key: seeded.key.clone() };
    let msg = r#"{"role":"user","content":"hi"}"#;
    let bodies = [
        format!(r#"{{"model":"demo/echo","model":"demo/echo","messages":[{msg}]}}"#),
        format!(r#"{{"model":"openai/gpt-4.1-mini","model":"demo/echo","messages":[{msg}]}}"#),
        format!(r#"{{"model":"demo/echo","messages":[{msg}],"messages":[{msg}]}}"#),
        format!(r#"{{"model":"demo/echo","messages":[{msg}],"max_tokens":1,"max_tokens":16}}"#),
        format!(r#"{{"model":"demo/echo","messages":[{msg}],"stream":true,"stream":false}}"#),
        r#"{"model":"demo/echo","messages":[{"role":"user","role":"user","content":"hi"}]}"#.into(),
        r#"{"model":"demo/echo","messages":[{"role":"system","role":"user","content":"hi"}]}"#
            .into(),
        r#"{"model":"demo/echo","messages":[{"role":"user","content":"a","content":"b"}]}"#.into(),
    ];
    let cases = bodies
        .into_iter()
        .map(|b| target.chat("duplicate keys", b.into_bytes(), 400, ""))
        .collect();
    refuse_all(&app, 0, cases).await;
    assert_unharmed(&app, &seeded).await;
}

/// Bodies over `max_bytes` are 413 whether they declare their length or arrive chunked, and
/// a declared length over the limit is refused before any byte of the body is read.
#[actix_web::test]
async fn oversized_bodies_are_413_envelopes_and_cost_nothing() {
    const LIMIT: usize = 64 * 1024;
    let app = spawn_app_with(|s| s.limits.max_body_bytes = LIMIT).await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    let target = Target { key: seeded.key.clone() };
    let too_large = format!("Request body too large: the limit is {LIMIT} bytes");
    let padded = |size: usize| {
        let head = r#"{"model":"demo/echo","messages":[{"role":"user","content":""#;
        let tail = r#""}]}"#;
        let mut body = head.as_bytes().to_vec();
        body.resize(size - tail.len(), b'a');
        body.extend_from_slice(tail.as_bytes());
        body
    };
    let mut cases = Vec::new();
    for size in [LIMIT + 1, LIMIT + 2, 2 * LIMIT, 8 * LIMIT] {
        cases.push(target.chat("oversized", padded(size), 413, &too_large));
        cases.push(target.post("oversized", "/v1/responses", padded(size), 413, &too_large));
        let mut admin =
            target.post("oversized", "/admin/v1/institutions", padded(size), 413, &too_large);
        admin.headers[0].1 = format!("Bearer {ADMIN_TOKEN}");
        cases.push(admin);
    }
    let sent = refuse_all(&app, 0, cases).await;

    let port = port_of(&app);
    let key = seeded.key.clone();
    let raw = actix_web::rt::task::spawn_blocking(move || {
        let mut outcomes = Vec::new();
        // Chunked: no length to check up front; refused while reading.
        for size in [LIMIT + 1, 3 * LIMIT] {
            let body = {
                let mut b = b"{\"model\":\"demo/echo\",\"x\":\"".to_vec();
                b.resize(size, b'a');
                b
            };
            let mut request =
                head("POST", "/v1/chat/completions", &key, &[("Transfer-Encoding", "chunked")]);
            for chunk in body.chunks(4000) {
                request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                request.extend_from_slice(chunk);
                request.extend_from_slice(b"\r\n");
            }
            request.extend_from_slice(b"0\r\n\r\n");
            outcomes.push(("chunked", exchange(port, &request)));
        }
        // A declared length far beyond the limit, with no body behind it.
        for declared in ["65537", "1000000000000", "9223372036854775807"] {
            let request =
                head("POST", "/v1/chat/completions", &key, &[("Content-Length", declared)]);
            outcomes.push(("declared", exchange(port, &request)));
        }
        outcomes
    })
    .await
    .expect("raw cases ran");
    for (what, outcome) in raw {
        let responses = outcome.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(responses.len(), 1, "{what}: {responses:?}");
        assert_eq!(responses[0].status, 413, "{what}: {responses:?}");
        assert_eq!(envelope_message(&responses[0].text()).expect("envelope"), too_large);
    }
    assert_unharmed(&app, &seeded).await;
    eprintln!("oversized: {sent:?} through the client, 5 over raw sockets");
}

// =============================================================================================
// Raw sockets: what an HTTP client library would never send

#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn port_of(app: &TestApp) -> u16 {
    app.address.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port")
}

/// A request head for the gateway with the caller's key, `Connection: close` and `extra`
/// headers (no body).
fn head(method: &str, path: &str, key: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nConnection: close\r\n"
    );
    for (k, v) in extra {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

/// Writes `request` on a new connection and reads until the server closes it; returns every
/// response in what was read. A write the server cut short is not an error (it may answer
/// before reading everything); a server that never closes the connection is.
fn exchange(port: u16, request: &[u8]) -> Result<Vec<RawResponse>, String> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    if let Err(e) = stream.write_all(request) {
        if !matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) {
            return Err(format!("write: {e}"));
        }
    }
    let read = read_to_close(&mut stream)?;
    parse_responses(&read)
}

fn read_to_close(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut read = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(read),
            Ok(n) => read.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(read),
            Err(e) => {
                return Err(format!(
                    "read: {e} (the server kept the connection open); got {}",
                    preview(&read)
                ))
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_responses(mut buf: &[u8]) -> Result<Vec<RawResponse>, String> {
    let mut responses = Vec::new();
    while !buf.is_empty() {
        let end = find(buf, b"\r\n\r\n").ok_or_else(|| format!("no head in {}", preview(buf)))?;
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf = &buf[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let get = |name: &str| {
            headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
        };
        let body = if let Some(len) = get("content-length") {
            let len: usize = len.parse().map_err(|_| format!("bad content-length {len}"))?;
            let len = len.min(buf.len());
            let body = buf[..len].to_vec();
            buf = &buf[len..];
            body
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = find(buf, b"\r\n").ok_or("unterminated chunk size")?;
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16)
                        .map_err(|e| format!("chunk size: {e}"))?;
                buf = &buf[line_end + 2..];
                if size == 0 {
                    buf = &buf[buf.len().min(2)..];
                    break;
                }
                let size = size.min(buf.len());
                body.extend_from_slice(&buf[..size]);
                buf = &buf[(size + 2).min(buf.len())..];
            }
            body
        } else if status == 204 || status == 304 {
            Vec::new()
        } else {
            let body = buf.to_vec();
            buf = &[];
            body
        };
        responses.push(RawResponse { status, headers, body });
    }
    Ok(responses)
}

/// What a raw case must get back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// The gateway's envelope with this status.
    Envelope(u16),
    /// A rejection by the HTTP layer (before any handler ran): this status, any body.
    Protocol(u16),
    /// Any 4xx: the envelope if the body is JSON; or the connection closed with no answer.
    AnyClientError,
}

fn judge(answer: Answer, responses: &[RawResponse]) -> Result<String, String> {
    let Some(first) = responses.first() else {
        return if answer == Answer::AnyClientError {
            Ok("closed".into())
        } else {
            Err("the connection closed without an answer".into())
        };
    };
    if responses.len() != 1 {
        return Err(format!("{} responses: {responses:?}", responses.len()));
    }
    let json = first.header("content-type").is_some_and(|c| c.contains("json"));
    let ours = if json {
        envelope_message(&first.text()).map_err(|e| format!("{}: {e}", first.status))?;
        true
    } else {
        false
    };
    let ok = match answer {
        Answer::Envelope(status) => ours && first.status == status,
        Answer::Protocol(status) => first.status == status,
        Answer::AnyClientError => (400..500).contains(&first.status),
    };
    if ok {
        Ok(format!("{} {}", first.status, if ours { "envelope" } else { "protocol" }))
    } else {
        Err(format!("expected {answer:?}, got {} {:?}", first.status, first.text()))
    }
}

/// Runs raw cases on 8 threads; returns a tally of what came back.
async fn run_raw(port: u16, cases: Vec<(String, Vec<u8>, Answer)>) -> BTreeMap<String, usize> {
    let total = cases.len();
    let mut chunks: Vec<Vec<(String, Vec<u8>, Answer)>> = (0..8).map(|_| Vec::new()).collect();
    for (i, case) in cases.into_iter().enumerate() {
        chunks[i % 8].push(case);
    }
    let handles = chunks.into_iter().map(|chunk| {
        actix_web::rt::task::spawn_blocking(move || {
            chunk
                .into_iter()
                .map(|(what, request, answer)| {
                    let judged = exchange(port, &request).and_then(|r| judge(answer, &r));
                    (what, request, judged)
                })
                .collect::<Vec<_>>()
        })
    });
    let mut tally = BTreeMap::new();
    let mut failures = Vec::new();
    for results in futures_util::future::join_all(handles).await {
        for (what, request, judged) in results.expect("raw cases ran") {
            match judged {
                Ok(kind) => *tally.entry(kind).or_insert(0) += 1,
                Err(e) => failures.push(format!("{what}: {e}\n    sent: {}", preview(&request))),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} raw requests were answered wrongly:\n{}",
        failures.len(),
        failures.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
    tally
}

/// Garbage request lines, broken framing, header floods, header values that are not UTF-8,
/// random bytes, and a pipeline of 100 bad requests on one connection.
#[actix_web::test]
async fn protocol_garbage_and_header_floods_get_4xx_and_the_server_stays_up() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    let key = seeded.key.clone();
    let seed = seed() ^ 0x9A4B;
    let mut rng = Rng::new(seed);
    let bad_body = b"{not json";
    let with_body = |mut head: Vec<u8>, body: &[u8]| {
        head.extend_from_slice(body);
        head
    };
    let cl = bad_body.len().to_string();
    let post = |extra: &[(&str, &str)]| {
        let mut headers = vec![("Content-Length", cl.as_str())];
        headers.extend_from_slice(extra);
        with_body(head("POST", "/v1/chat/completions", &key, &headers), bad_body)
    };
    let mut cases: Vec<(String, Vec<u8>, Answer)> = Vec::new();
    let mut add = |what: &str, request: Vec<u8>, answer: Answer| {
        cases.push((what.to_string(), request, answer))
    };

    // The baseline: a well-formed request with a bad body is our 400.
    add("baseline", post(&[]), Answer::Envelope(400));
    // Request lines the HTTP layer cannot parse.
    for line in [
        "GARBAGE",
        "GET",
        "GET /health",
        "GET /health HTTP/9.9",
        "GET /health HTTP/1.1 extra",
        "GET /health HTTX/1.1",
        "G\x00T /health HTTP/1.1",
        "GET /he\x7flth HTTP/1.1",
        "GET /v1/\u{fffd} HTTP/1.1",
        "GET  /health  HTTP/1.1",
        "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03",
        "PRI * HTTP/2.0",
        "GET /health HTTP/1.1\r\nHost: x\r\nBad Header: x",
        "GET /health HTTP/1.1\r\nHost: x\r\nNoColon",
        "GET /health HTTP/1.1\r\nHost: x\r\n folded: x",
        "GET /health HTTP/1.1\r\nHost: x\r\nX: a\x00b",
        "GET /health HTTP/1.1\r\nHost: x\r\n: empty-name",
        "GET /health HTTP/1.1",
    ] {
        add("request line", format!("{line}\r\n\r\n").into_bytes(), Answer::AnyClientError);
    }
    let mut raw_path =
        b"GET /v1/\xff\xfe\x80 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec();
    add("non-UTF-8 path", std::mem::take(&mut raw_path), Answer::AnyClientError);
    add(
        "100 KB path",
        format!("GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "a".repeat(100_000))
            .into_bytes(),
        Answer::AnyClientError,
    );
    // Framing that contradicts itself.
    for extra in [
        vec![("Transfer-Encoding", "chunked")],
        vec![("Transfer-Encoding", "gzip")],
        vec![("Transfer-Encoding", "chunked, gzip")],
        vec![("Content-Length", "5")],
        vec![("Content-Length", "-1")],
        vec![("Content-Length", "1e3")],
        vec![("Content-Length", "99999999999999999999999")],
        vec![("Content-Length", "0x9")],
    ] {
        let request = post(&extra);
        add(&format!("framing {extra:?}"), request, Answer::AnyClientError);
    }
    for chunks in [
        "zz\r\nabc\r\n0\r\n\r\n",
        "ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        "3;ext=\x01\r\nabc\r\n0\r\n\r\n",
        "3\r\nabcdef\r\n0\r\n\r\n",
        "-3\r\nabc\r\n0\r\n\r\n",
    ] {
        let request = with_body(
            head("POST", "/v1/chat/completions", &key, &[("Transfer-Encoding", "chunked")]),
            chunks.as_bytes(),
        );
        add(&format!("chunked {chunks:?}"), request, Answer::AnyClientError);
    }
    add(
        "HTTP/1.1 without Host",
        b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
        Answer::Protocol(400),
    );
    // Header floods: more headers than the HTTP layer takes, or more bytes.
    for n in [97, 128, 500, 3000] {
        let junk: Vec<(String, String)> =
            (0..n).map(|i| (format!("X-Junk-{i}"), "v".repeat(10))).collect();
        let extra: Vec<(&str, &str)> = junk.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        add(&format!("{n} headers"), post(&extra), Answer::Protocol(431));
    }
    let huge = "c".repeat(140_000);
    add("one 140 KB header", post(&[("Cookie", &huge)]), Answer::Protocol(431));
    let medium = "m".repeat(2_000);
    let many: Vec<(&str, &str)> = (0..80).map(|_| ("X-Medium", medium.as_str())).collect();
    add("80 headers of 2 KB", post(&many), Answer::Protocol(431));
    // Just under the limits the request is served — and refused by us for its body.
    let junk: Vec<(String, String)> =
        (0..85).map(|i| (format!("X-Junk-{i}"), "v".repeat(100))).collect();
    let extra: Vec<(&str, &str)> = junk.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    add("85 headers", post(&extra), Answer::Envelope(400));
    let auths: Vec<(&str, &str)> =
        (0..80).map(|_| ("Authorization", "Bearer sk-quantized-nope")).collect();
    let mut request = head("POST", "/v1/chat/completions", "sk-quantized-nope", &auths);
    request.splice(
        request.len() - 2..request.len() - 2,
        format!("Content-Length: {cl}\r\n").into_bytes(),
    );
    add("81 Authorization headers", with_body(request, bad_body), Answer::Envelope(401));
    // Header values that are not UTF-8 (obs-text): refused by us, politely.
    for (name, value, answer) in [
        ("Authorization", &b"Bearer sk-quantized-\xff\xfe\x80"[..], Answer::Envelope(401)),
        ("Content-Type", &b"application/json\xff"[..], Answer::Envelope(400)),
        ("X-Quantized-Provider", &b"open\xc3\x28router"[..], Answer::Envelope(400)),
        ("Content-Type", &b"\xe2\x82"[..], Answer::Envelope(400)),
    ] {
        let base = head("POST", "/v1/chat/completions", &key, &[("Content-Length", &cl)]);
        let mut request = base.clone();
        if name == "Authorization" {
            let text = String::from_utf8_lossy(&base)
                .replace(&format!("Authorization: Bearer {key}\r\n"), "");
            request = text.into_bytes();
        }
        if name == "Content-Type" {
            let text =
                String::from_utf8_lossy(&request).replace("Content-Type: application/json\r\n", "");
            request = text.into_bytes();
        }
        let mut line = format!("{name}: ").into_bytes();
        line.extend_from_slice(value);
        line.extend_from_slice(b"\r\n");
        let at = request.len() - 2;
        request.splice(at..at, line);
        add(&format!("non-UTF-8 {name}"), with_body(request, bad_body), answer);
    }
    // Random bytes as a request head, and a well-formed request with one byte changed.
    for _ in 0..150 {
        let n = 1 + rng.below(200);
        let mut bytes: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
        if matches!(bytes[0], b'\r' | b'\n') {
            bytes[0] = b'X';
        }
        bytes.extend_from_slice(b"\r\n\r\n");
        add("random head", bytes, Answer::AnyClientError);
    }
    let template = post(&[]);
    let head_end = find(&template, b"Content-Type").expect("template");
    for _ in 0..150 {
        let mut request = template.clone();
        let at = rng.below(head_end);
        request[at] = rng.below(256) as u8;
        add("mutated head", request, Answer::AnyClientError);
    }
    let port = port_of(&app);
    let tally = run_raw(port, cases).await;

    // 100 bad requests pipelined on one connection: 100 envelopes, in order.
    let pipelined = {
        let keep_alive = String::from_utf8_lossy(&post(&[])).replace("Connection: close\r\n", "");
        let mut all = keep_alive.repeat(99).into_bytes();
        all.extend_from_slice(&post(&[]));
        all
    };
    let responses = actix_web::rt::task::spawn_blocking(move || exchange(port, &pipelined))
        .await
        .expect("ran")
        .expect("pipeline");
    assert_eq!(responses.len(), 100, "{responses:?}");
    for r in &responses {
        assert_eq!(r.status, 400);
        assert!(envelope_message(&r.text()).expect("envelope").starts_with("invalid JSON: "));
    }

    assert_unharmed(&app, &seeded).await;
    eprintln!("protocol garbage (seed {seed}): {tally:?}, plus 100 pipelined 400 envelopes");
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Slow-loris: connections that dribble their head a byte at a time, and connections that send
/// a head and then only part of their body. While they hang on, everyone else is served; the
/// dribblers are cut off with the HTTP layer's 408; the slow bodies, once finished (badly),
/// get our 400.
#[actix_web::test]
async fn slow_loris_clients_neither_block_others_nor_get_anything_but_4xx() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    let port = port_of(&app);
    let stop = Arc::new(AtomicBool::new(false));
    // Stops the dribblers even when an assertion fails (the runtime waits for them on drop).
    let _stop_on_drop = StopOnDrop(stop.clone());

    // 64 dribblers, one thread: a byte to each in turn until told to stop or cut off.
    let dribble_stop = stop.clone();
    let dribblers = actix_web::rt::task::spawn_blocking(move || {
        let request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".to_vec();
        let mut conns: Vec<Option<TcpStream>> =
            (0..64).map(|_| TcpStream::connect(("127.0.0.1", port)).ok()).collect();
        let mut sent = 0usize;
        let mut cut = 0usize;
        while !dribble_stop.load(Ordering::Relaxed) {
            for conn in conns.iter_mut() {
                if let Some(stream) = conn {
                    let byte = request.get(sent).copied().unwrap_or(b'z');
                    if stream.write_all(&[byte]).is_err() {
                        *conn = None;
                        cut += 1;
                    }
                }
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        // Then wait for the server to give up on each.
        let answers: Vec<Result<Vec<RawResponse>, String>> = conns
            .into_iter()
            .flatten()
            .map(|mut stream| {
                stream
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .map_err(|e| e.to_string())?;
                parse_responses(&read_to_close(&mut stream)?)
            })
            .collect();
        (answers, cut)
    });
    // 16 slow bodies: complete heads, then only the first 9 bytes of the declared body.
    const START: &[u8] = b"{\"model\":";
    const REST: &[u8] = b" nope, this is not JSON at all}";
    let length = (START.len() + REST.len()).to_string();
    let key = seeded.key.clone();
    let slow_bodies = actix_web::rt::task::spawn_blocking(move || {
        let request = head("POST", "/v1/chat/completions", &key, &[("Content-Length", &length)]);
        (0..16)
            .map(|_| {
                let mut stream =
                    TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
                stream.write_all(&request).map_err(|e| e.to_string())?;
                stream.write_all(START).map_err(|e| e.to_string())?;
                Ok(stream)
            })
            .collect::<Result<Vec<TcpStream>, String>>()
    })
    .await
    .expect("ran")
    .expect("slow bodies connected");

    // Everyone else is served meanwhile.
    let fresh = app.seed_license(Some(100_000)).await;
    for i in 0..20 {
        let r = if i % 2 == 0 {
            app.raw("GET", "/health", &[], None).await
        } else {
            app.chat(&fresh.key, &chat_body("am I served?")).await
        };
        assert_eq!(r.status(), 200, "{}", r.text);
    }
    let served =
        app.query_i64("SELECT COUNT(*) FROM usage WHERE license_id = ?1", [&fresh.license_id]);
    assert_eq!(served, 10);

    // The slow bodies end, with bytes that are not JSON: our 400, each of them.
    let finished = actix_web::rt::task::spawn_blocking(move || {
        slow_bodies
            .into_iter()
            .map(|mut stream| {
                stream.write_all(REST).map_err(|e| e.to_string())?;
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .map_err(|e| e.to_string())?;
                parse_responses(&read_to_close(&mut stream)?)
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("ran");
    assert_eq!(finished.len(), 16);
    for responses in finished {
        let responses = responses.expect("slow body answered");
        assert_eq!(responses.len(), 1, "{responses:?}");
        assert_eq!(responses[0].status, 400);
        let message = envelope_message(&responses[0].text()).expect("envelope");
        assert!(message.starts_with("invalid JSON: "), "{message}");
    }

    stop.store(true, Ordering::Relaxed);
    let (answers, cut) = dribblers.await.expect("ran");
    let mut timed_out = 0;
    for answer in &answers {
        let responses = answer.as_ref().expect("the server ends a dribbling connection");
        assert!(responses.len() <= 1, "{responses:?}");
        if let Some(r) = responses.first() {
            assert_eq!(r.status, 408, "{r:?}");
            timed_out += 1;
        }
    }
    assert_eq!(answers.len() + cut, 64);
    assert_unharmed(&app, &seeded).await;
    eprintln!(
        "slow loris: 64 dribblers ({timed_out} got 408 after we stopped, {} closed silently, {cut} cut while dribbling), \
         16 slow bodies (16 × 400 envelope), 20 other requests served meanwhile",
        answers.len() - timed_out
    );
}

/// A client that sends a complete head and then stalls its body holds its connection and its
/// request forever: the HTTP layer's 5 s head timeout does not cover the body, and nothing in
/// the gateway bounds a body read. A slow-loris client must get a 4xx eventually; the bound
/// below (2 minutes) only keeps a regression from hanging the suite.
#[actix_web::test]
async fn a_body_that_stalls_forever_is_eventually_refused() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(BALANCE)).await;
    let port = port_of(&app);
    let key = seeded.key.clone();
    let answer = actix_web::rt::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        let request = head("POST", "/v1/chat/completions", &key, &[("Content-Length", "100")]);
        stream.write_all(&request).map_err(|e| e.to_string())?;
        stream.write_all(b"{\"model\":").map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
        parse_responses(&read_to_close(&mut stream)?)
    })
    .await
    .expect("ran");
    let responses = answer.expect("the server ends a stalled body");
    assert_eq!(responses.len(), 1, "{responses:?}");
    assert!((400..500).contains(&responses[0].status), "{responses:?}");
    assert_unharmed(&app, &seeded).await;
}
