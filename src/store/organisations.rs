//! Institutions, their JWT public keys, license types and per-type prices.

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::{new_id, now};
use crate::ledger::price::Prices;

#[derive(Debug, Clone, Serialize)]
pub struct Institution {
    pub id: String,
    pub alias: String,
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PublicKey {
    pub id: String,
    pub institution_id: String,
    pub kid: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LicenseType {
    pub id: String,
    pub alias: String,
    pub name: String,
    pub institution_id: String,
    /// `None` = licenses of this type are unlimited.
    pub default_micro_credits: Option<i64>,
    pub created_at: String,
}

fn institution(row: &Row) -> rusqlite::Result<Institution> {
    Ok(Institution {
        id: row.get(0)?,
        alias: row.get(1)?,
        name: row.get(2)?,
        created_at: row.get(3)?,
    })
}

fn license_type(row: &Row) -> rusqlite::Result<LicenseType> {
    Ok(LicenseType {
        id: row.get(0)?,
        alias: row.get(1)?,
        name: row.get(2)?,
        institution_id: row.get(3)?,
        default_micro_credits: row.get(4)?,
        created_at: row.get(5)?,
    })
}

/// Returns `Err` carrying the rusqlite error so callers can tell a duplicate alias apart.
pub fn create_institution(
    conn: &Connection,
    alias: &str,
    name: &str,
) -> rusqlite::Result<Institution> {
    let inst =
        Institution { id: new_id(), alias: alias.into(), name: name.into(), created_at: now() };
    conn.execute(
        "INSERT INTO institutions (id, alias, name, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![inst.id, inst.alias, inst.name, inst.created_at],
    )?;
    Ok(inst)
}

pub fn list_institutions(conn: &Connection) -> anyhow::Result<Vec<Institution>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, alias, name, created_at FROM institutions ORDER BY created_at, rowid",
    )?;
    let rows =
        stmt.query_map([], institution)?.collect::<Result<_, _>>().context("list institutions")?;
    Ok(rows)
}

/// Finds an institution by UUID or alias (aliases are case-sensitive).
pub fn find_institution(
    conn: &Connection,
    id_or_alias: &str,
) -> anyhow::Result<Option<Institution>> {
    conn.query_row(
        "SELECT id, alias, name, created_at FROM institutions WHERE id = ?1 OR alias = ?1",
        [id_or_alias],
        institution,
    )
    .optional()
    .context("find institution")
}

pub fn add_public_key(
    conn: &Connection,
    institution_id: &str,
    kid: Option<&str>,
    raw_key: &[u8],
) -> anyhow::Result<PublicKey> {
    let key = PublicKey {
        id: new_id(),
        institution_id: institution_id.into(),
        kid: kid.map(Into::into),
        created_at: now(),
    };
    conn.execute(
        "INSERT INTO institution_public_keys (id, institution_id, kid, public_key, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![key.id, key.institution_id, key.kid, raw_key, key.created_at],
    )
    .context("insert public key")?;
    Ok(key)
}

pub fn kid_in_use(conn: &Connection, institution_id: &str, kid: &str) -> anyhow::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM institution_public_keys WHERE institution_id = ?1 AND kid = ?2 AND active = 1",
        params![institution_id, kid],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
    .context("check kid")
}

pub fn list_public_keys(conn: &Connection, institution_id: &str) -> anyhow::Result<Vec<PublicKey>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, institution_id, kid, created_at FROM institution_public_keys
         WHERE institution_id = ?1 AND active = 1 ORDER BY created_at, rowid",
    )?;
    let rows = stmt
        .query_map([institution_id], |r| {
            Ok(PublicKey {
                id: r.get(0)?,
                institution_id: r.get(1)?,
                kid: r.get(2)?,
                created_at: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()
        .context("list public keys")?;
    Ok(rows)
}

/// An active key as JWT verification needs it: never listed by the admin API, which shows
/// no key material.
#[derive(Debug, Clone)]
pub struct VerificationKey {
    pub kid: Option<String>,
    pub raw: Vec<u8>,
}

pub fn verification_keys(
    conn: &Connection,
    institution_id: &str,
) -> anyhow::Result<Vec<VerificationKey>> {
    let mut stmt = conn.prepare_cached(
        "SELECT kid, public_key FROM institution_public_keys
         WHERE institution_id = ?1 AND active = 1 ORDER BY created_at, rowid",
    )?;
    let rows = stmt
        .query_map([institution_id], |r| Ok(VerificationKey { kid: r.get(0)?, raw: r.get(1)? }))?
        .collect::<Result<_, _>>()
        .context("load verification keys")?;
    Ok(rows)
}

/// Deactivates rather than deletes, so the history of which key signed what stays
/// explainable. Returns false when no active key has this id.
pub fn delete_public_key(conn: &Connection, id: &str) -> anyhow::Result<bool> {
    let changed = conn
        .execute("UPDATE institution_public_keys SET active = 0 WHERE id = ?1 AND active = 1", [id])
        .context("delete public key")?;
    Ok(changed == 1)
}

pub fn create_license_type(
    conn: &Connection,
    institution_id: &str,
    alias: &str,
    name: &str,
    default_micro_credits: Option<i64>,
) -> rusqlite::Result<LicenseType> {
    let lt = LicenseType {
        id: new_id(),
        alias: alias.into(),
        name: name.into(),
        institution_id: institution_id.into(),
        default_micro_credits,
        created_at: now(),
    };
    conn.execute(
        "INSERT INTO license_types (id, institution_id, alias, name, default_micro_credits, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![lt.id, lt.institution_id, lt.alias, lt.name, lt.default_micro_credits, lt.created_at],
    )?;
    Ok(lt)
}

const LICENSE_TYPE_COLUMNS: &str =
    "id, alias, name, institution_id, default_micro_credits, created_at";

pub fn list_license_types(conn: &Connection) -> anyhow::Result<Vec<LicenseType>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {LICENSE_TYPE_COLUMNS} FROM license_types ORDER BY created_at, rowid"
    ))?;
    let rows = stmt
        .query_map([], license_type)?
        .collect::<Result<_, _>>()
        .context("list license types")?;
    Ok(rows)
}

pub fn find_license_type(
    conn: &Connection,
    id_or_alias: &str,
) -> anyhow::Result<Option<LicenseType>> {
    conn.query_row(
        &format!("SELECT {LICENSE_TYPE_COLUMNS} FROM license_types WHERE id = ?1 OR alias = ?1"),
        [id_or_alias],
        license_type,
    )
    .optional()
    .context("find license type")
}

pub fn set_model_price(
    conn: &Connection,
    license_type_id: &str,
    model_id: &str,
    prices: Prices,
) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO model_prices (license_type_id, model_id, input_price, output_price) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (license_type_id, model_id) DO UPDATE SET input_price = ?3, output_price = ?4",
        params![license_type_id, model_id, prices.input.units(), prices.output.units()],
    )
    .context("set model price")?;
    Ok(())
}

pub fn set_tool_price(
    conn: &Connection,
    license_type_id: &str,
    tool: &str,
    micro_credits: i64,
) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO tool_prices (license_type_id, tool, micro_credits) VALUES (?1, ?2, ?3)
         ON CONFLICT (license_type_id, tool) DO UPDATE SET micro_credits = ?3",
        params![license_type_id, tool, micro_credits],
    )
    .context("set tool price")?;
    Ok(())
}
