//! Correctness under load: 200 concurrent requests racing for a balance, and a few thousand
//! requests against an upstream that misbehaves at random. Nothing here asserts on time; every
//! assertion is about money or about what a client may see.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use crate::fake_upstream::{Fault, SECRET_MARKER};
use crate::helpers::*;
use crate::hostile::Rng;
use crate::upstreams::{body_for, spawn_with_upstream, ANTHROPIC_KEY, OPENROUTER_KEY};

pub const UNAVAILABLE: &str = "Service temporarily unavailable";
pub const ERROR_EVENT: &str = r#"{"error":{"message":"Service temporarily unavailable"}}"#;

/// An HTTP client without awc's default cap of 100 simultaneous connections.
pub fn unbounded_client() -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().limit(0))
        .timeout(Duration::from_secs(120))
        .finish()
}

/// One request, body read to the end. `Err` when sending or reading failed at the transport
/// level (a connection refused, reset or cut).
pub async fn send(
    client: &awc::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<Reply, String> {
    let method = awc::http::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let mut req = client.request(method, url);
    for (name, value) in headers {
        req = req.insert_header((*name, *value));
    }
    let sent = match body {
        Some(bytes) => req.send_body(bytes).await,
        None => req.send().await,
    };
    let mut res = sent.map_err(|e| format!("send: {e}"))?;
    let bytes = res.body().limit(64 * 1024 * 1024).await.map_err(|e| format!("body: {e}"))?;
    Ok(Reply {
        status: res.status(),
        headers: res.headers().clone(),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// demo/echo's default prices are 0.75 µcr per input token and 2.5 per output token.
pub fn demo_cost(prompt_tokens: i64, completion_tokens: i64) -> i64 {
    (3 * prompt_tokens + 10 * completion_tokens + 3) / 4
}

/// What a 200 said it cost.
#[derive(Debug, Clone, Copy)]
pub struct Billed {
    pub credits_used: i64,
    pub credits_remaining: Option<i64>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// A stream that carried the masked error event before its usage chunk.
    pub interrupted: bool,
}

/// The usage of a 200: the JSON body's, or a finished stream's usage chunk (the stream must end
/// with the usage chunk and `[DONE]`, with the error event just before them if it broke).
pub fn billed(r: &Reply) -> Result<Billed, String> {
    let usage = if r.text.starts_with("data: ") || r.text.starts_with(": ") {
        if !r.text.ends_with("data: [DONE]\n\n") {
            return Err("the stream did not end with [DONE]".into());
        }
        let events = data_events(&r.text)?;
        let n = events.len();
        if n < 2 {
            return Err(format!("too few events: {events:?}"));
        }
        let usage_chunk: Value =
            serde_json::from_str(&events[n - 2]).map_err(|e| format!("usage chunk: {e}"))?;
        let interrupted = n >= 3 && events[n - 3] == ERROR_EVENT;
        let body_events = if interrupted { &events[..n - 3] } else { &events[..n - 2] };
        for event in body_events {
            let chunk: Value =
                serde_json::from_str(event).map_err(|e| format!("chunk {event:?}: {e}"))?;
            if chunk.get("error").is_some() || chunk["object"] != "chat.completion.chunk" {
                return Err(format!("not a clean chunk: {event}"));
            }
        }
        (usage_chunk["usage"].clone(), interrupted)
    } else {
        let body: Value = serde_json::from_str(&r.text).map_err(|e| format!("JSON: {e}"))?;
        (body["usage"].clone(), false)
    };
    let (usage, interrupted) = usage;
    let int = |k: &str| usage[k].as_i64().ok_or_else(|| format!("usage.{k} missing: {usage}"));
    Ok(Billed {
        credits_used: int("credits_used")?,
        credits_remaining: usage["credits_remaining"].as_i64(),
        prompt_tokens: int("prompt_tokens")?,
        completion_tokens: int("completion_tokens")?,
        interrupted,
    })
}

/// The `data:` payloads of an SSE body, comments skipped.
pub fn data_events(text: &str) -> Result<Vec<String>, String> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty() && !block.starts_with(':'))
        .map(|block| {
            block
                .strip_prefix("data: ")
                .map(str::to_string)
                .ok_or_else(|| format!("not an SSE data event: {block:?}"))
        })
        .collect()
}

/// A license's whole money trail as the database has it.
#[derive(Debug, PartialEq, Eq)]
pub struct Books {
    pub available: Option<i64>,
    pub used: i64,
    pub grants: i64,
    pub debits: i64,
    pub usage_sum: i64,
    pub usage_rows: i64,
    pub request_ids: HashSet<String>,
}

pub fn books(db: &rusqlite::Connection, license_id: &str) -> Books {
    let one = |sql: &str| -> i64 {
        db.query_row(sql, [license_id], |r| r.get::<_, Option<i64>>(0)).expect("query").unwrap_or(0)
    };
    let available: Option<i64> = db
        .query_row(
            "SELECT available_micro_credits FROM licenses WHERE id = ?1",
            [license_id],
            |r| r.get(0),
        )
        .expect("license row");
    let mut statement =
        db.prepare("SELECT request_id FROM usage WHERE license_id = ?1").expect("prepare");
    let request_ids = statement
        .query_map([license_id], |r| r.get::<_, String>(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    Books {
        available,
        used: one("SELECT used_micro_credits FROM licenses WHERE id = ?1"),
        grants: one(
            "SELECT SUM(micro_credits) FROM ledger_entries WHERE license_id = ?1 AND micro_credits > 0",
        ),
        debits: -one(
            "SELECT SUM(micro_credits) FROM ledger_entries WHERE license_id = ?1 AND micro_credits < 0",
        ),
        usage_sum: one("SELECT SUM(micro_credits) FROM usage WHERE license_id = ?1"),
        usage_rows: one("SELECT COUNT(*) FROM usage WHERE license_id = ?1"),
        request_ids,
    }
}

/// Every debit entry belongs to exactly one usage row and carries its amount; every charged
/// usage row has exactly one debit.
pub fn assert_debits_match_usage(db: &rusqlite::Connection) {
    let orphan_debits: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM ledger_entries e WHERE e.kind = 'debit' AND NOT EXISTS
               (SELECT 1 FROM usage u WHERE u.request_id = e.request_id
                  AND u.license_id = e.license_id AND u.micro_credits = -e.micro_credits)",
            [],
            |r| r.get(0),
        )
        .expect("query");
    assert_eq!(orphan_debits, 0, "debits without their usage row");
    let unpaid_rows: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM usage u WHERE u.micro_credits > 0 AND
               (SELECT COUNT(*) FROM ledger_entries e WHERE e.kind = 'debit'
                  AND e.request_id = u.request_id) <> 1",
            [],
            |r| r.get(0),
        )
        .expect("query");
    assert_eq!(unpaid_rows, 0, "charged usage rows without exactly one debit");
}

/// Nothing of a limited license is still held: the ledger lets an administrator take away the
/// whole balance only when no request holds any of it. Leaves the balance at zero.
pub async fn assert_nothing_held(app: &TestApp, license_id: &str, available: i64) {
    if available == 0 {
        return;
    }
    let r = app
        .admin(
            "POST",
            &format!("/licenses/{license_id}/credits"),
            Some(json!({"micro_credits": -available, "note": "hold check"})),
        )
        .await;
    assert_eq!(
        r.status(),
        200,
        "taking the whole balance was refused, so some is held: {}",
        r.text
    );
    assert_eq!(r.json()["available_micro_credits"], 0);
}

// =============================================================================================
// Overspend

/// 200 requests at once, half streamed, from four keys of one license whose balance pays for
/// exactly K of them; a sampler reads the balance (API and database) throughout.
#[actix_web::test]
async fn two_hundred_concurrent_requests_never_spend_more_than_the_balance_covers() {
    let app = spawn_app_with(|s| s.providers.demo.token_delay_ms = 2).await;
    // "hi" → 2 prompt tokens and a 9-token reply; max_tokens 16 keeps every hold small.
    let per_request = demo_cost(2, 9);
    let k = 25;
    let seeded = app.seed_license(Some(per_request * k)).await;
    let mut keys = vec![seeded.key.clone()];
    for _ in 0..3 {
        keys.push(app.new_key(&seeded.license_id).await);
    }
    let client = unbounded_client();
    let url = app.url("/v1/chat/completions");

    let done = Cell::new(false);
    let samples = Cell::new(0u32);
    let requests = (0..200).map(|i| {
        let mut body = chat_body("hi");
        body["max_tokens"] = json!(16);
        if i % 2 == 0 {
            body["stream"] = json!(true);
        }
        let auth = format!("Bearer {}", keys[i % keys.len()]);
        let (client, url) = (&client, &url);
        async move {
            let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
            send(client, "POST", url, &headers, Some(body.to_string().into_bytes())).await
        }
    });
    let burst = async {
        let replies = join_all(requests).await;
        done.set(true);
        replies
    };
    let sampler = async {
        while !done.get() {
            let license = app.license(&seeded.key).await;
            let available = license["available_micro_credits"].as_i64().expect("limited");
            assert!(available >= 0, "balance went negative: {license}");
            let on_disk = app.query_i64(
                "SELECT available_micro_credits FROM licenses WHERE id = ?1",
                [&seeded.license_id],
            );
            assert!(on_disk >= 0, "balance on disk went negative: {on_disk}");
            samples.set(samples.get() + 1);
        }
    };
    let (replies, ()) = futures_util::future::join(burst, sampler).await;

    let (mut succeeded, mut refused, mut charged, mut streamed) = (0, 0, 0, 0);
    let mut ids = HashSet::new();
    for r in replies {
        let r = r.unwrap_or_else(|e| panic!("transport failure: {e}"));
        match r.status() {
            200 => {
                let bill = billed(&r).unwrap_or_else(|e| panic!("{e}: {}", r.text));
                assert!(!bill.interrupted, "{}", r.text);
                assert_eq!(bill.credits_used, per_request, "{}", r.text);
                assert!(bill.credits_remaining.expect("limited") >= 0);
                succeeded += 1;
                charged += bill.credits_used;
                streamed += i64::from(r.text.starts_with("data: "));
                ids.insert(r.header("x-request-id").expect("X-Request-Id"));
            }
            402 => {
                assert_eq!(r.error_message(), "Insufficient credits");
                refused += 1;
            }
            other => panic!("unexpected status {other}: {}", r.text),
        }
    }
    assert_eq!(succeeded + refused, 200);
    assert!(succeeded <= k, "{succeeded} requests succeeded but the balance paid for {k}");
    assert!(succeeded >= 1);
    assert!(samples.get() >= 1);

    let books = books(&app.db(), &seeded.license_id);
    let initial = per_request * k;
    assert_eq!(books.usage_rows, succeeded, "one usage row per success");
    assert_eq!(books.request_ids, ids, "the usage rows are the successful requests");
    assert_eq!(books.usage_sum, charged);
    assert_eq!(books.used, charged);
    assert_eq!((books.grants, books.debits), (initial, charged));
    assert_eq!(books.available, Some(initial - charged));
    assert_debits_match_usage(&app.db());
    let license = app.license(&seeded.key).await;
    assert_eq!(license["available_micro_credits"], initial - charged);
    assert_eq!(license["used_micro_credits"], charged);
    assert_nothing_held(&app, &seeded.license_id, initial - charged).await;
    eprintln!(
        "overspend: 200 sent (100 streamed), {succeeded} succeeded ({streamed} streamed), \
         {refused} refused with 402, {charged} µcr charged of {initial} (K = {k}), \
         {} usage rows, {} balance samples",
        books.usage_rows,
        samples.get()
    );
}

// =============================================================================================
// Upstream chaos

const MINI: &str = "openai/gpt-4.1-mini";
const SONNET: &str = "anthropic/claude-sonnet-4-20250514";
const CHAOS_REQUESTS: usize = 2500;
const CHAOS_SEED: u64 = 0xC4A0_5EED;

/// One fault for one upstream call, at random. `Delay(0)` is a normal answer. Only fault modes
/// the gateway masks are drawn (an upstream 400 or model-not-found is the client's to see).
fn random_fault(rng: &mut Rng) -> Fault {
    let slow = Duration::from_millis(1500); // past both 1 s timeouts below
    match rng.below(100) {
        0..=41 => Fault::Delay(Duration::ZERO),
        42..=45 => Fault::Delay(Duration::from_millis(rng.range(1, 150))),
        46..=53 => Fault::Status(*rng.pick(&[401, 403, 408, 429, 500, 502, 503, 504, 529])),
        54..=55 => Fault::StatusWithBody(
            *rng.pick(&[500, 502, 503]),
            format!("<html><body>Bad gateway {SECRET_MARKER}</body></html>"),
        ),
        56..=57 => Fault::StatusWithBody(
            200,
            (*rng.pick(&["", "null", "[]", "{\"choices\":5}", "{"])).into(),
        ),
        58..=61 => Fault::ResetConnection,
        62..=65 => Fault::MalformedJson,
        66..=69 => Fault::WrongShape,
        70..=77 => Fault::CutStream { after_chunks: rng.below(5) },
        78..=85 => Fault::MidStreamError { after_chunks: rng.below(5) },
        86..=91 => Fault::StallStream {
            after_chunks: rng.below(4),
            stall: Duration::from_millis(rng.range(5, 60)),
        },
        92..=94 => Fault::StallStream { after_chunks: rng.below(4), stall: slow },
        95..=96 => Fault::Delay(slow),
        _ => Fault::Status(500),
    }
}

#[derive(Default, Debug)]
struct Tally {
    ok: i64,
    ok_streamed: i64,
    interrupted: i64,
    unavailable: i64,
    charged: i64,
    ids: HashSet<String>,
}

/// A few thousand requests (both providers, both models, streamed or not, some forced to a
/// provider) while the fake upstream draws a fault for every call at random. Every answer must
/// be a 200 or the masked 503, nothing the upstream said may leak, and per license the charges
/// the clients were told, the usage rows and the ledger must agree, with nothing left held.
#[actix_web::test]
async fn a_chaotic_upstream_yields_only_200s_or_masked_503s_and_the_books_balance() {
    let (app, upstream) = spawn_with_upstream(|s| {
        s.limits.upstream_timeout_secs = 1;
        s.limits.stream_idle_timeout_secs = 1;
        s.breaker.failure_threshold = 20;
        s.breaker.open_secs = 1;
    })
    .await;
    let seed = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(CHAOS_SEED);
    let mut rng = Rng::new(seed);
    // Fallovers make some requests call twice; the queue runs dry into normal answers.
    for _ in 0..CHAOS_REQUESTS * 3 / 2 {
        upstream.push_fault(random_fault(&mut rng));
    }
    const INITIAL: i64 = 50_000_000;
    let mut licenses = Vec::new();
    for i in 0..4 {
        // The last license is unlimited.
        licenses.push(app.seed_license(if i == 3 { None } else { Some(INITIAL) }).await);
    }
    let plan: Vec<(usize, Value, Option<&'static str>)> = (0..CHAOS_REQUESTS)
        .map(|i| {
            let model = if rng.chance(50) { MINI } else { SONNET };
            let words = 1 + rng.below(12);
            let text: Vec<String> = (0..words).map(|w| format!("w{w}")).collect();
            let mut body = body_for(model, &text.join(" "));
            if rng.chance(50) {
                body["stream"] = json!(true);
            }
            if rng.chance(30) {
                body["max_tokens"] = json!(rng.range(16, 500));
            }
            let forced = match (model, rng.below(6)) {
                (SONNET, 0) => Some("anthropic"),
                (SONNET, 1) => Some("openrouter"),
                _ => None,
            };
            (i % licenses.len(), body, forced)
        })
        .collect();

    let client = unbounded_client();
    let url = app.url("/v1/chat/completions");
    let tallies: RefCell<Vec<Tally>> =
        RefCell::new((0..licenses.len()).map(|_| Tally::default()).collect());
    let failures: RefCell<Vec<String>> = RefCell::new(Vec::new());
    stream::iter(plan)
        .for_each_concurrent(48, |(license, body, forced)| {
            let (client, url, licenses, tallies, failures) =
                (&client, &url, &licenses, &tallies, &failures);
            async move {
                let auth = format!("Bearer {}", licenses[license].key);
                let mut headers =
                    vec![("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                if let Some(provider) = forced {
                    headers.push(("X-Quantized-Provider", provider));
                }
                let what = format!("{body} via {forced:?}");
                let r =
                    match send(client, "POST", url, &headers, Some(body.to_string().into_bytes()))
                        .await
                    {
                        Ok(r) => r,
                        Err(e) => return failures.borrow_mut().push(format!("{what}: {e}")),
                    };
                if let Some(problem) = chaos_problem(&r) {
                    return failures.borrow_mut().push(format!("{what}: {problem}"));
                }
                let mut tallies = tallies.borrow_mut();
                let tally = &mut tallies[license];
                if r.status() == 503 {
                    tally.unavailable += 1;
                    return;
                }
                match billed(&r) {
                    Ok(bill) => {
                        tally.ok += 1;
                        tally.ok_streamed += i64::from(body["stream"] == true);
                        tally.interrupted += i64::from(bill.interrupted);
                        tally.charged += bill.credits_used;
                        if let Some(id) = r.header("x-request-id") {
                            tally.ids.insert(id);
                        }
                        if bill.credits_remaining.is_some_and(|c| c < 0) {
                            failures.borrow_mut().push(format!("{what}: negative balance"));
                        }
                    }
                    Err(e) => failures.borrow_mut().push(format!("{what}: {e}: {}", r.text)),
                }
            }
        })
        .await;

    let failures = failures.into_inner();
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {CHAOS_REQUESTS} answers were wrong; first ones:\n{}",
        failures.len(),
        failures.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
    let tallies = tallies.into_inner();
    let db = app.db();
    assert_debits_match_usage(&db);
    let mut rows = 0;
    for (seeded, tally) in licenses.iter().zip(&tallies) {
        let books = books(&db, &seeded.license_id);
        let limited = seeded.license_id != licenses[3].license_id;
        assert_eq!(books.usage_rows, tally.ok, "seed {seed}: one usage row per 200");
        assert_eq!(books.request_ids, tally.ids, "seed {seed}: the usage rows are the 200s");
        assert_eq!(books.usage_sum, tally.charged, "seed {seed}: usage rows = what clients saw");
        assert_eq!(books.used, tally.charged);
        assert_eq!(books.debits, tally.charged, "seed {seed}: debits = charges");
        if limited {
            assert_eq!(books.grants, INITIAL);
            assert_eq!(books.available, Some(INITIAL - tally.charged));
        } else {
            assert_eq!((books.grants, books.available), (0, None));
        }
        let license = app.license(&seeded.key).await;
        assert_eq!(license["used_micro_credits"], tally.charged);
        if limited {
            assert_eq!(license["available_micro_credits"], INITIAL - tally.charged);
            assert_nothing_held(&app, &seeded.license_id, INITIAL - tally.charged).await;
        }
        rows += books.usage_rows;
    }
    let total = |f: fn(&Tally) -> i64| tallies.iter().map(f).sum::<i64>();
    assert_eq!(total(|t| t.ok) + total(|t| t.unavailable), CHAOS_REQUESTS as i64);
    assert!(total(|t| t.ok) > 0 && total(|t| t.unavailable) > 0, "{tallies:?}");
    assert_eq!(app.raw("GET", "/health", &[], None).await.status(), 200);
    eprintln!(
        "chaos (seed {seed}): {CHAOS_REQUESTS} sent, {} upstream calls, {} × 200 ({} streamed, \
         {} of them with the error event), {} × masked 503, {} µcr charged, {} usage rows",
        upstream.calls(),
        total(|t| t.ok),
        total(|t| t.ok_streamed),
        total(|t| t.interrupted),
        total(|t| t.unavailable),
        total(|t| t.charged),
        rows
    );
}

/// Why an answer under chaos is wrong, if it is: anything but a 200 or the masked 503, or
/// anything of the upstream's showing through.
fn chaos_problem(r: &Reply) -> Option<String> {
    for secret in [SECRET_MARKER, OPENROUTER_KEY, ANTHROPIC_KEY, "FakeProvider", "Fake upstream"] {
        if r.text.contains(secret) {
            return Some(format!("leaks {secret:?}: {}", r.text));
        }
    }
    match r.status() {
        200 => None,
        503 => match serde_json::from_str::<Value>(&r.text) {
            Ok(body) if body == json!({"error": {"message": UNAVAILABLE}}) => None,
            _ => Some(format!("503 but not the masked envelope: {}", r.text)),
        },
        other => Some(format!("status {other}: {}", r.text)),
    }
}
