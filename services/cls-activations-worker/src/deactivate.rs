//! US5: the product frees its instance's seat. Already inactive → `deactivated: false` with no
//! change; an instance never activated on the license → 404 `ACTIVATION_NOT_FOUND`.

use cls_contracts::command::Deactivate;
use cls_contracts::{ProblemCode, http};
use cls_domain::InstanceId;
use cls_store::PgConnection;
use cls_store::activations::{self, DeactivatedBy};
use cls_worker::{CommandContext, HandleError, Handled, Touched};

use crate::seats;

#[tracing::instrument(skip_all, fields(product = %c.product))]
pub async fn deactivate(conn: &mut PgConnection, ctx: &CommandContext, c: &Deactivate) -> Result<Handled, HandleError> {
    let instance = InstanceId::parse(&c.instance_id).map_err(HandleError::malformed)?;
    let license = seats::locked_license(conn, &c.key_hash, &c.product).await?;
    let Some(activation) = activations::latest_for_instance(conn, license.id, instance.as_str()).await? else {
        return Err(HandleError::rejected(ProblemCode::ActivationNotFound, "The instance was never activated on this license."));
    };

    let freed = match activation.is_active() {
        true => activations::deactivate(conn, activation.id, DeactivatedBy::Product, ctx.now).await?,
        false => None,
    };
    let used = seats::seats_used(&license, activations::active_count(conn, license.id).await?);
    let mut handled = Handled {
        status: 200,
        body: serde_json::Value::Null,
        secret: false,
        events: Vec::new(),
        audit: Vec::new(),
        touched: vec![Touched::License(license.id)],
    };
    if let Some(freed) = &freed {
        let version = activations::bump_license_version(conn, license.id, 1, ctx.now).await?;
        handled.events.push(seats::changed(&license, freed, version, used, Some(DeactivatedBy::Product), ctx.now));
        handled.audit.push(seats::audit(&license, freed, Some(DeactivatedBy::Product)));
    }
    let body = http::Deactivated { deactivated: freed.is_some(), seats_remaining: seats::seats_remaining(&license, used) };
    handled.body = serde_json::to_value(body).expect("contract types serialize");
    Ok(handled)
}
