//! The KeyRegistry: resolves a presented API key to the caller's identity, caching answers
//! so a request normally costs no database read, and caches verified institution JWTs the
//! same way. Admin changes clear both caches, so a deactivated key, or a JWT signed with a
//! deleted public key, is refused from the very next request.

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

type Cache = HashMap<KeyHash, (Option<Arc<AuthContext>>, Instant)>;

pub struct KeyRegistry {
    pool: Pool,
    cache: Cache,
    /// Verified JWTs (and refused ones, briefly) by the SHA-256 of the token.
    jwt_cache: Cache,
    /// Counts `InvalidateAll`s. A JWT verified outside the actor is cached only if no
    /// invalidation happened meanwhile, so a key deleted mid-verification cannot be undone.
    generation: u64,
}

/// The cached answer for `hash`, if it is still fresh.
fn fresh(cache: &Cache, hash: &KeyHash, now: Instant) -> Option<Option<Arc<AuthContext>>> {
    let (found, at) = cache.get(hash)?;
    let ttl = if found.is_some() { HIT_TTL } else { MISS_TTL };
    (now.duration_since(*at) < ttl).then(|| found.clone())
}

fn remember(cache: &mut Cache, hash: KeyHash, found: Option<Arc<AuthContext>>, now: Instant) {
    if cache.len() >= MAX_ENTRIES {
        cache.clear();
    }
    cache.insert(hash, (found, now));
}

impl KeyRegistry {
    pub fn new(pool: Pool) -> Self {
        Self { pool, cache: HashMap::new(), jwt_cache: HashMap::new(), generation: 0 }
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
        if let Some(found) = fresh(&self.cache, &hash, now) {
            return Ok(found);
        }
        let found = self.load(&hash)?;
        remember(&mut self.cache, hash, found.clone(), now);
        Ok(found)
    }
}

/// What the registry knows about a JWT, by the SHA-256 of the token.
#[derive(Debug)]
pub enum JwtLookup {
    /// Verified (`Some`) or refused (`None`) recently.
    Known(Option<Arc<AuthContext>>),
    /// Not known: verify it, then send `RememberJwt` with this generation.
    Unknown { generation: u64 },
}

/// Verification itself runs off the actor (see `auth::Caller`): signature checks and first-use
/// provisioning must not hold up every other request's key lookup.
#[derive(Message)]
#[rtype(result = "JwtLookup")]
pub struct LookupJwt(pub KeyHash);

impl Handler<LookupJwt> for KeyRegistry {
    type Result = MessageResult<LookupJwt>;

    fn handle(&mut self, LookupJwt(hash): LookupJwt, _: &mut Context<Self>) -> Self::Result {
        MessageResult(match fresh(&self.jwt_cache, &hash, Instant::now()) {
            Some(found) => JwtLookup::Known(found),
            None => JwtLookup::Unknown { generation: self.generation },
        })
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct RememberJwt {
    pub hash: KeyHash,
    /// From the `JwtLookup::Unknown` that started the verification.
    pub generation: u64,
    pub found: Option<Arc<AuthContext>>,
}

impl Handler<RememberJwt> for KeyRegistry {
    type Result = ();

    fn handle(&mut self, msg: RememberJwt, _: &mut Context<Self>) {
        if msg.generation == self.generation {
            remember(&mut self.jwt_cache, msg.hash, msg.found, Instant::now());
        }
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
        self.jwt_cache.clear();
        self.generation += 1;
    }
}
