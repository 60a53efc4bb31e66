//! Relays a provider's stream to the client as Server-Sent Events, then settles the bill and
//! ends the stream the way its protocol does: chat completions with a usage chunk and
//! `[DONE]`, the Responses API with its terminal event carrying usage and credits. The relay
//! runs as its own task feeding a small channel, so it notices a client that went away (the
//! channel closes) and still settles for what was delivered.

use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::HttpResponse;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::error::UNAVAILABLE;
use crate::ledger::Settled;
use crate::metering::{usage_json, Meter};
use crate::providers::breaker::{Outcome, Permit};
use crate::providers::{ChunkStream, StreamItem, TokenUsage, UpstreamError};

/// Chunks buffered between the relay and the socket. Small, so "sent" is close to
/// "delivered" when the client disconnects.
const BUFFERED_CHUNKS: usize = 4;
/// Most items held back while waiting for a stream's first content.
const MAX_HELD_ITEMS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `data: {chunk}` events, a final usage chunk, then `data: [DONE]`.
    ChatCompletions,
    /// `event: <type>` + `data: {…}` pairs; the terminal `response.completed` carries usage.
    Responses,
}

/// Waits until a stream has produced real output (text, a tool call or a finish reason),
/// holding back what comes before it (the role chunk, early usage). Until then nothing has
/// reached the client, so an upstream that fails can still fall over to the next route.
pub async fn first_output(
    mut chunks: ChunkStream,
    idle: Duration,
) -> Result<ChunkStream, UpstreamError> {
    let mut held = Vec::new();
    loop {
        let item = match actix_web::rt::time::timeout(idle, chunks.next()).await {
            Ok(Some(item)) => item?,
            Ok(None) => {
                return Err(UpstreamError::Unavailable(
                    "stream ended before its first output".into(),
                ))
            }
            Err(_) => {
                return Err(UpstreamError::Unavailable(format!("no stream output within {idle:?}")))
            }
        };
        let is_output = match &item {
            StreamItem::Chunk { chunk, completion_tokens } => {
                *completion_tokens > 0 || has_finish_reason(chunk)
            }
            StreamItem::Final(_) => true,
            StreamItem::Usage(_) => false,
        };
        held.push(Ok(item));
        if is_output || held.len() >= MAX_HELD_ITEMS {
            return Ok(stream::iter(held).chain(chunks).boxed_local());
        }
    }
}

fn has_finish_reason(chunk: &Map<String, Value>) -> bool {
    chunk.get("choices").and_then(Value::as_array).is_some_and(|choices| {
        choices.iter().any(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()))
    })
}

/// `permit` learns the upstream's outcome when the stream ends: a cut or failed stream counts
/// against the provider's circuit, a client that went away does not.
pub fn relay(
    chunks: ChunkStream,
    meter: Meter,
    idle: Duration,
    permit: Permit,
    protocol: Protocol,
) -> HttpResponse {
    let (tx, rx) = mpsc::channel::<Bytes>(BUFFERED_CHUNKS);
    actix_web::rt::spawn(async move {
        let status = run(chunks, meter, idle, tx, protocol).await;
        match status {
            "completed" => permit.report(Outcome::Success),
            "upstream_failed" => permit.report(Outcome::Failure),
            _ => drop(permit),
        }
    });
    let body = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|bytes| (Ok::<_, actix_web::Error>(bytes), rx))
    });
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONNECTION, "keep-alive"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

