//! `cls-brands-worker`: consumes `<ns>.brands.commands`.

use cls_runtime::{ServiceKind, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env(ServiceKind::BrandsWorker)?;
    cls_runtime::telemetry::init(settings.log_format);
    let shutdown = cls_runtime::shutdown::on_signals();
    let worker = cls_brands_worker::build(settings).await?;
    cls_brands_worker::run(worker, shutdown).await
}
