//! `quantized demo`: everything needed for a first request, offline, in one command.
//! The database (`quantized-demo.db` in the working directory) is reused across runs, so
//! balances and usage persist; each run prints a fresh working key.

use std::path::PathBuf;

use anyhow::Context;

use crate::app::{prepare_store, Application};
use crate::cli::print_text;
use crate::config::{Secret, Settings};
use crate::store::{self, keys, licenses, organisations};

pub const DEMO_DATABASE: &str = "quantized-demo.db";
const INSTITUTION: &str = "demo-university";
const LICENSE_TYPE: &str = "demo-student";
const UNIQUE_ID: &str = "demo";
/// 5 credits.
const DEMO_MICRO_CREDITS: i64 = 5_000_000;

pub async fn run(port: u16) -> anyhow::Result<()> {
    let settings = demo_settings(port)?;
    let key = seed(&settings)?;
    let app = Application::build(settings.clone())?;
    print_text(&banner(app.port(), &key, settings.admin_token.expose()));
    app.run_until_stopped().await?;
    print_text(
        "Demo stopped. Run `cargo run --release -- demo` again to continue where you left off.",
    );
    Ok(())
}

fn demo_settings(port: u16) -> anyhow::Result<Settings> {
    let mut settings = Settings::load_with_env(None, std::iter::empty())?;
    settings.listen = format!("127.0.0.1:{port}");
    settings.database = PathBuf::from(DEMO_DATABASE);
    settings.admin_token = Secret(keys::generate()?.replace(keys::KEY_PREFIX, "admin-"));
    settings.workers = 2;
    settings.providers.demo.enabled = true;
    Ok(settings)
}

/// Creates what is missing (institution, license type, license) and a new key.
fn seed(settings: &Settings) -> anyhow::Result<String> {
    let pool = prepare_store(settings, 2)?;
    let mut conn = store::get(&pool)?;
    let inst = match organisations::find_institution(&conn, INSTITUTION)? {
        Some(inst) => inst,
        None => organisations::create_institution(&conn, INSTITUTION, "Demo University")
            .context("seed institution")?,
    };
    let lt = match organisations::find_license_type(&conn, LICENSE_TYPE)? {
        Some(lt) => lt,
        None => organisations::create_license_type(
            &conn,
            &inst.id,
            LICENSE_TYPE,
            "Demo student",
            Some(DEMO_MICRO_CREDITS),
        )
        .context("seed license type")?,
    };
    let filter = licenses::Filter {
        institution_id: Some(&inst.id),
        license_type_id: Some(&lt.id),
        unique_id: Some(UNIQUE_ID),
    };
    let license = match licenses::list(&conn, &filter)?.into_iter().next() {
        Some(license) => license,
        None => licenses::create(
            &mut conn,
            &licenses::NewLicense {
                institution_id: &inst.id,
                license_type_id: &lt.id,
                unique_id: Some(UNIQUE_ID),
                user_id: None,
                micro_credits: Some(DEMO_MICRO_CREDITS),
            },
        )?,
    };
    let (_, key) = keys::create(
        &conn,
        &keys::NewKey {
            license_id: &license.license_id,
            name: Some("demo"),
            expires_at: None,
            ephemeral: false,
        },
    )?;
    Ok(key)
}

fn banner(port: u16, key: &str, admin_token: &str) -> String {
    let base = format!("http://127.0.0.1:{port}");
    format!(
        r#"
Quantized demo gateway is running on {base}  (Ctrl-C stops it)
Database: {DEMO_DATABASE} (kept between runs)   Provider: built-in offline demo

  API key:          {key}
  OpenAI base URL:  {base}/v1
  Admin token:      {admin_token}   (valid for this run)

Try it:

  curl {base}/v1/chat/completions \
    -H "Authorization: Bearer {key}" \
    -H "Content-Type: application/json" \
    -d '{{"model": "demo/echo", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  curl {base}/v1/web-search -H "Authorization: Bearer {key}" \
    -H "Content-Type: application/json" -d '{{"query": "python 3.13", "num_results": 2}}'

  curl {base}/v1/fetch -H "Authorization: Bearer {key}" \
    -H "Content-Type: application/json" -d '{{"urls": ["https://example.com/article", "https://example.com/fail"]}}'

  python3 -c 'from openai import OpenAI; c = OpenAI(api_key="{key}", base_url="{base}/v1"); print(c.chat.completions.create(model="demo/echo", messages=[{{"role": "user", "content": "Hello!"}}]).choices[0].message.content)'

Balance:  curl -H "Authorization: Bearer {key}" {base}/v1/license
Admin:    QUANTIZED_URL={base} QUANTIZED_ADMIN_TOKEN={admin_token} cargo run --release -- admin licenses list
"#
    )
}
