//! What the HTTP providers share: the client, reading bodies within limits, turning an SSE
//! body into events, and describing transport failures for the log.

use std::time::Duration;

use actix_web::web::Bytes;
use futures_util::{Stream, StreamExt};

use super::sse::{SseEvent, SseParser};
use super::UpstreamError;

/// Error bodies are only logged; a few kilobytes say everything useful.
pub const ERROR_BODY_LIMIT: usize = 16 * 1024;
/// A completion larger than this is not a completion.
pub const BODY_LIMIT: usize = 64 * 1024 * 1024;
/// One SSE event larger than this means a broken or hostile upstream.
pub const EVENT_LIMIT: usize = 8 * 1024 * 1024;

/// A client for one worker thread. `timeout` bounds connecting, sending and the response
/// head; bodies are bounded by the callers.
pub fn client(timeout: Duration) -> awc::Client {
    // awc's default pool holds at most 100 upstream connections per worker, which would cap
    // how many streams a worker relays at once (LLM streams last tens of seconds).
    let connector = awc::Connector::new().limit(0);
    awc::Client::builder()
        .connector(connector)
        .timeout(timeout)
        .disable_redirects()
        .add_default_header(("user-agent", concat!("quantized/", env!("CARGO_PKG_VERSION"))))
        .finish()
}

/// A response whose status was a success; its body is still to be read.
pub type Response = awc::ClientResponse;

/// Sends a prepared JSON POST. A transport failure is `Unavailable`; a non-2xx answer
/// becomes whatever `classify` makes of its status and (bounded) body.
pub async fn post_json(
    request: awc::ClientRequest,
    body: &impl serde::Serialize,
    provider: &str,
    classify: fn(u16, &[u8]) -> UpstreamError,
) -> Result<Response, UpstreamError> {
    let mut res = request.send_json(body).await.map_err(|e| transport_error(provider, e))?;
    if !res.status().is_success() {
        let text = error_body(&mut res).await;
        return Err(classify(res.status().as_u16(), &text));
    }
    Ok(res)
}

pub fn transport_error(provider: &str, e: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Unavailable(format!("{provider}: request failed: {e}"))
}

/// Reads a whole body, failing past `limit` bytes or past `deadline`.
pub async fn read_body<S>(
    body: &mut S,
    limit: usize,
    deadline: Duration,
    provider: &str,
) -> Result<Bytes, UpstreamError>
where
    S: Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
{
    let read = async {
        let mut buf = actix_web::web::BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| transport_error(provider, format!("reading body: {e}")))?;
            if buf.len() + chunk.len() > limit {
                return Err(UpstreamError::Unavailable(format!(
                    "{provider}: body larger than {limit} bytes"
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    actix_web::rt::time::timeout(deadline, read).await.unwrap_or_else(|_| {
        Err(UpstreamError::Unavailable(format!(
            "{provider}: body not complete within {deadline:?}"
        )))
    })
}

/// The body of a failed response, for the log (empty if unreadable).
pub async fn error_body<S>(body: &mut S) -> Bytes
where
    S: Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
{
    let mut buf = actix_web::web::BytesMut::new();
    let read = async {
        while let Some(Ok(chunk)) = body.next().await {
            let room = ERROR_BODY_LIMIT.saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if room <= chunk.len() {
                break;
            }
        }
    };
    let _ = actix_web::rt::time::timeout(Duration::from_secs(5), read).await;
    buf.freeze()
}

/// An SSE body as a stream of events. A transport error or an oversized event ends it with
/// an error; the end of the body ends it cleanly (the caller decides if that was too early).
pub fn sse_events<S>(
    body: S,
    provider: &'static str,
) -> impl Stream<Item = Result<SseEvent, UpstreamError>>
where
    S: Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin + 'static,
{
    let state = (body, SseParser::new(EVENT_LIMIT), std::collections::VecDeque::new(), false);
    futures_util::stream::unfold(
        state,
        move |(mut body, mut parser, mut pending, mut failed)| async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    return Some((Ok(event), (body, parser, pending, failed)));
                }
                if failed {
                    return None;
                }
                match body.next().await {
                    None => return None,
                    Some(Ok(bytes)) => match parser.push(&bytes) {
                        Ok(events) => pending.extend(events),
                        Err(e) => {
                            failed = true;
                            return Some((
                                Err(UpstreamError::Unavailable(format!("{provider}: {e}"))),
                                (body, parser, pending, failed),
                            ));
                        }
                    },
                    Some(Err(e)) => {
                        failed = true;
                        let err = transport_error(provider, format!("stream: {e}"));
                        return Some((Err(err), (body, parser, pending, failed)));
                    }
                }
            }
        },
    )
}

/// `{"error":{"message":…}}` or `{"error":"…"}` or `{"message":…}`: whatever the upstream said, for the log
/// and for 400s about the request.
pub fn error_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let message = value
        .pointer("/error/message")
        .or_else(|| value.get("error").filter(|e| e.is_string()))
        .or_else(|| value.get("message"))?;
    message.as_str().map(str::to_string)
}
