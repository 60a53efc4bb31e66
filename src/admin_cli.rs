//! `quantized admin …`: a thin command-line client of the gateway's admin HTTP API
//! (design contract §1 and §3).
//!
//! Every verb maps to exactly one call under `{url}/admin/v1` with
//! `Authorization: Bearer <token>`. The pure parts (argument → request mapping, table
//! rendering, error text) are plain functions; only [`run`] touches the network and stdout.

use std::io::{Read, Write};
use std::time::Duration;

use actix_web::http::{Method, StatusCode};
use anyhow::{anyhow, bail, Context};
use serde_json::{json, Map, Number, Value};

/// Whole-request limit of every admin call.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body read (a big model catalog or usage page still fits).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Arguments of `quantized admin`.
#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// Gateway base URL
    #[arg(
        long,
        env = "QUANTIZED_URL",
        default_value = "http://127.0.0.1:8080",
        global = true,
        display_order = 900
    )]
    pub url: String,
    /// Admin token
    #[arg(
        long,
        env = "QUANTIZED_ADMIN_TOKEN",
        global = true,
        hide_env_values = true,
        display_order = 901
    )]
    pub token: Option<String>,
    /// Print raw JSON instead of a table
    #[arg(long, global = true, display_order = 902)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The nouns of `quantized admin`.
#[derive(clap::Subcommand, Debug)]
pub enum AdminCommand {
    /// Institutions and the Ed25519 public keys that verify their JWTs
    #[command(subcommand)]
    Institutions(InstitutionsCommand),
    /// Institution public keys by id
    #[command(subcommand)]
    PublicKeys(PublicKeysCommand),
    /// License types, their default credits and their prices
    #[command(subcommand)]
    LicenseTypes(LicenseTypesCommand),
    /// Licenses, their balances and their usage
    #[command(subcommand)]
    Licenses(LicensesCommand),
    /// API keys of licenses
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The model catalog
    #[command(subcommand)]
    Models(ModelsCommand),
}

#[derive(clap::Subcommand, Debug)]
pub enum InstitutionsCommand {
    /// Create an institution
    Create {
        /// Short, unique, case-sensitive alias (usable wherever an id is)
        #[arg(long)]
        alias: String,
        /// Display name
        #[arg(long)]
        name: String,
    },
    /// List institutions
    List,
    /// Register an Ed25519 public key for the institution's JWTs
    AddKey {
        /// Institution id or alias
        institution: String,
        /// The key: PEM (`-----BEGIN PUBLIC KEY-----`) or base64 of the raw 32 bytes
        #[arg(
            long,
            allow_hyphen_values = true,
            required_unless_present = "public_key_file",
            conflicts_with = "public_key_file"
        )]
        public_key: Option<String>,
        /// Read the key from this file (`-` = stdin)
        #[arg(long, value_name = "PATH")]
        public_key_file: Option<String>,
        /// Key id, matched against the JWT header's `kid`
        #[arg(long)]
        kid: Option<String>,
    },
    /// List the institution's public keys
    Keys {
        /// Institution id or alias
        institution: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum PublicKeysCommand {
    /// Delete a public key: JWTs signed with it stop working at once
    Delete {
        /// Public key id
        id: String,
    },
}

/// A per-use tool whose price a license type can override.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// Web search, priced per call
    WebSearch,
    /// Fetch, priced per URL
    Fetch,
}

