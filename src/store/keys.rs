//! API keys. Only the SHA-256 of a key is stored; the key itself is shown once, at creation.

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{new_id, now};

pub const KEY_PREFIX: &str = "sk-quantized-";
/// 43 base62 characters carry 256 bits of randomness (the spec asks for at least 128).
const SECRET_CHARS: usize = 43;
const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// Enough of the key to tell keys apart in a list, far too little to guess the rest.
const DISPLAY_CHARS: usize = KEY_PREFIX.len() + 4;

pub type KeyHash = [u8; 32];

pub fn hash(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// A fresh random key. Bytes ≥ 248 are drawn again so each character is uniform over 62.
pub fn generate() -> anyhow::Result<String> {
    let mut key = String::with_capacity(KEY_PREFIX.len() + SECRET_CHARS);
    key.push_str(KEY_PREFIX);
    let mut buf = [0u8; 64];
    while key.len() < KEY_PREFIX.len() + SECRET_CHARS {
        getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
        for &b in buf.iter().filter(|&&b| b < 248) {
            if key.len() == KEY_PREFIX.len() + SECRET_CHARS {
                break;
            }
            key.push(ALPHABET[(b % 62) as usize] as char);
        }
    }
    Ok(key)
}

/// A key as the admin API lists it: never the secret.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub prefix: String,
    pub name: Option<String>,
    pub active: bool,
    pub expires_at: Option<String>,
    pub ephemeral: bool,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

/// What authentication needs to know about a key and its license, in one query.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub key_id: String,
    pub key_hash: Vec<u8>,
    pub key_active: bool,
    pub expires_at: Option<String>,
    pub license_id: String,
    pub license_active: bool,
    pub institution_id: String,
    pub license_type_id: String,
    pub unique_id: Option<String>,
    pub user_id: Option<String>,
}

pub struct NewKey<'a> {
    pub license_id: &'a str,
    pub name: Option<&'a str>,
    pub expires_at: Option<&'a str>,
    pub ephemeral: bool,
}

/// Returns the stored description and the key itself (the only time it exists in clear).
pub fn create(conn: &Connection, new: &NewKey) -> anyhow::Result<(KeyInfo, String)> {
    let key = generate()?;
    let info = KeyInfo {
        id: new_id(),
        prefix: key[..DISPLAY_CHARS].to_string(),
        name: new.name.map(Into::into),
        active: true,
        expires_at: new.expires_at.map(Into::into),
        ephemeral: new.ephemeral,
        created_at: now(),
        last_used_at: None,
    };
    conn.execute(
        "INSERT INTO api_keys (id, license_id, key_hash, prefix, name, expires_at, ephemeral, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            info.id,
            new.license_id,
            hash(&key).as_slice(),
            info.prefix,
            info.name,
            info.expires_at,
            info.ephemeral,
            info.created_at
        ],
    )
    .context("insert api key")?;
    Ok((info, key))
}

pub fn list(conn: &Connection, license_id: &str) -> anyhow::Result<Vec<KeyInfo>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, prefix, name, active, expires_at, ephemeral, created_at, last_used_at
         FROM api_keys WHERE license_id = ?1 ORDER BY created_at, rowid",
    )?;
    let rows = stmt
        .query_map([license_id], |r| {
            Ok(KeyInfo {
                id: r.get(0)?,
                prefix: r.get(1)?,
                name: r.get(2)?,
                active: r.get(3)?,
                expires_at: r.get(4)?,
                ephemeral: r.get(5)?,
                created_at: r.get(6)?,
                last_used_at: r.get(7)?,
            })
        })?
        .collect::<Result<_, _>>()
        .context("list keys")?;
    Ok(rows)
}

/// Keys are deactivated, never deleted, so usage rows keep pointing at something.
/// Returns false when there is no key with this id.
pub fn deactivate(conn: &Connection, id: &str) -> anyhow::Result<bool> {
    let changed = conn
        .execute("UPDATE api_keys SET active = 0 WHERE id = ?1", [id])
        .context("deactivate key")?;
    Ok(changed == 1)
}

pub fn lookup(conn: &Connection, key_hash: &KeyHash) -> anyhow::Result<Option<KeyRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT k.id, k.key_hash, k.active, k.expires_at, l.id, l.active, l.institution_id, l.license_type_id,
                l.unique_id, l.user_id
         FROM api_keys k JOIN licenses l ON l.id = k.license_id WHERE k.key_hash = ?1",
    )?;
    stmt.query_row([key_hash.as_slice()], |r| {
        Ok(KeyRecord {
            key_id: r.get(0)?,
            key_hash: r.get(1)?,
            key_active: r.get(2)?,
            expires_at: r.get(3)?,
            license_id: r.get(4)?,
            license_active: r.get(5)?,
            institution_id: r.get(6)?,
            license_type_id: r.get(7)?,
            unique_id: r.get(8)?,
            user_id: r.get(9)?,
        })
    })
    .optional()
    .context("look up key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_long_random_and_base62() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + SECRET_CHARS);
        assert!(a[KEY_PREFIX.len()..].bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn hash_is_sha256() {
        let h = hash("abc");
        assert_eq!(h[..4], [0xba, 0x78, 0x16, 0xbf]);
    }
}
