//! Upstream providers. Each provider turns a validated chat request into an OpenAI-shaped
//! completion or chunk stream and reports token usage; it knows nothing of credits or keys.
//! The handler owns billing; a provider only says what happened.

pub mod demo;

use std::collections::HashMap;

use futures_util::stream::LocalBoxStream;
use serde_json::{Map, Value};

use crate::config::Settings;
use crate::validation::chat::ChatRequest;

/// Every provider slug the gateway knows, and the endpoints each serves (design §0).
pub const KNOWN_PROVIDERS: &[&str] = &["openrouter", "anthropic", "exa", "tavily", "demo"];
pub const CHAT_PROVIDERS: &[&str] = &["openrouter", "anthropic", "demo"];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// One chat call as the provider receives it.
pub struct ChatCall {
    pub upstream_model: String,
    pub request: ChatRequest,
    /// The output ceiling the credit hold pays for; never ask upstream for more.
    pub max_output_tokens: u64,
}

/// A piece of an upstream stream, already in `chat.completion.chunk` shape.
pub enum StreamItem {
    Chunk {
        chunk: Map<String, Value>,
        /// Output tokens this chunk carries, to bill a stream cut before its usage arrives.
        completion_tokens: u64,
    },
    /// The upstream's own count, normally at the end.
    Usage(TokenUsage),
}

pub type ChunkStream = LocalBoxStream<'static, Result<StreamItem, UpstreamError>>;

pub enum ChatReply {
    /// A `chat.completion` object without our usage fields, and the upstream's usage.
    Complete {
        completion: Map<String, Value>,
        usage: TokenUsage,
    },
    Stream(ChunkStream),
}

/// How an upstream call failed; mapped to 404, 400 or a masked 503 by the handler.
#[derive(Debug)]
pub enum UpstreamError {
    ModelNotFound,
    /// The upstream refused the request itself; the text is ours, safe to show.
    BadRequest(String),
    Unavailable(anyhow::Error),
}

pub enum Provider {
    Demo(demo::Demo),
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Demo(_) => "demo",
        }
    }

    pub async fn chat(&self, call: ChatCall) -> Result<ChatReply, UpstreamError> {
        match self {
            Provider::Demo(demo) => Ok(demo.chat(call)),
        }
    }
}

/// The providers this gateway has configured, by slug.
pub struct Providers {
    by_name: HashMap<&'static str, Provider>,
}

impl Providers {
    pub fn from_settings(settings: &Settings) -> Providers {
        let mut by_name = HashMap::new();
        if settings.providers.demo.enabled {
            by_name.insert("demo", Provider::Demo(demo::Demo::new(&settings.providers.demo)));
        }
        Providers { by_name }
    }

    /// `None` = not configured (a model only it serves answers 503).
    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.by_name.get(name)
    }
}
