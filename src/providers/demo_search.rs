//! The demo provider's web search and fetch: deterministic and offline, so `quantized demo`
//! and the tests show both endpoints without a network. A URL containing `fail` cannot be
//! fetched, to show what a failed URL looks like (and that it is not billed).

use super::demo::Demo;
use super::search::{FetchCall, FetchedPage, SearchCall, SearchHit, SearchReply, FETCH_SUCCESS};

/// The first `DATED` results carry a publication date and an author; the rest show `null`.
const DATED: u32 = 3;

impl Demo {
    pub fn web_search(&self, call: &SearchCall<'_>) -> SearchReply {
        let slug = slug(call.query);
        let results = (1..=call.num_results)
            .map(|n| SearchHit {
                title: format!("Demo result {n} for \"{}\"", call.query),
                url: format!("https://example.org/demo/{slug}/{n}"),
                id: Some(format!("demo-{n}")),
                published_date: (n <= DATED).then(|| format!("2025-01-{:02}", n)),
                author: (n <= DATED).then(|| "Quantized Demo".to_string()),
            })
            .collect();
        SearchReply { results, search_time: None }
    }

    pub fn fetch(&self, call: &FetchCall<'_>) -> Vec<FetchedPage> {
        call.urls
            .iter()
            .map(|url| {
                if url.to_ascii_lowercase().contains("fail") {
                    return FetchedPage::failed(url);
                }
                let text = format!(
                    "This is the demo provider's text for {url}. The demo gateway fetches nothing \
                     from the network: this text is made up from the URL so that /v1/fetch can be \
                     tried offline."
                );
                FetchedPage {
                    url: url.clone(),
                    title: Some(format!("Demo page: {}", page_name(url))),
                    text: call.include_text.then_some(text),
                    status: FETCH_SUCCESS.into(),
                }
            })
            .collect()
    }
}

/// Lower-case letters and digits of the query, words joined by `-` (at most 60 characters).
fn slug(query: &str) -> String {
    let words: Vec<String> = query
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let mut slug = words.join("-");
    slug.truncate(60);
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        "query".into()
    } else {
        slug.to_string()
    }
}

/// The URL without its scheme or trailing slash: `https://a.example/x/` → `a.example/x`.
fn page_name(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DemoProvider;

    #[test]
    fn search_is_deterministic() {
        let demo = Demo::new(&DemoProvider::default());
        let reply = demo.web_search(&SearchCall { query: "Rust: actix web?", num_results: 4 });
        assert_eq!(reply.results.len(), 4);
        assert_eq!(reply.results[0].title, "Demo result 1 for \"Rust: actix web?\"");
        assert_eq!(reply.results[0].url, "https://example.org/demo/rust-actix-web/1");
        assert_eq!(reply.results[0].published_date.as_deref(), Some("2025-01-01"));
        assert_eq!(reply.results[3].author, None);
        assert_eq!(
            reply,
            demo.web_search(&SearchCall { query: "Rust: actix web?", num_results: 4 })
        );
        assert_eq!(slug("!!!"), "query");
    }

    #[test]
    fn fetch_fails_urls_that_say_fail() {
        let demo = Demo::new(&DemoProvider::default());
        let urls = vec!["https://a.example/x/".to_string(), "https://fail.example/".to_string()];
        let pages = demo.fetch(&FetchCall { urls: &urls, include_text: true });
        assert_eq!(pages[0].title.as_deref(), Some("Demo page: a.example/x"));
        assert!(pages[0].text.as_deref().is_some_and(|t| t.contains("https://a.example/x/")));
        assert!(pages[0].succeeded());
        assert_eq!(pages[1], FetchedPage::failed("https://fail.example/"));
        let pages = demo.fetch(&FetchCall { urls: &urls, include_text: false });
        assert_eq!(pages[0].text, None);
    }
}
