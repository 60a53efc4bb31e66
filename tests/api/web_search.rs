//! `POST /v1/web-search` and `POST /v1/fetch` through the fake Exa and Tavily
//! (`fake_search.rs`) and the built-in demo provider: request mapping, the documented response
//! shapes, fixed-price billing, validation, provider failures and the routing header.

use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_search::*;
use crate::helpers::*;

const SEARCH: &str = "/v1/web-search";
const FETCH: &str = "/v1/fetch";
const EXA_KEY: &str = "exa-test-key-5d1";
const TAVILY_KEY: &str = "tvly-test-key-8e2";
const UNAVAILABLE: &str = "Service temporarily unavailable";

/// The gateway with Exa and Tavily pointed at one fake, and the demo provider off (so a
/// failure cannot fall over to it).
async fn spawn_search(configure: impl FnOnce(&mut quantized::Settings)) -> (TestApp, FakeSearch) {
    let fake = FakeSearch::start().await;
    let (exa, tavily) = (fake.exa_url(), fake.tavily_url());
    let app = spawn_app_with(|s| {
        s.providers.exa.base_url = exa;
        s.providers.exa.api_key = quantized::config::Secret(EXA_KEY.into());
        s.providers.tavily.base_url = tavily;
        s.providers.tavily.api_key = quantized::config::Secret(TAVILY_KEY.into());
        s.providers.demo.enabled = false;
        configure(s);
    })
    .await;
    (app, fake)
}

fn only_exa(s: &mut quantized::Settings) {
    s.providers.tavily.api_key = quantized::config::Secret::default();
}

fn only_tavily(s: &mut quantized::Settings) {
    s.providers.exa.api_key = quantized::config::Secret::default();
}

async fn available(app: &TestApp, key: &str) -> Value {
    app.license(key).await["available_micro_credits"].clone()
}

fn usage_rows(app: &TestApp) -> i64 {
    app.query_i64("SELECT COUNT(*) FROM usage", [])
}

/// The newest usage row of a license, through the admin API.
async fn last_usage(app: &TestApp, license_id: &str) -> Value {
    let rows = app.admin_ok("GET", &format!("/licenses/{license_id}/usage?limit=1"), None).await;
    rows[0].clone()
}

fn keys(value: &Value) -> Vec<&str> {
    value.as_object().expect("object").keys().map(String::as_str).collect()
}

// ---- web search ----

