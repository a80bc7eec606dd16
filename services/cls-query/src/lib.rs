//! The query service (SPEC §4): serves every read on an internal address, for the gateway only
//! (it requires the internal credential and trusts the principal the gateway resolved).
//!
//! Listings, lookups and operations read Postgres; hot reads (API-key resolution now; validation
//! and licenses by id later) go through [`hot`], the seam where the Redis read model plugs in.
//! Pending operations (answered 202 by the gateway) are remembered in Redis.

mod hot;
mod operations;
mod routes;
mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cls_runtime::ops::{Ops, probe};
use cls_runtime::secret::SecretBox;
use cls_runtime::{CancellationToken, ServiceKind, Settings};
use cls_store::PgPool;
use fred::prelude::*;
use fred::types::config::UnresponsiveConfig;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Shared state of the request handlers.
pub(crate) struct State {
    pub settings: Settings,
    pub pool: PgPool,
    pub redis: fred::clients::Client,
    pub secrets: SecretBox,
}

/// A built query service: `build` connects and binds, `run_until_stopped` serves.
pub struct App {
    state: Arc<State>,
    listener: TcpListener,
    ops_listener: TcpListener,
}

impl App {
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let pool = cls_store::pool::connect_now(&settings.database_url, settings.db_pool_size, ServiceKind::Query.name()).await?;
        let redis = connect_redis(&settings.redis_url).await?;
        let listener = cls_runtime::http::bind(settings.query_addr).await?;
        let ops_listener = cls_runtime::http::bind(settings.ops_addr).await?;
        let secrets = SecretBox::new(&settings.secret_key);
        Ok(App { state: Arc::new(State { settings, pool, redis, secrets }), listener, ops_listener })
    }

    /// The internal address actually bound (port 0 in tests).
    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_listener.local_addr().expect("bound listener has an address")
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let pool = self.state.pool.clone();
        let redis = self.state.redis.clone();
        let ops = Ops::new(Arc::new(Registry::with_prefix("cls")))
            .check("db", probe(move || {
                let pool = pool.clone();
                async move { cls_store::pool::ping(&pool).await }
            }))
            .check("cache", probe(move || {
                let redis = redis.clone();
                async move { redis_ping(&redis).await }
            }));
        tracing::info!(addr = %self.addr(), ops = %self.ops_addr(), "query service started");
        let ops_task = tokio::spawn(ops.serve(self.ops_listener, shutdown.clone()));
        let state = self.state.clone();
        cls_runtime::http::serve(
            self.listener,
            move |req, _| routes::handle(state.clone(), req),
            shutdown.clone(),
            self.state.settings.shutdown_timeout,
        )
        .await;
        let _ = ops_task.await;
        let _ = self.state.redis.quit().await;
        self.state.pool.close().await;
        tracing::info!("query service stopped");
        Ok(())
    }
}

/// A Redis client that reconnects forever, with command timeouts so an outage costs a bounded
/// wait, and that starts even while Redis is down.
pub async fn connect_redis(url: &str) -> anyhow::Result<fred::clients::Client> {
    let config = Config { fail_fast: false, ..Config::from_url(url)? };
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.unresponsive = UnresponsiveConfig { max_timeout: Some(Duration::from_secs(3)), interval: Duration::from_secs(1) };
        })
        .with_performance_config(|p| p.default_command_timeout = Duration::from_millis(500))
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()?;
    // Start connecting; if Redis is down the client keeps trying in the background and the
    // service still starts (hot reads then fall back to Postgres).
    client.connect();
    let _ = tokio::time::timeout(Duration::from_secs(2), client.wait_for_connect()).await;
    Ok(client)
}

async fn redis_ping(redis: &fred::clients::Client) -> Result<(), String> {
    redis.ping::<String>(None).await.map(|_| ()).map_err(|_| "Redis does not answer".to_owned())
}
