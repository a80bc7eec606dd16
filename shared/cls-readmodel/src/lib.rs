//! The Redis read model of SPEC §4: what hot reads (validation, a license by id, API-key
//! resolution) are answered from.
//!
//! Every document is stored as `<version>|<json>` and every write goes through one Lua
//! compare-and-set ([`CAS`]): a document is replaced only by a strictly higher version, so
//! duplicated, reordered or late writers (workers' read-your-writes, the projector, cache fills,
//! a rebuild) never overwrite newer data. Removals are versioned tombstones (a rotated-away key
//! hash is `retired`); unknown keys get short-lived negative entries at version 0, which any real
//! document replaces.
//!
//! Writers always take their data from a Postgres snapshot, never from a message: read *after*
//! the change committed ([`ReadModel::refresh_key`]), or, for a worker's read-your-writes, inside
//! its transaction once the versions are drawn and written after the commit
//! ([`ReadModel::staging`]). A write also carries the read model's
//! epoch, read before the snapshot: if the namespace was wiped meanwhile (epoch gone or new),
//! the write is refused and retried from a fresh snapshot, so a snapshot taken before a wipe
//! can never land after it and bring back an old version.

pub mod docs;
pub mod keys;
pub mod rebuild;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cls_contracts::read_model::{ApiKeyDoc, KeyDoc, LicenseDoc, Target};
use cls_domain::KeyHash;
use cls_store::read_model::{self as snapshots, ApiKeySelector, ApiKeySnapshot, KeySelector, KeySnapshot};
use cls_store::{PgPool, StoreError};
use fred::prelude::*;
use fred::types::config::UnresponsiveConfig;
use fred::types::scripts::Script;
use uuid::Uuid;

pub use docs::Write;
pub use keys::Keys;
pub use rebuild::Rebuilt;

/// How long an unknown key (license key, license id, API key) is remembered as unknown. Any
/// real document replaces a negative entry at once, so this only bounds memory, not freshness.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(60);

fn negative_ttl() -> u64 {
    NEGATIVE_TTL.as_millis() as u64
}

/// The compare-and-set. KEYS[1] is the epoch, KEYS[2..] the documents; ARGV[1] the epoch the
/// writer started from, then per document: version, expiry in ms (0 = none), JSON.
/// Returns -1 if the epoch moved, else how many documents were replaced.
const CAS: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local written = 0
for i = 2, #KEYS do
  local a = (i - 2) * 3 + 2
  local version = tonumber(ARGV[a])
  local stored = -1
  local current = redis.call('GET', KEYS[i])
  if current then
    local bar = string.find(current, '|', 1, true)
    if bar then stored = tonumber(string.sub(current, 1, bar - 1)) or -1 end
  end
  if version > stored then
    local value = ARGV[a] .. '|' .. ARGV[a + 2]
    local ttl = tonumber(ARGV[a + 1])
    if ttl > 0 then redis.call('SET', KEYS[i], value, 'PX', ttl) else redis.call('SET', KEYS[i], value) end
    written = written + 1
  end
end
return written
"#;

/// Reads the epoch, creating it (with the caller's fresh random value) if the namespace has none.
const EPOCH: &str = r#"
local e = redis.call('GET', KEYS[1])
if not e then redis.call('SET', KEYS[1], ARGV[1]); e = ARGV[1] end
return e
"#;

