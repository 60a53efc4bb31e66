//! JWT identities (gateway-design.md §0): the license and the ephemeral key a verified token
//! stands for. `auth::jwt` derives the identities from the claims; this module finds them or
//! creates them, exactly once however many first requests race.

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{keys, licenses, now};

/// What a verified token asks for. The identity strings are opaque here.
#[derive(Debug)]
pub struct Provision<'a> {
    pub institution_id: &'a str,
    pub license_type_id: &'a str,
    /// Names the license within (institution, license type).
    pub license_identity: &'a str,
    /// Names the ephemeral key within the license.
    pub key_identity: &'a str,
    /// Written on a license created now (an existing license keeps its own).
    pub unique_id: Option<&'a str>,
    pub license_user_id: Option<&'a str>,
    /// The license type's default; `None` = unlimited.
    pub micro_credits: Option<i64>,
    /// Stored with a new ephemeral key.
    pub key_user_id: Option<&'a str>,
    pub salt: Option<&'a str>,
    /// RFC 3339; `None` = the token does not expire.
    pub expires_at: Option<&'a str>,
}

/// The license and ephemeral key of an identity, with what authentication must check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    pub license_id: String,
    pub license_active: bool,
    pub key_id: String,
    pub key_active: bool,
    pub key_expires_at: Option<String>,
}

struct Found {
    license_id: String,
    license_active: bool,
    key: Option<(String, bool, Option<String>)>,
}

fn lookup(conn: &Connection, p: &Provision) -> anyhow::Result<Option<Found>> {
    let mut stmt = conn.prepare_cached(
        "SELECT l.id, l.active, k.id, k.active, k.expires_at
         FROM jwt_identities j
         JOIN licenses l ON l.id = j.license_id
         LEFT JOIN jwt_ephemeral_keys e ON e.license_id = l.id AND e.identity = ?4
         LEFT JOIN api_keys k ON k.id = e.api_key_id
         WHERE j.institution_id = ?1 AND j.license_type_id = ?2 AND j.identity = ?3",
    )?;
    stmt.query_row(
        params![p.institution_id, p.license_type_id, p.license_identity, p.key_identity],
        |r| {
            let key_id: Option<String> = r.get(2)?;
            Ok(Found {
                license_id: r.get(0)?,
                license_active: r.get(1)?,
                key: match key_id {
                    Some(id) => Some((id, r.get(3)?, r.get(4)?)),
                    None => None,
                },
            })
        },
    )
    .optional()
    .context("look up JWT identity")
}

/// True when a token expiring at `wanted` needs the key's expiry moved later. Both sides are
/// in the store's own RFC 3339 form, which sorts as text.
fn must_extend(stored: Option<&str>, wanted: Option<&str>) -> bool {
    match (stored, wanted) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(stored), Some(wanted)) => wanted > stored,
    }
}

fn done(found: &Found) -> Option<Provisioned> {
    let (key_id, key_active, key_expires_at) = found.key.clone()?;
    Some(Provisioned {
        license_id: found.license_id.clone(),
        license_active: found.license_active,
        key_id,
        key_active,
        key_expires_at,
    })
}

