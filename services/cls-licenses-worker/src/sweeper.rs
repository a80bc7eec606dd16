//! The expiry sweeper (SPEC §6): persists `expired` for valid licenses past their expiry and
//! emits `license.expired` once per license, even with N licenses-worker replicas: each sweep
//! runs in one transaction holding a transaction-scoped advisory lock (another replica's sweep
//! skips while it is held), and rows are claimed with `FOR UPDATE SKIP LOCKED`. Reads already
//! treat such licenses as expired before the sweep (effective status); the sweep makes the
//! stored status and the event stream catch up.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use cls_contracts::event::{self, Event};
use cls_contracts::format_time;
use cls_contracts::read_model::Target;
use cls_readmodel::ReadModel;
use cls_store::{PgPool, licenses};
use cls_worker::{Audit, Cause, HandleError, NewEvent, append_effects};
use tokio_util::sync::CancellationToken;

/// Licenses expired per sweep transaction; a larger backlog continues in the next one at once.
const BATCH: i64 = 500;
/// The audit actor of the sweeper's changes.
pub const ACTOR: &str = "expiry-sweeper";

pub async fn run(pool: PgPool, read_model: Arc<ReadModel>, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        loop {
            match sweep_once(&pool, Some(&read_model)).await {
                Ok(n) if n == BATCH as usize => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(?error, "expiry sweep failed; retrying at the next tick");
                    break;
                }
            }
        }
    }
}

/// One sweep: returns how many licenses it expired (0 if another replica is sweeping). With a
/// read model, the expired licenses' documents are brought up to date after the commit (reads
/// already show them expired by date; this keeps the stored status in step).
pub async fn sweep_once(pool: &PgPool, read_model: Option<&ReadModel>) -> Result<usize, HandleError> {
    let now = Utc::now();
    let mut tx = pool.begin().await?;
    if !licenses::try_sweep_lock(&mut tx).await? {
        tx.rollback().await?;
        return Ok(0);
    }
    let expired = licenses::expire_due(&mut tx, now, BATCH).await?;
    let mut events = Vec::with_capacity(expired.len());
    let mut audit = Vec::with_capacity(expired.len());
    for v in &expired {
        let state = event::LicenseState {
            license_id: v.id.to_string(),
            license_key_id: v.license_key_id.to_string(),
            brand_id: v.brand_id.to_string(),
            product: v.product.clone(),
            status: "expired".to_owned(),
            expires_at: v.expires_at.map(format_time),
            seat_limit: v.seat_limit.map(|n| n as u32),
            reason: None,
            previous_status: "valid".to_owned(),
        };
        events.push(NewEvent { brand_id: Some(v.brand_id), aggregate_id: v.id, aggregate_version: v.version, event: Event::LicenseExpired(state) });
        audit.push(Audit {
            brand_id: Some(v.brand_id),
            action: "license.expired",
            target_type: "license",
            target_id: v.id,
            status_before: Some("valid".to_owned()),
            status_after: Some("expired".to_owned()),
            reason: None,
        });
    }
    let cause = Cause { actor_kind: "system", actor_id: Some(ACTOR.to_owned()), correlation_id: None, command_id: None, causation_id: None, now };
    append_effects(&mut tx, &cause, events, audit).await?;
    let ids: Vec<_> = expired.iter().map(|v| v.id).collect();
    let targets: Vec<Target> = cls_store::read_model::bump_keys_of_licenses(&mut tx, &ids)
        .await?
        .into_iter()
        .map(|(id, version)| Target::LicenseKey { id, version })
        .collect();
    tx.commit().await?;
    if let Some(read_model) = read_model {
        cls_worker::visibility::make_visible(read_model, pool, &targets).await;
    }
    if !expired.is_empty() {
        tracing::info!(count = expired.len(), "licenses expired");
    }
    Ok(expired.len())
}