#[actix_web::test]
async fn web_search_through_exa_sends_exas_format_and_answers_the_documented_shape() {
    let (app, fake) = spawn_search(|_| {}).await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = app.post(&seeded.key, SEARCH, &json!({"query": "python 3.13", "num_results": 3})).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let sent = fake.last_request().expect("exa was called");
    assert_eq!((sent.provider, sent.path.as_str()), ("exa", "/search"));
    assert_eq!(sent.header("x-api-key"), Some(EXA_KEY));
    assert_eq!(sent.body, json!({"query": "python 3.13", "numResults": 3}));
    assert!(!sent.headers.iter().any(|(_, v)| v.contains(&seeded.key)), "the client's key leaked");
    let body = r.json();
    assert_eq!(keys(&body), ["results", "usage"]);
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert_eq!(
        results[0],
        json!({
            "title": "Exa result 1 for python 3.13",
            "url": "https://exa.example/page/1",
            "id": "https://exa.example/doc/1",
            "published_date": "2024-02-11T00:00:00.000Z",
            "author": "Author 1",
        })
    );
    assert_eq!(keys(&results[0]), ["title", "url", "id", "published_date", "author"]);
    assert_eq!(results[1]["published_date"], Value::Null);
    assert_eq!(results[1]["author"], Value::Null);
    // Exa's searchTime is 123.4 ms.
    assert_eq!(
        body["usage"],
        json!({"search_time": 0.1234, "credits_used": 8000, "credits_remaining": 992_000})
    );
    assert_eq!(available(&app, &seeded.key).await, 992_000);
    let row = last_usage(&app, &seeded.license_id).await;
    assert_eq!(row["endpoint"], "web-search");
    assert_eq!(row["provider"], "exa");
    assert_eq!(row["prompt_tokens"], 1, "one billed search");
    assert_eq!(row["completion_tokens"], 0);
    assert_eq!(row["micro_credits"], 8000);
    assert_eq!(row["status"], "completed");
    let metrics = app
        .raw("GET", "/metrics", &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))], None)
        .await
        .text;
    assert!(
        metrics.contains(r#"quantized_requests_total{endpoint="/v1/web-search",model="",provider="exa",status="200"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"quantized_breaker_state{provider="exa"} 0"#), "{metrics}");
}

#[actix_web::test]
async fn web_search_asks_exa_for_five_results_by_default() {
    let (app, fake) = spawn_search(|_| {}).await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = app.post(&seeded.key, SEARCH, &json!({"query": "rust"})).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(fake.last_request().expect("called").body["numResults"], 5);
    assert_eq!(r.json()["results"].as_array().map(Vec::len), Some(5));
}

#[actix_web::test]
async fn web_search_through_tavily_when_forced_uses_bearer_auth_and_max_results() {
    let (app, fake) = spawn_search(|_| {}).await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = app
        .post_with(
            &seeded.key,
            SEARCH,
            &json!({"query": "Who is Leo Messi?", "num_results": 2}),
            &[("X-Quantized-Provider", "tavily")],
        )
        .await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let sent = fake.last_request().expect("tavily was called");
    assert_eq!((sent.provider, sent.path.as_str()), ("tavily", "/search"));
    assert_eq!(sent.header("authorization"), Some(format!("Bearer {TAVILY_KEY}").as_str()));
    assert_eq!(sent.body, json!({"query": "Who is Leo Messi?", "max_results": 2}));
    assert_eq!(fake.calls(), 1, "exa was not asked");
    let body = r.json();
    assert_eq!(
        body["results"],
        json!([
            {"title": "Tavily result 1 for Who is Leo Messi?", "url": "https://tavily.example/page/1",
             "id": null, "published_date": "Mon, 09 Jun 2025 12:00:00 GMT", "author": null},
            {"title": "Tavily result 2 for Who is Leo Messi?", "url": "https://tavily.example/page/2",
             "id": null, "published_date": null, "author": null},
        ])
    );
    assert_eq!(
        body["usage"],
        json!({"search_time": 1.67, "credits_used": 8000, "credits_remaining": 992_000})
    );
    assert_eq!(last_usage(&app, &seeded.license_id).await["provider"], "tavily");
}

#[actix_web::test]
async fn web_search_through_tavily_asks_for_no_more_than_its_twenty_results() {
    let (app, fake) = spawn_search(|_| {}).await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = app
        .post_with(
            &seeded.key,
            SEARCH,
            &json!({"query": "many", "num_results": 50}),
            &[("X-Quantized-Provider", "tavily")],
        )
        .await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(fake.last_request().expect("called").body["max_results"], 20);
    assert_eq!(r.json()["results"].as_array().map(Vec::len), Some(20));
    assert_eq!(r.json()["usage"]["credits_used"], 8000);
}

#[actix_web::test]
async fn web_search_falls_over_to_tavily_when_exa_fails_and_is_billed_once() {
    let (app, fake) = spawn_search(|_| {}).await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    fake.push_fault(SearchFault::Status(500));

    let r = app.post(&seeded.key, SEARCH, &json!({"query": "fallback"})).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let providers: Vec<&str> = fake.requests().iter().map(|r| r.provider).collect();
    assert_eq!(providers, ["exa", "tavily"]);
    assert_eq!(r.json()["usage"]["credits_used"], 8000);
    assert_eq!(available(&app, &seeded.key).await, 992_000);
    assert_eq!(usage_rows(&app), 1);
    assert_eq!(last_usage(&app, &seeded.license_id).await["provider"], "tavily");
}

#[actix_web::test]
async fn web_search_goes_to_tavily_when_exa_is_not_configured() {
    let (app, fake) = spawn_search(only_tavily).await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = app.post(&seeded.key, SEARCH, &json!({"query": "q"})).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(fake.last_request().map(|r| r.provider), Some("tavily"));
    assert_eq!(fake.calls(), 1);
}

// ---- fetch ----

#[actix_web::test]
async fn fetch_through_exa_gives_one_result_per_url_and_bills_each_url_fetched() {
    let (app, fake) = spawn_search(|_| {}).await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let urls = json!([
        "https://docs.python.org/3/whatsnew/3.13.html",
        "https://example.com/missing-page",
        "https://example.com",
    ]);

    let r = app.post(&seeded.key, FETCH, &json!({"urls": urls})).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let sent = fake.last_request().expect("exa was called");
    assert_eq!((sent.provider, sent.path.as_str()), ("exa", "/contents"));
    assert_eq!(sent.header("x-api-key"), Some(EXA_KEY));
    assert_eq!(sent.body, json!({"urls": urls, "text": true}));
    let body = r.json();
    assert_eq!(keys(&body), ["results", "usage"]);
    assert_eq!(
        body["results"],
        json!([
            {"url": "https://docs.python.org/3/whatsnew/3.13.html",
             "title": "Exa title of https://docs.python.org/3/whatsnew/3.13.html",
             "text": "Exa text of https://docs.python.org/3/whatsnew/3.13.html", "status": "success"},
            {"url": "https://example.com/missing-page", "title": null, "text": null, "status": "error"},
            // Exa answers for "https://example.com/"; the result names the URL as requested.
            {"url": "https://example.com", "title": "Exa title of https://example.com/",
             "text": "Exa text of https://example.com/", "status": "success"},
        ])
    );
    assert_eq!(body["usage"], json!({"credits_used": 16_000, "credits_remaining": 984_000}));
    assert_eq!(available(&app, &seeded.key).await, 984_000);
    let row = last_usage(&app, &seeded.license_id).await;
    assert_eq!(row["endpoint"], "fetch");
    assert_eq!(row["provider"], "exa");
    assert_eq!(row["prompt_tokens"], 2, "two URLs fetched and billed");
    assert_eq!(row["micro_credits"], 16_000);
    assert_eq!(row["status"], "completed");
}

#[actix_web::test]
async fn fetch_through_tavily_uses_extract_and_reports_failed_results_as_errors() {
    let (app, fake) = spawn_search(|_| {}).await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let urls = json!(["https://en.wikipedia.org/wiki/AI", "https://example.com/missing"]);

    let r = app
        .post_with(
            &seeded.key,
            FETCH,
            &json!({"urls": urls}),
            &[("X-Quantized-Provider", "tavily")],
        )
        .await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let sent = fake.last_request().expect("tavily was called");
    assert_eq!((sent.provider, sent.path.as_str()), ("tavily", "/extract"));
    assert_eq!(sent.header("authorization"), Some(format!("Bearer {TAVILY_KEY}").as_str()));
    assert_eq!(sent.body, json!({"urls": urls, "format": "text"}));
    assert_eq!(
        r.json(),
        json!({
            "results": [
                {"url": "https://en.wikipedia.org/wiki/AI", "title": null,
                 "text": "Tavily text of https://en.wikipedia.org/wiki/AI", "status": "success"},
                {"url": "https://example.com/missing", "title": null, "text": null, "status": "error"},
            ],
            "usage": {"credits_used": 8000, "credits_remaining": 992_000},
        })
    );
    let row = last_usage(&app, &seeded.license_id).await;
    assert_eq!(
        (row["provider"].as_str(), row["prompt_tokens"].as_i64()),
        (Some("tavily"), Some(1))
    );
}

#[actix_web::test]
async fn fetch_without_text_asks_exa_for_none_and_returns_null_text() {
    let (app, fake) = spawn_search(|_| {}).await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = app
        .post(&seeded.key, FETCH, &json!({"urls": ["https://a.example/x"], "include_text": false}))
        .await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(fake.last_request().expect("called").body["text"], false);
    assert_eq!(
        r.json()["results"],
        json!([{"url": "https://a.example/x", "title": "Exa title of https://a.example/x",
                "text": null, "status": "success"}])
    );
    assert_eq!(r.json()["usage"]["credits_used"], 8000);
}

#[actix_web::test]
async fn fetch_without_text_through_tavily_drops_the_extracted_text() {
    let (app, _fake) = spawn_search(only_tavily).await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = app
        .post(&seeded.key, FETCH, &json!({"urls": ["https://a.example/x"], "include_text": false}))
        .await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(r.json()["results"][0]["text"], Value::Null);
    assert_eq!(r.json()["results"][0]["status"], "success");
}

#[actix_web::test]
async fn fetch_where_every_url_fails_costs_nothing() {
    let (app, _fake) = spawn_search(|_| {}).await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let r = app
        .post(
            &seeded.key,
            FETCH,
            &json!({"urls": ["https://a.example/missing", "https://b.example/missing"]}),
        )
        .await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let body = r.json();
    assert!(body["results"].as_array().expect("results").iter().all(|p| p["status"] == "error"));
    assert_eq!(body["usage"], json!({"credits_used": 0, "credits_remaining": 1_000_000}));
    assert_eq!(available(&app, &seeded.key).await, 1_000_000);
    let row = last_usage(&app, &seeded.license_id).await;
    assert_eq!((row["prompt_tokens"].as_i64(), row["micro_credits"].as_i64()), (Some(0), Some(0)));
}

#[actix_web::test]
async fn fetch_asks_for_and_bills_a_repeated_url_once_but_answers_each_entry() {
    let (app, fake) = spawn_search(|_| {}).await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let url = "https://a.example/page";

    let r = app.post(&seeded.key, FETCH, &json!({"urls": [url, url]})).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(fake.last_request().expect("called").body["urls"], json!([url]));
    let results = r.json()["results"].clone();
    assert_eq!(results.as_array().map(Vec::len), Some(2));
    assert_eq!(results[0], results[1]);
    assert_eq!(r.json()["usage"]["credits_used"], 8000);
}

#[actix_web::test]
async fn exa_no_content_found_is_a_failed_url_not_a_failed_request() {
    let (app, _fake) = spawn_search(only_exa).await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    _fake.push_fault(SearchFault::StatusWithBody(
        400,
        json!({"requestId": "r", "error": "No content found", "tag": "NO_CONTENT_FOUND"})
            .to_string(),
    ));

    let r = app.post(&seeded.key, FETCH, &json!({"urls": ["https://a.example/empty"]})).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(
        r.json(),
        json!({"results": [{"url": "https://a.example/empty", "title": null, "text": null, "status": "error"}],
               "usage": {"credits_used": 0, "credits_remaining": 1_000_000}})
    );
}

#[actix_web::test]
async fn a_provider_400_about_the_request_is_a_400_that_says_so() {
    let (app, fake) = spawn_search(|_| {}).await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    fake.push_fault(SearchFault::StatusWithBody(
        400,
        json!({"requestId": "r", "error": "Query too long", "tag": "INVALID_REQUEST_BODY"})
            .to_string(),
    ));

    let r = app.post(&seeded.key, SEARCH, &json!({"query": "q"})).await;

    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.error_message(), "The provider rejected the request: Query too long");
    assert_eq!(fake.calls(), 1, "no fallback for a refused request");
    assert_eq!(available(&app, &seeded.key).await, 1_000_000);
    assert_eq!(usage_rows(&app), 0);
}

