//! The licenses module's worker: license keys and licenses. [`dispatch`] is the one `match`
//! over the module's commands; each command is one function.

mod lifecycle;
mod provision;
pub mod sweeper;

use cls_contracts::command::{Command, LicensesCommand};
use cls_runtime::{CancellationToken, ServiceKind, Settings};
use cls_store::PgConnection;
use cls_worker::{CommandContext, HandleError, Handled, Worker};

/// A built licenses worker: the shared command worker plus the expiry sweeper.
pub struct LicensesWorker {
    worker: Worker,
    sweeper_pool: cls_store::PgPool,
    sweep_interval: std::time::Duration,
}

impl LicensesWorker {
    pub fn ops_addr(&self) -> std::net::SocketAddr {
        self.worker.ops_addr()
    }
}

/// Builds the licenses worker (connects, declares the topology, binds the ops listener).
pub async fn build(settings: Settings) -> anyhow::Result<LicensesWorker> {
    // The sweeper has its own small pool, so a long sweep never starves command handling.
    let sweeper_pool = cls_store::pool::connect(&settings.database_url, 2, "expiry-sweeper", cls_store::pool::Planning::Generic).await?;
    let sweep_interval = settings.sweep_interval;
    let worker = Worker::build(settings, ServiceKind::LicensesWorker, cls_contracts::Module::Licenses, dispatch).await?;
    Ok(LicensesWorker { worker, sweeper_pool, sweep_interval })
}

/// Runs a built worker and its sweeper until `shutdown`.
pub async fn run(w: LicensesWorker, shutdown: CancellationToken) -> anyhow::Result<()> {
    let sweeper = tokio::spawn(sweeper::run(w.sweeper_pool.clone(), w.worker.read_model(), w.sweep_interval, shutdown.clone()));
    let result = w.worker.run_until_stopped(shutdown).await;
    let _ = sweeper.await;
    w.sweeper_pool.close().await;
    result
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
            LicensesCommand::Renew(c) => lifecycle::renew(conn, ctx, c).await,
            LicensesCommand::Suspend(c) => lifecycle::suspend(conn, ctx, c).await,
            LicensesCommand::Resume(c) => lifecycle::resume(conn, ctx, c).await,
            LicensesCommand::Cancel(c) => lifecycle::cancel(conn, ctx, c).await,
            LicensesCommand::ChangeSeats(c) => lifecycle::change_seats(conn, ctx, c).await,
            LicensesCommand::RotateKey(c) => lifecycle::rotate_key(conn, ctx, c).await,
            LicensesCommand::TransferKey(c) => lifecycle::transfer_key(conn, ctx, c).await,
        }
    })
}
