//! The real binary, as a child process, under `kill -9` and SIGTERM (design §4–5, §8): every
//! answer a client received is on disk, the books balance, no hold becomes a charge, and a
//! graceful stop lets open streams finish and bills them. Nothing here asserts on time.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::{join, join_all};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::hostile::Rng;
use crate::stress::{assert_debits_match_usage, billed, books, demo_cost, send, unbounded_client};

const BIN: &str = env!("CARGO_BIN_EXE_quantized");

/// `quantized serve` on 127.0.0.1:0 with the demo provider and `[store] sync = "normal"`.
fn write_config(dir: &Path, token_delay_ms: u64) -> PathBuf {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/models.toml");
    let text = format!(
        "admin_token = '{ADMIN_TOKEN}'\nlisten = '127.0.0.1:0'\ndatabase = '{}'\nworkers = 2\n\
         models = '{}'\n\n[store]\nsync = 'normal'\n\n[providers.demo]\nenabled = true\n\
         token_delay_ms = {token_delay_ms}\n",
        dir.join("quantized.db").display(),
        models.display()
    );
    let path = dir.join("quantized.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// A running `quantized serve`. Dropping it kills the process.
struct Gateway {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(log: &Mutex<Vec<String>>) -> Vec<String> {
    log.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Starts the binary and reads its port from the `quantized listening on … (port N)` line.
async fn start(config: &Path) -> Gateway {
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info,quantized::request=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars() {
        if name.starts_with("QUANTIZED_") {
            command.env_remove(name);
        }
    }
    let mut child = command.spawn().expect("start quantized serve");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (port_tx, port_rx) = mpsc::channel();
    let thread_log = log.clone();
    // Keeps draining stderr so the gateway never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let port = line
                .split("(port ")
                .nth(1)
                .and_then(|rest| rest.split(')').next())
                .and_then(|p| p.parse::<u16>().ok());
            if let Some(port) = port {
                let _ = port_tx.send(port);
            }
            thread_log.lock().unwrap_or_else(PoisonError::into_inner).push(line);
        }
    });
    let port = actix_web::rt::task::spawn_blocking(move || {
        port_rx.recv_timeout(Duration::from_secs(120)).ok()
    })
    .await
    .expect("join");
    let Some(port) = port else {
        panic!("the gateway did not start:\n{}", lines(&log).join("\n"));
    };
    Gateway { child, port, log }
}

impl Gateway {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log_tail(&self) -> String {
        let lines = lines(&self.log);
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn admin(&self, client: &awc::Client, method: &str, path: &str, body: Value) -> Value {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        let url = self.url(&format!("/admin/v1{path}"));
        let r = send(client, method, &url, &headers, Some(body.to_string().into_bytes()))
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(r.status.is_success(), "{method} {path} → {}: {}", r.status, r.text);
        r.json()
    }

    /// A license with `micro_credits` (`None` = unlimited) and a key, through the admin API.
    async fn seed(&self, client: &awc::Client, micro_credits: Option<i64>) -> License {
        let n = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let (institution, license_type) = (format!("uni-{n}"), format!("student-{n}"));
        self.admin(client, "POST", "/institutions", json!({"alias": institution, "name": "U"}))
            .await;
        self.admin(
            client,
            "POST",
            "/license-types",
            json!({"alias": license_type, "name": "S", "institution": institution,
                   "default_micro_credits": micro_credits}),
        )
        .await;
        let license = self
            .admin(
                client,
                "POST",
                "/licenses",
                json!({"institution": institution, "license_type": license_type}),
            )
            .await;
        let id = license["license_id"].as_str().expect("license_id").to_string();
        let key = self.admin(client, "POST", &format!("/licenses/{id}/keys"), json!({})).await;
        License { id, key: key["key"].as_str().expect("key").to_string(), initial: micro_credits }
    }

    async fn chat(&self, client: &awc::Client, key: &str, body: &Value) -> Result<Reply, String> {
        let auth = format!("Bearer {key}");
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        let url = self.url("/v1/chat/completions");
        send(client, "POST", &url, &headers, Some(body.to_string().into_bytes())).await
    }

    async fn license(&self, client: &awc::Client, key: &str) -> Value {
        let auth = format!("Bearer {key}");
        let r = send(client, "GET", &self.url("/v1/license"), &[("Authorization", &auth)], None)
            .await
            .expect("GET /v1/license");
        assert_eq!(r.status(), 200, "{}", r.text);
        r.json()
    }

    /// Waits (without blocking the runtime) for the process to exit.
    async fn exited(&mut self) -> std::process::ExitStatus {
        for _ in 0..6_000 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the gateway did not exit; its log:\n{}", self.log_tail());
    }
}

#[derive(Debug, Clone)]
struct License {
    id: String,
    key: String,
    initial: Option<i64>,
}

fn open_db(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open db")
}

// =============================================================================================
// kill -9

/// One request of a burst, as its client saw it.
struct Outcome {
    license: usize,
    stream: bool,
    /// `Err`: the transport failed; `.1` tells whether the gateway had been killed by then.
    result: Result<Reply, (String, bool)>,
}

impl Outcome {
    /// A 200 whose whole body arrived (for a stream: up to its usage chunk and `[DONE]`).
    fn completed(&self) -> Option<(&Reply, crate::stress::Billed)> {
        let r = self.result.as_ref().ok()?;
        if r.status() != 200 {
            return None;
        }
        billed(r).ok().map(|b| (r, b))
    }
}

/// 48 clients send billed requests (streamed or not, 1–20 words, four licenses, one of them
/// nearly empty) until the gateway is killed with SIGKILL — once at least `kill_after` answers
/// have completed and at least 8 requests are in flight.
async fn burst_until_killed(
    client: &awc::Client,
    gateway: &mut Gateway,
    licenses: &[License],
    seed: u64,
    kill_after: usize,
) -> (Vec<Outcome>, usize) {
    let url = gateway.url("/v1/chat/completions");
    let completed = Cell::new(0usize);
    let in_flight = Cell::new(0usize);
    let killed = Cell::new(false);
    let workers = (0..48u64).map(|worker| {
        let (url, completed, in_flight, killed) = (&url, &completed, &in_flight, &killed);
        async move {
            let mut rng = Rng::new(seed ^ (worker << 32));
            let mut outcomes = Vec::new();
            loop {
                let license = rng.below(licenses.len());
                let stream = rng.chance(50);
                let words: Vec<String> = (0..1 + rng.below(20)).map(|i| format!("w{i}")).collect();
                let mut body = chat_body(&words.join(" "));
                body["max_tokens"] = json!(64);
                if stream {
                    body["stream"] = json!(true);
                }
                let auth = format!("Bearer {}", licenses[license].key);
                let headers =
                    [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                in_flight.set(in_flight.get() + 1);
                let result =
                    send(client, "POST", url, &headers, Some(body.to_string().into_bytes())).await;
                in_flight.set(in_flight.get() - 1);
                let result = result.map_err(|e| (e, killed.get()));
                let outcome = Outcome { license, stream, result };
                if outcome.completed().is_some() {
                    completed.set(completed.get() + 1);
                }
                let failed = outcome.result.is_err();
                outcomes.push(outcome);
                if failed || killed.get() {
                    return outcomes;
                }
            }
        }
    });
    let child = &mut gateway.child;
    let log = gateway.log.clone();
    let killer = async {
        let mut waited = 0;
        while completed.get() < kill_after || in_flight.get() < 8 {
            waited += 1;
            assert!(waited < 60_000, "the burst never got going; log:\n{}", lines(&log).join("\n"));
            actix_web::rt::time::sleep(Duration::from_millis(1)).await;
        }
        let at_kill = in_flight.get();
        child.kill().expect("kill -9"); // std's Child::kill is SIGKILL
        killed.set(true);
        child.wait().expect("reap");
        at_kill
    };
    let (outcomes, at_kill) = join(join_all(workers), killer).await;
    (outcomes.into_iter().flatten().collect(), at_kill)
}

/// After a restart on the same file: everything the clients were given is on disk, every
/// charge is the price of tokens served (a hold never became a charge), and every balance is
/// its grants minus its debits.
async fn assert_books_survived(
    db_path: &Path,
    gateway: &Gateway,
    client: &awc::Client,
    licenses: &[License],
    outcomes: &[Outcome],
) -> (usize, usize, i64) {
    let db = open_db(db_path);
    let integrity: String =
        db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check");
    assert_eq!(integrity, "ok");

    // Every completed 200 has its row, exactly as the client was told.
    let mut delivered = 0;
    let mut seen = HashMap::new();
    for outcome in outcomes {
        let Some((reply, bill)) = outcome.completed() else { continue };
        delivered += 1;
        let id = reply.header("x-request-id").expect("X-Request-Id");
        let row: Option<(String, i64, i64, i64, bool, String)> = db
            .query_row(
                "SELECT license_id, micro_credits, prompt_tokens, completion_tokens, stream, status
                   FROM usage WHERE request_id = ?1",
                [&id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .ok();
        let Some(row) = row else {
            panic!("a request the client got a 200 for has no usage row: {id}\n{}", reply.text);
        };
        assert_eq!(
            row,
            (
                licenses[outcome.license].id.clone(),
                bill.credits_used,
                bill.prompt_tokens,
                bill.completion_tokens,
                outcome.stream,
                "completed".to_string()
            ),
            "{id}"
        );
        seen.insert(id, ());
    }
    // Every charge is the price of the tokens served: never a hold.
    let mut statement = db
        .prepare("SELECT request_id, prompt_tokens, completion_tokens, micro_credits FROM usage")
        .expect("prepare");
    let rows: Vec<(String, i64, i64, i64)> = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    for (id, prompt, completion, charged) in &rows {
        assert_eq!(*charged, demo_cost(*prompt, *completion), "{id} was charged {charged}");
    }
    let undelivered = rows.iter().filter(|(id, ..)| !seen.contains_key(id)).count();
    assert_debits_match_usage(&db);

    // Balances: grants minus debits, on disk and as the restarted gateway reports them.
    let mut charged = 0;
    for license in licenses {
        let b = books(&db, &license.id);
        assert_eq!(b.used, b.usage_sum, "used = usage rows");
        assert_eq!(b.debits, b.usage_sum, "debits = usage rows");
        charged += b.usage_sum;
        match license.initial {
            Some(initial) => {
                assert_eq!(b.grants, initial);
                assert_eq!(b.available, Some(b.grants - b.debits), "balance = grants − debits");
                assert!(b.available.expect("limited") >= 0);
            }
            None => assert_eq!((b.grants, b.available), (0, None)),
        }
        let live = gateway.license(client, &license.key).await;
        assert_eq!(live["available_micro_credits"], json!(b.available));
        assert_eq!(live["used_micro_credits"], b.used);
    }
    (delivered, undelivered, charged)
}

/// Two rounds of: a burst of concurrent billed requests, `kill -9` in the middle of it, a restart
/// on the same database, and the books checked against what every client was told. Then the
/// restarted gateway bills on from exactly the committed balance.
#[actix_web::test]
async fn kill_9_mid_burst_loses_no_committed_charge_and_turns_no_hold_into_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), 3);
    let db_path = dir.path().join("quantized.db");
    let client = unbounded_client();
    let mut gateway = start(&config).await;
    let mut licenses = Vec::new();
    for credits in [Some(50_000_000), Some(50_000_000), Some(4_000), None] {
        licenses.push(gateway.seed(&client, credits).await);
    }
    let seed = std::env::var("DURABILITY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let mut outcomes = Vec::new();
    let mut report = Vec::new();
    for round in 0..2u64 {
        let (mut round_outcomes, at_kill) =
            burst_until_killed(&client, &mut gateway, &licenses, seed + round, 150).await;
        for o in &round_outcomes {
            if let Err((e, after_kill)) = &o.result {
                assert!(after_kill, "a request failed while the gateway was up: {e}");
            }
            if let Ok(r) = &o.result {
                assert!([200, 402].contains(&r.status()), "unexpected {}: {}", r.status(), r.text);
            }
        }
        let sent = round_outcomes.len();
        let cut = round_outcomes.iter().filter(|o| o.result.is_err()).count();
        let truncated = round_outcomes
            .iter()
            .filter(|o| o.result.as_ref().is_ok_and(|r| r.status() == 200))
            .filter(|o| o.completed().is_none())
            .count();
        let refused = round_outcomes
            .iter()
            .filter(|o| o.result.as_ref().is_ok_and(|r| r.status() == 402))
            .count();
        outcomes.append(&mut round_outcomes);

        gateway = start(&config).await; // the same database file
        let (delivered, undelivered, charged) =
            assert_books_survived(&db_path, &gateway, &client, &licenses, &outcomes).await;
        report.push(format!(
            "round {round}: {sent} sent, killed with {at_kill} in flight, {cut} failed at the \
             transport and {truncated} 200 streams cut short by the kill, \
             {refused} × 402; after restart (all rounds): {delivered} completed 200s all on disk, \
             {undelivered} rows committed but never delivered, {charged} µcr charged"
        ));
    }

    // The restarted gateway bills on from the committed balance.
    let license = &licenses[0];
    let before = gateway.license(&client, &license.key).await["available_micro_credits"]
        .as_i64()
        .expect("limited");
    let r = gateway.chat(&client, &license.key, &chat_body("after the crash")).await.expect("chat");
    assert_eq!(r.status(), 200, "{}", r.text);
    let used = r.json()["usage"]["credits_used"].as_i64().expect("credits_used");
    assert_eq!(used, demo_cost(4, 11));
    assert_eq!(r.json()["usage"]["credits_remaining"], before - used);
    eprintln!("kill -9:\n  {}", report.join("\n  "));
}

// =============================================================================================
// SIGTERM

/// Whether a new TCP connection is refused, and if one is accepted, what `/health` says on it.
fn probe(port: u16) -> Result<String, ()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(drop)?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    Ok(String::from_utf8_lossy(&answer).lines().next().unwrap_or("(closed)").to_string())
}

/// SIGTERM while 12 streams are open: the streams run to their end, each is billed and its
/// usage row committed, new connections are refused from the moment the stop takes hold
/// while those streams still run, and the process exits cleanly.
#[actix_web::test]
async fn sigterm_lets_open_streams_finish_commits_their_usage_and_refuses_new_connections() {
    const STREAMS: usize = 12;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), 40);
    let client = unbounded_client();
    let mut gateway = start(&config).await;
    let license = gateway.seed(&client, Some(10_000_000)).await;
    let port = gateway.port;
    let pid = gateway.child.id();
    let url = gateway.url("/v1/chat/completions");
    // 24 words: 25 prompt tokens; the reply is 32 words, 40 ms apart.
    let words: Vec<String> = (0..24).map(|i| format!("w{i}")).collect();
    let mut body = chat_body(&words.join(" "));
    body["stream"] = json!(true);

    let started = Cell::new(0usize);
    let finished = Cell::new(0usize);
    let streams = (0..STREAMS).map(|_| {
        let (client, url, body, key) = (&client, &url, &body, &license.key);
        let (started, finished) = (&started, &finished);
        async move {
            let mut res = client
                .post(url.as_str())
                .insert_header(("Authorization", format!("Bearer {key}")))
                .insert_header(("Content-Type", "application/json"))
                .send_body(body.to_string())
                .await
                .expect("stream opened");
            assert_eq!(res.status(), 200);
            let id =
                res.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(String::from);
            let mut text = String::new();
            let mut counted = false;
            while let Some(chunk) = res.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.expect("stream chunk")));
                if !counted && text.contains("\"content\":\"Hello") {
                    counted = true;
                    started.set(started.get() + 1);
                }
            }
            finished.set(finished.get() + 1);
            (id.expect("X-Request-Id"), text)
        }
    });
    let controller = async {
        let mut waited = 0;
        while started.get() < STREAMS {
            waited += 1;
            assert!(waited < 60_000, "the streams never started");
            actix_web::rt::time::sleep(Duration::from_millis(1)).await;
        }
        let status =
            Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill -TERM");
        assert!(status.success());
        // Probe with new connections until one is refused.
        let mut accepted_before_stop = Vec::new();
        let finished_when_refused = loop {
            let still_running = STREAMS - finished.get();
            let answer =
                actix_web::rt::task::spawn_blocking(move || probe(port)).await.expect("probe");
            match answer {
                Err(()) => break STREAMS - still_running,
                Ok(line) => accepted_before_stop.push(line),
            }
            assert!(
                accepted_before_stop.len() < 2_000,
                "new connections were still accepted: {accepted_before_stop:?}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(5)).await;
        };
        // And it stays that way.
        for _ in 0..5 {
            let answer =
                actix_web::rt::task::spawn_blocking(move || probe(port)).await.expect("probe");
            assert!(answer.is_err(), "a connection was accepted after the stop: {answer:?}");
        }
        (finished_when_refused, accepted_before_stop)
    };
    let (replies, (finished_when_refused, accepted_before_stop)) =
        join(join_all(streams), controller).await;

    assert!(
        finished_when_refused < STREAMS,
        "every stream had already ended when new connections were first refused"
    );
    for line in &accepted_before_stop {
        assert!(line.starts_with("HTTP/1.1 200") || line == "(closed)", "{line}");
    }
    let status = gateway.exited().await;
    assert!(status.success(), "exit status {status:?}; log:\n{}", gateway.log_tail());
    assert!(
        lines(&gateway.log).iter().any(|l| l.contains("quantized stopped")),
        "{}",
        gateway.log_tail()
    );

    let db = open_db(&dir.path().join("quantized.db"));
    let mut charged = 0;
    for (id, text) in &replies {
        let reply = Reply {
            status: awc::http::StatusCode::OK,
            headers: awc::http::header::HeaderMap::new(),
            text: text.clone(),
        };
        let bill = billed(&reply).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(!bill.interrupted, "{text}");
        assert_eq!((bill.prompt_tokens, bill.completion_tokens), (25, 32));
        assert_eq!(bill.credits_used, demo_cost(25, 32));
        let row: (i64, String) = db
            .query_row("SELECT micro_credits, status FROM usage WHERE request_id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap_or_else(|e| panic!("no usage row for {id}: {e}"));
        assert_eq!(row, (bill.credits_used, "completed".to_string()));
        charged += bill.credits_used;
    }
    let b = books(&db, &license.id);
    assert_eq!(b.usage_rows, STREAMS as i64);
    assert_eq!((b.usage_sum, b.debits, b.used), (charged, charged, charged));
    assert_eq!(b.available, Some(10_000_000 - charged));
    assert_debits_match_usage(&db);
    eprintln!(
        "SIGTERM: {STREAMS} open streams all finished and billed ({charged} µcr, {} rows); \
         {finished_when_refused} had finished when new connections were first refused; \
         {} probe connection(s) were accepted before the stop took hold",
        b.usage_rows,
        accepted_before_stop.len()
    );
}