// ---- billing ----

#[actix_web::test]
async fn tool_prices_set_for_a_license_type_apply_to_its_licenses_only() {
    let (app, _fake) = spawn_search(|_| {}).await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let other = app.seed_license(Some(1_000_000)).await;
    for (tool, price) in [("web-search", 5_000), ("fetch", 3_000)] {
        app.admin_ok(
            "PUT",
            &format!("/license-types/{}/tool-prices/{tool}", seeded.license_type),
            Some(json!({"micro_credits": price})),
        )
        .await;
    }
    let urls = json!({"urls": ["https://a.example/1", "https://a.example/missing", "https://a.example/3"]});

    let search = app.post(&seeded.key, SEARCH, &json!({"query": "q"})).await;
    let fetch = app.post(&seeded.key, FETCH, &urls).await;
    let default_search = app.post(&other.key, SEARCH, &json!({"query": "q"})).await;
    let default_fetch = app.post(&other.key, FETCH, &urls).await;

    assert_eq!(search.json()["usage"]["credits_used"], 5_000, "{}", search.text);
    assert_eq!(fetch.json()["usage"]["credits_used"], 6_000, "{}", fetch.text);
    assert_eq!(fetch.json()["usage"]["credits_remaining"], 1_000_000 - 5_000 - 6_000);
    assert_eq!(default_search.json()["usage"]["credits_used"], 8_000);
    assert_eq!(default_fetch.json()["usage"]["credits_used"], 16_000);
    assert_eq!(available(&app, &seeded.key).await, 989_000);
    assert_eq!(available(&app, &other.key).await, 976_000);
    assert_eq!(
        app.query_i64(
            "SELECT SUM(micro_credits) FROM usage WHERE license_id = ?1",
            [&seeded.license_id]
        ),
        11_000
    );
}

