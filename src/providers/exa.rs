//! Exa (upstreams.md §4): `POST /search` for web search and `POST /contents` for fetch,
//! authenticated with `x-api-key`.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::http::{self, error_message};
use super::search::{
    classify_status, malformed, non_empty, post_json, same_url, text_of, Answer, FetchCall,
    FetchedPage, SearchCall, SearchHit, SearchReply, FETCH_SUCCESS,
};
use super::UpstreamError;
use crate::config::HttpProvider;

const NAME: &str = "exa";

/// Error tags of `/contents` that are about the pages, not the request: every URL failed.
const PAGE_FAILURE_TAGS: &[&str] = &[
    "NO_CONTENT_FOUND",
    "INVALID_URLS",
    "CRAWL_NOT_FOUND",
    "CRAWL_TIMEOUT",
    "CRAWL_LIVECRAWL_TIMEOUT",
    "SOURCE_NOT_AVAILABLE",
    "CRAWL_UNKNOWN_ERROR",
];

pub struct Exa {
    client: awc::Client,
    search_url: String,
    contents_url: String,
    api_key: String,
    timeout: Duration,
}

impl Exa {
    pub fn new(settings: &HttpProvider, timeout: Duration) -> Self {
        let base = settings.base_url.trim_end_matches('/');
        Self {
            client: http::client(timeout),
            search_url: format!("{base}/search"),
            contents_url: format!("{base}/contents"),
            api_key: settings.api_key.expose().to_string(),
            timeout,
        }
    }

    async fn post(&self, url: &str, body: &Value) -> Result<Answer, UpstreamError> {
        let request = self.client.post(url).insert_header(("x-api-key", self.api_key.as_str()));
        post_json(request, body, self.timeout, NAME).await
    }

    pub async fn web_search(&self, call: &SearchCall<'_>) -> Result<SearchReply, UpstreamError> {
        let body = json!({"query": call.query, "numResults": call.num_results});
        match self.post(&self.search_url, &body).await? {
            Answer::Json(reply) => parse_search(&reply),
            Answer::Status(status, body) => Err(classify_error(status, &body)),
        }
    }

    pub async fn fetch(&self, call: &FetchCall<'_>) -> Result<Vec<FetchedPage>, UpstreamError> {
        let body = json!({"urls": call.urls, "text": call.include_text});
        match self.post(&self.contents_url, &body).await? {
            Answer::Json(reply) => parse_contents(&reply, call),
            Answer::Status(400 | 422, body) if is_page_failure(&body) => {
                Ok(call.urls.iter().map(|url| FetchedPage::failed(url)).collect())
            }
            Answer::Status(status, body) => Err(classify_error(status, &body)),
        }
    }
}

/// Exa's errors are `{"error": "<text>", "tag": "…"}` (the text is a string, not an object).
fn classify_error(status: u16, body: &[u8]) -> UpstreamError {
    classify_status(NAME, status, error_message(body))
}

fn is_page_failure(body: &[u8]) -> bool {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    value.get("tag").and_then(Value::as_str).is_some_and(|tag| PAGE_FAILURE_TAGS.contains(&tag))
}

fn parse_search(reply: &Map<String, Value>) -> Result<SearchReply, UpstreamError> {
    let results = reply
        .get("results")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed(NAME, "no results array"))?;
    let results = results
        .iter()
        .filter_map(|r| {
            // A result without a URL points nowhere; leave it out rather than fail the search.
            let url = non_empty(text_of(r, "url"))?;
            Some(SearchHit {
                title: non_empty(text_of(r, "title")).unwrap_or_default(),
                url,
                id: non_empty(text_of(r, "id")),
                published_date: non_empty(text_of(r, "publishedDate")),
                author: non_empty(text_of(r, "author")),
            })
        })
        .collect();
    // Exa reports `searchTime` in milliseconds; kept to the microsecond, so that 123.4 ms
    // reads 0.1234 s rather than 0.12340000000000001.
    let search_time = reply
        .get("searchTime")
        .and_then(Value::as_f64)
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map(|ms| (ms * 1000.0).round() / 1_000_000.0);
    Ok(SearchReply { results, search_time })
}

