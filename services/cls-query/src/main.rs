//! `cls-query`: the query service on its internal address.

use cls_runtime::{ServiceKind, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env(ServiceKind::Query)?;
    cls_runtime::telemetry::init(settings.log_format);
    let shutdown = cls_runtime::shutdown::on_signals();
    let app = cls_query::App::build(settings).await?;
    app.run_until_stopped(shutdown).await
}