impl Tool {
    fn as_str(self) -> &'static str {
        match self {
            Tool::WebSearch => "web-search",
            Tool::Fetch => "fetch",
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum LicenseTypesCommand {
    /// Create a license type
    Create {
        /// Short, unique, case-sensitive alias
        #[arg(long)]
        alias: String,
        /// Display name
        #[arg(long)]
        name: String,
        /// Institution id or alias
        #[arg(long)]
        institution: String,
        /// Micro-credits a new license of this type starts with
        #[arg(
            long,
            value_name = "N",
            required_unless_present = "unlimited",
            conflicts_with = "unlimited"
        )]
        default_micro_credits: Option<i64>,
        /// New licenses of this type have no credit limit
        #[arg(long)]
        unlimited: bool,
    },
    /// List license types
    List,
    /// Set a model's price for licenses of this type
    SetPrice {
        /// License type id or alias
        license_type: String,
        /// Catalog model id, e.g. openai/gpt-4.1-mini
        model_id: String,
        /// Input cost per micro-credit (decimal)
        #[arg(long, value_name = "DECIMAL", value_parser = parse_decimal)]
        input: Number,
        /// Output cost per micro-credit (decimal)
        #[arg(long, value_name = "DECIMAL", value_parser = parse_decimal)]
        output: Number,
    },
    /// Set a tool's price for licenses of this type
    SetToolPrice {
        /// License type id or alias
        license_type: String,
        /// The tool
        #[arg(value_enum)]
        tool: Tool,
        /// Price in micro-credits (per call for web-search, per URL for fetch)
        #[arg(long, value_name = "N")]
        micro_credits: i64,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum LicensesCommand {
    /// Create a license
    Create {
        /// Institution id or alias
        #[arg(long)]
        institution: String,
        /// License type id or alias
        #[arg(long)]
        license_type: String,
        /// License identifier such as a course id
        #[arg(long)]
        unique_id: Option<String>,
        /// User the license belongs to
        #[arg(long)]
        user_id: Option<String>,
        /// Starting balance (default: the license type's)
        #[arg(long, value_name = "N")]
        micro_credits: Option<i64>,
    },
    /// List licenses, optionally filtered
    List {
        /// Only this institution (id or alias)
        #[arg(long)]
        institution: Option<String>,
        /// Only this license type (id or alias)
        #[arg(long)]
        license_type: Option<String>,
        /// Only this unique id
        #[arg(long)]
        unique_id: Option<String>,
    },
    /// Show one license
    Show {
        /// License id
        id: String,
    },
    /// Add (positive) or remove (negative) micro-credits
    Credit {
        /// License id
        id: String,
        /// Amount; negative removes (never below zero)
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        micro_credits: i64,
        /// Note written to the ledger
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
    },
    /// Billed requests of a license, newest first
    Usage {
        /// License id
        id: String,
        /// Maximum number of rows
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Only rows before this cursor
        #[arg(long, value_name = "CURSOR")]
        before: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Create an API key for a license (the key is shown only once)
    Create {
        /// License id
        license_id: String,
        /// Display name
        #[arg(long)]
        name: Option<String>,
        /// Expiry time (RFC 3339, e.g. 2026-12-31T23:59:59Z)
        #[arg(long, value_name = "RFC3339")]
        expires_at: Option<String>,
    },
    /// List a license's API keys (without secrets)
    List {
        /// License id
        license_id: String,
    },
    /// Deactivate an API key
    Delete {
        /// Key id
        id: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum ModelsCommand {
    /// List the model catalog
    List,
    /// Create or replace a model from a JSON file
    Put {
        /// Catalog model id, e.g. openai/gpt-4.1-mini
        model_id: String,
        /// JSON file with the model (`-` = stdin)
        #[arg(long, value_name = "PATH|-")]
        file: String,
    },
}

/// Runs one admin command and prints its result.
///
/// Must be called inside an actix System
/// (`actix_web::rt::System::new().block_on(run(args))`).
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let output = execute(&args, &mut read_input).await?;
    emit(&output)
}

/// Everything [`run`] does except printing: returns the text to print.
async fn execute(
    args: &AdminArgs,
    read: &mut dyn FnMut(&str) -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    let token =
        args.token.as_deref().filter(|t| !t.trim().is_empty()).ok_or_else(|| {
            anyhow!("admin token missing: pass --token or set QUANTIZED_ADMIN_TOKEN")
        })?;
    let plan = plan(&args.command, read)?;
    let (status, body) = send(&args.url, token, &plan.request).await?;
    if !status.is_success() {
        bail!(error_text(status, &body));
    }
    render(&plan, &body, args.json)
}

/// The only place that writes to stdout.
fn emit(text: &str) -> anyhow::Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        // `quantized admin … | head` closing the pipe early is not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow!("cannot write to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

/// Reads a file's text, `-` meaning stdin.
fn read_input(source: &str) -> anyhow::Result<String> {
    if source == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read stdin")?;
        Ok(text)
    } else {
        std::fs::read_to_string(source).with_context(|| format!("cannot read {source}"))
    }
}

// ---------------------------------------------------------------------------------------
// Argument → request mapping
// ---------------------------------------------------------------------------------------

/// One admin API call: `path` is relative to `/admin/v1` and includes any query string.
#[derive(Debug, Clone, PartialEq)]
struct ApiRequest {
    method: Method,
    path: String,
    body: Option<Value>,
}

/// What to print after a successful call.
#[derive(Debug, Clone, PartialEq)]
enum Output {
    /// A table; the preferred column order (the spec's field list).
    Table(&'static [&'static str]),
    /// A table, then the warning that the new key is shown only once.
    NewKey,
    /// A fixed confirmation line (DELETE answers 204 with no body).
    Done(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Plan {
    request: ApiRequest,
    display: Output,
}

const INSTITUTION: &[&str] = &["id", "alias", "name", "created_at"];
const PUBLIC_KEY: &[&str] = &["id", "kid", "created_at"];
const LICENSE_TYPE: &[&str] = &[
    "id",
    "alias",
    "name",
    "institution",
    "institution_id",
    "default_micro_credits",
    "created_at",
];
const PRICE: &[&str] = &[
    "license_type",
    "license_type_id",
    "model_id",
    "input_cost_per_micro_credit",
    "output_cost_per_micro_credit",
];
const TOOL_PRICE: &[&str] = &["license_type", "license_type_id", "tool", "micro_credits"];
const LICENSE: &[&str] = &[
    "id",
    "license_id",
    "institution_id",
    "license_type_id",
    "unique_id",
    "user_id",
    "used_micro_credits",
    "available_micro_credits",
    "created_at",
];
const NEW_KEY: &[&str] = &["id", "key", "name", "expires_at", "created_at"];
const KEY: &[&str] =
    &["id", "prefix", "name", "active", "expires_at", "ephemeral", "created_at", "last_used_at"];
const USAGE: &[&str] = &[
    "request_id",
    "created_at",
    "endpoint",
    "model",
    "provider",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "micro_credits",
    "status",
];
const MODEL: &[&str] = &[
    "id",
    "name",
    "kind",
    "context_window",
    "max_output_tokens",
    "input_cost_per_micro_credit",
    "output_cost_per_micro_credit",
    "routes",
    "active",
    "input_modality",
    "output_modality",
    "description",
    "model_author",
    "supported_features",
];

const KEY_SHOWN_ONCE: &str =
    "This key is shown only once: store it now, it cannot be retrieved again.";

/// Parses a decimal exactly as typed into a JSON number; rejects anything else.
fn parse_decimal(text: &str) -> Result<Number, String> {
    let trimmed = text.trim();
    match serde_json::from_str::<Number>(trimmed) {
        Ok(n) if !trimmed.is_empty() => Ok(n),
        _ => Err(format!("'{text}' is not a decimal number (examples: 0.5, 12, 1e-3)")),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (so `/` becomes `%2F`).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `?a=1&b=2` from the parameters that are set; empty when none is.
fn query(params: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = params
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Inserts `key: value` into a JSON object only when the value is present.
fn put_opt<T: Into<Value>>(body: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(v) = value {
        body.insert(key.to_owned(), v.into());
    }
}

fn call(method: Method, path: String, body: Option<Value>, display: Output) -> Plan {
    Plan { request: ApiRequest { method, path, body }, display }
}

/// Maps a command to its one admin API call. `read` loads `--…-file` inputs (`-` = stdin).
fn plan(
    command: &AdminCommand,
    read: &mut dyn FnMut(&str) -> anyhow::Result<String>,
) -> anyhow::Result<Plan> {
    use Output::{Done, NewKey, Table};
    let plan = match command {
        AdminCommand::Institutions(cmd) => match cmd {
            InstitutionsCommand::Create { alias, name } => call(
                Method::POST,
                "/institutions".into(),
                Some(json!({ "alias": alias, "name": name })),
                Table(INSTITUTION),
            ),
            InstitutionsCommand::List => {
                call(Method::GET, "/institutions".into(), None, Table(INSTITUTION))
            }
            InstitutionsCommand::AddKey { institution, public_key, public_key_file, kid } => {
                let key = match (public_key, public_key_file) {
                    (Some(key), _) => key.trim().to_owned(),
                    (None, Some(path)) => read(path)?.trim().to_owned(),
                    (None, None) => bail!("pass --public-key or --public-key-file"),
                };
                if key.is_empty() {
                    bail!("the public key is empty");
                }
                let mut body = Map::new();
                body.insert("public_key".into(), key.into());
                put_opt(&mut body, "kid", kid.clone());
                call(
                    Method::POST,
                    format!("/institutions/{}/public-keys", encode(institution)),
                    Some(body.into()),
                    Table(PUBLIC_KEY),
                )
            }
            InstitutionsCommand::Keys { institution } => call(
                Method::GET,
                format!("/institutions/{}/public-keys", encode(institution)),
                None,
                Table(PUBLIC_KEY),
            ),
        },
        AdminCommand::PublicKeys(PublicKeysCommand::Delete { id }) => call(
            Method::DELETE,
            format!("/public-keys/{}", encode(id)),
            None,
            Done(format!("public key {id} deleted")),
        ),
        AdminCommand::LicenseTypes(cmd) => match cmd {
            LicenseTypesCommand::Create {
                alias,
                name,
                institution,
                default_micro_credits,
                unlimited,
            } => {
                let default = match (default_micro_credits, unlimited) {
                    (Some(n), false) => Value::from(*n),
                    (None, true) => Value::Null,
                    _ => bail!("pass exactly one of --default-micro-credits and --unlimited"),
                };
                call(
                    Method::POST,
                    "/license-types".into(),
                    Some(json!({
                        "alias": alias,
                        "name": name,
                        "institution": institution,
                        "default_micro_credits": default,
                    })),
                    Table(LICENSE_TYPE),
                )
            }
            LicenseTypesCommand::List => {
                call(Method::GET, "/license-types".into(), None, Table(LICENSE_TYPE))
            }
            LicenseTypesCommand::SetPrice { license_type, model_id, input, output } => call(
                Method::PUT,
                format!("/license-types/{}/prices/{}", encode(license_type), encode(model_id)),
                Some(json!({
                    "input_cost_per_micro_credit": input,
                    "output_cost_per_micro_credit": output,
                })),
                Table(PRICE),
            ),
            LicenseTypesCommand::SetToolPrice { license_type, tool, micro_credits } => call(
                Method::PUT,
                format!("/license-types/{}/tool-prices/{}", encode(license_type), tool.as_str()),
                Some(json!({ "micro_credits": micro_credits })),
                Table(TOOL_PRICE),
            ),
        },
        AdminCommand::Licenses(cmd) => match cmd {
            LicensesCommand::Create {
                institution,
                license_type,
                unique_id,
                user_id,
                micro_credits,
            } => {
                let mut body = Map::new();
                body.insert("institution".into(), institution.as_str().into());
                body.insert("license_type".into(), license_type.as_str().into());
                put_opt(&mut body, "unique_id", unique_id.clone());
                put_opt(&mut body, "user_id", user_id.clone());
                put_opt(&mut body, "micro_credits", *micro_credits);
                call(Method::POST, "/licenses".into(), Some(body.into()), Table(LICENSE))
            }
            LicensesCommand::List { institution, license_type, unique_id } => {
                let q = query(&[
                    ("institution", institution.clone()),
                    ("license_type", license_type.clone()),
                    ("unique_id", unique_id.clone()),
                ]);
                call(Method::GET, format!("/licenses{q}"), None, Table(LICENSE))
            }
            LicensesCommand::Show { id } => {
                call(Method::GET, format!("/licenses/{}", encode(id)), None, Table(LICENSE))
            }
            LicensesCommand::Credit { id, micro_credits, note } => {
                let mut body = Map::new();
                body.insert("micro_credits".into(), (*micro_credits).into());
                put_opt(&mut body, "note", note.clone());
                call(
                    Method::POST,
                    format!("/licenses/{}/credits", encode(id)),
                    Some(body.into()),
                    Table(LICENSE),
                )
            }
            LicensesCommand::Usage { id, limit, before } => {
                let q =
                    query(&[("limit", limit.map(|n| n.to_string())), ("before", before.clone())]);
                call(Method::GET, format!("/licenses/{}/usage{q}", encode(id)), None, Table(USAGE))
            }
        },
        AdminCommand::Keys(cmd) => match cmd {
            KeysCommand::Create { license_id, name, expires_at } => {
                let mut body = Map::new();
                put_opt(&mut body, "name", name.clone());
                put_opt(&mut body, "expires_at", expires_at.clone());
                call(
                    Method::POST,
                    format!("/licenses/{}/keys", encode(license_id)),
                    Some(body.into()),
                    NewKey,
                )
            }
            KeysCommand::List { license_id } => call(
                Method::GET,
                format!("/licenses/{}/keys", encode(license_id)),
                None,
                Table(KEY),
            ),
            KeysCommand::Delete { id } => call(
                Method::DELETE,
                format!("/keys/{}", encode(id)),
                None,
                Done(format!("key {id} deactivated")),
            ),
        },
        AdminCommand::Models(cmd) => match cmd {
            ModelsCommand::List => call(Method::GET, "/models".into(), None, Table(MODEL)),
            ModelsCommand::Put { model_id, file } => {
                let text = read(file)?;
                let name = if file == "-" { "stdin" } else { file.as_str() };
                let model: Value = serde_json::from_str(&text)
                    .with_context(|| format!("{name} is not valid JSON"))?;
                if !model.is_object() {
                    bail!("{name} must hold one JSON object (the model)");
                }
                call(
                    Method::PUT,
                    format!("/models/{}", encode(model_id)),
                    Some(model),
                    Table(MODEL),
                )
            }
        },
    };
    Ok(plan)
}

// ---------------------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------------------

/// Sends one request; returns the status and the whole body.
async fn send(
    base_url: &str,
    token: &str,
    request: &ApiRequest,
) -> anyhow::Result<(StatusCode, actix_web::web::Bytes)> {
    let base = base_url.trim_end_matches('/');
    let url = format!("{base}/admin/v1{}", request.path);
    let client = awc::Client::builder().timeout(REQUEST_TIMEOUT).finish();
    let builder = client
        .request(request.method.clone(), &url)
        .insert_header((actix_web::http::header::AUTHORIZATION, format!("Bearer {token}")));
    let sent = match &request.body {
        Some(body) => builder.send_json(body).await,
        None => builder.send().await,
    };
    let mut response = sent.map_err(|e| match e {
        awc::error::SendRequestError::Connect(cause) => {
            anyhow!("cannot reach the gateway at {base}: {cause}")
        }
        awc::error::SendRequestError::Timeout => {
            anyhow!("the gateway at {base} did not answer within {} s", REQUEST_TIMEOUT.as_secs())
        }
        other => anyhow!("request to the gateway at {base} failed: {other}"),
    })?;
    let body = response
        .body()
        .limit(MAX_RESPONSE_BYTES)
        .await
        .map_err(|e| anyhow!("cannot read the answer of the gateway at {base}: {e}"))?;
    Ok((response.status(), body))
}

/// `"<status>: <message>"` from the error envelope, else from the raw body.
fn error_text(status: StatusCode, body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.get("message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    if message.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {message}")
    }
}

// ---------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------

/// The text to print for a successful answer.
fn render(plan: &Plan, body: &[u8], json: bool) -> anyhow::Result<String> {
    let parsed = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<Value>(body).ok()
    };
    if json {
        return match parsed {
            Some(value) => Ok(serde_json::to_string_pretty(&value)?),
            None if body.iter().all(u8::is_ascii_whitespace) => Ok("{}".to_owned()),
            None => Ok(String::from_utf8_lossy(body).trim_end().to_owned()),
        };
    }
    let columns = match &plan.display {
        Output::Done(message) => return Ok(message.clone()),
        Output::Table(columns) => columns,
        Output::NewKey => NEW_KEY,
    };
    let mut text = match parsed {
        Some(value) => render_value(&value, columns),
        None => String::from_utf8_lossy(body).trim_end().to_owned(),
    };
    if plan.display == Output::NewKey {
        text.push('\n');
        text.push_str(KEY_SHOWN_ONCE);
    }
    Ok(text)
}

/// An array as a table with a header row, an object as a key/value table.
fn render_value(value: &Value, preferred: &[&str]) -> String {
    match value {
        Value::Array(rows) => render_rows(rows, preferred),
        Value::Object(object) => {
            // A paginated envelope (`{"data": [...], "next": ...}`): the rows, then the rest.
            if let Some(Value::Array(rows)) = object.get("data") {
                let mut text = render_rows(rows, preferred);
                let rest: Vec<[String; 2]> = object
                    .iter()
                    .filter(|(k, _)| k.as_str() != "data")
                    .map(|(k, v)| [k.clone(), cell(v)])
                    .collect();
                if !rest.is_empty() {
                    text.push_str("\n\n");
                    text.push_str(&align(&rest));
                }
                return text;
            }
            let rows: Vec<[String; 2]> = order_columns(std::iter::once(object), preferred)
                .into_iter()
                .map(|key| {
                    let value = cell(object.get(&key).unwrap_or(&Value::Null));
                    [key, value]
                })
                .collect();
            align(&rows)
        }
        other => cell(other),
    }
}

fn render_rows(rows: &[Value], preferred: &[&str]) -> String {
    if rows.is_empty() {
        return "(none)".to_owned();
    }
    let objects: Vec<&Map<String, Value>> = rows.iter().filter_map(Value::as_object).collect();
    if objects.len() != rows.len() {
        // Not a list of objects: one value per line.
        return rows.iter().map(cell).collect::<Vec<_>>().join("\n");
    }
    let columns = order_columns(objects.iter().copied(), preferred);
    let mut table = vec![columns.clone()];
    for object in objects {
        table.push(columns.iter().map(|c| cell(object.get(c).unwrap_or(&Value::Null))).collect());
    }
    align(&table)
}

/// The spec's fields that occur, in the spec's order, then any others in order of appearance.
fn order_columns<'a>(
    objects: impl Iterator<Item = &'a Map<String, Value>> + Clone,
    preferred: &[&str],
) -> Vec<String> {
    let mut columns: Vec<String> = preferred
        .iter()
        .filter(|c| objects.clone().any(|o| o.contains_key(**c)))
        .map(|c| (*c).to_owned())
        .collect();
    for object in objects {
        for key in object.keys() {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
    }
    columns
}

/// One table cell: strings bare, null as `-`, objects and arrays as compact JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.chars().any(char::is_control) => Value::from(s.as_str()).to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Pads every column but the last to its widest cell, two spaces apart.
fn align<R: AsRef<[String]>>(rows: &[R]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, c) in row.as_ref().iter().enumerate() {
            let w = c.chars().count();
            match widths.get_mut(i) {
                Some(width) => *width = (*width).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut lines = Vec::with_capacity(rows.len());
    for row in rows {
        let cells = row.as_ref();
        let mut line = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                line.push_str(c);
            } else {
                let pad = widths.get(i).copied().unwrap_or(0) - c.chars().count();
                line.push_str(c);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        lines.push(line.trim_end().to_owned());
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use std::sync::Mutex;

    #[derive(Parser, Debug)]
    #[command(name = "quantized")]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Top {
        Admin(AdminArgs),
    }

    fn parse(args: &[&str]) -> AdminArgs {
        let argv = ["quantized", "admin"].iter().chain(args.iter());
        match Cli::try_parse_from(argv) {
            Ok(Cli { command: Top::Admin(admin) }) => admin,
            Err(e) => panic!("parse {args:?}: {e}"),
        }
    }

    fn parse_err(args: &[&str]) -> String {
        let argv = ["quantized", "admin"].iter().chain(args.iter());
        match Cli::try_parse_from(argv) {
            Ok(cli) => panic!("expected an error, got {cli:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn no_files(path: &str) -> anyhow::Result<String> {
        panic!("unexpected read of {path}")
    }

    fn request(args: &[&str]) -> ApiRequest {
        plan(&parse(args).command, &mut no_files).unwrap().request
    }

    fn req(method: Method, path: &str, body: Option<Value>) -> ApiRequest {
        ApiRequest { method, path: path.to_owned(), body }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn maps_institution_commands() {
        assert_eq!(
            request(&["institutions", "create", "--alias", "uzh", "--name", "Uni Zürich"]),
            req(Method::POST, "/institutions", Some(json!({"alias": "uzh", "name": "Uni Zürich"})))
        );
        assert_eq!(request(&["institutions", "list"]), req(Method::GET, "/institutions", None));
        assert_eq!(
            request(&["institutions", "keys", "uzh"]),
            req(Method::GET, "/institutions/uzh/public-keys", None)
        );
        assert_eq!(
            request(&["public-keys", "delete", "k1"]),
            req(Method::DELETE, "/public-keys/k1", None)
        );
    }

    #[test]
    fn add_key_takes_a_pem_argument_or_a_file() {
        let pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----";
        assert_eq!(
            request(&["institutions", "add-key", "uzh", "--public-key", pem, "--kid", "k1"]),
            req(
                Method::POST,
                "/institutions/uzh/public-keys",
                Some(json!({"public_key": pem, "kid": "k1"}))
            )
        );
        let args = parse(&["institutions", "add-key", "uzh", "--public-key-file", "key.b64"]);
        let mut read = |path: &str| -> anyhow::Result<String> {
            assert_eq!(path, "key.b64");
            Ok("AAAA\n".to_owned())
        };
        assert_eq!(
            plan(&args.command, &mut read).unwrap().request.body,
            Some(json!({"public_key": "AAAA"}))
        );
        parse_err(&["institutions", "add-key", "uzh"]);
        parse_err(&[
            "institutions",
            "add-key",
            "uzh",
            "--public-key",
            "x",
            "--public-key-file",
            "f",
        ]);
    }

    #[test]
    fn maps_license_type_commands() {
        assert_eq!(
            request(&[
                "license-types",
                "create",
                "--alias",
                "student",
                "--name",
                "Student",
                "--institution",
                "uzh",
                "--default-micro-credits",
                "5000000",
            ]),
            req(
                Method::POST,
                "/license-types",
                Some(json!({"alias": "student", "name": "Student", "institution": "uzh",
                            "default_micro_credits": 5_000_000}))
            )
        );
        let unlimited = request(&[
            "license-types",
            "create",
            "--alias",
            "staff",
            "--name",
            "Staff",
            "--institution",
            "uzh",
            "--unlimited",
        ]);
        assert_eq!(
            unlimited.body,
            Some(json!({"alias": "staff", "name": "Staff", "institution": "uzh",
                        "default_micro_credits": null}))
        );
        let base = ["license-types", "create", "--alias", "a", "--name", "n", "--institution", "i"];
        parse_err(&base);
        parse_err(&[&base[..], &["--unlimited", "--default-micro-credits", "1"]].concat());
        assert_eq!(request(&["license-types", "list"]), req(Method::GET, "/license-types", None));
    }

    #[test]
    fn set_price_encodes_the_model_id_and_sends_numbers() {
        let r = request(&[
            "license-types",
            "set-price",
            "student",
            "openai/gpt-4.1-mini",
            "--input",
            "0.25",
            "--output",
            "2",
        ]);
        assert_eq!(r.method, Method::PUT);
        assert_eq!(r.path, "/license-types/student/prices/openai%2Fgpt-4.1-mini");
        let body = serde_json::to_string(&r.body.unwrap()).unwrap();
        assert_eq!(
            body,
            r#"{"input_cost_per_micro_credit":0.25,"output_cost_per_micro_credit":2}"#
        );
        let err =
            parse_err(&["license-types", "set-price", "s", "m", "--input", "abc", "--output", "1"]);
        assert!(err.contains("'abc' is not a decimal number"), "{err}");
    }

    #[test]
    fn parse_decimal_accepts_json_numbers_only() {
        assert_eq!(parse_decimal("0.5").unwrap().to_string(), "0.5");
        assert_eq!(parse_decimal("12").unwrap().to_string(), "12");
        assert_eq!(parse_decimal("1e-3").unwrap().as_f64(), Some(0.001));
        for bad in ["", " ", "abc", "1,5", "NaN", "inf", "0x10", "1.", ".5", "\"1\"", "1 2"] {
            assert!(parse_decimal(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn set_tool_price_takes_known_tools_only() {
        assert_eq!(
            request(&[
                "license-types",
                "set-tool-price",
                "student",
                "web-search",
                "--micro-credits",
                "9000"
            ]),
            req(
                Method::PUT,
                "/license-types/student/tool-prices/web-search",
                Some(json!({"micro_credits": 9000}))
            )
        );
        assert_eq!(
            request(&["license-types", "set-tool-price", "s", "fetch", "--micro-credits", "1"])
                .path,
            "/license-types/s/tool-prices/fetch"
        );
        parse_err(&["license-types", "set-tool-price", "s", "browse", "--micro-credits", "1"]);
    }

    #[test]
    fn maps_license_commands() {
        assert_eq!(
            request(&["licenses", "create", "--institution", "uzh", "--license-type", "student"]),
            req(
                Method::POST,
                "/licenses",
                Some(json!({"institution": "uzh", "license_type": "student"}))
            )
        );
        assert_eq!(
            request(&[
                "licenses",
                "create",
                "--institution",
                "uzh",
                "--license-type",
                "student",
                "--unique-id",
                "course-1",
                "--user-id",
                "alice",
                "--micro-credits",
                "100",
            ])
            .body,
            Some(json!({"institution": "uzh", "license_type": "student", "unique_id": "course-1",
                        "user_id": "alice", "micro_credits": 100}))
        );
        assert_eq!(request(&["licenses", "list"]).path, "/licenses");
        assert_eq!(
            request(&["licenses", "list", "--unique-id", "intro to AI&ML", "--institution", "uzh"])
                .path,
            "/licenses?institution=uzh&unique_id=intro%20to%20AI%26ML"
        );
        assert_eq!(request(&["licenses", "show", "L1"]), req(Method::GET, "/licenses/L1", None));
        assert_eq!(request(&["licenses", "usage", "L1"]).path, "/licenses/L1/usage");
        assert_eq!(
            request(&["licenses", "usage", "L1", "--limit", "10", "--before", "r-9"]).path,
            "/licenses/L1/usage?limit=10&before=r-9"
        );
    }

    #[test]
    fn credit_accepts_negative_amounts() {
        assert_eq!(
            request(&["licenses", "credit", "L1", "--micro-credits", "-500", "--note", "refund"]),
            req(
                Method::POST,
                "/licenses/L1/credits",
                Some(json!({"micro_credits": -500, "note": "refund"}))
            )
        );
        assert_eq!(
            request(&["licenses", "credit", "L1", "--micro-credits", "7"]).body,
            Some(json!({"micro_credits": 7}))
        );
    }

    #[test]
    fn maps_key_and_model_commands() {
        assert_eq!(
            request(&["keys", "create", "L1"]),
            req(Method::POST, "/licenses/L1/keys", Some(json!({})))
        );
        assert_eq!(
            request(&[
                "keys",
                "create",
                "L1",
                "--name",
                "ci",
                "--expires-at",
                "2030-01-01T00:00:00Z"
            ])
            .body,
            Some(json!({"name": "ci", "expires_at": "2030-01-01T00:00:00Z"}))
        );
        assert_eq!(request(&["keys", "list", "L1"]), req(Method::GET, "/licenses/L1/keys", None));
        assert_eq!(request(&["keys", "delete", "K1"]), req(Method::DELETE, "/keys/K1", None));
        assert_eq!(request(&["models", "list"]), req(Method::GET, "/models", None));

        let args = parse(&["models", "put", "openai/gpt-4.1-mini", "--file", "-"]);
        let mut read = |path: &str| -> anyhow::Result<String> {
            assert_eq!(path, "-");
            Ok(r#"{"name": "GPT-4.1 mini", "context_window": 1047576}"#.to_owned())
        };
        assert_eq!(
            plan(&args.command, &mut read).unwrap().request,
            req(
                Method::PUT,
                "/models/openai%2Fgpt-4.1-mini",
                Some(json!({"name": "GPT-4.1 mini", "context_window": 1047576}))
            )
        );
        let mut bad = |_: &str| -> anyhow::Result<String> { Ok("{not json".to_owned()) };
        let err = plan(&parse(&["models", "put", "m", "--file", "m.json"]).command, &mut bad)
            .unwrap_err();
        assert!(err.to_string().contains("m.json is not valid JSON"), "{err}");
    }

    #[test]
    fn global_options_work_after_the_verb() {
        let args = parse(&["licenses", "list", "--json", "--url", "http://gw:1", "--token", "t"]);
        assert!(args.json);
        assert_eq!(args.url, "http://gw:1");
        assert_eq!(args.token.as_deref(), Some("t"));
    }

    #[test]
    fn encode_escapes_everything_but_unreserved() {
        assert_eq!(encode("openai/gpt-4.1-mini"), "openai%2Fgpt-4.1-mini");
        assert_eq!(encode("a b?c#d%e~f_g"), "a%20b%3Fc%23d%25e~f_g");
        assert_eq!(encode("ü"), "%C3%BC");
    }

    #[test]
    fn renders_arrays_as_aligned_tables_in_spec_order() {
        let body = json!([
            {"created_at": "2025-01-01", "name": "Uni Zürich", "id": "1", "alias": "uzh"},
            {"created_at": "2025-02-01", "name": "ETH", "id": "22", "alias": "eth", "extra": null}
        ]);
        assert_eq!(
            render_value(&body, INSTITUTION),
            "id  alias  name        created_at  extra\n\
             1   uzh    Uni Zürich  2025-01-01  -\n\
             22  eth    ETH         2025-02-01  -"
        );
        assert_eq!(render_value(&json!([]), INSTITUTION), "(none)");
    }

    #[test]
    fn renders_nested_values_compactly() {
        let model = json!({
            "id": "openai/gpt-4.1-mini",
            "routes": [{"provider": "openrouter", "upstream_model": "openai/gpt-4.1-mini"}],
            "active": true,
            "description": null,
            "input_cost_per_micro_credit": 0.4,
        });
        assert_eq!(
            render_value(&model, MODEL),
            "id                           openai/gpt-4.1-mini\n\
             input_cost_per_micro_credit  0.4\n\
             routes                       [{\"provider\":\"openrouter\",\"upstream_model\":\"openai/gpt-4.1-mini\"}]\n\
             active                       true\n\
             description                  -"
        );
        assert_eq!(cell(&json!("a\nb")), "\"a\\nb\"");
    }

    #[test]
    fn renders_paginated_envelopes() {
        let body = json!({"data": [{"request_id": "r1", "status": 200}], "next_before": "r1"});
        assert_eq!(
            render_value(&body, USAGE),
            "request_id  status\nr1          200\n\nnext_before  r1"
        );
    }

    #[test]
    fn render_per_display_and_mode() {
        let plan_for = |args: &[&str]| plan(&parse(args).command, &mut no_files).unwrap();
        let delete = plan_for(&["keys", "delete", "K1"]);
        assert_eq!(render(&delete, b"", false).unwrap(), "key K1 deactivated");
        assert_eq!(render(&delete, b"", true).unwrap(), "{}");

        let create = plan_for(&["keys", "create", "L1"]);
        let body = br#"{"created_at":"now","key":"sk-quantized-abc","id":"K1","name":null,"expires_at":null}"#;
        assert_eq!(
            render(&create, body, false).unwrap(),
            format!(
                "id          K1\nkey         sk-quantized-abc\nname        -\nexpires_at  -\ncreated_at  now\n{KEY_SHOWN_ONCE}"
            )
        );
        let pretty = render(&create, body, true).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&pretty).unwrap()["key"], "sk-quantized-abc");
        assert!(pretty.contains("\n  \""), "{pretty}");

        let list = plan_for(&["licenses", "list"]);
        assert_eq!(render(&list, b"not json", false).unwrap(), "not json");
    }

    #[test]
    fn error_text_prefers_the_envelope() {
        assert_eq!(
            error_text(
                StatusCode::CONFLICT,
                br#"{"error":{"message":"balance would go negative"}}"#
            ),
            "409 Conflict: balance would go negative"
        );
        assert_eq!(
            error_text(StatusCode::BAD_GATEWAY, b"upstream down\n"),
            "502 Bad Gateway: upstream down"
        );
        assert_eq!(error_text(StatusCode::UNAUTHORIZED, b""), "401 Unauthorized");
    }

    // --- against a real local server ----------------------------------------------------

    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        auth: Option<String>,
        content_type: Option<String>,
        body: String,
    }

    type Responder = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

    struct Recorder {
        seen: Mutex<Vec<Seen>>,
        respond: Box<Responder>,
    }

    async fn record(
        req: actix_web::HttpRequest,
        body: actix_web::web::Bytes,
        state: actix_web::web::Data<Recorder>,
    ) -> actix_web::HttpResponse {
        let header =
            |name| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let seen = Seen {
            method: req.method().to_string(),
            path: req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default(),
            auth: header(actix_web::http::header::AUTHORIZATION),
            content_type: header(actix_web::http::header::CONTENT_TYPE),
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        let (status, text) = (state.respond)(&seen);
        state.seen.lock().unwrap().push(seen);
        actix_web::HttpResponse::build(StatusCode::from_u16(status).unwrap())
            .content_type("application/json")
            .body(text)
    }

    /// Starts a one-worker server on 127.0.0.1:0; returns its URL and the recorder.
    fn start(respond: Box<Responder>) -> (String, actix_web::web::Data<Recorder>) {
        let state = actix_web::web::Data::new(Recorder { seen: Mutex::new(Vec::new()), respond });
        let data = state.clone();
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new().app_data(data.clone()).default_service(actix_web::web::to(record))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let addr = server.addrs()[0];
        actix_web::rt::spawn(server.run());
        (format!("http://{addr}"), state)
    }

    async fn exec(args: &[&str]) -> anyhow::Result<String> {
        execute(&parse(args), &mut no_files).await
    }

    #[actix_web::test]
    async fn licenses_create_sends_the_body_and_token() {
        let (url, rec) = start(Box::new(|_| {
            (
                201,
                r#"{"license_id":"L1","institution_id":"I1","license_type_id":"T1","unique_id":null,"used_micro_credits":0,"available_micro_credits":5000000}"#
                    .to_owned(),
            )
        }));
        let out = exec(&[
            "licenses",
            "create",
            "--institution",
            "uzh",
            "--license-type",
            "student",
            "--micro-credits",
            "5000000",
            "--url",
            &format!("{url}/"),
            "--token",
            "s3cret",
        ])
        .await
        .unwrap();
        assert!(out.starts_with("license_id               L1\n"), "{out}");
        assert!(out.contains("\nunique_id                -\n"), "{out}");
        let seen = rec.seen.lock().unwrap()[0].clone();
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.path, "/admin/v1/licenses");
        assert_eq!(seen.auth.as_deref(), Some("Bearer s3cret"));
        assert_eq!(seen.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            serde_json::from_str::<Value>(&seen.body).unwrap(),
            json!({"institution": "uzh", "license_type": "student", "micro_credits": 5_000_000})
        );
    }

    #[actix_web::test]
    async fn set_price_keeps_the_slash_encoded() {
        let (url, rec) = start(Box::new(|seen| (200, seen.body.clone())));
        let out = exec(&[
            "license-types",
            "set-price",
            "student",
            "anthropic/claude-sonnet-4",
            "--input",
            "3.5",
            "--output",
            "15",
            "--json",
            "--url",
            &url,
            "--token",
            "t",
        ])
        .await
        .unwrap();
        let seen = rec.seen.lock().unwrap()[0].clone();
        assert_eq!(seen.method, "PUT");
        assert_eq!(seen.path, "/admin/v1/license-types/student/prices/anthropic%2Fclaude-sonnet-4");
        assert_eq!(
            seen.body,
            r#"{"input_cost_per_micro_credit":3.5,"output_cost_per_micro_credit":15}"#
        );
        assert_eq!(
            out,
            "{\n  \"input_cost_per_micro_credit\": 3.5,\n  \"output_cost_per_micro_credit\": 15\n}"
        );
    }

    #[actix_web::test]
    async fn keys_delete_handles_204() {
        let (url, rec) = start(Box::new(|_| (204, String::new())));
        let out = exec(&["keys", "delete", "K1", "--url", &url, "--token", "t"]).await.unwrap();
        assert_eq!(out, "key K1 deactivated");
        let json = exec(&["keys", "delete", "K1", "--url", &url, "--token", "t", "--json"]).await;
        assert_eq!(json.unwrap(), "{}");
        let seen = rec.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            (seen[0].method.as_str(), seen[0].path.as_str()),
            ("DELETE", "/admin/v1/keys/K1")
        );
        assert_eq!(seen[0].body, "");
    }

    #[actix_web::test]
    async fn list_query_reaches_the_server() {
        let (url, rec) = start(Box::new(|_| (200, "[]".to_owned())));
        let out =
            exec(&["licenses", "list", "--license-type", "a/b c", "--url", &url, "--token", "t"])
                .await
                .unwrap();
        assert_eq!(out, "(none)");
        assert_eq!(rec.seen.lock().unwrap()[0].path, "/admin/v1/licenses?license_type=a%2Fb%20c");
    }

    #[actix_web::test]
    async fn error_envelope_becomes_the_error_text() {
        let (url, _rec) = start(Box::new(|_| {
            (409, r#"{"error":{"message":"balance would go below zero"}}"#.to_owned())
        }));
        let err = exec(&[
            "licenses",
            "credit",
            "L1",
            "--micro-credits",
            "-9",
            "--url",
            &url,
            "--token",
            "t",
        ])
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "409 Conflict: balance would go below zero");
    }

    #[actix_web::test]
    async fn missing_token_and_unreachable_gateway() {
        let args = AdminArgs {
            url: "http://127.0.0.1:9".to_owned(),
            token: None,
            json: false,
            command: AdminCommand::Models(ModelsCommand::List),
        };
        let err = execute(&args, &mut no_files).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "admin token missing: pass --token or set QUANTIZED_ADMIN_TOKEN"
        );

        // Bind a port, then free it, so nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}");
        let args = AdminArgs { url: url.clone(), token: Some("t".to_owned()), ..args };
        let err = execute(&args, &mut no_files).await.unwrap_err().to_string();
        assert!(err.starts_with(&format!("cannot reach the gateway at {url}: ")), "{err}");
    }
}
