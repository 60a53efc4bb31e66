//! A fake upstream for the gateway's real providers: one actix-web server on 127.0.0.1:0 that
//! speaks OpenRouter's `POST /chat/completions` (under `/openrouter`) and Anthropic's
//! `POST /messages` (under `/anthropic`) as /work/shared/spec/upstreams.md §1.2–1.5 and
//! §2.1–2.5 describe them, records every request, and can be told to misbehave.
//!
//! Streams are written as many small TCP writes (a 2 ms gap between pieces), and a few SSE
//! events are deliberately split across two writes (mid-JSON, between `event:` and `data:`,
//! between the two newlines of the terminator) so a parser that assumes "one read = one event"
//! fails.

#![allow(dead_code)] // not every helper is used by every test module

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpResponseBuilder, HttpServer};
use serde_json::{json, Value};

/// Every error message the fake makes up contains this, so tests can assert it never reaches
/// the gateway's clients.
pub const SECRET_MARKER: &str = "upstream-secret-7f3a";

/// The pause before each streamed piece, so pieces leave as separate TCP writes.
const GAP: Duration = Duration::from_millis(2);

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// `"openrouter"` or `"anthropic"`.
    pub route: &'static str,
    /// Header names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The JSON body (a JSON string holding the raw text when the body was not JSON).
    pub body: serde_json::Value,
}

impl Recorded {
    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// What a normal answer says.
#[derive(Clone, Debug)]
pub struct Reply {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `(name, arguments JSON text)`.
    pub tool_call: Option<(String, String)>,
    /// Anthropic only: `cache_read_input_tokens` (taken out of `input_tokens`).
    pub cache_read_tokens: u64,
}

impl Default for Reply {
    fn default() -> Self {
        Reply {
            text: "Hello from the fake upstream".into(),
            prompt_tokens: 11,
            completion_tokens: 7,
            tool_call: None,
            cache_read_tokens: 0,
        }
    }
}

/// A way to misbehave, for one request (queued) or for all (default).
#[derive(Clone, Debug)]
pub enum Fault {
    /// That status with the provider's own error envelope; the message contains SECRET_MARKER.
    Status(u16),
    /// That status with exactly this body (`content-type: application/json`).
    StatusWithBody(u16, String),
    /// OpenRouter: 400 with `error.availability.code` "model_not_found"; Anthropic: 404
    /// `not_found_error`.
    ModelNotFound,
    /// 400 invalid request with exactly this message.
    BadRequest(String),
    /// Wait, then answer normally.
    Delay(Duration),
    /// 200 with invalid JSON: a truncated body (non-stream) or a truncated SSE data event as
    /// the first event, after which the body ends cleanly (stream).
    MalformedJson,
    /// 200 with valid JSON that is no completion (`{"foo":1}`), as the body or as the first
    /// SSE data event (OpenRouter then sends `[DONE]`; Anthropic just ends).
    WrongShape,
    /// Stream: that many content chunks (the comment / `message_start`, block start and `ping`
    /// come first), then the connection drops mid-body without the last HTTP chunk. Note that
    /// awc reports such a body as ending normally: detect it by the missing `[DONE]` /
    /// `message_stop`. Non-stream: half the JSON body, then the drop.
    CutStream { after_chunks: usize },
    /// Stream: that many content chunks, silence for `stall`, then the rest of the normal
    /// stream. Non-stream: half the JSON body, the stall, the rest.
    StallStream { after_chunks: usize, stall: Duration },
    /// Stream: that many content chunks, then the provider's mid-stream error event; the body
    /// then ends (no usage, no `[DONE]` / `message_stop`). Non-stream: OpenRouter answers 200
    /// with a choice carrying `error` (code 429) and `finish_reason: "error"` (§1.3); Anthropic
    /// answers 529 `overloaded_error`.
    MidStreamError { after_chunks: usize },
    /// The connection closes without any response bytes.
    ResetConnection,
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    faults: VecDeque<Fault>,
    default_fault: Option<Fault>,
    reply: Option<Reply>,
    seq: u64,
}

/// Handle on a running fake upstream. Clones share the same server and state.
#[derive(Clone)]
pub struct FakeUpstream {
    address: String,
    state: web::Data<Mutex<State>>,
    handle: ServerHandle,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeUpstream {
    /// Starts the server (1 worker) on an ephemeral port of 127.0.0.1.
    pub async fn start() -> FakeUpstream {
        let state = web::Data::new(Mutex::new(State::default()));
        let data = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                .route("/openrouter/chat/completions", web::post().to(openrouter))
                .route("/anthropic/messages", web::post().to(anthropic))
                .route("/openrouter/embeddings", web::post().to(openrouter_embeddings))
                .route("/openrouter/responses", web::post().to(openrouter_responses))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .bind(("127.0.0.1", 0))
        .expect("fake upstream binds");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        FakeUpstream { address: format!("http://127.0.0.1:{port}"), state, handle }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Base URL for an OpenRouter provider (the gateway appends `/chat/completions`).
    pub fn openrouter_url(&self) -> String {
        format!("{}/openrouter", self.address)
    }

    /// Base URL for an Anthropic provider (the gateway appends `/messages`).
    pub fn anthropic_url(&self) -> String {
        format!("{}/anthropic", self.address)
    }

    /// Requests received on both routes (including ones refused for missing credentials).
    pub fn calls(&self) -> usize {
        lock(&self.state).requests.len()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    pub fn last_request(&self) -> Option<Recorded> {
        lock(&self.state).requests.last().cloned()
    }

    /// Queues a fault for the next request that passes the credential check.
    pub fn push_fault(&self, fault: Fault) {
        lock(&self.state).faults.push_back(fault);
    }

    /// The fault for every request once the queue is empty (`None`: answer normally).
    pub fn set_default_fault(&self, fault: Option<Fault>) {
        lock(&self.state).default_fault = fault;
    }

    pub fn set_reply(&self, reply: Reply) {
        lock(&self.state).reply = Some(reply);
    }

    /// Stops the server (it also ends with the test's runtime).
    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    OpenRouter,
    Anthropic,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::OpenRouter => "openrouter",
            Route::Anthropic => "anthropic",
        }
    }
}

async fn openrouter(req: HttpRequest, body: Bytes, state: web::Data<Mutex<State>>) -> HttpResponse {
    handle(Route::OpenRouter, req, body, state).await
}

async fn anthropic(req: HttpRequest, body: Bytes, state: web::Data<Mutex<State>>) -> HttpResponse {
    handle(Route::Anthropic, req, body, state).await
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

async fn handle(
    route: Route,
    req: HttpRequest,
    body: Bytes,
    state: web::Data<Mutex<State>>,
) -> HttpResponse {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (k.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned())
        })
        .collect();
    let json_body: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let authorized = match route {
        Route::OpenRouter => header(&req, "authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|token| !token.trim().is_empty()),
        Route::Anthropic => {
            header(&req, "x-api-key").is_some() && header(&req, "anthropic-version").is_some()
        }
    };
    let ctx = {
        let mut s = lock(&state);
        s.requests.push(Recorded { route: route.name(), headers, body: json_body.clone() });
        s.seq += 1;
        let fault = if authorized {
            s.faults.pop_front().or_else(|| s.default_fault.clone())
        } else {
            None
        };
        Ctx {
            route,
            seq: s.seq,
            created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            model: json_body["model"].as_str().unwrap_or("unknown").to_string(),
            stream: json_body["stream"].as_bool().unwrap_or(false),
            reply: s.reply.clone().unwrap_or_default(),
            fault,
        }
    };
    if !authorized {
        return match route {
            Route::OpenRouter => ctx.openrouter_error(
                401,
                format!("No auth credentials found ({SECRET_MARKER})"),
                None,
            ),
            Route::Anthropic => ctx.anthropic_error(
                401,
                format!("x-api-key and anthropic-version headers are required ({SECRET_MARKER})"),
            ),
        };
    }
    ctx.answer().await
}

/// Everything one answer needs.
struct Ctx {
    route: Route,
    seq: u64,
    created: u64,
    model: String,
    stream: bool,
    reply: Reply,
    fault: Option<Fault>,
}

/// One streamed piece of a response body.
enum Piece {
    Data(Bytes),
    Pause(Duration),
    /// End the body with an I/O error: the connection is dropped.
    Fail,
}

/// Where an SSE event sits, for cutting a stream "after N content chunks".
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Before any content (comment, `message_start`, first block start, `ping`).
    Head,
    /// A content chunk: an OpenRouter delta chunk or an Anthropic `content_block_delta`.
    Delta,
    /// Between content chunks (Anthropic block stops and later block starts).
    Mid,
    /// After all content (finish/usage/`[DONE]`, `message_delta`/`message_stop`).
    Tail,
}

struct Event {
    kind: Kind,
    text: String,
    /// Send the event as two writes, split at this byte.
    split: Option<usize>,
}

impl Event {
    fn new(kind: Kind, text: String) -> Self {
        Event { kind, text, split: None }
    }

