//! The bodies of `POST /v1/web-search` and `POST /v1/fetch` (quantized-api.md §3.10, §3.11).

use serde_json::Value;

use super::{each, empty, string, Fields, Invalid};

pub const DEFAULT_NUM_RESULTS: u32 = 5;
/// Exa's own limit; Tavily's is lower and its provider asks for what it can give.
pub const MAX_NUM_RESULTS: u32 = 100;
/// Tavily's `/extract` limit, so every provider can take any valid request.
pub const MAX_FETCH_URLS: usize = 20;
/// Longer than any URL a browser or search index keeps.
const MAX_URL_LEN: usize = 8192;

const SEARCH_FIELDS: &[&str] = &["query", "num_results"];
const FETCH_FIELDS: &[&str] = &["urls", "include_text"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchRequest {
    pub query: String,
    pub num_results: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// As requested: order kept, duplicates included.
    pub urls: Vec<String>,
    pub include_text: bool,
}

pub fn search_request(body: &Value) -> Result<SearchRequest, Invalid> {
    let f = Fields::body(body)?;
    let query = f.req_str("query")?;
    if query.trim().is_empty() {
        return Err(empty(&f.at("query")));
    }
    f.only(SEARCH_FIELDS)?;
    let num_results = f.int("num_results", 1, MAX_NUM_RESULTS.into())?;
    Ok(SearchRequest {
        query: query.to_string(),
        num_results: num_results.map_or(DEFAULT_NUM_RESULTS, |n| n as u32),
    })
}

pub fn fetch_request(body: &Value) -> Result<FetchRequest, Invalid> {
    let f = Fields::body(body)?;
    let urls = f.req_array("urls")?;
    if urls.is_empty() {
        return Err(empty(&f.at("urls")));
    }
    if urls.len() > MAX_FETCH_URLS {
        return Err(format!("'{}' must have at most {MAX_FETCH_URLS} items", f.at("urls")));
    }
    f.only(FETCH_FIELDS)?;
    each(urls, &f.at("urls"), |v, p| web_url(v, p).map(drop))?;
    let include_text = f.bool("include_text")?.unwrap_or(true);
    Ok(FetchRequest {
        urls: urls.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        include_text,
    })
}

/// An absolute `http` or `https` URL with a host. Deliberately lenient about the rest (IRIs with
/// non-ASCII text, fragments): the provider fetches it, and a page it cannot fetch is a result
/// with status `error`, not a failed request.
fn web_url<'a>(value: &'a Value, path: &str) -> Result<&'a str, Invalid> {
    let text = string(value, path)?;
    if text.len() > MAX_URL_LEN {
        return Err(format!("'{path}' must be at most {MAX_URL_LEN} characters"));
    }
    if is_web_url(text) {
        Ok(text)
    } else {
        Err(format!("invalid value for '{path}': expected an absolute http or https URL"))
    }
}

fn is_web_url(text: &str) -> bool {
    let after_scheme = ["http://", "https://"].iter().find_map(|scheme| {
        let head = text.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme).then(|| &text[scheme.len()..])
    });
    let Some(rest) = after_scheme else { return false };
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = if host_port.starts_with('[') {
        host_port.split_inclusive(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    !host.is_empty() && host != "[]"
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn search_defaults_and_bounds() {
        let r = search_request(&json!({"query": "rust"})).unwrap();
        assert_eq!(r, SearchRequest { query: "rust".into(), num_results: 5 });
        let r = search_request(&json!({"query": "rust", "num_results": 100})).unwrap();
        assert_eq!(r.num_results, 100);
        let r = search_request(&json!({"query": "rust", "num_results": null})).unwrap();
        assert_eq!(r.num_results, 5);
    }

    #[test]
    fn search_errors_have_the_documented_messages() {
        let cases = [
            (json!({}), "field required: 'query'"),
            (json!({"query": null}), "field required: 'query'"),
            (json!({"query": "  "}), "'query' must not be empty"),
            (json!({"query": 1}), "invalid type for 'query': expected string"),
            (json!({"query": "q", "numResults": 3}), "unknown field: 'numResults'"),
            (json!({"query": "q", "num_results": 0}), "'num_results' must be between 1 and 100"),
            (json!({"query": "q", "num_results": 101}), "'num_results' must be between 1 and 100"),
            (
                json!({"query": "q", "num_results": "5"}),
                "invalid type for 'num_results': expected integer",
            ),
            (
                json!({"query": "q", "num_results": 2.5}),
                "invalid type for 'num_results': expected integer",
            ),
            (json!(["q"]), "invalid type for 'body': expected object"),
        ];
        for (body, message) in cases {
            assert_eq!(search_request(&body).unwrap_err(), message, "{body}");
        }
    }

    #[test]
    fn fetch_keeps_urls_in_order_and_defaults_to_text() {
        let urls =
            json!(["https://a.example/x?y=1", "http://B.example:8080/", "https://a.example/x?y=1"]);
        let r = fetch_request(&json!({"urls": urls})).unwrap();
        assert_eq!(r.urls.len(), 3);
        assert_eq!(r.urls[1], "http://B.example:8080/");
        assert!(r.include_text);
        let r =
            fetch_request(&json!({"urls": ["HTTPS://a.example"], "include_text": false})).unwrap();
        assert!(!r.include_text);
        for ok in [
            "https://de.wikipedia.org/wiki/Äpfel#Sorten",
            "http://[::1]:8080/x",
            "http://u:p@h.example",
        ] {
            assert!(fetch_request(&json!({"urls": [ok]})).is_ok(), "{ok}");
        }
    }

    #[test]
    fn fetch_errors_have_the_documented_messages() {
        let many: Vec<String> = (0..21).map(|i| format!("https://e.example/{i}")).collect();
        let url_error = |i: usize| {
            format!("invalid value for 'urls[{i}]': expected an absolute http or https URL")
        };
        let cases = [
            (json!({}), "field required: 'urls'".to_string()),
            (
                json!({"urls": "https://e.example"}),
                "invalid type for 'urls': expected array".into(),
            ),
            (json!({"urls": []}), "'urls' must not be empty".into()),
            (json!({"urls": many}), "'urls' must have at most 20 items".into()),
            (json!({"urls": ["https://e.example"], "text": true}), "unknown field: 'text'".into()),
            (json!({"urls": [1]}), "invalid type for 'urls[0]': expected string".into()),
            (json!({"urls": ["https://e.example", "e.example/page"]}), url_error(1)),
            (json!({"urls": ["ftp://e.example/file"]}), url_error(0)),
            (json!({"urls": ["/relative/path"]}), url_error(0)),
            (json!({"urls": ["https://"]}), url_error(0)),
            (json!({"urls": ["https://:443/x"]}), url_error(0)),
            (json!({"urls": ["http:/e.example"]}), url_error(0)),
            (json!({"urls": ["https://e.example/a b"]}), url_error(0)),
            (json!({"urls": [""]}), url_error(0)),
            (
                json!({"urls": ["https://e.example"], "include_text": "yes"}),
                "invalid type for 'include_text': expected boolean".into(),
            ),
        ];
        for (body, message) in cases {
            assert_eq!(fetch_request(&body).unwrap_err(), message, "{body}");
        }
        let long = format!("https://e.example/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(
            fetch_request(&json!({"urls": [long]})).unwrap_err(),
            "'urls[0]' must be at most 8192 characters"
        );
    }
}