#[actix_web::test]
async fn a_free_tool_costs_nothing_and_a_price_above_one_credit_is_refused() {
    let (app, _fake) = spawn_search(|_| {}).await;
    let seeded = app.seed_license(Some(0)).await;
    let path = format!("/license-types/{}/tool-prices/web-search", seeded.license_type);
    app.admin_ok("PUT", &path, Some(json!({"micro_credits": 0}))).await;

    let r = app.post(&seeded.key, SEARCH, &json!({"query": "q"})).await;
    let too_high = app.admin("PUT", &path, Some(json!({"micro_credits": 1_000_001}))).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(r.json()["usage"]["credits_used"], 0);
    assert_eq!(too_high.status(), 400, "{}", too_high.text);
    assert_eq!(too_high.error_message(), "'micro_credits' must not exceed 1000000");
}

#[actix_web::test]
async fn insufficient_credits_is_402_before_any_provider_call() {
    let (app, fake) = spawn_search(|_| {}).await;
    let seeded = app.seed_license(Some(23_999)).await;
    let three = json!({"urls": ["https://a.example/1", "https://a.example/missing", "https://a.example/3"]});
    let two = json!({"urls": ["https://a.example/1", "https://a.example/missing"]});

    // Three URLs need 24,000 held, even if one of them will fail.
    let refused = app.post(&seeded.key, FETCH, &three).await;
    let fetched = app.post(&seeded.key, FETCH, &two).await;
    let refused_again = app.post(&seeded.key, FETCH, &two).await;
    let searched = app.post(&seeded.key, SEARCH, &json!({"query": "q"})).await;
    let refused_search = app.post(&seeded.key, SEARCH, &json!({"query": "q"})).await;

    assert_eq!(refused.status(), 402, "{}", refused.text);
    assert_eq!(refused.error_message(), "Insufficient credits");
    assert_eq!(fetched.status(), 200, "{}", fetched.text);
    assert_eq!(fetched.json()["usage"]["credits_remaining"], 15_999);
    assert_eq!(refused_again.status(), 402, "{}", refused_again.text);
    assert_eq!(searched.status(), 200, "{}", searched.text);
    assert_eq!(searched.json()["usage"]["credits_remaining"], 7_999);
    assert_eq!(refused_search.status(), 402, "{}", refused_search.text);
    assert_eq!(refused_search.error_message(), "Insufficient credits");
    assert_eq!(fake.calls(), 2, "a refused request never reaches the provider");
    assert_eq!(available(&app, &seeded.key).await, 7_999);
    assert_eq!(usage_rows(&app), 2);
}