    fn split_at(mut self, at: usize) -> Self {
        if at > 0 && at < self.text.len() {
            self.split = Some(at);
        }
        self
    }

    fn split_half(self) -> Self {
        let at = self.text.len() / 2;
        self.split_at(at)
    }

    fn pieces(&self, out: &mut Vec<Piece>) {
        let bytes = Bytes::copy_from_slice(self.text.as_bytes());
        match self.split {
            Some(at) => {
                out.push(Piece::Data(bytes.slice(..at)));
                out.push(Piece::Data(bytes.slice(at..)));
            }
            None => out.push(Piece::Data(bytes)),
        }
    }
}

fn data_event(value: &Value) -> String {
    format!("data: {value}\n\n")
}

fn named_event(name: &str, value: &Value) -> String {
    format!("event: {name}\ndata: {value}\n\n")
}

/// The text as chunks of one word each (a word keeps the space before it), so that the
/// chunks concatenate to the text.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        if ch.is_whitespace() && !current.trim().is_empty() {
            out.push(std::mem::take(&mut current));
        }
        current.push(ch);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The first half of a text (cut at a char boundary).
fn first_half(text: &str) -> &str {
    let mut mid = text.len() / 2;
    while !text.is_char_boundary(mid) {
        mid += 1;
    }
    &text[..mid]
}

/// Tool-call arguments as two fragments (at a char boundary near the middle).
fn fragments(arguments: &str) -> Vec<String> {
    let first = first_half(arguments);
    [first, &arguments[first.len()..]]
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Index of the first event not to send when cutting after `n` content chunks.
fn cut_position(events: &[Event], n: usize) -> usize {
    let mut seen = 0;
    for (i, event) in events.iter().enumerate() {
        match event.kind {
            Kind::Tail => return i,
            Kind::Delta if seen == n => return i,
            Kind::Delta => seen += 1,
            Kind::Head | Kind::Mid => {}
        }
    }
    events.len()
}

fn piece_stream(
    pieces: Vec<Piece>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + 'static {
    futures_util::stream::unfold(VecDeque::from(pieces), |mut queue| async move {
        loop {
            match queue.pop_front()? {
                Piece::Pause(d) => actix_web::rt::time::sleep(d).await,
                Piece::Data(bytes) => {
                    actix_web::rt::time::sleep(GAP).await;
                    return Some((Ok(bytes), queue));
                }
                Piece::Fail => {
                    // The pause lets the dispatcher flush what was sent before.
                    actix_web::rt::time::sleep(GAP).await;
                    queue.clear();
                    let err = std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "fake upstream drops the connection",
                    );
                    return Some((Err(err), queue));
                }
            }
        }
    })
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or_else(|_| panic!("invalid status {code}"))
}

/// `error.metadata.error_type` for an OpenRouter status (§1.5).
fn openrouter_error_type(code: u16) -> &'static str {
    match code {
        400 => "invalid_request",
        401 => "authentication",
        402 => "payment_required",
        403 => "permission_denied",
        404 => "not_found",
        408 | 504 => "timeout",
        412 => "precondition_failed",
        413 => "payload_too_large",
        422 => "unprocessable",
        429 => "rate_limit_exceeded",
        500 => "server",
        502 => "provider_unavailable",
        503 => "provider_overloaded",
        _ => "unmapped",
    }
}

