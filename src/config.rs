//! Settings: defaults in code, then the TOML file, then `QUANTIZED_*` environment variables
//! (`QUANTIZED_PROVIDERS__ANTHROPIC__API_KEY` sets `providers.anthropic.api_key`).
//! Only this module reads the environment for settings.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

const ENV_PREFIX: &str = "QUANTIZED_";
/// More skew than this means a broken clock, not a slow one; accepting it would keep expired
/// tokens alive for hours.
const MAX_JWT_LEEWAY_SECS: u64 = 3600;
/// Used by `quantized admin`, not by the server; accepted in the environment without a warning.
const CLIENT_ONLY_ENV: &[&str] = &["QUANTIZED_URL"];

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free port (tests use it).
    pub listen: String,
    /// SQLite file, created if missing. Keep it on a local disk: WAL does not work over NFS.
    pub database: PathBuf,
    /// Bearer token for /admin/* and /metrics. Required by `serve`; a guessable value hands
    /// anyone the power to mint credits.
    pub admin_token: Secret,
    /// HTTP worker threads; 0 = one per core. More than the cores only adds contention.
    pub workers: usize,
    /// Model catalog seeded into the DB when a model id is new (admin edits are kept).
    /// Unset: `data/models.toml` if present, else the copy built into the binary.
    pub models: Option<PathBuf>,
    pub store: StoreSettings,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    pub breaker: BreakerSettings,
    pub providers: ProviderSettings,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Survives a crash of the process; a power loss may drop the last milliseconds.
    Normal,
    /// One fsync per group commit; survives power loss.
    Full,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    pub sync: SyncMode,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Clock skew allowed when judging an institution JWT's `exp`, `nbf` and `iat`, in
    /// seconds. Too small and tokens from a portal whose clock runs slightly ahead are refused
    /// as "not yet valid"; too large and an expired token keeps working that much longer.
    pub jwt_leeway_secs: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Larger request bodies get 413. Images sent inline as base64 need room.
    pub max_body_bytes: usize,
    /// Whole-request limit for non-streaming upstream calls.
    pub upstream_timeout_secs: u64,
    /// Longest silence allowed between two upstream stream events.
    pub stream_idle_timeout_secs: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive upstream failures that open the circuit. Low values flap on one slow reply.
    pub failure_threshold: u32,
    /// How long an open circuit stays open before one half-open probe.
    pub open_secs: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderSettings {
    pub openrouter: HttpProvider,
    pub anthropic: HttpProvider,
    pub exa: HttpProvider,
    pub tavily: HttpProvider,
    pub demo: DemoProvider,
}

/// A string that never appears in `Debug` output or logs.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "<redacted>" })
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProvider {
    pub base_url: String,
    /// Empty = not configured: models only this provider serves answer 503.
    #[serde(default)]
    pub api_key: Secret,
}

impl HttpProvider {
    fn new(base_url: &str) -> Self {
        Self { base_url: base_url.into(), api_key: Secret::default() }
    }

    pub fn is_configured(&self) -> bool {
        !self.api_key.is_empty()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoProvider {
    /// The built-in offline provider (deterministic text); `quantized demo` turns it on.
    pub enabled: bool,
    /// Pause between streamed tokens so streaming is visible; 0 for benchmarks.
    pub token_delay_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            database: "quantized.db".into(),
            admin_token: Secret::default(),
            workers: 0,
            models: None,
            store: StoreSettings::default(),
            auth: AuthSettings::default(),
            limits: LimitSettings::default(),
            breaker: BreakerSettings::default(),
            providers: ProviderSettings::default(),
        }
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self { sync: SyncMode::Normal }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self { jwt_leeway_secs: 30 }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            upstream_timeout_secs: 300,
            stream_idle_timeout_secs: 60,
        }
    }
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self { failure_threshold: 5, open_secs: 30 }
    }
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            openrouter: HttpProvider::new("https://openrouter.ai/api/v1"),
            anthropic: HttpProvider::new("https://api.anthropic.com/v1"),
            exa: HttpProvider::new("https://api.exa.ai"),
            tavily: HttpProvider::new("https://api.tavily.com"),
            demo: DemoProvider::default(),
        }
    }
}

impl Default for DemoProvider {
    fn default() -> Self {
        Self { enabled: false, token_delay_ms: 20 }
    }
}

impl Settings {
    /// Reads the file (if given), applies the process environment, validates.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        Self::load_with_env(file, std::env::vars())
    }

    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Settings> {
        let defaults = toml::Table::try_from(Settings::default()).context("serialise defaults")?;
        let mut table = defaults.clone();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            let from_file = text
                .parse::<toml::Table>()
                .map_err(|e| anyhow::anyhow!("config file {}: {}", path.display(), e.message()))?;
            merge(&mut table, from_file);
        }
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
            if CLIENT_ONLY_ENV.contains(&name.as_str()) {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            apply_env(&mut table, &defaults, &path, &value)
                .with_context(|| format!("environment variable {name}"))?;
        }
        let settings: Settings =
            toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
                anyhow::anyhow!("invalid configuration: {}", e.message())
            })?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.limits.max_body_bytes < 1024 {
            bail!("limits.max_body_bytes must be at least 1024");
        }
        if self.auth.jwt_leeway_secs > MAX_JWT_LEEWAY_SECS {
            bail!("auth.jwt_leeway_secs must be at most {MAX_JWT_LEEWAY_SECS}");
        }
        if self.breaker.failure_threshold == 0 {
            bail!("breaker.failure_threshold must be at least 1");
        }
        Ok(())
    }

    /// `serve` needs an admin token; the demo makes its own.
    pub fn require_admin_token(&self) -> anyhow::Result<()> {
        if self.admin_token.is_empty() {
            bail!("admin_token is required: set it in the config file or in QUANTIZED_ADMIN_TOKEN");
        }
        Ok(())
    }

    /// The settings as TOML with secrets replaced, for `quantized config print`.
    pub fn to_redacted_toml(&self) -> String {
        let mut copy = self.clone();
        let redact = |s: &mut Secret| {
            if !s.is_empty() {
                *s = Secret("<redacted>".into());
            }
        };
        redact(&mut copy.admin_token);
        for p in [
            &mut copy.providers.openrouter,
            &mut copy.providers.anthropic,
            &mut copy.providers.exa,
            &mut copy.providers.tavily,
        ] {
            redact(&mut p.api_key);
        }
        toml::to_string(&copy).unwrap_or_default()
    }
}

