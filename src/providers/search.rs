//! Web search and fetch as providers serve them (design §7): what a call asks for and what
//! comes back, already in the shapes of quantized-api.md §3.10 and §3.11. Exa and Tavily map
//! their own APIs to these; the demo provider makes them up offline.

use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use serde_json::{Map, Value};

use super::{http, Backend, Provider, UpstreamError};

/// `status` of a fetched URL that is billed.
pub const FETCH_SUCCESS: &str = "success";
/// `status` of a URL that could not be fetched.
pub const FETCH_ERROR: &str = "error";

pub struct SearchCall<'a> {
    pub query: &'a str,
    pub num_results: u32,
}

/// One result, as `results[]` of `/v1/web-search` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub title: String,
    pub url: String,
    pub id: Option<String>,
    pub published_date: Option<String>,
    pub author: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchReply {
    pub results: Vec<SearchHit>,
    /// Seconds, as the provider reported it; the gateway measures when it did not.
    pub search_time: Option<f64>,
}

pub struct FetchCall<'a> {
    /// Distinct URLs; the reply has one page per URL, in this order.
    pub urls: &'a [String],
    pub include_text: bool,
}

/// One URL's outcome, as `results[]` of `/v1/fetch` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedPage {
    pub url: String,
    pub title: Option<String>,
    pub text: Option<String>,
    pub status: String,
}

impl FetchedPage {
    pub fn failed(url: &str) -> FetchedPage {
        FetchedPage { url: url.to_string(), title: None, text: None, status: FETCH_ERROR.into() }
    }

    /// A page the provider returned: its title, and the text in `text_field` when asked for.
    pub fn found(url: &str, page: &Value, text_field: &str, include_text: bool) -> FetchedPage {
        FetchedPage {
            url: url.to_string(),
            title: non_empty(text_of(page, "title")),
            text: if include_text { text_of(page, text_field).map(str::to_string) } else { None },
            status: FETCH_SUCCESS.into(),
        }
    }

    pub fn succeeded(&self) -> bool {
        self.status == FETCH_SUCCESS
    }
}

impl Provider {
    pub async fn web_search(&self, call: &SearchCall<'_>) -> Result<SearchReply, UpstreamError> {
        match &self.backend {
            Backend::Demo(demo) => Ok(demo.web_search(call)),
            Backend::Exa(p) => p.web_search(call).await,
            Backend::Tavily(p) => p.web_search(call).await,
            _ => Err(self.not_a_search_provider()),
        }
    }

    /// One page per URL of `call.urls`, in order; a URL that failed is a page with its status.
    pub async fn fetch(&self, call: &FetchCall<'_>) -> Result<Vec<FetchedPage>, UpstreamError> {
        let pages = match &self.backend {
            Backend::Demo(demo) => demo.fetch(call),
            Backend::Exa(p) => p.fetch(call).await?,
            Backend::Tavily(p) => p.fetch(call).await?,
            _ => return Err(self.not_a_search_provider()),
        };
        debug_assert_eq!(pages.len(), call.urls.len());
        Ok(pages)
    }

    fn not_a_search_provider(&self) -> UpstreamError {
        UpstreamError::Unsupported(format!(
            "Provider '{}' does not support this endpoint",
            self.name
        ))
    }
}

/// What an HTTP search provider answered: a JSON object, or a failure status with its body
/// (for the provider to classify).
pub(super) enum Answer {
    Json(Map<String, Value>),
    Status(u16, Bytes),
}

/// POSTs `body` as JSON and reads the whole answer within `timeout` (head and body together).
/// Transport failures, timeouts and a 2xx that is not a JSON object are `Unavailable`.
pub(super) async fn post_json(
    request: awc::ClientRequest,
    body: &Value,
    timeout: Duration,
    provider: &'static str,
) -> Result<Answer, UpstreamError> {
    let started = Instant::now();
    let mut res = request.send_json(body).await.map_err(|e| http::transport_error(provider, e))?;
    let status = res.status();
    if !status.is_success() {
        return Ok(Answer::Status(status.as_u16(), http::error_body(&mut res).await));
    }
    let left = timeout.saturating_sub(started.elapsed());
    let bytes = http::read_body(&mut res, http::BODY_LIMIT, left, provider).await?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(Answer::Json(map)),
        Ok(_) => Err(malformed(provider, "not a JSON object")),
        Err(e) => Err(malformed(provider, &format!("not JSON ({e})"))),
    }
}

pub(super) fn malformed(provider: &str, what: &str) -> UpstreamError {
    UpstreamError::Unavailable(format!("{provider}: malformed response: {what}"))
}

/// A 400/422 says our request was refused (the client sees why); anything else (401/403 of our
/// key, 402/432/433 credits, 408, 429, 5xx) is the provider's trouble: masked, and a failure
/// for its circuit breaker.
pub(super) fn classify_status(
    provider: &str,
    status: u16,
    message: Option<String>,
) -> UpstreamError {
    match (status, message) {
        (400 | 422, Some(message)) => {
            UpstreamError::BadRequest(format!("The provider rejected the request: {message}"))
        }
        (400 | 422, None) => UpstreamError::BadRequest("The provider rejected the request".into()),
        (_, message) => UpstreamError::Unavailable(format!(
            "{provider} answered {status}: {}",
            message.unwrap_or_default()
        )),
    }
}

/// Text the provider sent, or nothing: an empty string says no more than `null` does.
/// A string field of a provider's JSON object.
pub fn text_of<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object.get(key).and_then(Value::as_str)
}

pub fn non_empty(text: Option<&str>) -> Option<String> {
    text.map(str::trim).filter(|t| !t.is_empty()).map(str::to_string)
}

/// Whether a provider's URL names the one we asked for: exactly, or but for a trailing slash
/// or the case of the scheme and host (providers normalise URLs before answering).
pub fn same_url(asked: &str, answered: &str) -> bool {
    fn normal(url: &str) -> String {
        let url = url.trim().trim_end_matches('/');
        match url.split_once("://") {
            Some((scheme, rest)) => {
                let (host, path) =
                    rest.find(['/', '?', '#']).map_or((rest, ""), |at| rest.split_at(at));
                format!("{}://{}{path}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase())
            }
            None => url.to_string(),
        }
    }
    asked == answered || normal(asked) == normal(answered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_match_across_provider_normalisation() {
        assert!(same_url("https://a.example/x", "https://a.example/x"));
        assert!(same_url("https://a.example", "https://a.example/"));
        assert!(same_url("HTTPS://A.example/Path", "https://a.example/Path"));
        assert!(!same_url("https://a.example/Path", "https://a.example/path"));
        assert!(!same_url("https://a.example/x", "https://a.example/y"));
    }

    #[test]
    fn blank_text_is_none() {
        assert_eq!(non_empty(Some("  ")), None);
        assert_eq!(non_empty(None), None);
        assert_eq!(non_empty(Some(" t ")), Some("t".into()));
    }
}