/// `error.type` for an Anthropic status (§2.5).
fn anthropic_error_type(code: u16) -> &'static str {
    match code {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        c if c >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

impl Ctx {
    fn id(&self) -> String {
        match self.route {
            Route::OpenRouter => format!("gen-{}-fake{:08}", self.created, self.seq),
            Route::Anthropic => format!("msg_fake{:016}", self.seq),
        }
    }

    fn request_id(&self) -> String {
        format!("req_fake{:016}", self.seq)
    }

    fn tool_id(&self) -> String {
        match self.route {
            Route::OpenRouter => format!("call_fake{:08}", self.seq),
            Route::Anthropic => format!("toolu_fake{:016}", self.seq),
        }
    }

    /// A response builder with the provider's id header.
    fn builder(&self, code: u16) -> HttpResponseBuilder {
        let mut b = HttpResponse::build(status(code));
        match self.route {
            Route::OpenRouter => b.insert_header(("x-generation-id", self.id())),
            Route::Anthropic => b.insert_header(("request-id", self.request_id())),
        };
        b
    }

    fn json(&self, code: u16, body: &Value) -> HttpResponse {
        self.builder(code).content_type("application/json").body(body.to_string())
    }

    fn sse(&self, pieces: Vec<Piece>) -> HttpResponse {
        let content_type = match self.route {
            Route::OpenRouter => "text/event-stream",
            Route::Anthropic => "text/event-stream; charset=utf-8",
        };
        self.builder(200)
            .content_type(content_type)
            .insert_header(("cache-control", "no-cache"))
            .streaming(piece_stream(pieces))
    }

    fn openrouter_error(
        &self,
        code: u16,
        message: String,
        availability: Option<Value>,
    ) -> HttpResponse {
        let mut metadata = json!({"error_type": openrouter_error_type(code)});
        if code != 500 {
            metadata["provider_code"] = json!("fake_provider_error");
        }
        let mut error = json!({"code": code, "message": message, "metadata": metadata});
        if let Some(availability) = availability {
            error["availability"] = availability;
        }
        self.json(code, &json!({"error": error}))
    }

    fn anthropic_error_body(&self, code: u16, message: &str) -> Value {
        json!({
            "type": "error",
            "error": {"type": anthropic_error_type(code), "message": message},
            "request_id": self.request_id(),
        })
    }

    fn anthropic_error(&self, code: u16, message: String) -> HttpResponse {
        self.json(code, &self.anthropic_error_body(code, &message))
    }

    fn error(&self, code: u16, message: String) -> HttpResponse {
        match self.route {
            Route::OpenRouter => self.openrouter_error(code, message, None),
            Route::Anthropic => self.anthropic_error(code, message),
        }
    }

    async fn answer(self) -> HttpResponse {
        let fault = match self.fault.clone() {
            Some(Fault::Delay(d)) => {
                actix_web::rt::time::sleep(d).await;
                None
            }
            other => other,
        };
        let Some(fault) = fault else {
            return self.normal(None);
        };
        match fault {
            Fault::Delay(_) => self.normal(None),
            Fault::Status(code) => {
                self.error(code, format!("Fake upstream failure {code} ({SECRET_MARKER})"))
            }
            Fault::StatusWithBody(code, body) => {
                self.builder(code).content_type("application/json").body(body)
            }
            Fault::BadRequest(message) => self.error(400, message),
            Fault::ModelNotFound => match self.route {
                Route::OpenRouter => self.openrouter_error(
                    400,
                    format!("{} is not a valid model ID ({SECRET_MARKER})", self.model),
                    Some(json!({
                        "code": "model_not_found",
                        "retryable": false,
                        "retry_after": null,
                        "requested_models": [self.model],
                        "docs_url": "https://openrouter.ai/docs/api-reference/errors",
                    })),
                ),
                Route::Anthropic => {
                    self.anthropic_error(404, format!("model: {} ({SECRET_MARKER})", self.model))
                }
            },
            Fault::ResetConnection => {
                // The dispatcher polls the body right after queueing the head; an error on that
                // first poll drops the connection before anything is written.
                let err = std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "fake upstream resets the connection",
                );
                HttpResponse::Ok().streaming(futures_util::stream::iter([Err::<Bytes, _>(err)]))
            }
            Fault::MalformedJson if self.stream => {
                let text = match self.route {
                    Route::OpenRouter => {
                        let chunk = self.openrouter_chunk(json!([{
                            "index": 0,
                            "delta": {"role": "assistant", "content": "Hello"},
                            "finish_reason": null,
                        }]));
                        let chunk = chunk.to_string();
                        format!(": OPENROUTER PROCESSING\n\ndata: {}\n\n", first_half(&chunk))
                    }
                    Route::Anthropic => {
                        let start = json!({"type": "message_start", "message": {
                            "id": self.id(), "type": "message", "role": "assistant",
                        }});
                        let start = start.to_string();
                        format!("event: message_start\ndata: {}\n\n", first_half(&start))
                    }
                };
                self.sse(vec![Piece::Data(Bytes::from(text))])
            }
            Fault::MalformedJson => {
                let full = self.complete_body().to_string();
                let truncated = first_half(&full).to_string();
                self.builder(200).content_type("application/json").body(truncated)
            }
            Fault::WrongShape if self.stream => {
                let text = match self.route {
                    Route::OpenRouter => {
                        ": OPENROUTER PROCESSING\n\ndata: {\"foo\":1}\n\ndata: [DONE]\n\n"
                    }
                    Route::Anthropic => "event: message_start\ndata: {\"foo\":1}\n\n",
                };
                self.sse(vec![Piece::Data(Bytes::from_static(text.as_bytes()))])
            }
            Fault::WrongShape => self.json(200, &json!({"foo": 1})),
            fault @ (Fault::CutStream { .. }
            | Fault::StallStream { .. }
            | Fault::MidStreamError { .. }) => self.normal(Some(fault)),
        }
    }

    /// A normal answer, or one broken by a stream fault (Cut/Stall/MidStreamError).
    fn normal(&self, fault: Option<Fault>) -> HttpResponse {
        if self.stream {
            return self.stream_response(fault);
        }
        let body = self.complete_body();
        match fault {
            None => self.json(200, &body),
            Some(Fault::MidStreamError { .. }) => match self.route {
                // §1.3: a provider failure reported in a 200 body.
                Route::OpenRouter => self.json(
                    200,
                    &json!({
                        "id": self.id(),
                        "object": "chat.completion",
                        "created": self.created,
                        "model": self.model,
                        "provider": "FakeProvider",
                        "choices": [{
                            "index": 0,
                            "message": {"role": "assistant", "content": ""},
                            "finish_reason": "error",
                            "native_finish_reason": "error",
                            "error": {
                                "code": 429,
                                "message": format!("Rate limit exceeded ({SECRET_MARKER})"),
                                "metadata": {"error_type": "rate_limit_exceeded"},
                            },
                        }],
                        "usage": {"cost": 0, "is_byok": false},
                    }),
                ),
                Route::Anthropic => {
                    self.anthropic_error(529, format!("Overloaded ({SECRET_MARKER})"))
                }
            },
            // Non-stream Cut/Stall: half the JSON, then the drop or the stall and the rest.
            Some(fault) => {
                let text = Bytes::from(body.to_string());
                let half = text.len() / 2;
                let mut pieces = vec![Piece::Data(text.slice(..half))];
                match fault {
                    Fault::StallStream { stall, .. } => {
                        pieces.push(Piece::Pause(stall));
                        pieces.push(Piece::Data(text.slice(half..)));
                    }
                    _ => pieces.push(Piece::Fail),
                }
                self.builder(200).content_type("application/json").streaming(piece_stream(pieces))
            }
        }
    }

    fn stream_response(&self, fault: Option<Fault>) -> HttpResponse {
        let events = match self.route {
            Route::OpenRouter => self.openrouter_events(),
            Route::Anthropic => self.anthropic_events(),
        };
        let mut pieces = Vec::new();
        let (sent, rest) = match &fault {
            Some(
                Fault::CutStream { after_chunks }
                | Fault::StallStream { after_chunks, .. }
                | Fault::MidStreamError { after_chunks },
            ) => events.split_at(cut_position(&events, *after_chunks)),
            _ => (&events[..], &[][..]),
        };
        for event in sent {
            event.pieces(&mut pieces);
        }
        match fault {
            Some(Fault::CutStream { .. }) => pieces.push(Piece::Fail),
            Some(Fault::StallStream { stall, .. }) => {
                pieces.push(Piece::Pause(stall));
                for event in rest {
                    event.pieces(&mut pieces);
                }
            }
            Some(Fault::MidStreamError { .. }) => {
                let text = match self.route {
                    // §1.4 rule 5.
                    Route::OpenRouter => data_event(&json!({
                        "id": self.id(),
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "provider": "FakeProvider",
                        "error": {
                            "code": 429,
                            "message": format!("Rate limit exceeded ({SECRET_MARKER})"),
                            "metadata": {
                                "error_type": "rate_limit_exceeded",
                                "provider_code": "rate_limited",
                            },
                        },
                        "choices": [{
                            "index": 0,
                            "delta": {"content": ""},
                            "finish_reason": "error",
                        }],
                    })),
                    // §2.4.
                    Route::Anthropic => named_event(
                        "error",
                        &json!({"type": "error", "error": {
                            "type": "overloaded_error",
                            "message": format!("Overloaded ({SECRET_MARKER})"),
                        }}),
                    ),
                };
                pieces.push(Piece::Data(Bytes::from(text)));
            }
            _ => {}
        }
        self.sse(pieces)
    }

    fn complete_body(&self) -> Value {
        match self.route {
            Route::OpenRouter => self.openrouter_completion(),
            Route::Anthropic => self.anthropic_message(),
        }
    }

    fn openrouter_usage(&self) -> Value {
        let r = &self.reply;
        json!({
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
            "cost": 0.0001,
            "is_byok": false,
        })
    }

    /// §1.3.
    fn openrouter_completion(&self) -> Value {
        let (message, finish) = match &self.reply.tool_call {
            Some((name, arguments)) => (
                json!({
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [{
                        "id": self.tool_id(),
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }],
                }),
                "tool_calls",
            ),
            None => (json!({"role": "assistant", "content": self.reply.text}), "stop"),
        };
        json!({
            "id": self.id(),
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "provider": "FakeProvider",
            "choices": [{
                "index": 0,
                "finish_reason": finish,
                "native_finish_reason": finish,
                "message": message,
            }],
            "usage": self.openrouter_usage(),
        })
    }

    fn openrouter_chunk(&self, choices: Value) -> Value {
        json!({
            "id": self.id(),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "provider": "FakeProvider",
            "choices": choices,
        })
    }

    /// §1.4: comment, delta chunks, finish chunk, usage chunk, `[DONE]`.
    fn openrouter_events(&self) -> Vec<Event> {
        let mut deltas = Vec::new();
        let finish = match &self.reply.tool_call {
            Some((name, arguments)) => {
                deltas.push(json!({
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [{
                        "index": 0,
                        "id": self.tool_id(),
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }],
                }));
                for fragment in fragments(arguments) {
                    deltas.push(json!({
                        "role": "assistant",
                        "tool_calls": [{"index": 0, "function": {"arguments": fragment}}],
                    }));
                }
                "tool_calls"
            }
            None => {
                for word in words(&self.reply.text) {
                    deltas.push(json!({"role": "assistant", "content": word}));
                }
                "stop"
            }
        };
        let mut events = vec![Event::new(Kind::Head, ": OPENROUTER PROCESSING\n\n".into())];
        for (i, delta) in deltas.into_iter().enumerate() {
            let mut chunk = self.openrouter_chunk(json!([{
                "index": 0,
                "delta": delta,
                "finish_reason": null,
                "native_finish_reason": null,
            }]));
            if i == 0 {
                chunk["system_fingerprint"] = json!("fp_fake");
                events.push(Event::new(Kind::Delta, data_event(&chunk)).split_half());
            } else {
                events.push(Event::new(Kind::Delta, data_event(&chunk)));
            }
        }
        let finish_chunk = self.openrouter_chunk(json!([{
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "finish_reason": finish,
            "native_finish_reason": finish,
        }]));
        events.push(Event::new(Kind::Tail, data_event(&finish_chunk)));
        let mut usage_chunk = self.openrouter_chunk(json!([]));
        usage_chunk["usage"] = self.openrouter_usage();
        let usage = data_event(&usage_chunk);
        let at = usage.len() - 1;
        events.push(Event::new(Kind::Tail, usage).split_at(at));
        events.push(Event::new(Kind::Tail, "data: [DONE]\n\n".into()));
        events
    }

    fn anthropic_input_tokens(&self) -> u64 {
        self.reply.prompt_tokens.saturating_sub(self.reply.cache_read_tokens)
    }

    fn tool_input(arguments: &str) -> Value {
        match serde_json::from_str::<Value>(arguments) {
            Ok(v @ Value::Object(_)) => v,
            _ => json!({}),
        }
    }

    /// §2.3. A text block when the text is not empty (or there is no tool call), then the
    /// tool_use block when configured.
    fn anthropic_message(&self) -> Value {
        let mut content = Vec::new();
        if !self.reply.text.is_empty() || self.reply.tool_call.is_none() {
            content.push(json!({"type": "text", "text": self.reply.text}));
        }
        if let Some((name, arguments)) = &self.reply.tool_call {
            content.push(json!({
                "type": "tool_use",
                "id": self.tool_id(),
                "name": name,
                "input": Self::tool_input(arguments),
            }));
        }
        json!({
            "id": self.id(),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": if self.reply.tool_call.is_some() { "tool_use" } else { "end_turn" },
            "stop_sequence": null,
            "usage": {
                "input_tokens": self.anthropic_input_tokens(),
                "output_tokens": self.reply.completion_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": self.reply.cache_read_tokens,
                "service_tier": "standard",
            },
        })
    }

    /// §2.4: message_start, per block start / deltas / stop (a ping after the first start),
    /// message_delta, message_stop.
    fn anthropic_events(&self) -> Vec<Event> {
        let message_start = named_event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": self.id(),
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": self.anthropic_input_tokens(),
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": self.reply.cache_read_tokens,
                    "output_tokens": 1,
                },
            }}),
        );
        let at = "event: message_start\n".len();
        let mut events = vec![Event::new(Kind::Head, message_start).split_at(at)];

        // (start block, deltas) per content block.
        let mut blocks: Vec<(Value, Vec<Value>)> = Vec::new();
        if !self.reply.text.is_empty() || self.reply.tool_call.is_none() {
            let deltas = words(&self.reply.text)
                .into_iter()
                .map(|w| json!({"type": "text_delta", "text": w}))
                .collect();
            blocks.push((json!({"type": "text", "text": ""}), deltas));
        }
        if let Some((name, arguments)) = &self.reply.tool_call {
            let mut deltas = vec![json!({"type": "input_json_delta", "partial_json": ""})];
            deltas.extend(
                fragments(arguments)
                    .into_iter()
                    .map(|f| json!({"type": "input_json_delta", "partial_json": f})),
            );
            blocks.push((
                json!({"type": "tool_use", "id": self.tool_id(), "name": name, "input": {}}),
                deltas,
            ));
        }
        let mut split_done = false;
        for (index, (block, deltas)) in blocks.into_iter().enumerate() {
            let start = named_event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": index, "content_block": block}),
            );
            if index == 0 {
                events.push(Event::new(Kind::Head, start));
                events.push(Event::new(Kind::Head, named_event("ping", &json!({"type": "ping"}))));
            } else {
                events.push(Event::new(Kind::Mid, start));
            }
            for delta in deltas {
                let event = Event::new(
                    Kind::Delta,
                    named_event(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": index, "delta": delta}),
                    ),
                );
                if split_done {
                    events.push(event);
                } else {
                    split_done = true;
                    events.push(event.split_half());
                }
            }
            events.push(Event::new(
                Kind::Mid,
                named_event(
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": index}),
                ),
            ));
        }
        let stop_reason = if self.reply.tool_call.is_some() { "tool_use" } else { "end_turn" };
        events.push(Event::new(
            Kind::Tail,
            named_event(
                "message_delta",
                &json!({
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                    "usage": {"output_tokens": self.reply.completion_tokens},
                }),
            ),
        ));
        events.push(Event::new(
            Kind::Tail,
            named_event("message_stop", &json!({"type": "message_stop"})),
        ));
        events
    }
}

