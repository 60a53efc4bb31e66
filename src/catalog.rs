//! The model catalog: which models exist, what they cost, and which upstreams serve them.
//! Requests read an immutable snapshot; admin changes build a new one and swap it in.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::json_body;
use crate::ledger::price::{Price, Prices};
use crate::store::{self, Pool};

/// The seed shipped with the binary, used when no `models` file is configured or found.
const BUILTIN_SEED: &str = include_str!("../data/models.toml");
/// Providers that can serve chat or embedding models.
pub const MODEL_PROVIDERS: &[&str] = &["openrouter", "anthropic", "demo"];
/// Documented default price of the fixed-price tools (design §0).
pub const DEFAULT_TOOL_PRICE: i64 = 8_000;
pub const TOOLS: &[&str] = &["web-search", "fetch"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Chat,
    Embedding,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Embedding => "embedding",
        }
    }
}

impl std::str::FromStr for ModelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "chat" => Ok(Self::Chat),
            "embedding" => Ok(Self::Embedding),
            other => Err(format!("unknown model kind {other}")),
        }
    }
}

/// Which kinds of content a model takes or produces; drives the modality pre-check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Modality {
    pub text: bool,
    pub image: bool,
    pub audio: bool,
    pub video: bool,
}

impl Default for Modality {
    fn default() -> Self {
        Self { text: true, image: false, audio: false, video: false }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub provider: String,
    /// The upstream's own id for this model.
    pub upstream_model: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub id: String,
    pub name: String,
    pub kind: ModelKind,
    pub context_window: Option<i64>,
    pub max_output_tokens: Option<i64>,
    /// Default prices; a license type may override them.
    pub prices: Prices,
    pub routes: Vec<Route>,
    pub active: bool,
    pub input_modality: Modality,
    pub output_modality: Modality,
    pub description: Option<String>,
    pub model_author: Option<String>,
    pub supported_features: Vec<String>,
}

/// The admin API's model body (design §3).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelInput {
    id: Option<String>,
    name: String,
    kind: Option<ModelKind>,
    context_window: Option<i64>,
    max_output_tokens: Option<i64>,
    input_cost_per_micro_credit: Value,
    output_cost_per_micro_credit: Value,
    routes: Vec<Route>,
    active: Option<bool>,
    input_modality: Option<Modality>,
    output_modality: Option<Modality>,
    description: Option<String>,
    model_author: Option<String>,
    supported_features: Option<Vec<String>>,
}

impl Model {
    /// Validates an admin body for the model named by `id` (the path).
    pub fn from_json(id: &str, body: Value) -> Result<Model, ApiError> {
        let bad = |m: String| ApiError::BadRequest(m);
        let input: ModelInput = json_body::from_value(body)?;
        if input.name.trim().is_empty() || input.name.len() > 200 {
            return Err(bad("'name' must be 1 to 200 characters".into()));
        }
        if id.is_empty() || id.len() > 200 {
            return Err(bad("model id must be 1 to 200 characters".into()));
        }
        if let Some(body_id) = &input.id {
            if body_id != id {
                return Err(bad(format!(
                    "'id' ('{body_id}') does not match the model id in the path ('{id}')"
                )));
            }
        }
        let price = |field: &str, v: &Value| {
            Price::from_json(v).map_err(|e| ApiError::BadRequest(format!("'{field}' {e}")))
        };
        let prices = Prices {
            input: price("input_cost_per_micro_credit", &input.input_cost_per_micro_credit)?,
            output: price("output_cost_per_micro_credit", &input.output_cost_per_micro_credit)?,
        };
        for (field, value) in [
            ("context_window", input.context_window),
            ("max_output_tokens", input.max_output_tokens),
        ] {
            if matches!(value, Some(v) if !(1..=100_000_000).contains(&v)) {
                return Err(bad(format!("'{field}' must be between 1 and 100000000")));
            }
        }
        if input.routes.is_empty() {
            return Err(bad("'routes' must not be empty".into()));
        }
        for (i, route) in input.routes.iter().enumerate() {
            if !MODEL_PROVIDERS.contains(&route.provider.as_str()) {
                return Err(bad(format!(
                    "invalid value for 'routes[{i}].provider': expected one of {}",
                    MODEL_PROVIDERS.join(", ")
                )));
            }
            if route.upstream_model.is_empty() {
                return Err(bad(format!("'routes[{i}].upstream_model' must not be empty")));
            }
        }
        Ok(Model {
            id: id.to_string(),
            name: input.name,
            kind: input.kind.unwrap_or(ModelKind::Chat),
            context_window: input.context_window,
            max_output_tokens: input.max_output_tokens,
            prices,
            routes: input.routes,
            active: input.active.unwrap_or(true),
            input_modality: input.input_modality.unwrap_or_default(),
            output_modality: input.output_modality.unwrap_or_default(),
            description: input.description,
            model_author: input
                .model_author
                .or_else(|| id.split_once('/').map(|(a, _)| a.to_string())),
            supported_features: input.supported_features.unwrap_or_default(),
        })
    }