/// Why the read model could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("reading the snapshot failed")]
    Store(#[from] StoreError),
    #[error("Redis failed: {0}")]
    Cache(#[from] fred::error::Error),
    #[error("Redis is not connected")]
    Disconnected,
    #[error("the read model kept being wiped while writing")]
    EpochMoved,
}

/// Documents read inside a writer's transaction, waiting for its commit ([`ReadModel::staging`]).
pub struct Staged {
    epoch: Arc<str>,
    writes: Vec<Write>,
}

/// A writer's read-your-writes between the epoch and the snapshots ([`ReadModel::staging`]).
pub struct Staging {
    epoch: Arc<str>,
    keys: Keys,
    targets: Vec<Target>,
}

impl Staging {
    /// The license keys whose snapshots the writer reads in its transaction.
    pub fn key_ids(&self) -> Vec<Uuid> {
        self.targets.iter().filter_map(|t| if let Target::LicenseKey { id, .. } = t { Some(*id) } else { None }).collect()
    }

    /// The writes for the snapshots of [`Staging::key_ids`] (read in the transaction; a key that
    /// no longer exists has none) and of the API-key targets, read here on the same connection.
    pub async fn finish(self, conn: &mut cls_store::PgConnection, key_snapshots: Vec<KeySnapshot>) -> Result<Staged, StoreError> {
        let mut writes = Vec::new();
        for snapshot in &key_snapshots {
            writes.extend(docs::key_writes(&self.keys, snapshot));
        }
        for target in &self.targets {
            if let Target::ApiKey { id, .. } = target {
                let snapshot = snapshots::api_key_snapshot(conn, ApiKeySelector::Id(*id)).await?;
                writes.extend(docs::for_api_key(&self.keys, snapshot.as_ref(), ApiKeySelector::Id(*id), negative_ttl()));
            }
        }
        Ok(Staged { epoch: self.epoch, writes })
    }
}

/// Redis could not answer a read (down, or too slow): the caller falls back to Postgres.
#[derive(Debug, thiserror::Error)]
#[error("the read model is unavailable: {0}")]
pub struct Unavailable(String);

/// A handle on the read model of one namespace. Cheap to share (`Arc`).
pub struct ReadModel {
    redis: fred::clients::Client,
    keys: Keys,
    epoch: Mutex<Option<Arc<str>>>,
    cas: Script,
    epoch_script: Script,
}

impl ReadModel {
    /// Connects (see [`connect_redis`]) and returns the read model of `namespace`.
    pub async fn connect(url: &str, namespace: &str) -> anyhow::Result<ReadModel> {
        Ok(ReadModel::new(connect_redis(url).await?, namespace))
    }

    pub fn new(redis: fred::clients::Client, namespace: &str) -> ReadModel {
        ReadModel {
            redis,
            keys: Keys::new(namespace),
            epoch: Mutex::new(None),
            cas: Script::from_lua(CAS),
            epoch_script: Script::from_lua(EPOCH),
        }
    }

    pub fn client(&self) -> &fred::clients::Client {
        &self.redis
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether the client holds a connection now (checked before every read and write, so an
    /// outage costs nothing per request instead of a command timeout).
    pub fn is_connected(&self) -> bool {
        self.redis.is_connected()
    }

    /// For `/health/cache`.
    pub async fn ping(&self) -> Result<(), String> {
        if !self.is_connected() {
            return Err("Redis is not connected".to_owned());
        }
        self.redis.ping::<String>(None).await.map(|_| ()).map_err(|e| format!("Redis does not answer: {e}"))
    }

    pub async fn quit(&self) {
        let _ = self.redis.quit().await;
    }

    // ---- reads: one GET each ----

    async fn get<T: serde::de::DeserializeOwned>(&self, key: String) -> Result<Option<T>, Unavailable> {
        if !self.is_connected() {
            return Err(Unavailable("not connected".into()));
        }
        let value: Option<bytes::Bytes> = self.redis.get(key).await.map_err(|e| Unavailable(e.to_string()))?;
        let Some(value) = value else { return Ok(None) };
        let Some(bar) = value.iter().position(|b| *b == b'|') else { return Ok(None) };
        // A document that does not parse (written by another version) counts as a miss: the
        // fill replaces it once Postgres holds a higher version.
        // UTF-8 is checked once for the whole document (from_slice checks every string again).
        let Ok(json) = std::str::from_utf8(&value[bar + 1..]) else { return Ok(None) };
        Ok(serde_json::from_str(json).ok())
    }

    /// The key with this hash, if the read model holds it (live, retired or known unknown).
    pub async fn key(&self, hash: &KeyHash) -> Result<Option<KeyDoc>, Unavailable> {
        self.get(self.keys.key(hash.as_str())).await
    }

    pub async fn license(&self, id: Uuid) -> Result<Option<LicenseDoc>, Unavailable> {
        self.get(self.keys.license(id)).await
    }

    pub async fn api_key(&self, hash: &KeyHash) -> Result<Option<ApiKeyDoc>, Unavailable> {
        self.get(self.keys.api_key(hash.as_str())).await
    }

    /// Whether the read model already reflects every target (each entity's marker at or past
    /// the target's version). A missing marker means the documents are gone too (a wipe): reads
    /// then fill from Postgres, so it counts as reflected... unless a negative entry could
    /// shadow it, which [`ReadModel::make_visible`] settles; callers use that when this is false.
    pub async fn reflects(&self, targets: &[Target]) -> Result<bool, Unavailable> {
        if targets.is_empty() {
            return Ok(true);
        }
        if !self.is_connected() {
            return Err(Unavailable("not connected".into()));
        }
        let markers: Vec<String> = targets
            .iter()
            .map(|t| match t {
                Target::LicenseKey { id, .. } => self.keys.key_marker(*id),
                Target::ApiKey { id, .. } => self.keys.api_key_marker(*id),
            })
            .collect();
        let values: Vec<Option<String>> = self.redis.mget(markers).await.map_err(|e| Unavailable(e.to_string()))?;
        Ok(targets.iter().zip(values).all(|(t, v)| {
            v.and_then(|v| v.split('|').next().and_then(|n| n.parse::<i64>().ok())).is_some_and(|stored| stored >= t.version())
        }))
    }

    // ---- writes: compare-and-set ----

    fn cached_epoch(&self) -> Option<Arc<str>> {
        self.epoch.lock().expect("epoch lock never poisoned").clone()
    }

    fn forget_epoch(&self) {
        *self.epoch.lock().expect("epoch lock never poisoned") = None;
    }

    /// The epoch to write under; read (or created) once and cached until a write finds it moved.
    async fn current_epoch(&self) -> Result<Arc<str>, RefreshError> {
        if let Some(e) = self.cached_epoch() {
            return Ok(e);
        }
        let fresh = hex::encode(rand::random::<[u8; 16]>());
        let epoch: String = self.epoch_script.evalsha_with_reload(&self.redis, vec![self.keys.epoch()], vec![fresh]).await?;
        let epoch: Arc<str> = epoch.into();
        *self.epoch.lock().expect("epoch lock never poisoned") = Some(epoch.clone());
        Ok(epoch)
    }

    /// Applies `writes` under `epoch`; returns how many documents were replaced.
    pub async fn write(&self, epoch: &str, writes: &[Write]) -> Result<u64, RefreshError> {
        if writes.is_empty() {
            return Ok(0);
        }
        let mut keys = Vec::with_capacity(writes.len() + 1);
        keys.push(self.keys.epoch());
        let mut args: Vec<String> = Vec::with_capacity(writes.len() * 3 + 1);
        args.push(epoch.to_owned());
        for w in writes {
            keys.push(w.key.clone());
            args.push(w.version.to_string());
            args.push(w.ttl_ms.to_string());
            args.push(w.json.clone());
        }
        let written: i64 = self.cas.evalsha_with_reload(&self.redis, keys, args).await?;
        if written < 0 {
            self.forget_epoch();
            return Err(RefreshError::EpochMoved);
        }
        Ok(written as u64)
    }

    /// Runs `attempt` (epoch → snapshot → write) again when the epoch moved under it.
    async fn with_epoch<T, F, Fut>(&self, mut attempt: F) -> Result<T, RefreshError>
    where
        F: FnMut(Arc<str>) -> Fut,
        Fut: Future<Output = Result<T, RefreshError>>,
    {
        for _ in 0..3 {
            if !self.is_connected() {
                return Err(RefreshError::Disconnected);
            }
            let epoch = self.current_epoch().await?;
            match attempt(epoch).await {
                Err(RefreshError::EpochMoved) => continue,
                other => return other,
            }
        }
        Err(RefreshError::EpochMoved)
    }

    /// Brings a license key's documents up to date from a fresh Postgres snapshot and returns
    /// the snapshot. Looking a key up by hash or a license by id that does not exist leaves a
    /// negative entry.
    pub async fn refresh_key(&self, pool: &PgPool, selector: KeySelector<'_>) -> Result<Option<KeySnapshot>, RefreshError> {
        self.with_epoch(|epoch| async move {
            let snapshot = {
                let mut conn = pool.acquire().await.map_err(StoreError::from)?;
                snapshots::key_snapshot(&mut conn, selector).await?
            };
            self.write(&epoch, &docs::for_key(&self.keys, snapshot.as_ref(), selector, negative_ttl())).await?;
            Ok(snapshot)
        })
        .await
    }

    /// Whether the read model already holds the key's current state: its marker is at the
    /// version Postgres has now. One index lookup and one GET, where a refresh takes a snapshot
    /// (an aggregation over the key's licenses and activations) and a compare-and-set.
    pub async fn key_is_current(&self, pool: &PgPool, selector: KeySelector<'_>) -> Result<bool, RefreshError> {
        let version = {
            let mut conn = pool.acquire().await.map_err(StoreError::from)?;
            snapshots::key_version(&mut conn, selector).await?
        };
        let Some((id, version)) = version else { return Ok(false) };
        self.reflects(&[Target::LicenseKey { id, version }]).await.map_err(|_| RefreshError::Disconnected)
    }

    /// Brings an API key's document up to date (a negative entry for an unknown hash).
    pub async fn refresh_api_key(&self, pool: &PgPool, selector: ApiKeySelector<'_>) -> Result<Option<ApiKeySnapshot>, RefreshError> {
        self.with_epoch(|epoch| async move {
            let snapshot = {
                let mut conn = pool.acquire().await.map_err(StoreError::from)?;
                snapshots::api_key_snapshot(&mut conn, selector).await?
            };
            self.write(&epoch, &docs::for_api_key(&self.keys, snapshot.as_ref(), selector, negative_ttl())).await?;
            Ok(snapshot)
        })
        .await
    }

    /// A cache fill after a miss: reads the snapshot and, best effort, stores it (a failed or
    /// refused write only means the next read misses again). Only a Postgres failure is an error.
    pub async fn fill_key(&self, pool: &PgPool, selector: KeySelector<'_>) -> Result<Option<KeySnapshot>, StoreError> {
        let epoch = self.fill_epoch().await;
        let snapshot = {
            let mut conn = pool.acquire().await?;
            snapshots::key_snapshot(&mut conn, selector).await?
        };
        if let Some(epoch) = epoch {
            self.best_effort(&epoch, &docs::for_key(&self.keys, snapshot.as_ref(), selector, negative_ttl())).await;
        }
        Ok(snapshot)
    }

    /// A cache fill for an API key (see [`ReadModel::fill_key`]).
    pub async fn fill_api_key(&self, pool: &PgPool, hash: &KeyHash) -> Result<Option<ApiKeySnapshot>, StoreError> {
        let epoch = self.fill_epoch().await;
        let snapshot = {
            let mut conn = pool.acquire().await?;
            snapshots::api_key_snapshot(&mut conn, ApiKeySelector::Hash(hash)).await?
        };
        if let Some(epoch) = epoch {
            let writes = docs::for_api_key(&self.keys, snapshot.as_ref(), ApiKeySelector::Hash(hash), negative_ttl());
            self.best_effort(&epoch, &writes).await;
        }
        Ok(snapshot)
    }

    async fn fill_epoch(&self) -> Option<Arc<str>> {
        if !self.is_connected() {
            return None;
        }
        self.current_epoch().await.map_err(|error| tracing::debug!(%error, "no epoch; not filling")).ok()
    }

    async fn best_effort(&self, epoch: &str, writes: &[Write]) {
        if let Err(error) = self.write(epoch, writes).await {
            tracing::debug!(%error, "cache fill not stored");
        }
    }

    /// Read-your-writes without a second trip to Postgres, step one: the epoch the documents
    /// will be written under, read before their snapshot as every write requires (cached after
    /// the first write). The writer then reads the snapshots of [`Staging::key_ids`] *inside*
    /// its transaction, after it drew their versions (with its effects, in one statement:
    /// `cls_store::effects::record`), and [`Staging::finish`] turns them into the writes that
    /// [`ReadModel::apply_staged`] makes once the transaction has committed. Those snapshots are
    /// the state at the drawn versions, because drawing them locked the key (or API-key) rows:
    /// no other change under them can commit before this transaction does, and every earlier
    /// one committed before the lock was granted. `None` when there is nothing to stage or Redis
    /// is not connected (the caller falls back to [`ReadModel::make_visible`], which then
    /// reports it).
    pub async fn staging(&self, targets: &[Target]) -> Result<Option<Staging>, RefreshError> {
        if targets.is_empty() || !self.is_connected() {
            return Ok(None);
        }
        let epoch = self.current_epoch().await?;
        Ok(Some(Staging { epoch, keys: self.keys.clone(), targets: targets.to_vec() }))
    }

    /// Writes what [`Staging::finish`] staged, after the writer's commit. An error (Redis down,
    /// or a wipe since the epoch was read) leaves the caller to [`ReadModel::make_visible`].
    pub async fn apply_staged(&self, staged: &Staged) -> Result<(), RefreshError> {
        if !self.is_connected() {
            return Err(RefreshError::Disconnected);
        }
        self.write(&staged.epoch, &staged.writes).await.map(|_| ())
    }

    /// Read-your-writes: brings every target's documents up to date. `Ok` means every read
    /// from now on reflects them.
    pub async fn make_visible(&self, pool: &PgPool, targets: &[Target]) -> Result<(), RefreshError> {
        for target in targets {
            match target {
                Target::LicenseKey { id, .. } => {
                    self.refresh_key(pool, KeySelector::Id(*id)).await?;
                }
                Target::ApiKey { id, .. } => {
                    self.refresh_api_key(pool, ApiKeySelector::Id(*id)).await?;
                }
            }
        }
        Ok(())
    }
}

/// A Redis client that reconnects forever, with command timeouts so an outage costs a bounded
/// wait, and that starts even while Redis is down (hot reads then fall back to Postgres).
pub async fn connect_redis(url: &str) -> anyhow::Result<fred::clients::Client> {
    let config = Config { fail_fast: false, ..Config::from_url(url)? };
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.unresponsive = UnresponsiveConfig { max_timeout: Some(Duration::from_secs(3)), interval: Duration::from_secs(1) };
        })
        .with_performance_config(|p| p.default_command_timeout = Duration::from_millis(500))
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()?;
    client.connect();
    let _ = tokio::time::timeout(Duration::from_secs(2), client.wait_for_connect()).await;
    Ok(client)
}