// ---- validation ----

#[actix_web::test]
async fn invalid_bodies_get_400_with_the_exact_message_and_cost_nothing() {
    let (app, fake) = spawn_search(|_| {}).await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let many: Vec<String> = (0..21).map(|i| format!("https://a.example/{i}")).collect();
    let cases = [
        (SEARCH, json!({}), "field required: 'query'"),
        (SEARCH, json!({"query": null}), "field required: 'query'"),
        (SEARCH, json!({"query": ""}), "'query' must not be empty"),
        (SEARCH, json!({"query": 42}), "invalid type for 'query': expected string"),
        (SEARCH, json!({"query": "q", "numResults": 3}), "unknown field: 'numResults'"),
        (SEARCH, json!({"query": "q", "type": "neural"}), "unknown field: 'type'"),
        (
            SEARCH,
            json!({"query": "q", "num_results": "3"}),
            "invalid type for 'num_results': expected integer",
        ),
        (
            SEARCH,
            json!({"query": "q", "num_results": 1.5}),
            "invalid type for 'num_results': expected integer",
        ),
        (
            SEARCH,
            json!({"query": "q", "num_results": 0}),
            "'num_results' must be between 1 and 100",
        ),
        (
            SEARCH,
            json!({"query": "q", "num_results": 101}),
            "'num_results' must be between 1 and 100",
        ),
        (SEARCH, json!(["q"]), "invalid type for 'body': expected object"),
        (FETCH, json!({}), "field required: 'urls'"),
        (FETCH, json!({"urls": "https://a.example"}), "invalid type for 'urls': expected array"),
        (FETCH, json!({"urls": []}), "'urls' must not be empty"),
        (FETCH, json!({"urls": many}), "'urls' must have at most 20 items"),
        (FETCH, json!({"urls": [7]}), "invalid type for 'urls[0]': expected string"),
        (
            FETCH,
            json!({"urls": ["https://a.example", "a.example/page"]}),
            "invalid value for 'urls[1]': expected an absolute http or https URL",
        ),
        (
            FETCH,
            json!({"urls": ["file:///etc/passwd"]}),
            "invalid value for 'urls[0]': expected an absolute http or https URL",
        ),
        (FETCH, json!({"urls": ["https://a.example"], "text": true}), "unknown field: 'text'"),
        (
            FETCH,
            json!({"urls": ["https://a.example"], "include_text": "no"}),
            "invalid type for 'include_text': expected boolean",
        ),
    ];
    for (path, body, message) in cases {
        let r = app.post(&seeded.key, path, &body).await;
        assert_eq!(r.status(), 400, "{path} {body}: {}", r.text);
        assert_eq!(r.error_message(), message, "{path} {body}");
    }
    let auth = format!("Bearer {}", seeded.key);
    for path in [SEARCH, FETCH] {
        let r = app.raw("POST", path, &[("Authorization", &auth)], Some(b"{}".to_vec())).await;
        assert_eq!(r.status(), 400, "{}", r.text);
        assert_eq!(r.error_message(), "Content-Type must be application/json");
        let r = app.post("sk-quantized-nope", path, &json!({"query": "q"})).await;
        assert_eq!(r.status(), 401, "{}", r.text);
        assert_eq!(r.error_message(), "Invalid API key");
    }
    assert_eq!(fake.calls(), 0);
    assert_eq!(usage_rows(&app), 0);
    assert_eq!(available(&app, &seeded.key).await, 1_000_000);
}

