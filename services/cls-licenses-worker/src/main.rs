//! `cls-licenses-worker`: consumes `<ns>.licenses.commands`.

use cls_runtime::{ServiceKind, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env(ServiceKind::LicensesWorker)?;
    cls_runtime::telemetry::init(settings.log_format);
    let shutdown = cls_runtime::shutdown::on_signals();
    let worker = cls_licenses_worker::build(settings).await?;
    cls_licenses_worker::run(worker, shutdown).await
}