// ---------------------------------------------------------------------------------------------
// Tests of the fake itself (awc straight to the fake, no gateway).

// ---- OpenRouter's /embeddings and /responses (upstreams.md §1.6, §1.7): normal answers, and
// `Fault::Status`, `MalformedJson` and `ResetConnection`; other faults answer normally.

/// Records the request and takes the next fault, like the chat routes do.
fn take(
    req: &HttpRequest,
    body: &Value,
    state: &web::Data<Mutex<State>>,
) -> (Reply, Option<Fault>) {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (k.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned())
        })
        .collect();
    let mut s = lock(state);
    s.requests.push(Recorded { route: "openrouter", headers, body: body.clone() });
    s.seq += 1;
    let fault = s.faults.pop_front().or_else(|| s.default_fault.clone());
    (s.reply.clone().unwrap_or_default(), fault)
}

fn simple_fault(fault: &Option<Fault>) -> Option<HttpResponse> {
    match fault {
        Some(Fault::Status(code)) => Some(HttpResponse::build(status(*code)).json(
            json!({"error": {"code": code, "message": format!("failure ({SECRET_MARKER})")}}),
        )),
        Some(Fault::MalformedJson) => {
            Some(HttpResponse::Ok().content_type("application/json").body("{\"data\": ["))
        }
        Some(Fault::ResetConnection) => {
            Some(HttpResponse::Ok().streaming(futures_util::stream::once(async {
                Err::<Bytes, actix_web::Error>(actix_web::error::ErrorInternalServerError("reset"))
            })))
        }
        _ => None,
    }
}

