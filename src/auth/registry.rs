//! The KeyRegistry: resolves a presented API key to the caller's identity, caching answers
//! so a request normally costs no database read. Admin changes clear the cache, so a
//! deactivated key is refused from the very next request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use subtle::ConstantTimeEq;

use super::AuthContext;
use crate::store::{self, keys::KeyHash, Pool};

/// A found key is re-read at least this often, as a safety net behind invalidation.
const HIT_TTL: Duration = Duration::from_secs(60);
/// Unknown keys are remembered briefly so a client retrying a bad key cannot hammer SQLite.
const MISS_TTL: Duration = Duration::from_secs(2);
/// Past this many entries the cache starts over rather than growing without bound.
const MAX_ENTRIES: usize = 100_000;

pub struct KeyRegistry {
    pool: Pool,
    cache: HashMap<KeyHash, (Option<Arc<AuthContext>>, Instant)>,
}

impl KeyRegistry {
    pub fn new(pool: Pool) -> Self {
        Self { pool, cache: HashMap::new() }
    }

    fn load(&self, hash: &KeyHash) -> anyhow::Result<Option<Arc<AuthContext>>> {
        let conn = store::get(&self.pool)?;
        let Some(record) = store::keys::lookup(&conn, hash)? else { return Ok(None) };
        // The row was found by its hash; comparing in constant time as well keeps the
        // check free of timing differences whatever index SQLite used.
        let same: bool = record.key_hash.as_slice().ct_eq(hash.as_slice()).into();
        if !same || !record.key_active || !record.license_active {
            return Ok(None);
        }
        // An unparseable expiry is treated as already past: refuse rather than never expire.
        let expires_at = record
            .expires_at
            .as_deref()
            .map(|text| store::parse_rfc3339(text).map_or(i64::MIN, |t| t.unix_timestamp()));
        Ok(Some(Arc::new(AuthContext {
            key_id: record.key_id,
            license_id: record.license_id,
            institution_id: record.institution_id,
            license_type_id: record.license_type_id,
            unique_id: record.unique_id,
            user_id: record.user_id,
            expires_at,
        })))
    }
}

impl Actor for KeyRegistry {
    type Context = Context<Self>;
}

/// `Ok(None)` = no such active key.
#[derive(Message)]
#[rtype(result = "anyhow::Result<Option<Arc<AuthContext>>>")]
pub struct LookupKey(pub KeyHash);

impl Handler<LookupKey> for KeyRegistry {
    type Result = anyhow::Result<Option<Arc<AuthContext>>>;

    fn handle(&mut self, LookupKey(hash): LookupKey, _: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        if let Some((found, at)) = self.cache.get(&hash) {
            let ttl = if found.is_some() { HIT_TTL } else { MISS_TTL };
            if now.duration_since(*at) < ttl {
                return Ok(found.clone());
            }
        }
        let found = self.load(&hash)?;
        if self.cache.len() >= MAX_ENTRIES {
            self.cache.clear();
        }
        self.cache.insert(hash, (found.clone(), now));
        Ok(found)
    }
}

/// Sent by the admin API after any change to keys, licenses or public keys.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InvalidateAll;

impl Handler<InvalidateAll> for KeyRegistry {
    type Result = ();

    fn handle(&mut self, _: InvalidateAll, _: &mut Context<Self>) {
        self.cache.clear();
    }
}
