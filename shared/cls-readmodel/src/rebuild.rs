//! `cls read-model rebuild`: rewrites every document from Postgres while the cluster serves.
//!
//! Safe alongside live traffic because every write is the usual compare-and-set from a fresh
//! snapshot: a document the rebuild reads before a concurrent change is simply refused (or
//! replaced by the change's own write). With `wipe`, the namespace's read-model keys (the epoch
//! included) are deleted first: reads miss and fill from Postgres meanwhile (through the query
//! service's bounded gate), and any write computed before the wipe is refused.

use cls_store::PgPool;
use cls_store::read_model::{self as snapshots, ApiKeySelector, KeySelector};
use futures_util::StreamExt;
use futures_util::future::join_all;
use uuid::Uuid;

use crate::{ReadModel, RefreshError};

/// Ids fetched from Postgres per page.
const PAGE: i64 = 500;
/// Refreshes in flight at once.
const PARALLEL: usize = 16;

/// What a rebuild did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// Keys deleted first (with `wipe`).
    pub deleted: u64,
    pub license_keys: u64,
    pub api_keys: u64,
}

impl ReadModel {
    /// Deletes every key of this namespace's read model (`<ns>:rm:*`), the epoch included.
    pub async fn wipe(&self) -> Result<u64, RefreshError> {
        let pattern = format!("{}*", self.keys.prefix());
        let mut keys = self.redis.scan_buffered(pattern, Some(1000), None);
        let mut batch: Vec<fred::types::Key> = Vec::with_capacity(1000);
        let mut deleted = 0u64;
        while let Some(key) = keys.next().await {
            batch.push(key?);
            if batch.len() == 1000 {
                deleted += self.delete(std::mem::take(&mut batch)).await?;
            }
        }
        deleted += self.delete(batch).await?;
        self.forget_epoch();
        Ok(deleted)
    }

    async fn delete(&self, keys: Vec<fred::types::Key>) -> Result<u64, RefreshError> {
        if keys.is_empty() {
            return Ok(0);
        }
        use fred::prelude::KeysInterface;
        let n: i64 = self.redis.del(keys).await?;
        Ok(n as u64)
    }

    /// Rewrites every license key's and API key's documents; `progress` is called after each page.
    pub async fn rebuild(&self, pool: &PgPool, wipe: bool, mut progress: impl FnMut(&Rebuilt)) -> Result<Rebuilt, RefreshError> {
        if !self.is_connected() {
            return Err(RefreshError::Disconnected);
        }
        let mut done = Rebuilt::default();
        if wipe {
            done.deleted = self.wipe().await?;
        }
        let mut after: Option<Uuid> = None;
        loop {
            let ids = {
                let mut conn = pool.acquire().await.map_err(cls_store::StoreError::from)?;
                snapshots::key_ids(&mut conn, after, PAGE).await?
            };
            let Some(last) = ids.last().copied() else { break };
            for chunk in ids.chunks(PARALLEL) {
                let refreshes = chunk.iter().map(|id| self.refresh_key(pool, KeySelector::Id(*id)));
                for result in join_all(refreshes).await {
                    result?;
                }
            }
            done.license_keys += ids.len() as u64;
            after = Some(last);
            progress(&done);
        }
        let mut after: Option<Uuid> = None;
        loop {
            let ids = {
                let mut conn = pool.acquire().await.map_err(cls_store::StoreError::from)?;
                snapshots::api_key_ids(&mut conn, after, PAGE).await?
            };
            let Some(last) = ids.last().copied() else { break };
            for chunk in ids.chunks(PARALLEL) {
                let refreshes = chunk.iter().map(|id| self.refresh_api_key(pool, ApiKeySelector::Id(*id)));
                for result in join_all(refreshes).await {
                    result?;
                }
            }
            done.api_keys += ids.len() as u64;
            after = Some(last);
            progress(&done);
        }
        Ok(done)
    }
}
