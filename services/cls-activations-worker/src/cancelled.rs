//! The reaction to `license.cancelled` (SPEC §4): release every seat of the cancelled license.
//!
//! Cancelling already makes the activations grant nothing (a cancelled license refuses
//! activation and reports 0 seats used); this makes the rows say so too. Each released
//! activation is one change of the license: one version each, one `activation.deactivated`
//! event each (with `deactivated_by: license_cancelled` and `seats_used: 0`), one audit entry
//! each by the system actor `activations`. The event consumer deduplicates by event id, and a
//! redelivery after the release finds nothing active anyway.

use cls_contracts::Event;
use cls_contracts::event::LicenseState;
use cls_domain::LicenseStatus;
use cls_store::PgConnection;
use cls_store::activations::{self, DeactivatedBy};
use cls_worker::{EventContext, HandleError, Reaction, Touched};
use uuid::Uuid;

use crate::seats;

/// The one `match` over the events of `<ns>.activations.license-events`.
pub fn dispatch<'a>(
    conn: &'a mut PgConnection,
    ctx: &'a EventContext,
) -> std::pin::Pin<Box<dyn Future<Output = Result<Reaction, HandleError>> + Send + 'a>> {
    Box::pin(async move {
        match &ctx.envelope.event {
            Event::LicenseCancelled(state) => release_seats(conn, ctx, state).await,
            // Not subscribed to; a binding added later for a type handled by a newer version.
            other => {
                tracing::warn!(event_type = other.event_type(), "ignoring an event this worker does not react to");
                Ok(Reaction::default())
            }
        }
    })
}

#[tracing::instrument(skip_all, fields(license_id = %state.license_id))]
async fn release_seats(conn: &mut PgConnection, ctx: &EventContext, state: &LicenseState) -> Result<Reaction, HandleError> {
    let license_id: Uuid = state.license_id.parse().map_err(HandleError::malformed)?;
    let license = seats::lock(conn, license_id).await?;
    if license.status != LicenseStatus::Cancelled.as_str() {
        // Cancelled is terminal, so this cannot be; refuse to release seats of a live license.
        return Err(HandleError::Fatal(anyhow::anyhow!("license.cancelled for a license whose status is {}", license.status)));
    }
    let released = activations::deactivate_all(conn, license.id, DeactivatedBy::LicenseCancelled, ctx.now).await?;
    let mut reaction = Reaction { touched: vec![Touched::License(license.id)], ..Reaction::default() };
    if released.is_empty() {
        return Ok(reaction);
    }
    let count = released.len() as i64;
    let last = activations::bump_license_version(conn, license.id, count, ctx.now).await?;
    for (a, version) in released.iter().zip(last - count + 1..) {
        reaction.events.push(seats::changed(&license, a, version, 0, Some(DeactivatedBy::LicenseCancelled), ctx.now));
        reaction.audit.push(seats::audit(&license, a, Some(DeactivatedBy::LicenseCancelled)));
    }
    tracing::info!(released = released.len(), "released the seats of a cancelled license");
    Ok(reaction)
}
