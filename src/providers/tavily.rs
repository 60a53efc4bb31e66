//! Tavily (upstreams.md §5): `POST /search` for web search and `POST /extract` for fetch,
//! authenticated with `Authorization: Bearer`.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::http;
use super::search::{
    classify_status, malformed, non_empty, post_json, same_url, text_of, Answer, FetchCall,
    FetchedPage, SearchCall, SearchHit, SearchReply,
};
use super::UpstreamError;
use crate::config::HttpProvider;

const NAME: &str = "tavily";
/// Tavily's `max_results` tops out here; a larger `num_results` gets what Tavily can give.
pub const MAX_RESULTS: u32 = 20;

pub struct Tavily {
    client: awc::Client,
    search_url: String,
    extract_url: String,
    api_key: String,
    timeout: Duration,
}

impl Tavily {
    pub fn new(settings: &HttpProvider, timeout: Duration) -> Self {
        let base = settings.base_url.trim_end_matches('/');
        Self {
            client: http::client(timeout),
            search_url: format!("{base}/search"),
            extract_url: format!("{base}/extract"),
            api_key: settings.api_key.expose().to_string(),
            timeout,
        }
    }

    async fn post(&self, url: &str, body: &Value) -> Result<Answer, UpstreamError> {
        let request = self.client.post(url).bearer_auth(&self.api_key);
        post_json(request, body, self.timeout, NAME).await
    }

    pub async fn web_search(&self, call: &SearchCall<'_>) -> Result<SearchReply, UpstreamError> {
        let body = json!({"query": call.query, "max_results": call.num_results.min(MAX_RESULTS)});
        match self.post(&self.search_url, &body).await? {
            Answer::Json(reply) => parse_search(&reply),
            Answer::Status(status, body) => Err(classify_error(status, &body)),
        }
    }

    pub async fn fetch(&self, call: &FetchCall<'_>) -> Result<Vec<FetchedPage>, UpstreamError> {
        // Plain text, like Exa's, rather than Tavily's default markdown.
        let body = json!({"urls": call.urls, "format": "text"});
        match self.post(&self.extract_url, &body).await? {
            Answer::Json(reply) => parse_extract(&reply, call),
            Answer::Status(status, body) => Err(classify_error(status, &body)),
        }
    }
}

/// Tavily's errors are `{"detail": {"error": "…"}}`, or FastAPI's `{"detail": [{"msg": …}]}`
/// for a body it could not validate.
fn error_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let detail = value.get("detail")?;
    let message = detail
        .get("error")
        .or_else(|| detail.pointer("/0/msg"))
        .or(Some(detail))
        .and_then(Value::as_str)?;
    Some(message.to_string())
}

fn classify_error(status: u16, body: &[u8]) -> UpstreamError {
    classify_status(NAME, status, error_message(body).or_else(|| http::error_message(body)))
}

fn results(reply: &Map<String, Value>) -> Result<&[Value], UpstreamError> {
    reply
        .get("results")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .ok_or_else(|| malformed(NAME, "no results array"))
}

/// Tavily results have no id or author; `response_time` is seconds (a number, or a numeric
/// string in some answers).
fn parse_search(reply: &Map<String, Value>) -> Result<SearchReply, UpstreamError> {
    let results = results(reply)?
        .iter()
        .filter_map(|r| {
            let url = non_empty(text_of(r, "url"))?;
            Some(SearchHit {
                title: non_empty(text_of(r, "title")).unwrap_or_default(),
                url,
                id: None,
                published_date: non_empty(text_of(r, "published_date")),
                author: None,
            })
        })
        .collect();
    let search_time = reply
        .get("response_time")
        .and_then(|t| t.as_f64().or_else(|| t.as_str().and_then(|s| s.trim().parse().ok())))
        .filter(|s: &f64| s.is_finite() && *s >= 0.0);
    Ok(SearchReply { results, search_time })
}

