//! Relays a provider's chunk stream to the client as Server-Sent Events, then settles the
//! bill and sends the usage chunk and `[DONE]`. The relay runs as its own task feeding a
//! small channel, so it notices a client that went away (the channel closes) and still
//! settles for what was delivered.

use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::HttpResponse;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::error::UNAVAILABLE;
use crate::metering::{usage_json, Meter};
use crate::providers::breaker::{Outcome, Permit};
use crate::providers::{ChunkStream, StreamItem, TokenUsage};

/// Chunks buffered between the relay and the socket. Small, so "sent" is close to
/// "delivered" when the client disconnects.
const BUFFERED_CHUNKS: usize = 4;

/// `permit` learns the upstream's outcome when the stream ends: a cut or failed stream counts
/// against the provider's circuit, a client that went away does not.
pub fn relay(chunks: ChunkStream, meter: Meter, idle: Duration, permit: Permit) -> HttpResponse {
    let (tx, rx) = mpsc::channel::<Bytes>(BUFFERED_CHUNKS);
    actix_web::rt::spawn(async move {
        let status = run(chunks, meter, idle, tx).await;
        match status {
            "completed" => permit.report(Outcome::Success),
            "upstream_failed" => permit.report(Outcome::Failure),
            _ => drop(permit),
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|bytes| (Ok::<_, actix_web::Error>(bytes), rx))
    });
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONNECTION, "keep-alive"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

fn event(value: &impl serde::Serialize) -> Bytes {
    let mut line = b"data: ".to_vec();
    // Serialising a serde_json value cannot fail.
    let _ = serde_json::to_writer(&mut line, value);
    line.extend_from_slice(b"\n\n");
    Bytes::from(line)
}

/// Relays, settles and finishes the stream; returns how it ended.
async fn run(
    mut chunks: ChunkStream,
    meter: Meter,
    idle: Duration,
    tx: mpsc::Sender<Bytes>,
) -> &'static str {
    let mut usage: Option<TokenUsage> = None;
    let mut delivered_tokens = 0u64;
    let mut status = "completed";
    // The usage chunk repeats the stream's id, created and model.
    let mut header_fields = Map::new();
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
                if tx.send(event(&chunk)).await.is_err() {
                    status = "client_disconnected";
                    break;
                }
                delivered_tokens += completion_tokens;
            }
            Ok(StreamItem::Usage(reported)) => usage = Some(reported),
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
    let settled = meter.settle(usage, status).await;
    if status == "client_disconnected" {
        return status;
    }
    if status == "upstream_failed" {
        let _ = tx.send(event(&json!({ "error": { "message": UNAVAILABLE } }))).await;
    }
    match settled {
        Ok(settled) => {
            let mut last = header_fields;
            last.insert("object".into(), json!("chat.completion.chunk"));
            last.insert("choices".into(), json!([]));
            last.insert("usage".into(), usage_json(usage, settled));
            let _ = tx.send(event(&Value::Object(last))).await;
        }
        Err(e) => {
            log::error!("stream settlement failed: {e:?}");
            if status == "completed" {
                let _ = tx.send(event(&json!({ "error": { "message": UNAVAILABLE } }))).await;
            }
        }
    }
    let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    status
}