    /// The admin view: everything, with default prices.
    pub fn admin_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "context_window": self.context_window,
            "max_output_tokens": self.max_output_tokens,
            "input_cost_per_micro_credit": self.prices.input.as_f64(),
            "output_cost_per_micro_credit": self.prices.output.as_f64(),
            "routes": self.routes,
            "active": self.active,
            "input_modality": self.input_modality,
            "output_modality": self.output_modality,
            "description": self.description,
            "model_author": self.model_author,
            "supported_features": self.supported_features,
        })
    }

    /// The `/v1/models` view (design §0: Rev A fields, Rev B catalog fields added), with the
    /// prices that apply to the caller's license.
    pub fn public_json(&self, prices: Prices, openai_list: bool) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "cost": {
                "input_cost_per_micro_credit": prices.input.as_f64(),
                "output_cost_per_micro_credit": prices.output.as_f64(),
            },
            "context_window": self.context_window,
            "max_output_tokens": self.max_output_tokens,
            "description": self.description,
            "model_author": self.model_author,
            "input_modality": self.input_modality,
            "output_modality": self.output_modality,
            "status": "active",
            "supported_features": self.supported_features,
        });
        if openai_list {
            if let Value::Object(map) = &mut v {
                map.insert("object".into(), json!("model"));
                map.insert("created".into(), json!(0));
                map.insert(
                    "owned_by".into(),
                    json!(self.model_author.as_deref().unwrap_or("quantized")),
                );
            }
        }
        v
    }

    pub fn served_by(&self, provider: &str) -> bool {
        self.routes.iter().any(|r| r.provider == provider)
    }
}

/// Reads the seed catalog: the given file, else `data/models.toml` if present, else the
/// copy built into the binary.
pub fn read_seed(path: Option<&Path>) -> anyhow::Result<Vec<Model>> {
    let default_path = Path::new("data/models.toml");
    let text = match path {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read models file {}", p.display()))?,
        None if default_path.is_file() => {
            std::fs::read_to_string(default_path).context("read data/models.toml")?
        }
        None => BUILTIN_SEED.to_string(),
    };
    parse_seed(&text)
}

pub fn parse_seed(text: &str) -> anyhow::Result<Vec<Model>> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Seed {
        models: Vec<toml::Table>,
    }
    let seed: Seed =
        toml::from_str(text).map_err(|e| anyhow::anyhow!("models file: {}", e.message()))?;
    seed.models
        .into_iter()
        .map(|table| {
            let value = serde_json::to_value(&table).context("models file entry")?;
            let id = value
                .get("id")
                .and_then(Value::as_str)
                .context("models file: an entry has no `id`")?
                .to_string();
            Model::from_json(&id, value)
                .map_err(|e| anyhow::anyhow!("models file, model {id}: {e}"))
        })
        .collect()
}

/// One consistent view of models and prices.
#[derive(Default)]
pub struct Catalog {
    models: Vec<Arc<Model>>,
    by_id: HashMap<String, Arc<Model>>,
    /// Anthropic's native ids, accepted with `X-Quantized-Provider: anthropic` (design §0).
    anthropic_ids: HashMap<String, Arc<Model>>,
    /// Overrides by license type, then model id (nested so lookups borrow, not allocate:
    /// every metered request asks).
    prices: HashMap<String, HashMap<String, Prices>>,
    /// Tool prices by license type, then tool.
    tool_prices: HashMap<String, HashMap<String, i64>>,
}