/// `/contents` lists the pages it got in `results` and every URL's outcome in `statuses`
/// (upstreams.md §4.3); a URL in neither was not fetched.
fn parse_contents(
    reply: &Map<String, Value>,
    call: &FetchCall<'_>,
) -> Result<Vec<FetchedPage>, UpstreamError> {
    let results = reply
        .get("results")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed(NAME, "no results array"))?;
    let statuses = reply.get("statuses").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let names = |item: &Value, url: &str| {
        ["id", "url"].iter().any(|key| text_of(item, key).is_some_and(|u| same_url(url, u)))
    };
    Ok(call
        .urls
        .iter()
        .map(|url| {
            let status = statuses.iter().find(|s| names(s, url)).and_then(|s| text_of(s, "status"));
            let result = results.iter().find(|r| names(r, url));
            match result {
                Some(result) if status.is_none_or(|s| s == FETCH_SUCCESS) => {
                    FetchedPage::found(url, result, "text", call.include_text)
                }
                _ => FetchedPage::failed(url),
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
            "requestId": "r", "resolvedSearchType": "neural",
            "results": [
                {"id": "https://arxiv.org/abs/1", "url": "https://arxiv.org/pdf/1.pdf", "title": "Paper",
                 "publishedDate": "2023-11-16T01:36:32.547Z", "author": "A. Author", "score": 0.4},
                {"id": "x", "url": "https://e.example/", "title": null, "author": ""},
                {"id": "no-url", "title": "dropped"},
            ],
            "searchTime": 123.4,
            "costDollars": {"total": 0.005},
        }));
        let reply = parse_search(&reply).unwrap();
        assert_eq!(reply.search_time, Some(0.1234));
        assert_eq!(
            reply.results,
            vec![
                SearchHit {
                    title: "Paper".into(),
                    url: "https://arxiv.org/pdf/1.pdf".into(),
                    id: Some("https://arxiv.org/abs/1".into()),
                    published_date: Some("2023-11-16T01:36:32.547Z".into()),
                    author: Some("A. Author".into()),
                },
                SearchHit {
                    title: String::new(),
                    url: "https://e.example/".into(),
                    id: Some("x".into()),
                    published_date: None,
                    author: None,
                },
            ]
        );
        assert!(parse_search(&object(json!({"data": []}))).is_err());
        assert_eq!(parse_search(&object(json!({"results": []}))).unwrap().search_time, None);
    }

    #[test]
    fn contents_give_one_page_per_url_with_failures_from_statuses() {
        let urls = vec![
            "https://a.example/".to_string(),
            "https://missing.example/".to_string(),
            "https://b.example".to_string(),
            "https://c.example/".to_string(),
        ];
        let reply = object(json!({
            "results": [
                {"id": "https://a.example/", "url": "https://a.example/", "title": "A", "text": "Text A"},
                {"id": "https://b.example/", "url": "https://b.example/", "title": "B", "text": "Text B"},
            ],
            "statuses": [
                {"id": "https://a.example/", "status": "success"},
                {"id": "https://missing.example/", "status": "error",
                 "error": {"tag": "CRAWL_NOT_FOUND", "httpStatusCode": 404}},
            ],
        }));
        let call = FetchCall { urls: &urls, include_text: true };
        let pages = parse_contents(&reply, &call).unwrap();
        let statuses: Vec<&str> = pages.iter().map(|p| p.status.as_str()).collect();
        assert_eq!(statuses, ["success", "error", "success", "error"]);
        assert_eq!(pages[0].text.as_deref(), Some("Text A"));
        assert_eq!(pages[2].url, "https://b.example", "the requested URL, not Exa's");
        assert_eq!(pages[2].title.as_deref(), Some("B"));
        assert_eq!(pages[1], FetchedPage::failed("https://missing.example/"));
        let call = FetchCall { urls: &urls, include_text: false };
        assert!(parse_contents(&reply, &call).unwrap().iter().all(|p| p.text.is_none()));
        assert!(parse_contents(&object(json!({"statuses": []})), &call).is_err());
    }

    #[test]
    fn errors_are_classified_by_status() {
        let bad = br#"{"requestId":"r","error":"Invalid request body | numResults","tag":"INVALID_REQUEST_BODY"}"#;
        assert!(matches!(
            classify_error(400, bad),
            UpstreamError::BadRequest(m) if m == "The provider rejected the request: Invalid request body | numResults"
        ));
        for status in [401, 402, 403, 404, 408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify_error(status, b"{}"), UpstreamError::Unavailable(_)),
                "{status}"
            );
        }
        assert!(is_page_failure(br#"{"error":"No content","tag":"NO_CONTENT_FOUND"}"#));
        assert!(!is_page_failure(bad));
    }
}
