use std::time::Duration;

use futures_util::{future::join_all, StreamExt};
use serde_json::json;

use crate::helpers::*;

/// demo/echo's default prices are 0.75 µcr per input token and 2.5 per output token.
fn demo_cost(prompt_tokens: u64, completion_tokens: u64) -> i64 {
    // exact in quarters: ceil((3p + 10c) / 4)
    ((3 * prompt_tokens + 10 * completion_tokens) as i64 + 3) / 4
}

fn ledger_sum(app: &TestApp, license_id: &str) -> i64 {
    app.query_i64(
        "SELECT SUM(micro_credits) FROM ledger_entries WHERE license_id = ?1",
        [license_id],
    )
}

fn usage_sum(app: &TestApp, license_id: &str) -> i64 {
    app.query_i64("SELECT SUM(micro_credits) FROM usage WHERE license_id = ?1", [license_id])
}

#[actix_web::test]
async fn charges_are_exact_and_every_balance_change_has_a_ledger_row() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(100_000)).await;
    let prompts = ["one", "two words", "a somewhat longer prompt of seven words", ""];

    let mut expected_total = 0;
    for text in prompts {
        let r = app.chat(&seeded.key, &chat_body(text)).await;
        assert_eq!(r.status(), 200, "{}", r.text);
        let usage = &r.json()["usage"];
        let words = text.split_whitespace().count() as u64;
        assert_eq!(usage["prompt_tokens"], words + 1);
        assert_eq!(usage["completion_tokens"], 8 + words);
        let cost = demo_cost(words + 1, 8 + words);
        assert_eq!(usage["credits_used"], cost, "prompt {text:?}");
        expected_total += cost;
        assert_eq!(usage["credits_remaining"], 100_000 - expected_total);
    }

    let license = app.license(&seeded.key).await;
    assert_eq!(license["available_micro_credits"], 100_000 - expected_total);
    assert_eq!(license["used_micro_credits"], expected_total);
    assert_eq!(usage_sum(&app, &seeded.license_id), expected_total);
    assert_eq!(ledger_sum(&app, &seeded.license_id), 100_000 - expected_total);
    let debit_rows = app.query_i64(
        "SELECT COUNT(*) FROM ledger_entries WHERE license_id = ?1 AND kind = 'debit'",
        [&seeded.license_id],
    );
    assert_eq!(debit_rows, prompts.len() as i64);
}

#[actix_web::test]
async fn output_is_clamped_to_what_the_balance_can_pay_for() {
    let app = spawn_app().await;
    // The reply would echo 32 words (40 tokens in all); 150 µcr pays for the prompt's
    // high estimate and only part of that.
    let seeded = app.seed_license(Some(150)).await;
    let prompt: Vec<String> = (0..32).map(|i| format!("w{i}")).collect();

    let r = app.chat(&seeded.key, &chat_body(&prompt.join(" "))).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let body = r.json();
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let usage = &body["usage"];
    let completion = usage["completion_tokens"].as_i64().unwrap();
    assert!((16..40).contains(&completion), "completion_tokens {completion}");
    let used = usage["credits_used"].as_i64().unwrap();
    assert_eq!(used, demo_cost(33, completion as u64));
    assert!(used <= 150);
    assert_eq!(usage["credits_remaining"], 150 - used);
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], 150 - used);
}

#[actix_web::test]
async fn a_request_is_refused_with_402_when_not_even_a_minimal_reply_fits() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(30)).await;

    let r = app.chat(&seeded.key, &chat_body("hi")).await;

    assert_eq!(r.status(), 402);
    assert_eq!(r.error_message(), "Insufficient credits");
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], 30);
    assert_eq!(app.query_i64("SELECT COUNT(*) FROM usage", []), 0);
}

#[actix_web::test]
async fn unlimited_licenses_are_never_refused_and_report_null_balances() {
    let app = spawn_app().await;
    let seeded = app.seed_license(None).await;

    let r = app.chat(&seeded.key, &chat_body("hello")).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let usage = &r.json()["usage"];
    assert_eq!(usage["credits_used"], demo_cost(2, 9));
    assert!(usage["credits_remaining"].is_null());
    let license = app.license(&seeded.key).await;
    assert!(license["available_micro_credits"].is_null());
    assert_eq!(license["used_micro_credits"], demo_cost(2, 9));
    assert_eq!(usage_sum(&app, &seeded.license_id), demo_cost(2, 9));
}

