//! Hot reads (SPEC §4): validation by key hash, a license by id and API-key resolution, answered
//! from the Redis read model in one round trip.
//!
//! A miss reads Postgres and refills the read model through its compare-and-set; with Redis
//! unavailable every hot read comes from Postgres. Either way Postgres is reached through one
//! bounded gate ([`Hot::gate`]), so a cold cache or an outage cannot stampede it: reads beyond
//! the limit wait up to [`GATE_WAIT`], then get 503. Unknown keys are cached as unknown (briefly),
//! so random keys do not reach Postgres twice.

use std::sync::Arc;
use std::time::Duration;

use cls_contracts::internal::ResolvedApiKey;
use cls_contracts::read_model::{ApiKeyDoc, KeyDoc, LicenseDoc};
use cls_domain::KeyHash;
use cls_readmodel::{ReadModel, docs};
use cls_store::read_model::{self as snapshots, KeySelector};
use cls_store::{PgPool, StoreError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use uuid::Uuid;

/// How long a hot read waits for the Postgres gate before answering 503.
pub const GATE_WAIT: Duration = Duration::from_secs(2);

/// Why a hot read has no answer.
#[derive(Debug, thiserror::Error)]
pub enum HotError {
    #[error("the database failed")]
    Store(#[from] StoreError),
    #[error("too many reads are waiting for the database")]
    Overloaded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DocLabel {
    doc: &'static str,
}

/// Counters of where hot reads were answered from.
#[derive(Clone, Default)]
pub struct HotMetrics {
    /// Answered by Redis.
    pub hits: Family<DocLabel, Counter>,
    /// Not in Redis: read from Postgres and refilled.
    pub misses: Family<DocLabel, Counter>,
    /// Redis unavailable: read from Postgres.
    pub fallbacks: Family<DocLabel, Counter>,
    /// Refused with 503 because the Postgres gate stayed full.
    pub shed: Family<DocLabel, Counter>,
}

impl HotMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("read_model_hits", "Hot reads answered by the Redis read model", self.hits.clone());
        registry.register("read_model_misses", "Hot reads not in Redis: read from PostgreSQL and refilled", self.misses.clone());
        registry.register("read_model_fallbacks", "Hot reads served by PostgreSQL because Redis was unavailable", self.fallbacks.clone());
        registry.register("read_model_shed", "Hot reads refused (503) because the PostgreSQL gate stayed full", self.shed.clone());
    }
}

pub struct Hot {
    pub read_model: Arc<ReadModel>,
    pool: PgPool,
    /// Bounds the hot reads that reach Postgres at once.
    gate: Semaphore,
    metrics: HotMetrics,
}

const KEY: DocLabel = DocLabel { doc: "license_key" };
const LICENSE: DocLabel = DocLabel { doc: "license" };
const API_KEY: DocLabel = DocLabel { doc: "api_key" };

impl Hot {
    pub fn new(read_model: Arc<ReadModel>, pool: PgPool, limit: u32, metrics: HotMetrics) -> Hot {
        Hot { read_model, pool, gate: Semaphore::new(limit as usize), metrics }
    }

    /// Runs a Postgres read inside the gate.
    async fn gated<T, Fut>(&self, label: DocLabel, read: Fut) -> Result<T, HotError>
    where
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let Ok(permit) = tokio::time::timeout(GATE_WAIT, self.gate.acquire()).await else {
            self.metrics.shed.get_or_create(&label).inc();
            return Err(HotError::Overloaded);
        };
        let result = read.await;
        drop(permit);
        Ok(result?)
    }

    /// The key with this hash, as validation sees it.
    pub async fn key(&self, hash: &KeyHash) -> Result<KeyDoc, HotError> {
        let from_snapshot = |s: Option<snapshots::KeySnapshot>| s.map(|s| docs::key_doc(&s)).unwrap_or(KeyDoc::Unknown);
        match self.read_model.key(hash).await {
            Ok(Some(doc)) => {
                self.metrics.hits.get_or_create(&KEY).inc();
                Ok(doc)
            }
            Ok(None) => {
                self.metrics.misses.get_or_create(&KEY).inc();
                let snapshot = self.gated(KEY, self.read_model.fill_key(&self.pool, KeySelector::Hash(hash))).await?;
                Ok(from_snapshot(snapshot))
            }
            Err(unavailable) => {
                tracing::debug!(%unavailable, "validation from PostgreSQL");
                self.metrics.fallbacks.get_or_create(&KEY).inc();
                let snapshot = self.gated(KEY, self.snapshot(KeySelector::Hash(hash))).await?;
                Ok(from_snapshot(snapshot))
            }
        }
    }

    /// The license with this id (any brand: the caller checks the brand).
    pub async fn license(&self, id: Uuid) -> Result<LicenseDoc, HotError> {
        let from_snapshot = |s: Option<snapshots::KeySnapshot>| s.and_then(|s| docs::license_of(&s, id)).unwrap_or(LicenseDoc::Unknown);
        match self.read_model.license(id).await {
            Ok(Some(doc)) => {
                self.metrics.hits.get_or_create(&LICENSE).inc();
                Ok(doc)
            }
            Ok(None) => {
                self.metrics.misses.get_or_create(&LICENSE).inc();
                let snapshot = self.gated(LICENSE, self.read_model.fill_key(&self.pool, KeySelector::License(id))).await?;
                Ok(from_snapshot(snapshot))
            }
            Err(unavailable) => {
                tracing::debug!(%unavailable, "license from PostgreSQL");
                self.metrics.fallbacks.get_or_create(&LICENSE).inc();
                let snapshot = self.gated(LICENSE, self.snapshot(KeySelector::License(id))).await?;
                Ok(from_snapshot(snapshot))
            }
        }
    }

    /// The live API key with this hash, or `None` (unknown or revoked).
    pub async fn api_key(&self, hash: &KeyHash) -> Result<Option<ResolvedApiKey>, HotError> {
        let live = |doc: ApiKeyDoc| match doc {
            ApiKeyDoc::Live(k) => Some(k),
            ApiKeyDoc::Revoked | ApiKeyDoc::Unknown => None,
        };
        let from_snapshot = |s: Option<snapshots::ApiKeySnapshot>| s.and_then(|s| live(docs::api_key_doc(&s)));
        match self.read_model.api_key(hash).await {
            Ok(Some(doc)) => {
                self.metrics.hits.get_or_create(&API_KEY).inc();
                Ok(live(doc))
            }
            Ok(None) => {
                self.metrics.misses.get_or_create(&API_KEY).inc();
                Ok(from_snapshot(self.gated(API_KEY, self.read_model.fill_api_key(&self.pool, hash)).await?))
            }
            Err(unavailable) => {
                tracing::debug!(%unavailable, "API key from PostgreSQL");
                self.metrics.fallbacks.get_or_create(&API_KEY).inc();
                let read = async {
                    let mut conn = self.pool.acquire().await?;
                    snapshots::api_key_snapshot(&mut conn, snapshots::ApiKeySelector::Hash(hash)).await
                };
                Ok(from_snapshot(self.gated(API_KEY, read).await?))
            }
        }
    }

    async fn snapshot(&self, selector: KeySelector<'_>) -> Result<Option<snapshots::KeySnapshot>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        snapshots::key_snapshot(&mut conn, selector).await
    }
}