/// Lays `over` onto `base`, section by section, so a file may set one key of a section.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_section)), toml::Value::Table(section)) => {
                merge(base_section, section)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Sets one key from the environment, typed like the default at that path. Unknown paths
/// are reported once, not fatal: the environment is shared with other programs.
fn apply_env(
    table: &mut toml::Table,
    defaults: &toml::Table,
    path: &[String],
    raw: &str,
) -> anyhow::Result<()> {
    let mut default = defaults;
    let mut target = table;
    for (i, key) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let typed = match default.get(key) {
            Some(toml::Value::Table(sub)) if !last => {
                default = sub;
                let entry = target
                    .entry(key.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(next) = entry else { bail!("`{key}` is not a section") };
                target = next;
                continue;
            }
            Some(toml::Value::Integer(_)) if last => toml::Value::Integer(
                raw.trim().parse().with_context(|| format!("`{raw}` is not an integer"))?,
            ),
            Some(toml::Value::Boolean(_)) if last => toml::Value::Boolean(
                raw.trim().parse().with_context(|| format!("`{raw}` is not true or false"))?,
            ),
            Some(toml::Value::String(_)) if last => toml::Value::String(raw.to_string()),
            // Optional keys (no default) are paths or strings.
            None if last && i == 0 && key == "models" => toml::Value::String(raw.to_string()),
            _ => {
                log::warn!(
                    "ignoring environment variable for unknown setting `{}`",
                    path.join(".")
                );
                return Ok(());
            }
        };
        target.insert(key.clone(), typed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn env_overrides_file_which_overrides_defaults() {
        let file = write(
            "listen = \"0.0.0.0:9000\"\nadmin_token = \"file\"\n[limits]\nmax_body_bytes = 2048\n",
        );
        let s = Settings::load_with_env(
            Some(file.path()),
            env(&[
                ("QUANTIZED_ADMIN_TOKEN", "from-env"),
                ("QUANTIZED_PROVIDERS__ANTHROPIC__API_KEY", "sk-ant"),
                ("QUANTIZED_BREAKER__OPEN_SECS", "7"),
                ("QUANTIZED_PROVIDERS__DEMO__ENABLED", "true"),
                ("QUANTIZED_AUTH__JWT_LEEWAY_SECS", "5"),
                ("QUANTIZED_URL", "http://x"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(s.listen, "0.0.0.0:9000");
        assert_eq!(s.admin_token.expose(), "from-env");
        assert_eq!(s.limits.max_body_bytes, 2048);
        assert_eq!(s.limits.upstream_timeout_secs, 300);
        assert_eq!(s.providers.anthropic.api_key.expose(), "sk-ant");
        assert_eq!(s.breaker.open_secs, 7);
        assert!(s.providers.demo.enabled);
        assert_eq!(s.auth.jwt_leeway_secs, 5);
    }

    #[test]
    fn jwt_leeway_defaults_to_30_seconds_and_refuses_hours() {
        assert_eq!(Settings::load_with_env(None, env(&[])).unwrap().auth.jwt_leeway_secs, 30);
        let err =
            Settings::load_with_env(None, env(&[("QUANTIZED_AUTH__JWT_LEEWAY_SECS", "7200")]))
                .unwrap_err()
                .to_string();
        assert!(err.contains("auth.jwt_leeway_secs"), "{err}");
    }

    #[test]
    fn typos_in_the_file_fail_with_the_key_name() {
        let file = write("[limits]\nmax_body_byte = 10\n");
        let err = Settings::load_with_env(Some(file.path()), env(&[])).unwrap_err().to_string();
        assert!(err.contains("max_body_byte"), "{err}");
    }

    #[test]
    fn a_non_integer_in_the_environment_names_the_variable() {
        let err = Settings::load_with_env(None, env(&[("QUANTIZED_WORKERS", "many")])).unwrap_err();
        assert!(format!("{err:#}").contains("QUANTIZED_WORKERS"), "{err:#}");
    }

    #[test]
    fn missing_admin_token_is_one_clear_line() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        let err = s.require_admin_token().unwrap_err().to_string();
        assert!(err.starts_with("admin_token is required"), "{err}");
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let err =
            Settings::load_with_env(Some(Path::new("/nonexistent/q.toml")), env(&[])).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/q.toml"));
    }

    #[test]
    fn redacted_output_hides_secrets() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("QUANTIZED_ADMIN_TOKEN", "topsecret"),
                ("QUANTIZED_PROVIDERS__OPENROUTER__API_KEY", "sk-or-x"),
            ]),
        )
        .unwrap();
        let text = s.to_redacted_toml();
        assert!(!text.contains("topsecret") && !text.contains("sk-or-x"));
        let debug = format!("{s:?}");
        assert!(!debug.contains("topsecret") && !debug.contains("sk-or-x"), "{debug}");
    }
}
