//! Connecting, creating the database and migrating.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgPool};

/// The migrations of `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Timeouts enforced by the server, so no future ever has to be cancelled mid-transaction
/// (a cancelled `begin()` can return a connection to the pool inside an open transaction).
const SERVER_TIMEOUTS: [(&str, &str); 3] = [
    ("statement_timeout", "15s"),
    ("idle_in_transaction_session_timeout", "30s"),
    ("lock_timeout", "10s"),
];

/// How the server plans a pool's prepared statements (every statement here is prepared once per
/// connection and cached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planning {
    /// The server's default: a custom plan per execution until a generic plan looks no worse.
    /// For pools that also run listings with optional filters, where the parameter values
    /// decide the best plan.
    Default,
    /// One generic plan per statement and connection. For pools whose statements are all
    /// lookups by key (the workers'): the server otherwise kept re-planning some of them on
    /// every execution (the read-model snapshot: ~0.5 ms of planning per call, more than its
    /// execution).
    Generic,
}

/// A pool of at most `size` connections for `app` (shown in `pg_stat_activity`).
pub async fn connect(url: &str, size: u32, app: &str, planning: Planning) -> anyhow::Result<PgPool> {
    let mut options = PgConnectOptions::from_str(url)
        .context("CLS_DATABASE_URL is not a valid Postgres URL")?
        .application_name(app)
        .options(SERVER_TIMEOUTS);
    if planning == Planning::Generic {
        options = options.options([("plan_cache_mode", "force_generic_plan")]);
    }
    Ok(PgPoolOptions::new()
        .max_connections(size)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// A pool that is connected before it is returned, failing fast if the database is down.
pub async fn connect_now(url: &str, size: u32, app: &str, planning: Planning) -> anyhow::Result<PgPool> {
    let pool = connect(url, size, app, planning).await?;
    pool.acquire().await.context("cannot connect to Postgres")?;
    Ok(pool)
}

/// Creates the database named in `url` if it does not exist (connecting to `postgres` first).
pub async fn create_database_if_missing(url: &str) -> anyhow::Result<()> {
    let options = PgConnectOptions::from_str(url).context("CLS_DATABASE_URL is not a valid Postgres URL")?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = options.database("postgres").connect().await.context("cannot connect to Postgres")?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await {
            // Another process may have created it at the same moment.
            let raced = matches!(&e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P04") || db.is_unique_violation());
            if !raced {
                return Err(e).context(format!("cannot create database {name}"));
            }
        }
    }
    admin.close().await?;
    Ok(())
}

/// Drops the database named in `url` (tests clean up after themselves).
pub async fn drop_database(url: &str) -> anyhow::Result<()> {
    let options = PgConnectOptions::from_str(url)?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = options.database("postgres").connect().await?;
    let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", name.replace('"', "\"\""));
    sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await?;
    admin.close().await?;
    Ok(())
}

/// Applies pending migrations. Safe with several processes at once (the migrator takes an
/// advisory lock).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("migrations failed")
}

/// `SELECT 1`, for `/health/db`.
pub async fn ping(pool: &PgPool) -> Result<(), String> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ()).map_err(|e| match e {
        sqlx::Error::PoolTimedOut => "no connection available within the acquire timeout".to_owned(),
        _ => "Postgres does not answer".to_owned(),
    })
}