impl Catalog {
    pub fn load(pool: &Pool) -> anyhow::Result<Catalog> {
        let conn = store::get(pool)?;
        let models: Vec<Arc<Model>> =
            store::catalog::load_all(&conn)?.into_iter().map(Arc::new).collect();
        let by_id = models.iter().map(|m| (m.id.clone(), m.clone())).collect();
        let anthropic_ids = models
            .iter()
            .flat_map(|m| {
                m.routes
                    .iter()
                    .filter(|r| r.provider == "anthropic")
                    .map(move |r| (r.upstream_model.clone(), m.clone()))
            })
            .collect();
        let mut prices: HashMap<String, HashMap<String, Prices>> = HashMap::new();
        for (lt, model, p) in store::catalog::load_price_overrides(&conn)? {
            prices.entry(lt).or_default().insert(model, p);
        }
        let mut tool_prices: HashMap<String, HashMap<String, i64>> = HashMap::new();
        for (lt, tool, p) in store::catalog::load_tool_prices(&conn)? {
            tool_prices.entry(lt).or_default().insert(tool, p);
        }
        Ok(Catalog { models, by_id, anthropic_ids, prices, tool_prices })
    }

    /// Active models, in id order.
    pub fn models(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.iter().filter(|m| m.active)
    }

    pub fn get_any(&self, id: &str) -> Option<&Arc<Model>> {
        self.by_id.get(id)
    }

    /// Finds an active model by catalog id, or by Anthropic's native id when that provider
    /// is forced.
    pub fn resolve(&self, id: &str, forced_provider: Option<&str>) -> Option<&Arc<Model>> {
        let model = self.by_id.get(id).or_else(|| match forced_provider {
            Some("anthropic") => self.anthropic_ids.get(id),
            _ => None,
        })?;
        model.active.then_some(model)
    }

    pub fn prices_for(&self, license_type_id: &str, model: &Model) -> Prices {
        self.prices
            .get(license_type_id)
            .and_then(|m| m.get(&model.id))
            .copied()
            .unwrap_or(model.prices)
    }

    pub fn tool_price(&self, license_type_id: &str, tool: &str) -> i64 {
        self.tool_prices
            .get(license_type_id)
            .and_then(|t| t.get(tool))
            .copied()
            .unwrap_or(DEFAULT_TOOL_PRICE)
    }
}

/// Shared handle to the current snapshot.
pub struct CatalogCache {
    current: RwLock<Arc<Catalog>>,
}

impl CatalogCache {
    pub fn load(pool: &Pool) -> anyhow::Result<CatalogCache> {
        Ok(CatalogCache { current: RwLock::new(Arc::new(Catalog::load(pool)?)) })
    }

    pub fn snapshot(&self) -> Arc<Catalog> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Rebuilds from the database after an admin change.
    pub fn reload(&self, pool: &Pool) -> anyhow::Result<()> {
        let fresh = Arc::new(Catalog::load(pool)?);
        match self.current.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_seed_parses() {
        let models = parse_seed(BUILTIN_SEED).unwrap();
        let mini = models.iter().find(|m| m.id == "openai/gpt-4.1-mini").unwrap();
        assert_eq!(mini.prices.input.units(), 1_600_000);
        assert_eq!(mini.context_window, Some(1_047_576));
        assert!(models.iter().any(|m| m.routes.iter().any(|r| r.provider == "demo")));
    }

    #[test]
    fn admin_bodies_are_validated() {
        let ok = json!({"name": "X", "input_cost_per_micro_credit": 0.5, "output_cost_per_micro_credit": "1",
                        "routes": [{"provider": "demo", "upstream_model": "echo"}]});
        let m = Model::from_json("demo/x", ok.clone()).unwrap();
        assert_eq!(m.kind, ModelKind::Chat);
        assert_eq!(m.model_author.as_deref(), Some("demo"));
        assert!(m.input_modality.text && !m.input_modality.image);
        let mut bad = ok.clone();
        bad["routes"][0]["provider"] = json!("nope");
        assert!(Model::from_json("demo/x", bad)
            .unwrap_err()
            .to_string()
            .contains("routes[0].provider"));
        let mut bad = ok.clone();
        bad["id"] = json!("other");
        assert!(Model::from_json("demo/x", bad).is_err());
        let mut bad = ok;
        bad["input_cost_per_micro_credit"] = json!(-1);
        assert!(Model::from_json("demo/x", bad)
            .unwrap_err()
            .to_string()
            .starts_with("'input_cost_per_micro_credit'"));
    }
}
