//! A brand frees a seat by activation id (`DELETE /v1/activations/{id}`): 204, again 204. An
//! activation of another brand's license answers exactly like a missing one (404).

use cls_contracts::ProblemCode;
use cls_contracts::command::Release;
use cls_store::PgConnection;
use cls_store::activations::{self, DeactivatedBy};
use cls_worker::{CommandContext, HandleError, Handled, Touched};
use uuid::Uuid;

use crate::seats;

#[tracing::instrument(skip_all, fields(activation_id = %c.activation_id))]
pub async fn release(conn: &mut PgConnection, ctx: &CommandContext, c: &Release) -> Result<Handled, HandleError> {
    let brand_id = ctx
        .brand_id()
        .filter(|b| b.to_string() == c.brand_id)
        .ok_or_else(|| HandleError::malformed("the release's brand is not the caller's brand"))?;
    let activation_id: Uuid = c.activation_id.parse().map_err(HandleError::malformed)?;
    let Some(found) = activations::find_for_brand(conn, brand_id, activation_id).await? else {
        return Err(HandleError::rejected(ProblemCode::ActivationNotFound, "No such activation."));
    };

    // License first, then the activation: the lock order of every seat change.
    let license = seats::lock(conn, found.license_id).await?;
    let mut handled = Handled {
        status: 204,
        body: serde_json::Value::Null,
        secret: false,
        events: Vec::new(),
        audit: Vec::new(),
        touched: vec![Touched::License(license.id)],
    };
    if let Some(freed) = activations::deactivate(conn, activation_id, DeactivatedBy::Brand, ctx.now).await? {
        let used = seats::seats_used(&license, activations::active_count(conn, license.id).await?);
        let version = activations::bump_license_version(conn, license.id, 1, ctx.now).await?;
        handled.events.push(seats::changed(&license, &freed, version, used, Some(DeactivatedBy::Brand), ctx.now));
        handled.audit.push(seats::audit(&license, &freed, Some(DeactivatedBy::Brand)));
    }
    Ok(handled)
}