/// 60 requests, streamed and not, race for a balance that pays for at most 10 of them.
#[actix_web::test]
async fn concurrent_requests_never_overspend_the_balance() {
    let app = spawn_app().await;
    let per_request = demo_cost(2, 9); // "hi" → 2 prompt tokens, 9 reply tokens
    let k = 10;
    let seeded = app.seed_license(Some(per_request * k)).await;

    let requests = (0..60).map(|i| {
        let mut body = chat_body("hi");
        body["max_tokens"] = json!(16);
        if i % 2 == 0 {
            body["stream"] = json!(true);
        }
        let app = &app;
        let key = seeded.key.clone();
        async move { app.chat(&key, &body).await }
    });
    let replies = join_all(requests).await;

    let mut succeeded = 0;
    let mut charged = 0;
    for r in &replies {
        match r.status() {
            200 => {
                succeeded += 1;
                let usage = if r.text.starts_with("data: ") {
                    let events = sse_events(&r.text);
                    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
                    serde_json::from_str::<serde_json::Value>(&events[events.len() - 2]).unwrap()
                        ["usage"]
                        .clone()
                } else {
                    r.json()["usage"].clone()
                };
                assert!(usage["credits_remaining"].as_i64().unwrap() >= 0);
                charged += usage["credits_used"].as_i64().unwrap();
            }
            402 => assert_eq!(r.error_message(), "Insufficient credits"),
            other => panic!("unexpected status {other}: {}", r.text),
        }
    }
    assert!(succeeded <= k, "{succeeded} requests succeeded but the balance paid for {k}");
    assert!(succeeded >= 1);
    assert_eq!(charged, per_request * succeeded);
    let license = app.license(&seeded.key).await;
    let available = license["available_micro_credits"].as_i64().unwrap();
    assert!(available >= 0);
    assert_eq!(available, per_request * k - charged);
    assert_eq!(usage_sum(&app, &seeded.license_id), charged);
    assert_eq!(ledger_sum(&app, &seeded.license_id), available);
    assert_eq!(
        app.query_i64("SELECT COUNT(*) FROM usage WHERE license_id = ?1", [&seeded.license_id]),
        succeeded
    );
}

#[actix_web::test]
async fn a_streamed_request_is_billed_like_its_usage_chunk_says() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(10_000)).await;
    let mut body = chat_body("stream me");
    body["stream"] = json!(true);

    let r = app.chat(&seeded.key, &body).await;

    assert_eq!(r.status(), 200, "{}", r.text);
    let events = sse_events(&r.text);
    let usage_chunk: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    let cost = demo_cost(3, 10);
    assert_eq!(usage_chunk["usage"]["credits_used"], cost);
    assert_eq!(usage_chunk["usage"]["credits_remaining"], 10_000 - cost);
    assert_eq!(app.license(&seeded.key).await["available_micro_credits"], 10_000 - cost);
    let stream_flag =
        app.query_i64("SELECT stream FROM usage WHERE license_id = ?1", [&seeded.license_id]);
    assert_eq!(stream_flag, 1);
}

#[actix_web::test]
async fn a_client_that_disconnects_mid_stream_pays_only_for_what_was_delivered() {
    let app = spawn_app_with(|s| s.providers.demo.token_delay_ms = 100).await;
    let seeded = app.seed_license(Some(10_000)).await;
    let mut body = chat_body("a b c d e f g h i j");
    body["stream"] = json!(true);

    let mut res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .insert_header(("Authorization", format!("Bearer {}", seeded.key)))
        .insert_header(("Content-Type", "application/json"))
        .send_body(body.to_string())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut received = String::new();
    while received.matches("\"content\"").count() < 3 {
        let chunk = res.next().await.expect("stream open").expect("chunk");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(res);

    // The relay notices on its next write (the next token, 100 ms later) and settles.
    let mut status = String::new();
    for _ in 0..100 {
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        let found: Option<String> = app
            .db()
            .query_row(
                "SELECT status FROM usage WHERE license_id = ?1",
                [&seeded.license_id],
                |r| r.get(0),
            )
            .ok();
        if let Some(s) = found {
            status = s;
            break;
        }
    }
    assert_eq!(status, "client_disconnected");
    let completion = app.query_i64(
        "SELECT completion_tokens FROM usage WHERE license_id = ?1",
        [&seeded.license_id],
    );
    let prompt = app
        .query_i64("SELECT prompt_tokens FROM usage WHERE license_id = ?1", [&seeded.license_id]);
    assert_eq!(prompt, 11);
    assert!((2..18).contains(&completion), "billed {completion} of 18 tokens");
    let charged = demo_cost(prompt as u64, completion as u64);
    assert_eq!(usage_sum(&app, &seeded.license_id), charged);
    // The hold is gone: the whole balance minus the charge is available again.
    let license = app.license(&seeded.key).await;
    assert_eq!(license["available_micro_credits"], 10_000 - charged);
    assert_eq!(ledger_sum(&app, &seeded.license_id), 10_000 - charged);
}