/// One SSE event: `data:` only for chat, `event:` named by the payload's `type` for Responses.
fn frame(protocol: Protocol, value: &Map<String, Value>) -> Bytes {
    let mut out = Vec::with_capacity(256);
    if protocol == Protocol::Responses {
        if let Some(kind) = value.get("type").and_then(Value::as_str) {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(kind.as_bytes());
            out.push(b'\n');
        }
    }
    out.extend_from_slice(b"data: ");
    // Serialising a serde_json map cannot fail.
    let _ = serde_json::to_writer(&mut out, value);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The masked error event each protocol's clients understand (the OpenAI SDKs raise on it).
fn error_event(protocol: Protocol) -> Bytes {
    match protocol {
        Protocol::ChatCompletions => {
            frame(protocol, &object(json!({ "error": { "message": UNAVAILABLE } })))
        }
        Protocol::Responses => frame(
            protocol,
            &object(
                json!({ "type": "error", "code": "service_unavailable", "message": UNAVAILABLE, "param": null }),
            ),
        ),
    }
}

/// Relays, settles and finishes the stream; returns how it ended.
async fn run(
    mut chunks: ChunkStream,
    meter: Meter,
    idle: Duration,
    tx: mpsc::Sender<Bytes>,
    protocol: Protocol,
) -> &'static str {
    let mut usage: Option<TokenUsage> = None;
    let mut delivered_tokens = 0u64;
    let mut status = "completed";
    // The chat usage chunk repeats the stream's id, created and model.
    let mut header_fields = Map::new();
    // The Responses terminal event, sent once the credits are known.
    let mut terminal: Option<Map<String, Value>> = None;
    loop {
        let item = match actix_web::rt::time::timeout(idle, chunks.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(_) => {
                log::warn!("{} upstream stream idle for {idle:?}; ending it", meter.request_id());
                status = "upstream_failed";
                break;
            }
        };
        match item {
            Ok(StreamItem::Chunk { chunk, completion_tokens }) => {
                if header_fields.is_empty() {
                    for key in ["id", "created", "model"] {
                        if let Some(v) = chunk.get(key) {
                            header_fields.insert(key.into(), v.clone());
                        }
                    }
                }
                if tx.send(frame(protocol, &chunk)).await.is_err() {
                    status = "client_disconnected";
                    break;
                }
                delivered_tokens += completion_tokens;
            }
            Ok(StreamItem::Usage(reported)) => usage = Some(reported),
            Ok(StreamItem::Final(event)) => terminal = Some(event),
            Err(e) => {
                log::warn!("{} upstream stream failed: {e:?}", meter.request_id());
                status = "upstream_failed";
                break;
            }
        }
    }
    drop(chunks);
    // A complete stream bills the upstream's count; a cut one what was delivered.
    let usage = match (status, usage) {
        ("completed", Some(u)) => u,
        (_, Some(u)) => {
            TokenUsage { prompt_tokens: u.prompt_tokens, completion_tokens: delivered_tokens }
        }
        (_, None) => TokenUsage { prompt_tokens: 0, completion_tokens: delivered_tokens },
    };
    let request_id = meter.request_id().to_string();
    let settled = meter.settle(usage, status).await;
    if status == "client_disconnected" {
        return status;
    }
    if status == "upstream_failed" {
        let _ = tx.send(error_event(protocol)).await;
    }
    match settled {
        Ok(settled) => {
            let last = match protocol {
                Protocol::ChatCompletions => Some(chat_usage_chunk(header_fields, usage, settled)),
                Protocol::Responses => terminal.map(|event| with_credits(event, usage, settled)),
            };
            if let Some(last) = last {
                let _ = tx.send(frame(protocol, &last)).await;
            }
        }
        Err(e) => {
            log::error!("{request_id} stream settlement failed: {e:?}");
            if status == "completed" {
                let _ = tx.send(error_event(protocol)).await;
            }
        }
    }
    if protocol == Protocol::ChatCompletions {
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    }
    status
}

fn chat_usage_chunk(
    mut fields: Map<String, Value>,
    usage: TokenUsage,
    settled: Settled,
) -> Map<String, Value> {
    fields.insert("object".into(), json!("chat.completion.chunk"));
    fields.insert("choices".into(), json!([]));
    fields.insert("usage".into(), usage_json(usage, settled));
    fields
}

/// Puts the Responses usage with our credit fields into a terminal event's `response`.
fn with_credits(
    mut event: Map<String, Value>,
    usage: TokenUsage,
    settled: Settled,
) -> Map<String, Value> {
    if let Some(Value::Object(response)) = event.get_mut("response") {
        response.insert("usage".into(), responses_usage(response.get("usage"), usage, settled));
    }
    event
}

/// The Responses API usage object: the upstream's token details kept, costs dropped, our
/// counts and credits set (design §0).
pub fn responses_usage(theirs: Option<&Value>, usage: TokenUsage, settled: Settled) -> Value {
    let mut out = Map::new();
    out.insert("input_tokens".into(), json!(usage.prompt_tokens));
    if let Some(details) = theirs.and_then(|u| u.get("input_tokens_details")) {
        out.insert("input_tokens_details".into(), details.clone());
    }
    out.insert("output_tokens".into(), json!(usage.completion_tokens));
    if let Some(details) = theirs.and_then(|u| u.get("output_tokens_details")) {
        out.insert("output_tokens_details".into(), details.clone());
    }
    out.insert("total_tokens".into(), json!(usage.prompt_tokens + usage.completion_tokens));
    out.insert("credits_used".into(), json!(settled.credits_used));
    out.insert("credits_remaining".into(), json!(settled.credits_remaining));
    Value::Object(out)
}