/// `/extract` lists the pages it got in `results` and the ones it could not get in
/// `failed_results`; its pages have no title.
fn parse_extract(
    reply: &Map<String, Value>,
    call: &FetchCall<'_>,
) -> Result<Vec<FetchedPage>, UpstreamError> {
    let results = results(reply)?;
    Ok(call
        .urls
        .iter()
        .map(|url| {
            let found =
                results.iter().find(|r| text_of(r, "url").is_some_and(|u| same_url(url, u)));
            match found {
                Some(page) => FetchedPage::found(url, page, "raw_content", call.include_text),
                None => FetchedPage::failed(url),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        let Value::Object(map) = value else { panic!("not an object") };
        map
    }

    #[test]
    fn search_results_map_to_the_documented_fields() {
        let reply = object(json!({
            "query": "q", "answer": null, "images": [],
            "results": [
                {"title": "Lionel Messi - Wikipedia", "url": "https://en.wikipedia.org/wiki/Lionel_Messi",
                 "content": "…", "score": 0.81, "raw_content": null,
                 "published_date": "Mon, 09 Jun 2025 12:00:00 GMT"},
                {"title": "No date", "url": "https://e.example/"},
            ],
            "response_time": 1.67,
            "usage": {"credits": 1},
            "request_id": "123",
        }));
        let reply = parse_search(&reply).unwrap();
        assert_eq!(reply.search_time, Some(1.67));
        assert_eq!(reply.results[0].id, None);
        assert_eq!(reply.results[0].author, None);
        assert_eq!(
            reply.results[0].published_date.as_deref(),
            Some("Mon, 09 Jun 2025 12:00:00 GMT")
        );
        assert_eq!(reply.results[1].published_date, None);
        let string_time = object(json!({"results": [], "response_time": "0.5"}));
        assert_eq!(parse_search(&string_time).unwrap().search_time, Some(0.5));
        assert!(parse_search(&object(json!({"answer": "x"}))).is_err());
    }

    #[test]
    fn extract_gives_one_page_per_url() {
        let urls = vec!["https://a.example/".to_string(), "https://example.com/404".to_string()];
        let reply = object(json!({
            "results": [{"url": "https://a.example/", "raw_content": "# A\n\ntext", "images": []}],
            "failed_results": [{"url": "https://example.com/404", "error": "Failed to fetch url"}],
            "response_time": 0.02,
        }));
        let pages = parse_extract(&reply, &FetchCall { urls: &urls, include_text: true }).unwrap();
        assert_eq!(
            pages[0],
            FetchedPage {
                url: "https://a.example/".into(),
                title: None,
                text: Some("# A\n\ntext".into()),
                status: "success".into(),
            }
        );
        assert_eq!(pages[1], FetchedPage::failed("https://example.com/404"));
        let pages = parse_extract(&reply, &FetchCall { urls: &urls, include_text: false }).unwrap();
        assert_eq!(pages[0].text, None);
    }

    #[test]
    fn errors_are_classified_by_status() {
        let unauthorized = br#"{"detail":{"error":"Unauthorized: missing or invalid API key."}}"#;
        assert!(matches!(classify_error(401, unauthorized), UpstreamError::Unavailable(_)));
        let bad = br#"{"detail":{"error":"Invalid topic"}}"#;
        assert!(matches!(
            classify_error(400, bad),
            UpstreamError::BadRequest(m) if m == "The provider rejected the request: Invalid topic"
        ));
        let fastapi =
            br#"{"detail":[{"loc":["body","query"],"msg":"field required","type":"missing"}]}"#;
        assert!(matches!(
            classify_error(422, fastapi),
            UpstreamError::BadRequest(m) if m.ends_with("field required")
        ));
        for status in [402, 403, 429, 432, 433, 500, 502] {
            assert!(
                matches!(classify_error(status, b"{}"), UpstreamError::Unavailable(_)),
                "{status}"
            );
        }
    }
}
