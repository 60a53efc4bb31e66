//! A fake Exa and Tavily: one actix-web server on 127.0.0.1:0 that speaks Exa's
//! `POST /search` and `POST /contents` (under `/exa`) and Tavily's `POST /search` and
//! `POST /extract` (under `/tavily`) as /work/shared/spec/upstreams.md §4 and §5 describe them,
//! records every request, and can be told to misbehave.
//!
//! Fetching: a URL containing `missing` fails (Exa: `statuses[].status = "error"` with
//! `CRAWL_NOT_FOUND`; Tavily: an entry of `failed_results`); every other URL succeeds.

#![allow(dead_code)] // not every helper is used by every test module

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

/// In every error message the fake makes up, so tests can assert it never reaches a client.
pub const SEARCH_SECRET: &str = "search-upstream-secret-91c2";

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct SearchRecorded {
    /// `"exa"` or `"tavily"`.
    pub provider: &'static str,
    /// The path under the provider, e.g. `/search`, `/contents`, `/extract`.
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl SearchRecorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// A way to misbehave, for one request (queued) or for all (default).
#[derive(Clone, Debug)]
pub enum SearchFault {
    /// That status with the provider's own error body (the message contains SEARCH_SECRET).
    Status(u16),
    /// That status with exactly this JSON body.
    StatusWithBody(u16, String),
    /// Wait this long before answering normally.
    Delay(Duration),
    /// 200 with half a JSON body.
    MalformedJson,
    /// 200 with JSON that is not the provider's shape.
    WrongShape,
}

#[derive(Default)]
struct State {
    requests: Vec<SearchRecorded>,
    faults: VecDeque<SearchFault>,
    default_fault: Option<SearchFault>,
}

#[derive(Clone)]
pub struct FakeSearch {
    address: String,
    state: web::Data<Mutex<State>>,
    handle: ServerHandle,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeSearch {
    pub async fn start() -> FakeSearch {
        let state = web::Data::new(Mutex::new(State::default()));
        let data = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/exa/search", web::post().to(exa_search))
                .route("/exa/contents", web::post().to(exa_contents))
                .route("/tavily/search", web::post().to(tavily_search))
                .route("/tavily/extract", web::post().to(tavily_extract))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .bind(("127.0.0.1", 0))
        .expect("fake search binds");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        FakeSearch { address: format!("http://127.0.0.1:{port}"), state, handle }
    }

    /// Base URL for `[providers.exa]` (the gateway appends `/search` or `/contents`).
    pub fn exa_url(&self) -> String {
        format!("{}/exa", self.address)
    }

    /// Base URL for `[providers.tavily]` (the gateway appends `/search` or `/extract`).
    pub fn tavily_url(&self) -> String {
        format!("{}/tavily", self.address)
    }

    pub fn requests(&self) -> Vec<SearchRecorded> {
        lock(&self.state).requests.clone()
    }

    pub fn calls(&self) -> usize {
        lock(&self.state).requests.len()
    }

    pub fn last_request(&self) -> Option<SearchRecorded> {
        lock(&self.state).requests.last().cloned()
    }

    /// Queues a fault for the next authorised request.
    pub fn push_fault(&self, fault: SearchFault) {
        lock(&self.state).faults.push_back(fault);
    }

    pub fn set_default_fault(&self, fault: Option<SearchFault>) {
        lock(&self.state).default_fault = fault;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Provider {
    Exa,
    Tavily,
}

async fn exa_search(req: HttpRequest, body: Bytes, state: web::Data<Mutex<State>>) -> HttpResponse {
    handle(Provider::Exa, req, body, state).await
}

async fn exa_contents(
    req: HttpRequest,
    body: Bytes,
    state: web::Data<Mutex<State>>,
) -> HttpResponse {
    handle(Provider::Exa, req, body, state).await
}

async fn tavily_search(
    req: HttpRequest,
    body: Bytes,
    state: web::Data<Mutex<State>>,
) -> HttpResponse {
    handle(Provider::Tavily, req, body, state).await
}

async fn tavily_extract(
    req: HttpRequest,
    body: Bytes,
    state: web::Data<Mutex<State>>,
) -> HttpResponse {
    handle(Provider::Tavily, req, body, state).await
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

fn json_response(code: u16, body: &Value) -> HttpResponse {
    HttpResponse::build(StatusCode::from_u16(code).expect("status"))
        .content_type("application/json")
        .body(body.to_string())
}

/// The provider's own error body: Exa `{"requestId","error":"…","tag"}`, Tavily
/// `{"detail":{"error":"…"}}`.
fn error(provider: Provider, code: u16, message: &str) -> HttpResponse {
    let body = match provider {
        Provider::Exa => {
            let tag = match code {
                400 => "INVALID_REQUEST_BODY",
                401 => "INVALID_API_KEY",
                402 => "NO_MORE_CREDITS",
                403 => "ACCESS_DENIED",
                429 => "RATE_LIMIT_EXCEEDED",
                _ => "INTERNAL_ERROR",
            };
            json!({"requestId": "67207943fab9832d162b5317f4cca830", "error": message, "tag": tag})
        }
        Provider::Tavily => json!({"detail": {"error": message}}),
    };
    json_response(code, &body)
}

async fn handle(
    provider: Provider,
    req: HttpRequest,
    body: Bytes,
    state: web::Data<Mutex<State>>,
) -> HttpResponse {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (k.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned())
        })
        .collect();
    let value: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let path = req.path().split_at(req.path()[1..].find('/').map_or(0, |i| i + 1)).1.to_string();
    let authorized = match provider {
        Provider::Exa => header(&req, "x-api-key").is_some(),
        Provider::Tavily => header(&req, "authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| !t.trim().is_empty()),
    };
    let fault = {
        let mut s = lock(&state);
        s.requests.push(SearchRecorded {
            provider: match provider {
                Provider::Exa => "exa",
                Provider::Tavily => "tavily",
            },
            path: path.clone(),
            headers,
            body: value.clone(),
        });
        if authorized {
            s.faults.pop_front().or_else(|| s.default_fault.clone())
        } else {
            None
        }
    };
    if !authorized {
        return error(provider, 401, &format!("Missing or invalid API key ({SEARCH_SECRET})"));
    }
    match fault {
        None => {}
        Some(SearchFault::Delay(d)) => actix_web::rt::time::sleep(d).await,
        Some(SearchFault::Status(code)) => {
            return error(provider, code, &format!("Fake failure {code} ({SEARCH_SECRET})"));
        }
        Some(SearchFault::StatusWithBody(code, body)) => {
            return HttpResponse::build(StatusCode::from_u16(code).expect("status"))
                .content_type("application/json")
                .body(body);
        }
        Some(SearchFault::MalformedJson) => {
            let full = answer(provider, &path, &value).to_string();
            return HttpResponse::Ok()
                .content_type("application/json")
                .body(full[..full.len() / 2].to_string());
        }
        Some(SearchFault::WrongShape) => return json_response(200, &json!({"foo": 1})),
    }
    json_response(200, &answer(provider, &path, &value))
}

fn answer(provider: Provider, path: &str, body: &Value) -> Value {
    match (provider, path) {
        (Provider::Exa, "/search") => exa_search_reply(body),
        (Provider::Exa, _) => exa_contents_reply(body),
        (Provider::Tavily, "/search") => tavily_search_reply(body),
        (Provider::Tavily, _) => tavily_extract_reply(body),
    }
}

fn fails(url: &str) -> bool {
    url.contains("missing")
}

/// `https://host` → `https://host/`; anything with a path is left alone.
fn normalised(url: &str) -> String {
    match url.split_once("://") {
        Some((_, rest)) if !rest.contains('/') => format!("{url}/"),
        _ => url.to_string(),
    }
}

fn urls(body: &Value) -> Vec<String> {
    body["urls"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// `numResults` results (default 10); every other one has no author and no date.
fn exa_search_reply(body: &Value) -> Value {
    let n = body["numResults"].as_u64().unwrap_or(10);
    let query = body["query"].as_str().unwrap_or("");
    let results: Vec<Value> = (1..=n)
        .map(|i| {
            let odd = i % 2 == 1;
            json!({
                "id": format!("https://exa.example/doc/{i}"),
                "url": format!("https://exa.example/page/{i}"),
                "title": format!("Exa result {i} for {query}"),
                "publishedDate": if odd { json!(format!("2024-0{}-1{}T00:00:00.000Z", i % 9 + 1, i % 10)) } else { Value::Null },
                "author": if odd { json!(format!("Author {i}")) } else { Value::Null },
                "score": 0.5,
                "image": null,
                "favicon": "https://exa.example/favicon.ico",
            })
        })
        .collect();
    json!({
        "requestId": "b5947044c4b78efa9552a7c89b306d95",
        "resolvedSearchType": "neural",
        "results": results,
        "searchTime": 123.4,
        "costDollars": {"total": 0.005, "search": {"neural": 0.005}},
    })
}

/// Exa lists the pages it got in `results` and every URL's outcome in `statuses`; it echoes
/// the URL with a trailing slash added when there is no path, as real crawlers normalise.
fn exa_contents_reply(body: &Value) -> Value {
    let with_text = body["text"].as_bool().unwrap_or(true);
    let mut results = Vec::new();
    let mut statuses = Vec::new();
    for asked in urls(body) {
        let url = normalised(&asked);
        if fails(&url) {
            statuses.push(json!({"id": url, "status": "error",
                "error": {"tag": "CRAWL_NOT_FOUND", "httpStatusCode": 404}}));
            continue;
        }
        let mut result = json!({
            "id": url,
            "url": url,
            "title": format!("Exa title of {url}"),
            "publishedDate": "2024-07-12T00:00:00.000Z",
            "author": "Exa Author",
        });
        if with_text {
            result["text"] = json!(format!("Exa text of {url}"));
        }
        results.push(result);
        statuses.push(json!({"id": url, "status": "success"}));
    }
    json!({
        "requestId": "e492118ccdedcba5088bfc4357a8a125",
        "results": results,
        "statuses": statuses,
        "costDollars": {"total": 0.001},
    })
}

/// `max_results` results (default 5); the first has a `published_date`.
fn tavily_search_reply(body: &Value) -> Value {
    let n = body["max_results"].as_u64().unwrap_or(5);
    let query = body["query"].as_str().unwrap_or("");
    let results: Vec<Value> = (1..=n)
        .map(|i| {
            let mut r = json!({
                "title": format!("Tavily result {i} for {query}"),
                "url": format!("https://tavily.example/page/{i}"),
                "content": "A snippet…",
                "score": 0.81,
                "raw_content": null,
                "favicon": "https://tavily.example/favicon.ico",
            });
            if i == 1 {
                r["published_date"] = json!("Mon, 09 Jun 2025 12:00:00 GMT");
            }
            r
        })
        .collect();
    json!({
        "query": query,
        "answer": null,
        "images": [],
        "results": results,
        "response_time": 1.67,
        "usage": {"credits": 1},
        "request_id": "123e4567-e89b-12d3-a456-426614174111",
    })
}

fn tavily_extract_reply(body: &Value) -> Value {
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for url in urls(body) {
        if fails(&url) {
            failed.push(json!({"url": url, "error": "Failed to fetch url"}));
        } else {
            results.push(json!({
                "url": url,
                "raw_content": format!("Tavily text of {url}"),
                "images": [],
                "favicon": "https://tavily.example/favicon.ico",
            }));
        }
    }
    json!({
        "results": results,
        "failed_results": failed,
        "response_time": 0.02,
        "usage": {"credits": 1},
        "request_id": "123e4567-e89b-12d3-a456-426614174111",
    })
}
