//! The binary as a user runs it: `quantized demo`, `serve` start-up errors, `migrate`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_quantized");

struct Demo {
    child: Child,
    port: u16,
    key: String,
}

/// Starts `quantized demo --port 0` in `dir` and reads the banner for the port and key.
fn start_demo(dir: &Path) -> Demo {
    let mut child = Command::new(BIN)
        .args(["demo", "--port", "0"])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut port, mut key) = (None, None);
    while port.is_none() || key.is_none() {
        let line = lines.next().expect("banner line").expect("utf-8");
        if let Some(rest) = line.split("running on http://127.0.0.1:").nth(1) {
            port = rest.split_whitespace().next().and_then(|p| p.parse().ok());
        }
        if let Some(rest) = line.trim().strip_prefix("API key:") {
            key = Some(rest.trim().to_string());
        }
    }
    // Keep draining stdout so the demo never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Demo { child, port: port.expect("port"), key: key.expect("key") }
}

fn interrupt(child: &mut Child) -> std::process::ExitStatus {
    let status =
        Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    child.wait().expect("wait")
}

async fn demo_chat(client: &awc::Client, demo: &Demo) -> Value {
    let mut res = client
        .post(format!("http://127.0.0.1:{}/v1/chat/completions", demo.port))
        .insert_header(("Authorization", format!("Bearer {}", demo.key)))
        .insert_header(("Content-Type", "application/json"))
        .send_body(chat_body("Hello demo").to_string())
        .await
        .expect("demo answers");
    assert_eq!(res.status(), 200);
    res.json::<Value>().await.expect("json")
}

#[actix_web::test]
async fn demo_serves_a_billed_chat_and_keeps_its_database_between_runs() {
    let dir = tempfile::tempdir().unwrap();
    let client = awc::Client::default();

    let mut first = start_demo(dir.path());
    let reply = demo_chat(&client, &first).await;
    let remaining = reply["usage"]["credits_remaining"].as_i64().unwrap();
    assert_eq!(remaining, 5_000_000 - reply["usage"]["credits_used"].as_i64().unwrap());
    let status = interrupt(&mut first.child);
    assert!(status.success(), "Ctrl-C stops the demo cleanly: {status:?}");

    let mut second = start_demo(dir.path());
    assert_ne!(second.key, first.key);
    let reply = demo_chat(&client, &second).await;
    assert_eq!(
        reply["usage"]["credits_remaining"].as_i64().unwrap(),
        remaining - reply["usage"]["credits_used"].as_i64().unwrap(),
        "the balance carried over"
    );
    assert!(interrupt(&mut second.child).success());
    assert!(dir.path().join("quantized-demo.db").exists());
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("QUANTIZED_ADMIN_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run binary");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).trim().to_string())
}

#[test]
fn serve_refuses_to_start_without_an_admin_token() {
    let (ok, stderr) = run(&["serve"], &[]);
    assert!(!ok);
    assert_eq!(
        stderr,
        "error: admin_token is required: set it in the config file or in QUANTIZED_ADMIN_TOKEN"
    );
}

#[test]
fn serve_names_an_unusable_database_path_in_one_line() {
    let (ok, stderr) = run(
        &["serve"],
        &[("QUANTIZED_ADMIN_TOKEN", "x"), ("QUANTIZED_DATABASE", "/nonexistent-dir/q.db")],
    );
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent-dir"), "{stderr}");
}

#[test]
fn serve_names_a_misspelt_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("q.toml");
    std::fs::write(&config, "admin_token = \"x\"\n[limits]\nmax_body_byte = 1\n").unwrap();
    let (ok, stderr) = run(&["serve", "--config", config.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(stderr.starts_with("error: ") && stderr.contains("max_body_byte"), "{stderr}");
}

#[test]
fn migrate_creates_the_schema_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let env = [("QUANTIZED_DATABASE", db.to_str().unwrap())];
    assert!(run(&["migrate"], &env).0);
    assert!(run(&["migrate"], &env).0);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 2);
    let models: i64 = conn.query_row("SELECT COUNT(*) FROM models", [], |r| r.get(0)).unwrap();
    assert!(models >= 3);
}

#[actix_web::test]
async fn a_graceful_stop_lets_an_open_stream_finish_and_bills_it() {
    let app = spawn_app_with(|s| s.providers.demo.token_delay_ms = 20).await;
    let seeded = app.seed_license(Some(100_000)).await;
    let mut body = chat_body("finish me please");
    body["stream"] = serde_json::json!(true);

    let stop_soon = async {
        actix_web::rt::time::sleep(std::time::Duration::from_millis(60)).await;
        app.handle.stop(true).await;
    };
    let (reply, ()) = futures_util::future::join(app.chat(&seeded.key, &body), stop_soon).await;

    assert_eq!(reply.status(), 200);
    assert!(reply.text.ends_with("data: [DONE]\n\n"), "{}", reply.text);
    let events = sse_events(&reply.text);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 11);
    let billed =
        app.query_i64("SELECT SUM(micro_credits) FROM usage WHERE status = 'completed'", []);
    assert_eq!(billed, usage["usage"]["credits_used"].as_i64().unwrap());
    // Stopped: no new connections.
    assert!(app.client.get(app.url("/health")).send().await.is_err());
}