/// Finds the identity's license and ephemeral key, creating what is missing: the license
/// with its opening grant, the key, and the rows that map the identity to them. A key that
/// would expire before this token does is extended to the token's `exp`.
pub fn resolve(conn: &mut Connection, p: &Provision) -> anyhow::Result<Provisioned> {
    // The common case, a known identity, is one read and no write lock.
    if let Some(found) = lookup(conn, p)? {
        if let Some(ready) = done(&found) {
            if !ready.key_active || !must_extend(ready.key_expires_at.as_deref(), p.expires_at) {
                return Ok(ready);
            }
        }
    }
    // IMMEDIATE takes the write lock before the re-read, so two first requests for one
    // identity cannot both see it missing: the second waits, then finds the first's rows.
    // Plain INSERTs (not ON CONFLICT DO NOTHING) make a broken assumption fail loudly and
    // roll back, rather than leave an orphan license behind.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).context("begin")?;
    let created_at = now();
    let (license_id, license_active) = match lookup(&tx, p)? {
        Some(found) => (found.license_id, found.license_active),
        None => {
            let license = licenses::insert(
                &tx,
                &licenses::NewLicense {
                    institution_id: p.institution_id,
                    license_type_id: p.license_type_id,
                    unique_id: p.unique_id,
                    user_id: p.license_user_id,
                    micro_credits: p.micro_credits,
                },
            )?;
            tx.execute(
                "INSERT INTO jwt_identities (institution_id, license_type_id, identity, license_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![p.institution_id, p.license_type_id, p.license_identity, license.license_id, created_at],
            )
            .context("insert JWT identity")?;
            (license.license_id, license.active)
        }
    };
    let found_key = lookup(&tx, p)?.and_then(|f| f.key);
    let (key_id, key_active, key_expires_at) = match found_key {
        Some((id, active, stored)) if active && must_extend(stored.as_deref(), p.expires_at) => {
            tx.execute(
                "UPDATE api_keys SET expires_at = ?1 WHERE id = ?2",
                params![p.expires_at, id],
            )
            .context("extend ephemeral key")?;
            (id, active, p.expires_at.map(str::to_string))
        }
        Some(key) => key,
        None => {
            let (info, _secret) = keys::create(
                &tx,
                &keys::NewKey {
                    license_id: &license_id,
                    name: Some("jwt"),
                    expires_at: p.expires_at,
                    ephemeral: true,
                },
            )?;
            tx.execute(
                "INSERT INTO jwt_ephemeral_keys (license_id, identity, user_id, salt, api_key_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![license_id, p.key_identity, p.key_user_id, p.salt, info.id, created_at],
            )
            .context("insert ephemeral key mapping")?;
            (info.id, info.active, info.expires_at)
        }
    };
    tx.commit().context("commit JWT provisioning")?;
    Ok(Provisioned { license_id, license_active, key_id, key_active, key_expires_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{organisations, test_pool};

    fn provision<'a>(inst: &'a str, lt: &'a str, who: &'a str, salt: &'a str) -> Provision<'a> {
        Provision {
            institution_id: inst,
            license_type_id: lt,
            license_identity: who,
            key_identity: salt,
            unique_id: Some(who),
            license_user_id: None,
            micro_credits: Some(1_000),
            key_user_id: None,
            salt: Some(salt),
            expires_at: Some("2030-01-01T00:00:00.000Z"),
        }
    }

    #[test]
    fn an_identity_is_created_once_and_then_reused() {
        let (_dir, pool) = test_pool();
        let mut conn = pool.get().unwrap();
        let inst = organisations::create_institution(&conn, "u", "U").unwrap();
        let lt = organisations::create_license_type(&conn, &inst.id, "s", "S", Some(1)).unwrap();

        let first = resolve(&mut conn, &provision(&inst.id, &lt.id, "c1", "a")).unwrap();
        let again = resolve(&mut conn, &provision(&inst.id, &lt.id, "c1", "a")).unwrap();
        let rotated = resolve(&mut conn, &provision(&inst.id, &lt.id, "c1", "b")).unwrap();
        let other = resolve(&mut conn, &provision(&inst.id, &lt.id, "c2", "a")).unwrap();

        assert_eq!(first, again);
        assert_eq!(rotated.license_id, first.license_id);
        assert_ne!(rotated.key_id, first.key_id);
        assert_ne!(other.license_id, first.license_id);
        let balance = licenses::balance(&conn, &first.license_id).unwrap().unwrap();
        assert_eq!(balance.available, Some(1_000));
        let grants: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM ledger_entries WHERE license_id = ?1",
                [&first.license_id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(grants, 1);
    }

    #[test]
    fn a_later_token_extends_the_key_and_an_earlier_one_does_not_shorten_it() {
        let (_dir, pool) = test_pool();
        let mut conn = pool.get().unwrap();
        let inst = organisations::create_institution(&conn, "u", "U").unwrap();
        let lt = organisations::create_license_type(&conn, &inst.id, "s", "S", None).unwrap();
        let mut p = provision(&inst.id, &lt.id, "c1", "a");

        resolve(&mut conn, &p).unwrap();
        p.expires_at = Some("2031-01-01T00:00:00.000Z");
        let later = resolve(&mut conn, &p).unwrap();
        p.expires_at = Some("2029-01-01T00:00:00.000Z");
        let earlier = resolve(&mut conn, &p).unwrap();
        p.expires_at = None;
        let forever = resolve(&mut conn, &p).unwrap();

        assert_eq!(later.key_expires_at.as_deref(), Some("2031-01-01T00:00:00.000Z"));
        assert_eq!(earlier.key_expires_at.as_deref(), Some("2031-01-01T00:00:00.000Z"));
        assert_eq!(forever.key_expires_at, None);
        assert_eq!(forever.key_id, later.key_id);
    }

    #[test]
    fn must_extend_only_moves_expiry_later() {
        assert!(!must_extend(None, Some("2030")));
        assert!(!must_extend(None, None));
        assert!(must_extend(Some("2030"), None));
        assert!(must_extend(Some("2030"), Some("2031")));
        assert!(!must_extend(Some("2030"), Some("2029")));
    }
}