async fn openrouter_embeddings(
    req: HttpRequest,
    body: Bytes,
    state: web::Data<Mutex<State>>,
) -> HttpResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (reply, fault) = take(&req, &body, &state);
    if let Some(res) = simple_fault(&fault) {
        return res;
    }
    let inputs = match &body["input"] {
        Value::Array(items) => items.len(),
        _ => 1,
    };
    // Answered out of order: the gateway must sort by `index`.
    let data: Vec<Value> = (0..inputs)
        .rev()
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [i as f64 + 0.25, -0.5, 0.125]}))
        .collect();
    HttpResponse::Ok().json(json!({"id": "embd-1", "object": "list", "model": body["model"], "data": data,
        "usage": {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens, "cost": 0.0001}}))
}

async fn openrouter_responses(
    req: HttpRequest,
    body: Bytes,
    state: web::Data<Mutex<State>>,
) -> HttpResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (reply, fault) = take(&req, &body, &state);
    if let Some(res) = simple_fault(&fault) {
        return res;
    }
    let usage = json!({"input_tokens": reply.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": reply.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": reply.prompt_tokens + reply.completion_tokens, "cost": 0.00002});
    let item = json!({"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": reply.text, "annotations": []}]});
    let response = |status: &str, output: Value, usage: Value| {
        json!({"id": "resp_fake", "object": "response", "created_at": 1704067200, "model": body["model"],
               "status": status, "output": output, "usage": usage})
    };
    if !body["stream"].as_bool().unwrap_or(false) {
        return HttpResponse::Ok().json(response("completed", json!([item]), usage));
    }
    let mut events = vec![json!({"type": "response.created", "sequence_number": 0,
        "response": response("in_progress", json!([]), Value::Null)})];
    for (i, word) in words(&reply.text).into_iter().enumerate() {
        events.push(json!({"type": "response.output_text.delta", "sequence_number": i + 1, "item_id": "msg_fake",
            "output_index": 0, "content_index": 0, "delta": word, "logprobs": []}));
    }
    let cut = matches!(fault, Some(Fault::CutStream { .. }));
    if !cut {
        events.push(json!({"type": "response.completed", "sequence_number": events.len(),
            "response": response("completed", json!([item]), usage)}));
    }
    let mut text: String = events.iter().map(data_event).collect();
    if !cut {
        text.push_str("data: [DONE]\n\n");
    }
    HttpResponse::Ok().content_type("text/event-stream").streaming(futures_util::stream::once(
        async move { Ok::<_, actix_web::Error>(Bytes::from(text)) },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> awc::Client {
        awc::Client::builder().timeout(Duration::from_secs(10)).finish()
    }

    fn url(fake: &FakeUpstream, route: &str) -> String {
        match route {
            "openrouter" => format!("{}/chat/completions", fake.openrouter_url()),
            _ => format!("{}/messages", fake.anthropic_url()),
        }
    }

    fn auth_headers(route: &str) -> Vec<(&'static str, &'static str)> {
        match route {
            "openrouter" => vec![("Authorization", "Bearer sk-or-v1-test")],
            _ => vec![("x-api-key", "sk-ant-test"), ("anthropic-version", "2023-06-01")],
        }
    }

    fn body(route: &str, stream: bool) -> Value {
        match route {
            "openrouter" => json!({"model": "openai/gpt-4o", "stream": stream,
                "messages": [{"role": "user", "content": "Hi"}]}),
            _ => json!({"model": "claude-sonnet-4-20250514", "max_tokens": 64, "stream": stream,
                "messages": [{"role": "user", "content": "Hi"}]}),
        }
    }

    /// POST with the route's credentials; status, content type and body text (or the body
    /// read error).
    async fn call(
        fake: &FakeUpstream,
        route: &str,
        stream: bool,
    ) -> (u16, String, Result<String, String>) {
        call_with(fake, route, &body(route, stream), &auth_headers(route)).await
    }

    async fn call_with(
        fake: &FakeUpstream,
        route: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> (u16, String, Result<String, String>) {
        let mut req = client().post(url(fake, route)).content_type("application/json");
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let mut res = req.send_body(body.to_string()).await.expect("request answered");
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = res
            .body()
            .limit(16 * 1024 * 1024)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|e| e.to_string());
        (res.status().as_u16(), content_type, text)
    }

    /// SSE blocks as (event name, data); comment-only blocks come as (":", comment text).
    fn sse(text: &str) -> Vec<(String, String)> {
        assert!(text.ends_with("\n\n"), "SSE body ends with a blank line: {text:?}");
        text.split("\n\n")
            .filter(|b| !b.is_empty())
            .map(|block| {
                let mut name = String::new();
                let mut data = Vec::new();
                let mut comment = None;
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        comment = Some(c.trim().to_string());
                    } else if let Some(n) = line.strip_prefix("event: ") {
                        name = n.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push(d);
                    } else {
                        panic!("unexpected SSE line {line:?}");
                    }
                }
                match comment {
                    Some(c) if data.is_empty() => (":".to_string(), c),
                    _ => (name, data.join("\n")),
                }
            })
            .collect()
    }

    /// A raw HTTP/1.1 POST with `Connection: close`, read to EOF (on a blocking thread).
    async fn raw_post(fake: &FakeUpstream, path: &str, body: &Value) -> String {
        let address = fake.address().trim_start_matches("http://").to_string();
        let (path, body) = (path.to_string(), body.to_string());
        actix_web::rt::task::spawn_blocking(move || raw_post_blocking(&address, &path, body))
            .await
            .expect("raw request thread")
    }

    fn raw_post_blocking(address: &str, path: &str, body: String) -> String {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(address).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {address}\r\n\
             Authorization: Bearer sk-or-v1-test\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(request.as_bytes()).expect("write");
        let mut out = Vec::new();
        if let Err(e) = tcp.read_to_end(&mut out) {
            panic!("read to EOF: {e}; got {:?}", String::from_utf8_lossy(&out));
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn parse(data: &str) -> Value {
        serde_json::from_str(data).unwrap_or_else(|e| panic!("not JSON ({e}): {data}"))
    }

    #[actix_web::test]
    async fn openrouter_non_stream_reply_has_the_documented_shape() {
        let fake = FakeUpstream::start().await;

        let (status, content_type, text) = call(&fake, "openrouter", false).await;

        assert_eq!(status, 200);
        assert_eq!(content_type, "application/json");
        let body = parse(&text.unwrap());
        assert!(body["id"].as_str().unwrap().starts_with("gen-"));
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "openai/gpt-4o");
        assert_eq!(body["provider"], "FakeProvider");
        assert_eq!(
            body["choices"],
            json!([{"index": 0, "finish_reason": "stop", "native_finish_reason": "stop",
                "message": {"role": "assistant", "content": "Hello from the fake upstream"}}])
        );
        assert_eq!(body["usage"]["prompt_tokens"], 11);
        assert_eq!(body["usage"]["completion_tokens"], 7);
        assert_eq!(body["usage"]["total_tokens"], 18);
        assert_eq!(body["usage"]["cost"], 0.0001);
        assert_eq!(body["usage"]["is_byok"], false);

        assert_eq!(fake.calls(), 1);
        let recorded = fake.last_request().unwrap();
        assert_eq!(recorded.route, "openrouter");
        assert_eq!(recorded.header("Authorization"), Some("Bearer sk-or-v1-test"));
        assert_eq!(recorded.body["messages"][0]["content"], "Hi");
    }

    #[actix_web::test]
    async fn openrouter_stream_is_comment_chunks_finish_usage_then_done() {
        let fake = FakeUpstream::start().await;

        let (status, content_type, text) = call(&fake, "openrouter", true).await;

        assert_eq!(status, 200);
        assert_eq!(content_type, "text/event-stream");
        let events = sse(&text.unwrap());
        assert_eq!(events[0], (":".into(), "OPENROUTER PROCESSING".into()));
        assert_eq!(events.last().unwrap().1, "[DONE]");
        let chunks: Vec<Value> =
            events[1..events.len() - 1].iter().map(|(_, d)| parse(d)).collect();
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let n = chunks.len();
        let text: String = chunks[..n - 2]
            .iter()
            .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Hello from the fake upstream");
        assert_eq!(n - 2, 5, "one chunk per word");
        assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[n - 1]["choices"], json!([]));
        assert_eq!(chunks[n - 1]["usage"]["prompt_tokens"], 11);
        assert_eq!(chunks[n - 1]["usage"]["completion_tokens"], 7);
        assert_eq!(chunks[n - 1]["usage"]["total_tokens"], 18);
    }

    #[actix_web::test]
    async fn openrouter_tool_calls_come_whole_or_as_fragments() {
        let fake = FakeUpstream::start().await;
        let arguments = r#"{"city":"Paris"}"#;
        fake.set_reply(Reply {
            tool_call: Some(("get_weather".into(), arguments.into())),
            ..Reply::default()
        });

        let (_, _, text) = call(&fake, "openrouter", false).await;
        let body = parse(&text.unwrap());
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        assert_eq!(choice["message"]["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(choice["message"]["tool_calls"][0]["function"]["arguments"], arguments);

        let (_, _, text) = call(&fake, "openrouter", true).await;
        let events = sse(&text.unwrap());
        let chunks: Vec<Value> =
            events[1..events.len() - 1].iter().map(|(_, d)| parse(d)).collect();
        let calls: Vec<&Value> =
            chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0)).collect();
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
        let joined: String =
            calls.iter().map(|c| c["function"]["arguments"].as_str().unwrap()).collect();
        assert_eq!(joined, arguments);
        assert!(calls.len() >= 3, "streamed as fragments");
        assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "tool_calls");
    }

    #[actix_web::test]
    async fn anthropic_message_and_stream_have_the_documented_shapes() {
        let fake = FakeUpstream::start().await;
        fake.set_reply(Reply { cache_read_tokens: 4, ..Reply::default() });

        let (status, _, text) = call(&fake, "anthropic", false).await;
        assert_eq!(status, 200);
        let body = parse(&text.unwrap());
        assert!(body["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(body["type"], "message");
        assert_eq!(body["role"], "assistant");
        assert_eq!(body["model"], "claude-sonnet-4-20250514");
        assert_eq!(
            body["content"],
            json!([{"type": "text", "text": "Hello from the fake upstream"}])
        );
        assert_eq!(body["stop_reason"], "end_turn");
        assert_eq!(body["usage"]["input_tokens"], 7);
        assert_eq!(body["usage"]["cache_read_input_tokens"], 4);
        assert_eq!(body["usage"]["cache_creation_input_tokens"], 0);
        assert_eq!(body["usage"]["output_tokens"], 7);

        let (status, content_type, text) = call(&fake, "anthropic", true).await;
        assert_eq!(status, 200);
        assert!(content_type.starts_with("text/event-stream"));
        let events = sse(&text.unwrap());
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        for (name, data) in &events {
            assert_eq!(parse(data)["type"], name.as_str());
        }
        let start = parse(&events[0].1);
        assert_eq!(start["message"]["usage"]["input_tokens"], 7);
        assert_eq!(start["message"]["usage"]["cache_read_input_tokens"], 4);
        assert_eq!(start["message"]["usage"]["output_tokens"], 1);
        let text: String = events[3..8]
            .iter()
            .map(|(_, d)| parse(d)["delta"]["text"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(text, "Hello from the fake upstream");
        let delta = parse(&events[9].1);
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert_eq!(delta["usage"]["output_tokens"], 7);
        assert_eq!(fake.calls(), 2);
        assert_eq!(fake.last_request().unwrap().header("anthropic-version"), Some("2023-06-01"));
    }

    #[actix_web::test]
    async fn anthropic_tool_use_streams_input_json_deltas() {
        let fake = FakeUpstream::start().await;
        let arguments = r#"{"city": "Paris"}"#;
        fake.set_reply(Reply {
            tool_call: Some(("get_weather".into(), arguments.into())),
            ..Reply::default()
        });

        let (_, _, text) = call(&fake, "anthropic", false).await;
        let body = parse(&text.unwrap());
        assert_eq!(body["stop_reason"], "tool_use");
        assert_eq!(body["content"][1]["type"], "tool_use");
        assert_eq!(body["content"][1]["input"], json!({"city": "Paris"}));

        let (_, _, text) = call(&fake, "anthropic", true).await;
        let events: Vec<Value> = sse(&text.unwrap()).iter().map(|(_, d)| parse(d)).collect();
        let start =
            events.iter().find(|e| e["type"] == "content_block_start" && e["index"] == 1).unwrap();
        assert_eq!(start["content_block"]["type"], "tool_use");
        assert_eq!(start["content_block"]["name"], "get_weather");
        let partial: String = events
            .iter()
            .filter(|e| e["delta"]["type"] == "input_json_delta")
            .map(|e| e["delta"]["partial_json"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(partial, arguments);
        let delta = events.iter().find(|e| e["type"] == "message_delta").unwrap();
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    }

    #[actix_web::test]
    async fn a_queued_fault_is_used_once_then_answers_are_normal() {
        let fake = FakeUpstream::start().await;
        fake.push_fault(Fault::Status(503));
        fake.push_fault(Fault::Status(529));

        let (status, _, text) = call(&fake, "openrouter", false).await;
        assert_eq!(status, 503);
        let body = parse(&text.unwrap());
        assert_eq!(body["error"]["code"], 503);
        assert!(body["error"]["message"].as_str().unwrap().contains(SECRET_MARKER));

        let (status, _, text) = call(&fake, "anthropic", false).await;
        assert_eq!(status, 529);
        let body = parse(&text.unwrap());
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "overloaded_error");
        assert!(body["error"]["message"].as_str().unwrap().contains(SECRET_MARKER));

        let (status, _, _) = call(&fake, "openrouter", false).await;
        assert_eq!(status, 200);
        assert_eq!(fake.calls(), 3);
    }

    #[actix_web::test]
    async fn the_default_fault_applies_until_cleared_and_errors_keep_their_envelopes() {
        let fake = FakeUpstream::start().await;
        fake.set_default_fault(Some(Fault::ModelNotFound));

        let (status, _, text) = call(&fake, "openrouter", false).await;
        assert_eq!(status, 400);
        assert_eq!(parse(&text.unwrap())["error"]["availability"]["code"], "model_not_found");
        let (status, _, text) = call(&fake, "anthropic", true).await;
        assert_eq!(status, 404);
        assert_eq!(parse(&text.unwrap())["error"]["type"], "not_found_error");

        fake.set_default_fault(None);
        fake.push_fault(Fault::BadRequest("max_tokens is too large".into()));
        let (status, _, text) = call(&fake, "anthropic", false).await;
        assert_eq!(status, 400);
        let body = parse(&text.unwrap());
        assert_eq!(
            body["error"],
            json!({"type": "invalid_request_error", "message": "max_tokens is too large"})
        );
        assert_eq!(call(&fake, "anthropic", false).await.0, 200);
    }

    #[actix_web::test]
    async fn missing_credentials_get_401_without_consuming_a_fault() {
        let fake = FakeUpstream::start().await;
        fake.push_fault(Fault::Status(500));

        let (status, _, text) =
            call_with(&fake, "openrouter", &body("openrouter", false), &[]).await;
        assert_eq!(status, 401);
        assert_eq!(parse(&text.unwrap())["error"]["code"], 401);
        let (status, _, text) = call_with(
            &fake,
            "anthropic",
            &body("anthropic", false),
            &[("x-api-key", "sk-ant-test")],
        )
        .await;
        assert_eq!(status, 401);
        assert_eq!(parse(&text.unwrap())["error"]["type"], "authentication_error");

        assert_eq!(call(&fake, "openrouter", false).await.0, 500);
        assert_eq!(fake.calls(), 3);
    }

    #[actix_web::test]
    async fn reset_connection_is_a_transport_error() {
        let fake = FakeUpstream::start().await;
        fake.push_fault(Fault::ResetConnection);

        let result = client()
            .post(url(&fake, "openrouter"))
            .insert_header(("Authorization", "Bearer sk-or-v1-test"))
            .send_body(body("openrouter", false).to_string())
            .await;

        assert!(
            result.is_err(),
            "expected a transport error, got {:?}",
            result.map(|r| r.status())
        );
        assert_eq!(fake.calls(), 1);
        assert_eq!(call(&fake, "openrouter", false).await.0, 200);
    }

    #[actix_web::test]
    async fn cut_streams_end_abruptly_and_mid_stream_errors_follow_the_spec() {
        let fake = FakeUpstream::start().await;

        // awc reports a chunked body cut by EOF as a normal end, so look at the wire: the
        // last chunk ("0\r\n\r\n") never comes, and the connection closes.
        fake.push_fault(Fault::CutStream { after_chunks: 2 });
        let wire = raw_post(&fake, "/openrouter/chat/completions", &body("openrouter", true)).await;
        assert!(wire.starts_with("HTTP/1.1 200"), "{wire}");
        assert!(wire.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{wire}");
        assert!(wire.contains(" from"), "two chunks were sent: {wire}");
        assert!(!wire.contains(" the"), "the third was not: {wire}");
        assert!(!wire.ends_with("0\r\n\r\n"), "no last chunk: {wire}");
        let (status, _, text) = call(&fake, "anthropic", true).await;
        assert_eq!(status, 200);
        assert!(text
            .unwrap()
            .ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        fake.push_fault(Fault::CutStream { after_chunks: 0 });
        let (_, _, text) = call(&fake, "anthropic", true).await;
        let names: Vec<String> = sse(&text.unwrap()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["message_start", "content_block_start", "ping"]);

        fake.push_fault(Fault::MidStreamError { after_chunks: 2 });
        let (_, _, text) = call(&fake, "openrouter", true).await;
        let events = sse(&text.unwrap());
        let last = parse(&events.last().unwrap().1);
        assert_eq!(events.len(), 4, "comment, 2 chunks, error: {events:?}");
        assert_eq!(last["error"]["code"], 429);
        assert_eq!(last["choices"][0]["finish_reason"], "error");

        fake.push_fault(Fault::MidStreamError { after_chunks: 1 });
        let (_, _, text) = call(&fake, "anthropic", true).await;
        let events = sse(&text.unwrap());
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["message_start", "content_block_start", "ping", "content_block_delta", "error"]
        );
        assert_eq!(parse(&events[4].1)["error"]["type"], "overloaded_error");

        fake.push_fault(Fault::MalformedJson);
        let (status, _, text) = call(&fake, "anthropic", false).await;
        assert_eq!(status, 200);
        assert!(serde_json::from_str::<Value>(&text.unwrap()).is_err());

        fake.push_fault(Fault::StallStream { after_chunks: 1, stall: Duration::from_millis(50) });
        let started = std::time::Instant::now();
        let (_, _, text) = call(&fake, "anthropic", true).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(sse(&text.unwrap()).last().unwrap().0, "message_stop");
    }

    #[actix_web::test]
    async fn malformed_json_wrong_shape_and_delay() {
        let fake = FakeUpstream::start().await;

        fake.push_fault(Fault::MalformedJson);
        let (status, _, text) = call(&fake, "openrouter", true).await;
        assert_eq!(status, 200);
        let events = sse(&text.unwrap());
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(serde_json::from_str::<Value>(&events[1].1).is_err());

        fake.push_fault(Fault::WrongShape);
        let (status, _, text) = call(&fake, "anthropic", false).await;
        assert_eq!(status, 200);
        assert_eq!(parse(&text.unwrap()), json!({"foo": 1}));

        fake.push_fault(Fault::StatusWithBody(502, "<html>bad gateway</html>".into()));
        let (status, _, text) = call(&fake, "openrouter", false).await;
        assert_eq!((status, text.unwrap().as_str()), (502, "<html>bad gateway</html>"));

        fake.push_fault(Fault::Delay(Duration::from_millis(100)));
        let started = std::time::Instant::now();
        let (status, _, _) = call(&fake, "openrouter", false).await;
        assert_eq!(status, 200);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    /// Streams always contain events sent as two writes (mid-JSON, and between `event:` and
    /// `data:` / between the two newlines), whatever the client's reads make of them.
    #[test]
    fn streams_split_events_across_writes() {
        for route in [Route::OpenRouter, Route::Anthropic] {
            let ctx = Ctx {
                route,
                seq: 1,
                created: 0,
                model: "m".into(),
                stream: true,
                reply: Reply::default(),
                fault: None,
            };
            let events = match route {
                Route::OpenRouter => ctx.openrouter_events(),
                Route::Anthropic => ctx.anthropic_events(),
            };
            let splits: Vec<(&str, &str)> = events
                .iter()
                .filter_map(|e| e.split.map(|at| (&e.text[..at], &e.text[at..])))
                .collect();
            assert!(splits.len() >= 2, "{route:?}");
            assert!(splits.iter().any(|(a, _)| a.contains("data: {") && !a.ends_with('\n')));
        }
    }
}
