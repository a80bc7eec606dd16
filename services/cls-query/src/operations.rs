//! `GET /v1/operations/{id}`: a command's status for the principal that sent it.
//!
//! Succeeded or failed comes from the worker's inbox (Postgres). "Pending" needs to know the
//! command was issued: the gateway registers every command it answered 202 for, and that
//! registration lives in Redis for 24 h. An id that is in neither place was never issued (404).
//!
//! Read-your-writes: a committed command reads `succeeded` only once every read reflects it
//! (its read-model targets). A worker that could not make it visible answered 202; polling here
//! brings the documents up to date (the projector does too), and until that works it is
//! `pending`. While Redis is unavailable, hot reads come from Postgres, so it is visible.

use cls_contracts::http::{Operation, OperationResponse, OperationStatus};
use cls_contracts::read_model::Target;
use cls_readmodel::ReadModel;
use cls_runtime::secret::SecretBox;
use cls_store::{PgPool, StoreError, inbox};
use fred::prelude::*;
use uuid::Uuid;

/// How long a pending registration is kept.
const PENDING_TTL_SECONDS: i64 = 24 * 3600;

fn pending_key(namespace: &str, id: Uuid) -> String {
    format!("{namespace}:op:{id}")
}

pub async fn register_pending(redis: &fred::clients::Client, namespace: &str, id: Uuid, principal: &str) -> Result<(), fred::error::Error> {
    redis
        .set::<(), _, _>(pending_key(namespace, id), principal, Some(fred::types::Expiration::EX(PENDING_TTL_SECONDS)), None, false)
        .await
}

/// The sender reads its operation. An end-user product calls without a header (principal
/// `license_key:` with no hash): for product commands the unguessable id is the credential.
fn may_read(sender: &str, caller: &str) -> bool {
    sender == caller || (caller == "license_key:" && sender.starts_with("license_key:"))
}

pub enum Lookup {
    Found(Operation),
    NotFound,
}

pub async fn find(
    pool: &PgPool,
    read_model: &ReadModel,
    secrets: &SecretBox,
    namespace: &str,
    id: Uuid,
    principal: &str,
) -> Result<Lookup, StoreError> {
    let redis = read_model.client();
    let stored = {
        let mut conn = pool.acquire().await?;
        inbox::find(&mut conn, id).await?
    };
    if let Some(stored) = stored {
        if !may_read(&stored.principal, principal) {
            return Ok(Lookup::NotFound);
        }
        let targets: Vec<Target> = stored.read_model_targets.iter().filter_map(|t| Target::decode(t)).collect();
        let status = if stored.succeeded() && !visible(pool, read_model, &targets).await {
            OperationStatus::Pending
        } else if stored.succeeded() {
            OperationStatus::Succeeded
        } else if stored.failed() {
            OperationStatus::Failed
        } else {
            OperationStatus::Pending
        };
        let response = match (status == OperationStatus::Succeeded, stored.response_status, stored.response_body) {
            (true, Some(status), Some(body)) => {
                let body = if stored.response_sealed { secrets.open(&body).unwrap_or_default() } else { body };
                let body = if body.is_empty() || status == 204 {
                    serde_json::Value::Null
                } else {
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)
                };
                Some(OperationResponse { status: status as u16, body })
            }
            _ => None,
        };
        return Ok(Lookup::Found(Operation { id: id.to_string(), status, response }));
    }
    // Not processed yet: pending if the gateway registered it for this principal.
    let registered: Option<String> = redis.get(pending_key(namespace, id)).await.unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot read pending operations from Redis");
        None
    });
    Ok(match registered {
        Some(p) if may_read(&p, principal) => {
            Lookup::Found(Operation { id: id.to_string(), status: OperationStatus::Pending, response: None })
        }
        _ => Lookup::NotFound,
    })
}

/// Whether every read reflects the command's changes, making them visible if they are not yet.
async fn visible(pool: &PgPool, read_model: &ReadModel, targets: &[Target]) -> bool {
    match read_model.reflects(targets).await {
        Ok(true) => true,
        Ok(false) => match read_model.make_visible(pool, targets).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "the operation's changes are not visible yet");
                false
            }
        },
        // Redis unavailable: hot reads are answered from Postgres, which has the change.
        Err(_) => true,
    }
}
