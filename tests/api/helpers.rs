//! The test harness: the real gateway on port 0 with a temporary database, talked to over
//! HTTP. Nothing of ours is mocked; the demo provider stands in for the network.

use std::path::PathBuf;
use std::time::Duration;

use awc::http::StatusCode;
use quantized::{Application, Settings};
use serde_json::{json, Value};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub struct TestApp {
    pub address: String,
    pub db_path: PathBuf,
    pub client: awc::Client,
    pub handle: actix_web::dev::ServerHandle,
    _dir: tempfile::TempDir,
}

/// A response reduced to what tests assert on.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: awc::http::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The `error.message` of an error envelope; panics if the body is not exactly the envelope.
    pub fn error_message(&self) -> String {
        let body = self.json();
        let obj = body.as_object().unwrap_or_else(|| panic!("not an object: {body}"));
        assert_eq!(obj.len(), 1, "envelope has extra keys: {body}");
        let error = body["error"].as_object().unwrap_or_else(|| panic!("no error object: {body}"));
        assert_eq!(error.len(), 1, "error has extra keys: {body}");
        error["message"].as_str().unwrap_or_else(|| panic!("no message: {body}")).to_string()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    pub fn status(&self) -> u16 {
        self.status.as_u16()
    }
}

/// A license with one key, made through the admin API as an operator would.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub institution: String,
    pub license_type: String,
    pub license_id: String,
    pub key: String,
    pub key_id: String,
}

pub fn test_settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::load_with_env(None, std::iter::empty()).expect("default settings");
    s.listen = "127.0.0.1:0".into();
    s.database = dir.join("quantized.db");
    s.admin_token = quantized::config::Secret(ADMIN_TOKEN.into());
    s.workers = 2;
    s.models = Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/models.toml"));
    s.providers.demo.enabled = true;
    s.providers.demo.token_delay_ms = 0;
    s
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = test_settings(dir.path());
    configure(&mut settings);
    let db_path = settings.database.clone();
    let app = Application::build(settings).expect("gateway builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    actix_web::rt::spawn(app.run_until_stopped());
    let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
    TestApp { address, db_path, client, handle, _dir: dir }
}

async fn reply(
    res: Result<
        awc::ClientResponse<
            impl futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>>
                + Unpin,
        >,
        awc::error::SendRequestError,
    >,
) -> Reply {
    let mut res = res.expect("request sent");
    let body = res.body().limit(64 * 1024 * 1024).await.expect("body read");
    Reply {
        status: res.status(),
        headers: res.headers().clone(),
        text: String::from_utf8_lossy(&body).into_owned(),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Any request, raw: method, path, headers, body bytes.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, self.url(path));
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        match body {
            Some(bytes) => reply(req.send_body(bytes).await).await,
            None => reply(req.send().await).await,
        }
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let mut headers = vec![("Authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        self.raw(
            method,
            &format!("/admin/v1{path}"),
            &headers,
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }

    pub async fn admin_ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.admin(method, path, body).await;
        assert!(r.status.is_success(), "{method} {path} → {}: {}", r.status, r.text);
        if r.text.is_empty() {
            Value::Null
        } else {
            r.json()
        }
    }

    pub async fn get(&self, key: &str, path: &str) -> Reply {
        let auth = format!("Bearer {key}");
        self.raw("GET", path, &[("Authorization", &auth)], None).await
    }

    pub async fn post(&self, key: &str, path: &str, body: &Value) -> Reply {
        self.post_with(key, path, body, &[]).await
    }

    pub async fn post_with(
        &self,
        key: &str,
        path: &str,
        body: &Value,
        extra: &[(&str, &str)],
    ) -> Reply {
        let auth = format!("Bearer {key}");
        let mut headers =
            vec![("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        headers.extend_from_slice(extra);
        self.raw("POST", path, &headers, Some(body.to_string().into_bytes())).await
    }

    pub async fn chat(&self, key: &str, body: &Value) -> Reply {
        self.post(key, "/v1/chat/completions", body).await
    }

    /// Creates institution `uni-N`, license type `student-N` and a license with `micro_credits`
    /// (`None` = unlimited), plus one key.
    pub async fn seed_license(&self, micro_credits: Option<i64>) -> Seeded {
        let n = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let institution = format!("uni-{n}");
        let license_type = format!("student-{n}");
        self.admin_ok(
            "POST",
            "/institutions",
            Some(json!({"alias": institution, "name": "Test University"})),
        )
        .await;
        self.admin_ok(
            "POST",
            "/license-types",
            Some(json!({"alias": license_type, "name": "Student", "institution": institution, "default_micro_credits": micro_credits})),
        )
        .await;
        let license = self
            .admin_ok(
                "POST",
                "/licenses",
                Some(json!({"institution": institution, "license_type": license_type})),
            )
            .await;
        let license_id = license["license_id"].as_str().expect("license_id").to_string();
        let key = self
            .admin_ok(
                "POST",
                &format!("/licenses/{license_id}/keys"),
                Some(json!({"name": "test"})),
            )
            .await;
        Seeded {
            institution,
            license_type,
            license_id,
            key: key["key"].as_str().expect("key").to_string(),
            key_id: key["id"].as_str().expect("key id").to_string(),
        }
    }

    /// A second key on an existing license.
    pub async fn new_key(&self, license_id: &str) -> String {
        let key =
            self.admin_ok("POST", &format!("/licenses/{license_id}/keys"), Some(json!({}))).await;
        key["key"].as_str().expect("key").to_string()
    }

    pub async fn license(&self, key: &str) -> Value {
        let r = self.get(key, "/v1/license").await;
        assert_eq!(r.status(), 200, "{}", r.text);
        r.json()
    }

    /// A read-only view of the database, to check what was committed.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            &self.db_path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open db")
    }

    pub fn query_i64(&self, sql: &str, params: impl rusqlite::Params) -> i64 {
        self.db()
            .query_row(sql, params, |r| r.get::<_, Option<i64>>(0))
            .expect("query")
            .unwrap_or(0)
    }
}

/// A chat body for the demo model.
pub fn chat_body(text: &str) -> Value {
    json!({"model": "demo/echo", "messages": [{"role": "user", "content": text}]})
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            block
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data line: {block:?}"))
                .to_string()
        })
        .collect()
}