// ---- provider failures ----

/// Every way a provider can fail, for one endpoint and one provider: a masked 503, nothing
/// charged, no usage row, and no hold left behind (the exact balance still pays afterwards).
async fn assert_failures_are_masked(
    provider: &str,
    path: &str,
    body: Value,
    configure: fn(&mut quantized::Settings),
) {
    let (app, fake) = spawn_search(|s| {
        configure(s);
        s.limits.upstream_timeout_secs = 1;
        s.breaker.failure_threshold = 1000;
    })
    .await;
    let seeded = app.seed_license(Some(8_000)).await;
    let faults = [
        SearchFault::Status(401),
        SearchFault::Status(403),
        SearchFault::Status(429),
        SearchFault::Status(500),
        SearchFault::Status(503),
        SearchFault::MalformedJson,
        SearchFault::WrongShape,
        SearchFault::Delay(Duration::from_millis(2500)),
    ];
    for fault in faults {
        fake.push_fault(fault.clone());
        let r = app.post(&seeded.key, path, &body).await;
        assert_eq!(r.status(), 503, "{provider} {path} {fault:?}: {}", r.text);
        assert_eq!(r.error_message(), UNAVAILABLE, "{provider} {path} {fault:?}");
        assert!(!r.text.contains(SEARCH_SECRET) && !r.text.contains(provider), "{}", r.text);
        assert_eq!(available(&app, &seeded.key).await, 8_000, "{provider} {path} {fault:?}");
    }
    assert_eq!(usage_rows(&app), 0);
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'debit'", []), 0);
    assert!(fake.requests().iter().all(|r| r.provider == provider));

    let r = app.post(&seeded.key, path, &body).await;

    assert_eq!(r.status(), 200, "a hold outlived its request: {}", r.text);
    assert_eq!(r.json()["usage"]["credits_remaining"], 0);
}

