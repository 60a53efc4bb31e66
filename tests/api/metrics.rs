use crate::helpers::*;

#[actix_web::test]
async fn metrics_count_requests_ledger_commits_and_credits_behind_the_admin_token() {
    let app = spawn_app().await;
    let seeded = app.seed_license(Some(100_000)).await;
    let charged = app.chat(&seeded.key, &chat_body("count me")).await.json()["usage"]
        ["credits_used"]
        .as_i64()
        .unwrap();
    app.chat(&seeded.key, &chat_body("")).await;
    let _ = app.get(&seeded.key, "/v1/nope").await;

    let anonymous = app.raw("GET", "/metrics", &[], None).await;
    let with_key = app.get(&seeded.key, "/metrics").await;
    let r = app
        .raw("GET", "/metrics", &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))], None)
        .await;

    assert_eq!(anonymous.status(), 401);
    assert_eq!(with_key.status(), 401, "an API key is not the admin token");
    assert_eq!(r.status(), 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = r.text;
    assert!(
        text.contains(r#"quantized_requests_total{endpoint="/v1/chat/completions",model="demo/echo",provider="demo",status="200"} 2"#),
        "{text}"
    );
    assert!(text.contains(
        r#"quantized_requests_total{endpoint="other",model="",provider="",status="404"} 1"#
    ));
    assert!(text.contains(r#"quantized_breaker_state{provider="demo"} 0"#));
    assert!(text.contains("# TYPE quantized_gateway_overhead_seconds histogram"));
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} missing"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("quantized_ledger_writes_total"), 2.0);
    assert!(value("quantized_ledger_commits_total") >= 1.0);
    let second = app.query_i64("SELECT SUM(micro_credits) FROM usage", []);
    assert_eq!(value("quantized_credits_charged_total") as i64, second);
    assert!(second > charged);
}
