//! The licenses module's worker: license keys and licenses. [`dispatch`] is the one `match`
//! over the module's commands; each command is one function.

mod provision;

use cls_contracts::command::{Command, LicensesCommand};
use cls_runtime::{CancellationToken, ServiceKind, Settings};
use cls_store::PgConnection;
use cls_worker::{CommandContext, HandleError, Handled, Worker};

/// Builds the licenses worker (connects, declares the topology, binds the ops listener).
pub async fn build(settings: Settings) -> anyhow::Result<Worker> {
    Worker::build(settings, ServiceKind::LicensesWorker, cls_contracts::Module::Licenses, dispatch).await
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
        let Command::Licenses(command) = &ctx.command else {
            return Err(HandleError::malformed("not a licenses command"));
        };
        match command {
            LicensesCommand::Provision(c) => provision::provision(conn, ctx, c).await,
        }
    })
}