#[actix_web::test]
async fn exa_failures_on_web_search_are_masked_and_free() {
    assert_failures_are_masked("exa", SEARCH, json!({"query": "q"}), only_exa).await;
}

#[actix_web::test]
async fn exa_failures_on_fetch_are_masked_and_free() {
    assert_failures_are_masked("exa", FETCH, json!({"urls": ["https://a.example/"]}), only_exa)
        .await;
}

#[actix_web::test]
async fn tavily_failures_on_web_search_are_masked_and_free() {
    assert_failures_are_masked("tavily", SEARCH, json!({"query": "q"}), only_tavily).await;
}

#[actix_web::test]
async fn tavily_failures_on_fetch_are_masked_and_free() {
    assert_failures_are_masked(
        "tavily",
        FETCH,
        json!({"urls": ["https://a.example/"]}),
        only_tavily,
    )
    .await;
}

#[actix_web::test]
async fn a_failing_search_provider_opens_its_circuit() {
    let (app, fake) = spawn_search(|s| {
        only_exa(s);
        s.breaker.failure_threshold = 2;
        s.breaker.open_secs = 60;
    })
    .await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    fake.set_default_fault(Some(SearchFault::Status(500)));

    for _ in 0..2 {
        let r = app.post(&seeded.key, SEARCH, &json!({"query": "q"})).await;
        assert_eq!(r.status(), 503, "{}", r.text);
    }
    let skipped = app.post(&seeded.key, FETCH, &json!({"urls": ["https://a.example/"]})).await;

    assert_eq!(skipped.status(), 503, "{}", skipped.text);
    assert_eq!(skipped.error_message(), UNAVAILABLE);
    assert_eq!(fake.calls(), 2, "an open circuit is not called");
    let providers = app.admin_ok("GET", "/providers", None).await;
    let exa = providers
        .as_array()
        .and_then(|a| a.iter().find(|p| p["provider"] == "exa"))
        .expect("exa is listed");
    assert_eq!(exa["configured"], true);
    assert_eq!(exa["state"], "open");
    let tavily = providers
        .as_array()
        .and_then(|a| a.iter().find(|p| p["provider"] == "tavily"))
        .expect("tavily is listed");
    assert_eq!(tavily["configured"], false);
    assert_eq!(available(&app, &seeded.key).await, 1_000_000);
}

// ---- X-Quantized-Provider ----

#[actix_web::test]
async fn the_provider_header_is_checked_against_the_search_providers() {
    let (app, fake) = spawn_search(only_exa).await;
    let seeded = app.seed_license(Some(1_000_000)).await;
    let bodies =
        [(SEARCH, json!({"query": "q"})), (FETCH, json!({"urls": ["https://a.example/"]}))];

    for (path, body) in &bodies {
        let unknown =
            app.post_with(&seeded.key, path, body, &[("X-Quantized-Provider", "bogus")]).await;
        assert_eq!(unknown.status(), 400, "{}", unknown.text);
        assert_eq!(unknown.error_message(), "Unknown provider 'bogus'");
        for chat_only in ["openrouter", "anthropic"] {
            let r = app
                .post_with(&seeded.key, path, body, &[("X-Quantized-Provider", chat_only)])
                .await;
            assert_eq!(r.status(), 400, "{}", r.text);
            assert_eq!(
                r.error_message(),
                format!("Provider '{chat_only}' does not support this endpoint")
            );
        }
        // Tavily serves these endpoints but has no key here: masked 503, no fallback to Exa.
        let unconfigured =
            app.post_with(&seeded.key, path, body, &[("X-Quantized-Provider", "tavily")]).await;
        assert_eq!(unconfigured.status(), 503, "{}", unconfigured.text);
        assert_eq!(unconfigured.error_message(), UNAVAILABLE);
        let exa = app.post_with(&seeded.key, path, body, &[("X-Quantized-Provider", "exa")]).await;
        assert_eq!(exa.status(), 200, "{}", exa.text);
    }
    assert_eq!(fake.calls(), 2);
    assert_eq!(usage_rows(&app), 2);
}

