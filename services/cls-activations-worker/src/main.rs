//! `cls-activations-worker`: consumes `<ns>.activations.commands`.

use cls_runtime::{ServiceKind, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env(ServiceKind::ActivationsWorker)?;
    cls_runtime::telemetry::init(settings.log_format);
    let shutdown = cls_runtime::shutdown::on_signals();
    let worker = cls_activations_worker::build(settings).await?;
    cls_activations_worker::run(worker, shutdown).await
}
