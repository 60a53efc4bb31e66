//! SQLite storage: the pool, embedded migrations, and one module of queries per concern.
//! All SQL lives under this module.

pub mod catalog;
pub mod jwt;
pub mod keys;
pub mod licenses;
pub mod organisations;
pub mod usage;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::Connection;

use crate::config::SyncMode;

pub type Pool = r2d2::Pool<SqliteConnectionManager>;
pub type Conn = r2d2::PooledConnection<SqliteConnectionManager>;

/// Applied in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_jwt_ephemeral_keys.sql"),
];

/// Writers wait this long for the lock before failing; the ledger's group commit keeps
/// real waits far below it.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens (creating if needed) the database and returns a pool whose connections all use
/// WAL, foreign keys and the configured durability.
pub fn open(path: &Path, sync: SyncMode, max_size: u32) -> anyhow::Result<Pool> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        anyhow::ensure!(dir.is_dir(), "database directory {} does not exist", dir.display());
    }
    let sync_pragma = match sync {
        SyncMode::Normal => "NORMAL",
        SyncMode::Full => "FULL",
    };
    let manager = SqliteConnectionManager::file(path).with_init(move |c| {
        c.busy_timeout(BUSY_TIMEOUT)?;
        c.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync_pragma}; PRAGMA foreign_keys = ON;"
        ))
    });
    let pool = r2d2::Pool::builder()
        .max_size(max_size)
        // Connections open on demand: each holds its own page cache (~2 MB when warm).
        .min_idle(Some(1))
        .connection_timeout(Duration::from_secs(10))
        .build(manager)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    Ok(pool)
}

pub fn migrate(pool: &Pool) -> anyhow::Result<usize> {
    let mut conn = pool.get().context("database connection")?;
    migrate_connection(&mut conn)
}

/// Runs the migrations not yet applied, each in its own transaction. Returns how many ran.
pub fn migrate_connection(conn: &mut Connection) -> anyhow::Result<usize> {
    let applied: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).context("read schema version")?;
    anyhow::ensure!(
        applied <= MIGRATIONS.len(),
        "the database schema (version {applied}) is newer than this binary knows ({})",
        MIGRATIONS.len()
    );
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction().context("begin migration")?;
        tx.execute_batch(sql).with_context(|| format!("migration {}", index + 1))?;
        tx.pragma_update(None, "user_version", index + 1).context("record schema version")?;
        tx.commit().context("commit migration")?;
    }
    Ok(MIGRATIONS.len() - applied)
}

pub fn get(pool: &Pool) -> anyhow::Result<Conn> {
    pool.get().context("database connection")
}

/// The current time as RFC 3339 UTC with millisecond precision: sortable as text.
pub fn now() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

pub fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&format).unwrap_or_default()
}

/// Parses an RFC 3339 timestamp with any offset into the stored UTC form.
pub fn parse_rfc3339(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// True when the error is a UNIQUE constraint violation (a duplicate alias, say).
pub fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(e, _)
        if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

#[cfg(test)]
pub(crate) fn test_pool() -> (tempfile::TempDir, Pool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = open(&dir.path().join("t.db"), SyncMode::Normal, 4).expect("open");
    migrate(&pool).expect("migrate");
    (dir, pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_set_wal() {
        let (_dir, pool) = test_pool();
        assert_eq!(migrate(&pool).unwrap(), 0);
        let conn = pool.get().unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0)).unwrap();
        assert_eq!(fk, 1);
    }

    #[test]
    fn timestamps_are_utc_and_round_trip() {
        let t = parse_rfc3339("2026-01-02T03:04:05+02:00").unwrap();
        assert_eq!(rfc3339(t), "2026-01-02T01:04:05.000Z");
        assert!(parse_rfc3339("yesterday").is_none());
    }
}
