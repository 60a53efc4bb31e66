//! The ledger's write path: usage rows, balance changes and their ledger entries, always
//! together in one transaction, and the read side of usage.

use anyhow::{bail, Context};
use rusqlite::{params, Connection};
use serde::Serialize;

use super::now;

/// One billed request, as the ledger settles it.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub request_id: String,
    pub license_id: String,
    pub api_key_id: Option<String>,
    pub endpoint: &'static str,
    pub model: String,
    pub provider: String,
    pub stream: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub micro_credits: i64,
    pub status: &'static str,
}

/// A change ordered by an administrator: positive adds, negative removes.
#[derive(Debug, Clone)]
pub struct Adjustment {
    pub license_id: String,
    pub micro_credits: i64,
    pub note: Option<String>,
}

#[derive(Debug, Clone)]
pub enum LedgerWrite {
    Settle(Settlement),
    Adjust(Adjustment),
}

/// Applies one write inside the caller's transaction. The balance update is conditional,
/// so even a bug upstream of here cannot take a balance below zero.
/// `touch_key` also records the key's `last_used_at` (the writer does that at most once a
/// minute per key: it is for operators, and a write per request would double the I/O).
pub fn apply(conn: &Connection, write: &LedgerWrite, touch_key: bool) -> anyhow::Result<()> {
    let at = now();
    match write {
        LedgerWrite::Settle(s) => {
            conn.prepare_cached(
                "INSERT INTO usage (request_id, license_id, api_key_id, created_at, endpoint, model, provider, stream,
                                    prompt_tokens, completion_tokens, micro_credits, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                s.request_id,
                s.license_id,
                s.api_key_id,
                at,
                s.endpoint,
                s.model,
                s.provider,
                s.stream,
                s.prompt_tokens as i64,
                s.completion_tokens as i64,
                s.micro_credits,
                s.status
            ])
            .context("insert usage")?;
            if s.micro_credits > 0 {
                let changed = conn
                    .prepare_cached(
                        "UPDATE licenses SET
                           available_micro_credits = available_micro_credits - ?1,
                           used_micro_credits = used_micro_credits + ?1
                         WHERE id = ?2 AND (available_micro_credits IS NULL OR available_micro_credits >= ?1)",
                    )?
                    .execute(params![s.micro_credits, s.license_id])
                    .context("debit license")?;
                if changed != 1 {
                    bail!("debit of {} would overdraw license {}", s.micro_credits, s.license_id);
                }
                insert_entry(
                    conn,
                    &s.license_id,
                    &at,
                    -s.micro_credits,
                    "debit",
                    Some(&s.request_id),
                    None,
                )?;
            }
            if let Some(key) = s.api_key_id.as_ref().filter(|_| touch_key) {
                conn.prepare_cached("UPDATE api_keys SET last_used_at = ?1 WHERE id = ?2")?
                    .execute(params![at, key])
                    .context("touch key")?;
            }
        }
        LedgerWrite::Adjust(a) => {
            let changed = conn
                .prepare_cached(
                    "UPDATE licenses SET available_micro_credits = available_micro_credits + ?1
                     WHERE id = ?2 AND available_micro_credits IS NOT NULL AND available_micro_credits + ?1 >= 0",
                )?
                .execute(params![a.micro_credits, a.license_id])
                .context("adjust license")?;
            if changed != 1 {
                bail!("adjustment of {} refused for license {}", a.micro_credits, a.license_id);
            }
            let kind = if a.micro_credits > 0 { "grant" } else { "adjustment" };
            insert_entry(conn, &a.license_id, &at, a.micro_credits, kind, None, a.note.as_deref())?;
        }
    }
    Ok(())
}

fn insert_entry(
    conn: &Connection,
    license_id: &str,
    at: &str,
    micro_credits: i64,
    kind: &str,
    request_id: Option<&str>,
    note: Option<&str>,
) -> anyhow::Result<()> {
    conn.prepare_cached(
        "INSERT INTO ledger_entries (license_id, created_at, micro_credits, kind, request_id, note)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![license_id, at, micro_credits, kind, request_id, note])
    .context("insert ledger entry")?;
    Ok(())
}

/// A usage row as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct UsageRow {
    pub request_id: String,
    pub created_at: String,
    pub endpoint: String,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub stream: bool,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub micro_credits: i64,
    pub status: String,
}

/// Newest first; `before` is the `request_id` of the last row of the previous page (a
/// timestamp would be ambiguous: many requests share a millisecond).
pub fn list(
    conn: &Connection,
    license_id: &str,
    limit: u32,
    before: Option<&str>,
) -> anyhow::Result<Vec<UsageRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT request_id, created_at, endpoint, model, provider, stream, prompt_tokens, completion_tokens,
                micro_credits, status
         FROM usage WHERE license_id = ?1
           AND (?2 IS NULL OR id < (SELECT id FROM usage WHERE request_id = ?2 AND license_id = ?1))
         ORDER BY id DESC LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![license_id, before, limit], |r| {
            Ok(UsageRow {
                request_id: r.get(0)?,
                created_at: r.get(1)?,
                endpoint: r.get(2)?,
                model: r.get(3)?,
                provider: r.get(4)?,
                stream: r.get(5)?,
                prompt_tokens: r.get(6)?,
                completion_tokens: r.get(7)?,
                micro_credits: r.get(8)?,
                status: r.get(9)?,
            })
        })?
        .collect::<Result<_, _>>()
        .context("list usage")?;
    Ok(rows)
}
