//! The model catalog and its per-license-type prices.

use anyhow::Context;
use rusqlite::{params, Connection};

use super::now;
use crate::catalog::{Model, Route};
use crate::ledger::price::{Price, Prices};

/// Inserts or replaces a model and its routes (one transaction: routes never half-written).
pub fn upsert(conn: &mut Connection, model: &Model) -> anyhow::Result<()> {
    let tx = conn.transaction().context("begin")?;
    tx.execute(
        "INSERT INTO models (id, name, kind, context_window, max_output_tokens, input_price, output_price, active,
                             input_modality, output_modality, description, model_author, supported_features, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (id) DO UPDATE SET name = ?2, kind = ?3, context_window = ?4, max_output_tokens = ?5,
             input_price = ?6, output_price = ?7, active = ?8, input_modality = ?9, output_modality = ?10,
             description = ?11, model_author = ?12, supported_features = ?13, updated_at = ?14",
        params![
            model.id,
            model.name,
            model.kind.as_str(),
            model.context_window,
            model.max_output_tokens,
            model.prices.input.units(),
            model.prices.output.units(),
            model.active,
            serde_json::to_string(&model.input_modality)?,
            serde_json::to_string(&model.output_modality)?,
            model.description,
            model.model_author,
            serde_json::to_string(&model.supported_features)?,
            now(),
        ],
    )
    .context("upsert model")?;
    tx.execute("DELETE FROM model_routes WHERE model_id = ?1", [&model.id])
        .context("clear routes")?;
    for (position, route) in model.routes.iter().enumerate() {
        tx.execute(
            "INSERT INTO model_routes (model_id, position, provider, upstream_model) VALUES (?1, ?2, ?3, ?4)",
            params![model.id, position as i64, route.provider, route.upstream_model],
        )
        .context("insert route")?;
    }
    tx.commit().context("commit model")?;
    Ok(())
}

/// Seeds the models whose id the database does not know yet; edits made through the admin
/// API are never overwritten by the file. Returns how many were added.
pub fn seed(conn: &mut Connection, models: &[Model]) -> anyhow::Result<usize> {
    let mut added = 0;
    for model in models {
        let known: bool = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM models WHERE id = ?1)", [&model.id], |r| {
                r.get(0)
            })
            .context("check model")?;
        if !known {
            upsert(conn, model)?;
            added += 1;
        }
    }
    Ok(added)
}

pub fn load_all(conn: &Connection) -> anyhow::Result<Vec<Model>> {
    let mut routes = conn.prepare_cached(
        "SELECT model_id, provider, upstream_model FROM model_routes ORDER BY model_id, position",
    )?;
    let mut by_model: std::collections::HashMap<String, Vec<Route>> = Default::default();
    for row in routes.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, Route { provider: r.get(1)?, upstream_model: r.get(2)? }))
    })? {
        let (model_id, route) = row.context("read route")?;
        by_model.entry(model_id).or_default().push(route);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, kind, context_window, max_output_tokens, input_price, output_price, active,
                input_modality, output_modality, description, model_author, supported_features
         FROM models ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, Option<i64>>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, bool>(7)?,
            r.get::<_, String>(8)?,
            r.get::<_, String>(9)?,
            r.get::<_, Option<String>>(10)?,
            r.get::<_, Option<String>>(11)?,
            r.get::<_, String>(12)?,
        ))
    })?;
    let mut models = Vec::new();
    for row in rows {
        let (
            id,
            name,
            kind,
            context_window,
            max_output_tokens,
            input,
            output,
            active,
            inm,
            outm,
            desc,
            author,
            feats,
        ) = row.context("read model")?;
        models.push(Model {
            routes: by_model.remove(&id).unwrap_or_default(),
            kind: kind.parse().map_err(anyhow::Error::msg)?,
            prices: Prices { input: price(input)?, output: price(output)? },
            input_modality: serde_json::from_str(&inm).context("input_modality")?,
            output_modality: serde_json::from_str(&outm).context("output_modality")?,
            supported_features: serde_json::from_str(&feats).context("supported_features")?,
            id,
            name,
            context_window,
            max_output_tokens,
            active,
            description: desc,
            model_author: author,
        });
    }
    Ok(models)
}

fn price(units: i64) -> anyhow::Result<Price> {
    Price::from_units(units).with_context(|| format!("stored price {units} out of range"))
}

/// Every per-license-type override: (license_type_id, model_id, prices).
pub fn load_price_overrides(conn: &Connection) -> anyhow::Result<Vec<(String, String, Prices)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT license_type_id, model_id, input_price, output_price FROM model_prices",
    )?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (lt, model, input, output) = row.context("read price")?;
        out.push((lt, model, Prices { input: price(input)?, output: price(output)? }));
    }
    Ok(out)
}

/// Every per-license-type tool price: (license_type_id, tool, micro_credits).
pub fn load_tool_prices(conn: &Connection) -> anyhow::Result<Vec<(String, String, i64)>> {
    let mut stmt =
        conn.prepare_cached("SELECT license_type_id, tool, micro_credits FROM tool_prices")?;
    let rows =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
    Ok(rows)
}
