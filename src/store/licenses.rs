//! Licenses: who holds a balance. Balances change only through the ledger (see `usage.rs`
//! for the write path); this module creates and reads licenses.

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::{new_id, now};

/// Field names are those of `GET /v1/license`; the admin API adds the rest.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct License {
    pub license_id: String,
    pub institution_id: String,
    pub license_type_id: String,
    pub unique_id: Option<String>,
    pub user_id: Option<String>,
    pub used_micro_credits: i64,
    /// `None` = unlimited.
    pub available_micro_credits: Option<i64>,
    pub active: bool,
    pub created_at: String,
}

const COLUMNS: &str = "id, institution_id, license_type_id, unique_id, user_id, used_micro_credits,
                       available_micro_credits, active, created_at";

fn license(row: &Row) -> rusqlite::Result<License> {
    Ok(License {
        license_id: row.get(0)?,
        institution_id: row.get(1)?,
        license_type_id: row.get(2)?,
        unique_id: row.get(3)?,
        user_id: row.get(4)?,
        used_micro_credits: row.get(5)?,
        available_micro_credits: row.get(6)?,
        active: row.get(7)?,
        created_at: row.get(8)?,
    })
}

pub struct NewLicense<'a> {
    pub institution_id: &'a str,
    pub license_type_id: &'a str,
    pub unique_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    /// `None` = unlimited.
    pub micro_credits: Option<i64>,
}

/// Inserts the license and, in the same transaction, the ledger entry for its opening
/// balance, so the balance equals the sum of its ledger entries from the first moment.
pub fn create(conn: &mut Connection, new: &NewLicense) -> anyhow::Result<License> {
    let tx = conn.transaction().context("begin")?;
    let license = insert(&tx, new)?;
    tx.commit().context("commit license")?;
    Ok(license)
}

/// The insert itself, for callers that already hold a transaction (JWT provisioning).
pub fn insert(conn: &Connection, new: &NewLicense) -> anyhow::Result<License> {
    let id = new_id();
    let created_at = now();
    conn.execute(
        "INSERT INTO licenses (id, institution_id, license_type_id, unique_id, user_id, available_micro_credits, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id, new.institution_id, new.license_type_id, new.unique_id, new.user_id, new.micro_credits, created_at],
    )
    .context("insert license")?;
    if let Some(amount) = new.micro_credits.filter(|&a| a > 0) {
        conn.execute(
            "INSERT INTO ledger_entries (license_id, created_at, micro_credits, kind, note)
             VALUES (?1, ?2, ?3, 'grant', 'opening balance')",
            params![id, created_at, amount],
        )
        .context("insert opening grant")?;
    }
    get(conn, &id)?.context("license vanished after insert")
}

pub fn get(conn: &Connection, id: &str) -> anyhow::Result<Option<License>> {
    conn.query_row(&format!("SELECT {COLUMNS} FROM licenses WHERE id = ?1"), [id], license)
        .optional()
        .context("get license")
}

#[derive(Default)]
pub struct Filter<'a> {
    pub institution_id: Option<&'a str>,
    pub license_type_id: Option<&'a str>,
    pub unique_id: Option<&'a str>,
}

pub fn list(conn: &Connection, filter: &Filter) -> anyhow::Result<Vec<License>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM licenses
         WHERE (?1 IS NULL OR institution_id = ?1) AND (?2 IS NULL OR license_type_id = ?2)
           AND (?3 IS NULL OR unique_id = ?3)
         ORDER BY created_at, rowid LIMIT 10000"
    ))?;
    let rows = stmt
        .query_map(
            params![filter.institution_id, filter.license_type_id, filter.unique_id],
            license,
        )?
        .collect::<Result<_, _>>()
        .context("list licenses")?;
    Ok(rows)
}

/// The committed balance the ledger starts from when it first sees a license.
pub struct Balance {
    pub available: Option<i64>,
    pub used: i64,
}

pub fn balance(conn: &Connection, id: &str) -> anyhow::Result<Option<Balance>> {
    conn.query_row(
        "SELECT available_micro_credits, used_micro_credits FROM licenses WHERE id = ?1",
        [id],
        |r| Ok(Balance { available: r.get(0)?, used: r.get(1)? }),
    )
    .optional()
    .context("load balance")
}
