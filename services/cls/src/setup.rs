//! Preparing the backing services: the database and its schema, and the AMQP topology.
//! Both steps are idempotent, so `cls up` runs them on every start.

use std::time::Duration;

use anyhow::Context;
use cls_bus::Topology;

/// Bound on opening the AMQP connection, so a broker that accepts TCP but never answers does
/// not hang the command.
const AMQP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates the database named in `database_url` if it is missing, then applies pending
/// migrations (safe alongside other processes: the migrator takes an advisory lock).
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    cls_store::pool::create_database_if_missing(database_url).await?;
    let pool = cls_store::pool::connect_now(database_url, 2, "cls-migrate", cls_store::pool::Planning::Default).await?;
    let migrated = cls_store::pool::migrate(&pool).await;
    pool.close().await;
    migrated?;
    tracing::info!("database migrated");
    Ok(())
}

/// A connection for one command, without `cls_bus::connect`'s automatic recovery: with recovery
/// on, a refused connection is retried forever instead of failing.
pub async fn one_shot_connection(amqp_url: &str, name: &str) -> anyhow::Result<lapin::Connection> {
    let properties = lapin::ConnectionProperties::default().with_connection_name(name.to_owned().into());
    tokio::time::timeout(AMQP_CONNECT_TIMEOUT, lapin::Connection::connect(amqp_url, properties))
        .await
        .map_err(|_| anyhow::anyhow!("cannot connect to RabbitMQ: no answer within {}s", AMQP_CONNECT_TIMEOUT.as_secs()))?
        .map_err(|e| anyhow::anyhow!("cannot connect to RabbitMQ: {e}"))
}

/// Declares every exchange and queue of `namespace` (SPEC §5).
pub async fn declare_topology(amqp_url: &str, namespace: &str) -> anyhow::Result<()> {
    let conn = one_shot_connection(amqp_url, "cls-topology").await?;
    let declared = async {
        let channel = conn.create_channel().await.context("cannot open an AMQP channel")?;
        let declared = Topology::new(namespace).declare(&channel).await.context("cannot declare the AMQP topology");
        // Close the channel before the connection, or lapin logs the closing channel as an error.
        let _ = channel.close(200, "done".into()).await;
        declared
    }
    .await;
    let _ = conn.close(200, "done".into()).await;
    declared?;
    tracing::info!(namespace, "AMQP topology declared");
    Ok(())
}

/// Rewrites the read model of `namespace` from Postgres, reporting progress on stderr and a
/// summary on stdout.
pub async fn rebuild_read_model(database_url: &str, redis_url: &str, namespace: &str, wipe: bool) -> anyhow::Result<()> {
    let pool = cls_store::pool::connect_now(database_url, 17, "cls-read-model", cls_store::pool::Planning::Default).await?;
    let read_model = cls_readmodel::ReadModel::connect(redis_url, namespace).await?;
    if !read_model.is_connected() {
        anyhow::bail!("cannot connect to Redis at CLS_REDIS_URL");
    }
    let started = std::time::Instant::now();
    let rebuilt = read_model
        .rebuild(&pool, wipe, |done| eprintln!("rebuilding: {} license keys, {} API keys", done.license_keys, done.api_keys))
        .await;
    read_model.quit().await;
    pool.close().await;
    let rebuilt = rebuilt.context("the rebuild stopped")?;
    if wipe {
        println!("deleted {} read-model keys of namespace {namespace}", rebuilt.deleted);
    }
    println!(
        "rebuilt the read model of namespace {namespace}: {} license keys, {} API keys in {:.1}s",
        rebuilt.license_keys,
        rebuilt.api_keys,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

