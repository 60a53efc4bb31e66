//! Upstream providers. Each turns a validated chat request into an OpenAI-shaped completion
//! or chunk stream and reports token usage, or (Exa, Tavily, demo) a web search or fetch into
//! the documented result shapes (`search.rs`); none knows about credits or keys. Each has a
//! circuit breaker (an actor shared by all workers) that routing consults.

pub mod anthropic;
pub mod breaker;
pub mod demo;
mod demo_search;
pub mod exa;
pub mod http;
pub mod openrouter;
pub mod search;
pub mod sse;
pub mod tavily;

use std::collections::HashMap;
use std::time::Duration;

use actix::{Actor, Addr, Arbiter};
use futures_util::stream::{LocalBoxStream, Stream, StreamExt};
use serde_json::{Map, Value};

use crate::config::Settings;
use crate::validation::chat::ChatRequest;
use crate::validation::embeddings::EmbeddingsRequest;
use crate::validation::responses::ResponsesRequest;
use breaker::{Breaker, Health, ProviderActor};
use sse::SseEvent;

/// Every provider slug the gateway knows, and the ones that serve chat (design §0).
pub const KNOWN_PROVIDERS: &[&str] = &["openrouter", "anthropic", "exa", "tavily", "demo"];
pub const CHAT_PROVIDERS: &[&str] = &["openrouter", "anthropic", "demo"];
pub const EMBEDDING_PROVIDERS: &[&str] = &["openrouter", "demo"];
/// The public docs give only OpenRouter for the Responses API (design §0); demo is ours.
pub const RESPONSES_PROVIDERS: &[&str] = &["openrouter", "demo"];
/// The providers of `/v1/web-search` and `/v1/fetch`, in default route order.
pub const SEARCH_PROVIDERS: &[&str] = &["exa", "tavily", "demo"];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// One chat call as a provider receives it (borrowed: a fallback retries the same request).
pub struct ChatCall<'a> {
    pub upstream_model: &'a str,
    pub request: &'a ChatRequest,
    /// The output ceiling the credit hold pays for; never ask upstream for more.
    pub max_output_tokens: u64,
}

/// One Responses API call as a provider receives it.
pub struct ResponsesCall<'a> {
    pub upstream_model: &'a str,
    pub request: &'a ResponsesRequest,
    pub max_output_tokens: u64,
}

/// One embeddings call as a provider receives it.
pub struct EmbeddingsCall<'a> {
    pub upstream_model: &'a str,
    pub request: &'a EmbeddingsRequest,
}

/// One vector per input, in input order, and the upstream's input token count.
pub struct Embeddings {
    pub vectors: Vec<Vec<f64>>,
    pub prompt_tokens: u64,
}

/// A piece of an upstream stream, already in `chat.completion.chunk` shape.
pub enum StreamItem {
    Chunk {
        chunk: Map<String, Value>,
        /// Output tokens this chunk carries, to bill a stream cut before its usage arrives.
        completion_tokens: u64,
    },
    /// The upstream's own (cumulative) count; the latest one wins.
    Usage(TokenUsage),
    /// A terminal event (Responses API `response.completed`) that must carry our credits, so
    /// the relay sends it only after settling.
    Final(Map<String, Value>),
}

pub type ChunkStream = LocalBoxStream<'static, Result<StreamItem, UpstreamError>>;

pub enum ChatReply {
    /// A `chat.completion` object without our credit fields, and the upstream's usage.
    Complete {
        completion: Map<String, Value>,
        usage: TokenUsage,
    },
    Stream(ChunkStream),
}

/// How an upstream call failed. Routing decides what the client sees: 404, 400, or a
/// masked 503 (the text of `Unavailable` is only ever logged).
#[derive(Debug)]
pub enum UpstreamError {
    ModelNotFound,
    /// The request was refused; the text says why and is shown to the client.
    BadRequest(String),
    /// This provider cannot honour the request; another route may, else 400 with this text.
    Unsupported(String),
    Unavailable(String),
}

/// Turns one upstream SSE event into what the client should get.
pub trait StreamTranslate {
    fn on_event(&mut self, event: &SseEvent) -> Result<Vec<StreamItem>, UpstreamError>;
    /// True once the upstream said the stream is complete; an end of body before that is a cut.
    fn finished(&self) -> bool;
}

/// Applies a translator to an SSE event stream; a body that ends before the translator
/// saw the end becomes an error, so a cut upstream is never mistaken for a finished one.
pub fn translated_stream<T: StreamTranslate + 'static>(
    events: impl Stream<Item = Result<SseEvent, UpstreamError>> + 'static,
    translator: T,
) -> ChunkStream {
    let state = (Box::pin(events), translator, std::collections::VecDeque::new(), false);
    futures_util::stream::unfold(
        state,
        |(mut events, mut translator, mut pending, mut ended)| async move {
            loop {
                if let Some(item) = pending.pop_front() {
                    return Some((Ok(item), (events, translator, pending, ended)));
                }
                if ended {
                    return None;
                }
                match events.next().await {
                    Some(Ok(event)) => match translator.on_event(&event) {
                        Ok(items) => pending.extend(items),
                        Err(e) => {
                            ended = true;
                            return Some((Err(e), (events, translator, pending, ended)));
                        }
                    },
                    Some(Err(e)) => {
                        ended = true;
                        return Some((Err(e), (events, translator, pending, ended)));
                    }
                    None => {
                        ended = true;
                        if !translator.finished() {
                            let err = UpstreamError::Unavailable(
                                "stream ended before it was complete".into(),
                            );
                            return Some((Err(err), (events, translator, pending, ended)));
                        }
                    }
                }
            }
        },
    )
    .boxed_local()
}

