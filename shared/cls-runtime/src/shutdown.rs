//! Shutdown is an argument: every loop takes a [`CancellationToken`] and `select!`s on it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Set by `cls up` on its children to its own process id: a child whose parent is no longer that
/// process (`cls up` was killed without stopping it: SIGKILL, the OOM killer) shuts down as on
/// SIGTERM instead of running on as an orphan.
pub const SUPERVISOR_PID_VAR: &str = "CLS_SUPERVISOR_PID";

/// How often a supervised child checks that its supervisor is still its parent.
const SUPERVISOR_CHECK: Duration = Duration::from_secs(1);

/// A token cancelled on the first SIGINT or SIGTERM, or when the supervisor named by
/// [`SUPERVISOR_PID_VAR`] is gone.
pub fn on_signals() -> CancellationToken {
    let supervisor = std::env::var(SUPERVISOR_PID_VAR).ok().and_then(|v| v.parse::<u32>().ok());
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            pid = orphaned(supervisor) => tracing::warn!(supervisor = pid, "the supervisor (cls up) is gone: shutting down"),
        }
        cancel.cancel();
    });
    token
}

/// Returns once this process's parent is no longer `supervisor` (never without one). An orphan
/// is adopted by init or a subreaper, so its parent id changes.
async fn orphaned(supervisor: Option<u32>) -> u32 {
    let Some(pid) = supervisor else { return std::future::pending().await };
    let mut tick = tokio::time::interval(SUPERVISOR_CHECK);
    loop {
        tick.tick().await;
        if std::os::unix::process::parent_id() != pid {
            return pid;
        }
    }
}
