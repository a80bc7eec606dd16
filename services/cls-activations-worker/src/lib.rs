//! The activations module's worker: seats (SPEC §2 "Seats"). [`dispatch`] is the one `match`
//! over the module's commands, a function per command:
//!
//! - [`activate`]: US3, take (or confirm) a seat for an instance;
//! - [`deactivate`]: US5, the product frees its instance's seat;
//! - [`release`]: the brand frees a seat by activation id (`DELETE /v1/activations/{id}`).
//!
//! It also reacts to `license.cancelled` from its own subscriber queue ([`cancelled`]):
//! the cancelled license's seats are released.
//!
//! Every use case locks the license row before it reads or changes its activations, and every
//! change bumps the license's `version` in the same transaction (see `cls_store::activations`).
//! Audit entries of seat changes target the license, so they appear in its history.

mod activate;
mod cancelled;
mod deactivate;
mod release;
mod seats;

use cls_contracts::command::{ActivationsCommand, Command};
use cls_runtime::{CancellationToken, ServiceKind, Settings};
use cls_store::PgConnection;
use cls_worker::{CommandContext, HandleError, Handled, Worker};

/// Builds the activations worker (connects, declares the topology, binds the ops listener); it
/// also consumes `<ns>.activations.license-events`.
pub async fn build(settings: Settings) -> anyhow::Result<Worker> {
    let worker = Worker::build(settings, ServiceKind::ActivationsWorker, cls_contracts::Module::Activations, dispatch).await?;
    let queue = worker.topology().license_events_queue();
    Ok(worker.with_events(queue, cancelled::dispatch))
}

/// Runs a built worker until `shutdown`.
pub async fn run(worker: Worker, shutdown: CancellationToken) -> anyhow::Result<()> {
    worker.run_until_stopped(shutdown).await
}

fn dispatch<'a>(
    conn: &'a mut PgConnection,
    ctx: &'a CommandContext,
) -> std::pin::Pin<Box<dyn Future<Output = Result<Handled, HandleError>> + Send + 'a>> {
    Box::pin(async move {
        let Command::Activations(command) = &ctx.command else {
            return Err(HandleError::malformed("not an activations command"));
        };
        match command {
            ActivationsCommand::Activate(c) => activate::activate(conn, ctx, c).await,
            ActivationsCommand::Deactivate(c) => deactivate::deactivate(conn, ctx, c).await,
            ActivationsCommand::Release(c) => release::release(conn, ctx, c).await,
        }
    })
}