enum Backend {
    Demo(demo::Demo),
    OpenRouter(openrouter::OpenRouter),
    Anthropic(anthropic::Anthropic),
    Exa(exa::Exa),
    Tavily(tavily::Tavily),
}

pub struct Provider {
    pub name: &'static str,
    pub breaker: Addr<ProviderActor>,
    pub health: Health,
    backend: Backend,
}

impl Provider {
    pub async fn chat(&self, call: &ChatCall<'_>) -> Result<ChatReply, UpstreamError> {
        match &self.backend {
            Backend::Demo(demo) => Ok(demo.chat(call)),
            Backend::OpenRouter(p) => p.chat(call).await,
            Backend::Anthropic(p) => p.chat(call).await,
            Backend::Exa(_) | Backend::Tavily(_) => Err(UpstreamError::Unsupported(format!(
                "Provider '{}' does not support this endpoint",
                self.name
            ))),
        }
    }

    /// A Responses API call: `Complete` holds a `response` object, `Stream` its events.
    pub async fn responses(&self, call: &ResponsesCall<'_>) -> Result<ChatReply, UpstreamError> {
        match &self.backend {
            Backend::Demo(demo) => Ok(demo.responses(call)),
            Backend::OpenRouter(p) => p.responses(call).await,
            Backend::Anthropic(_) | Backend::Exa(_) | Backend::Tavily(_) => {
                Err(UpstreamError::Unsupported(format!(
                    "Provider '{}' does not support the Responses API",
                    self.name
                )))
            }
        }
    }

    pub async fn embeddings(&self, call: &EmbeddingsCall<'_>) -> Result<Embeddings, UpstreamError> {
        match &self.backend {
            Backend::Demo(demo) => Ok(demo.embeddings(call)),
            Backend::OpenRouter(p) => p.embeddings(call).await,
            Backend::Anthropic(_) | Backend::Exa(_) | Backend::Tavily(_) => {
                Err(UpstreamError::Unsupported(format!(
                    "Provider '{}' does not serve embeddings",
                    self.name
                )))
            }
        }
    }
}

/// The circuit breakers, one per configured provider, shared by every worker.
pub type Breakers = HashMap<&'static str, (Addr<ProviderActor>, Health)>;

/// Slugs of the providers this configuration enables.
fn configured(settings: &Settings) -> Vec<&'static str> {
    let p = &settings.providers;
    [
        ("openrouter", p.openrouter.is_configured()),
        ("anthropic", p.anthropic.is_configured()),
        ("exa", p.exa.is_configured()),
        ("tavily", p.tavily.is_configured()),
        ("demo", p.demo.enabled),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect()
}

pub fn start_breakers(settings: &Settings) -> Breakers {
    let arbiter = Arbiter::new();
    configured(settings)
        .into_iter()
        .map(|name| {
            let open_for = Duration::from_secs(settings.breaker.open_secs);
            let actor = ProviderActor::new(
                name,
                Breaker::new(settings.breaker.failure_threshold, open_for),
            );
            let health = actor.health();
            (name, (ProviderActor::start_in_arbiter(&arbiter.handle(), move |_| actor), health))
        })
        .collect()
}

/// The providers of one worker thread (HTTP clients are per thread).
pub struct Providers {
    by_name: HashMap<&'static str, Provider>,
}

impl Providers {
    pub fn new(settings: &Settings, breakers: &Breakers) -> Providers {
        let timeout = Duration::from_secs(settings.limits.upstream_timeout_secs);
        let p = &settings.providers;
        let by_name = breakers
            .iter()
            .map(|(&name, (breaker, health))| {
                let backend = match name {
                    "openrouter" => {
                        Backend::OpenRouter(openrouter::OpenRouter::new(&p.openrouter, timeout))
                    }
                    "anthropic" => {
                        Backend::Anthropic(anthropic::Anthropic::new(&p.anthropic, timeout))
                    }
                    "exa" => Backend::Exa(exa::Exa::new(&p.exa, timeout)),
                    "tavily" => Backend::Tavily(tavily::Tavily::new(&p.tavily, timeout)),
                    _ => Backend::Demo(demo::Demo::new(&p.demo)),
                };
                (name, Provider { name, breaker: breaker.clone(), health: health.clone(), backend })
            })
            .collect();
        Providers { by_name }
    }

    /// `None` = not configured (a model only it serves answers 503).
    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.by_name.get(name)
    }
}
