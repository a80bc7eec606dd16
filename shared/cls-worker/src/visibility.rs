//! Read-your-writes (SPEC §4): a change draws new read-model versions for what it touched inside
//! its transaction; after the commit the worker brings those documents up to date before it
//! answers 2xx, and answers 202 if it cannot (the operation reads `succeeded` once they are).

use std::collections::BTreeMap;

use cls_contracts::read_model::Target;
use cls_readmodel::ReadModel;
use cls_store::PgPool;
use cls_store::read_model as versions;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::command::{HandleError, Touched};

/// Draws a new version for every touched entity (one per license key, whatever touched it) and
/// returns the targets to make visible. Key rows are locked here, at the end of the transaction,
/// after the license rows a use case locks first (or by the use case's last statement, after
/// its license lock: [`Touched::DrawnKey`]).
pub async fn draw_versions(tx: &mut PgConnection, touched: &[Touched]) -> Result<Vec<Target>, HandleError> {
    let mut keys: BTreeMap<Uuid, i64> = BTreeMap::new();
    let mut api_keys: BTreeMap<Uuid, i64> = BTreeMap::new();
    let mut license_keys: Vec<Uuid> = Vec::new();
    // A key drawn twice keeps its higher version (the later draw).
    let drawn = |keys: &mut BTreeMap<Uuid, i64>, id: Uuid, version: i64| {
        keys.entry(id).and_modify(|v| *v = (*v).max(version)).or_insert(version);
    };
    for t in touched {
        match *t {
            Touched::LicenseKey(id) => license_keys.push(id),
            Touched::DrawnKey { id, version } => drawn(&mut keys, id, version),
            Touched::License(id) => {
                let (key, version) = versions::bump_key_of_license(tx, id).await?;
                drawn(&mut keys, key, version);
            }
            Touched::ApiKey(id) => {
                api_keys.insert(id, versions::api_key_version(tx, id).await?);
            }
        }
    }
    license_keys.sort();
    license_keys.dedup();
    for id in license_keys {
        let version = versions::bump_key(tx, id).await?;
        drawn(&mut keys, id, version);
    }
    Ok(keys
        .into_iter()
        .map(|(id, version)| Target::LicenseKey { id, version })
        .chain(api_keys.into_iter().map(|(id, version)| Target::ApiKey { id, version }))
        .collect())
}

/// Makes the targets visible to every read; false (logged) if the read model cannot take them now.
pub async fn make_visible(read_model: &ReadModel, pool: &PgPool, targets: &[Target]) -> bool {
    if targets.is_empty() {
        return true;
    }
    match read_model.make_visible(pool, targets).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(error = format!("{error:#}"), "cannot update the read model; the change shows once the projector applies it");
            false
        }
    }
}