#[actix_web::test]
async fn without_any_search_provider_the_endpoints_answer_a_masked_503() {
    let app = spawn_app_with(|s| s.providers.demo.enabled = false).await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let search = app.post(&seeded.key, SEARCH, &json!({"query": "q"})).await;
    let fetch = app.post(&seeded.key, FETCH, &json!({"urls": ["https://a.example/"]})).await;

    for r in [search, fetch] {
        assert_eq!(r.status(), 503, "{}", r.text);
        assert_eq!(r.error_message(), UNAVAILABLE);
    }
    assert_eq!(available(&app, &seeded.key).await, 1_000_000);
    assert_eq!(usage_rows(&app), 0);
}

// ---- the demo provider ----

#[actix_web::test]
async fn the_demo_provider_serves_both_endpoints_offline() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(1_000_000)).await;

    let search = app
        .post(&seeded.key, SEARCH, &json!({"query": "quantum computing", "num_results": 4}))
        .await;
    let again = app
        .post_with(
            &seeded.key,
            SEARCH,
            &json!({"query": "quantum computing", "num_results": 4}),
            &[("X-Quantized-Provider", "demo")],
        )
        .await;
    let fetch = app
        .post(
            &seeded.key,
            FETCH,
            &json!({"urls": ["https://example.com/article", "https://example.com/fail"]}),
        )
        .await;

    assert_eq!(search.status(), 200, "{}", search.text);
    let body = search.json();
    assert_eq!(
        body["results"][0],
        json!({"title": "Demo result 1 for \"quantum computing\"",
               "url": "https://example.org/demo/quantum-computing/1", "id": "demo-1",
               "published_date": "2025-01-01", "author": "Quantized Demo"})
    );
    assert_eq!(body["results"][3]["author"], Value::Null);
    assert_eq!(body["results"].as_array().map(Vec::len), Some(4));
    assert!(body["usage"]["search_time"].is_number(), "{body}");
    assert_eq!(body["usage"]["credits_used"], 8000);
    assert_eq!(again.json()["results"], body["results"], "deterministic");
    assert_eq!(fetch.status(), 200, "{}", fetch.text);
    let fetched = fetch.json();
    assert_eq!(fetched["results"][0]["title"], "Demo page: example.com/article");
    assert_eq!(fetched["results"][0]["status"], "success");
    assert!(fetched["results"][0]["text"]
        .as_str()
        .is_some_and(|t| t.contains("example.com/article")));
    assert_eq!(
        fetched["results"][1],
        json!({"url": "https://example.com/fail", "title": null, "text": null, "status": "error"})
    );
    assert_eq!(fetched["usage"], json!({"credits_used": 8000, "credits_remaining": 976_000}));
    assert_eq!(last_usage(&app, &seeded.license_id).await["provider"], "demo");
}

#[actix_web::test]
async fn an_unlimited_license_reports_null_credits_remaining() {
    let app = spawn_app().await;
    let seeded = app.seed_license(None).await;

    let search = app.post(&seeded.key, SEARCH, &json!({"query": "q"})).await;
    let fetch = app.post(&seeded.key, FETCH, &json!({"urls": ["https://a.example/"]})).await;

    assert_eq!(search.json()["usage"]["credits_used"], 8000, "{}", search.text);
    assert_eq!(search.json()["usage"]["credits_remaining"], Value::Null);
    assert_eq!(fetch.json()["usage"]["credits_used"], 8000, "{}", fetch.text);
    assert_eq!(fetch.json()["usage"]["credits_remaining"], Value::Null);
}
