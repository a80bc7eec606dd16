//! The query service (SPEC §4): serves every read on an internal address, for the gateway only
//! (it requires the internal credential and trusts the principal the gateway resolved).
//!
//! Hot reads (validation, a license by id, API-key resolution) come from the Redis read model
//! ([`hot`]), kept current by the [`projector`] and by the workers' read-your-writes; listings,
//! lookups, history and operations read Postgres. Pending operations (answered 202 by the
//! gateway) are remembered in Redis.

mod hot;
mod operations;
mod projector;
mod routes;
mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context;
use cls_bus::Topology;
use cls_readmodel::ReadModel;
use cls_runtime::ops::{Ops, probe};
use cls_runtime::metrics::HttpMetrics;
use cls_runtime::secret::{SecretBox, SecretDigest};
use cls_runtime::{CancellationToken, ServiceKind, Settings};
use cls_store::PgPool;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use cls_readmodel::connect_redis;

/// Shared state of the request handlers.
pub(crate) struct State {
    pub settings: Settings,
    pub pool: PgPool,
    pub read_model: Arc<ReadModel>,
    pub hot: hot::Hot,
    pub secrets: SecretBox,
    pub http: HttpMetrics,
    /// The internal credential's digest, checked on every request.
    pub internal_token: SecretDigest,
}

/// A built query service: `build` connects and binds, `run_until_stopped` serves.
pub struct App {
    state: Arc<State>,
    listener: TcpListener,
    /// `CLS_QUERY_SOCKET`: the same routes on a Unix socket, for a gateway on this host.
    socket: Option<cls_runtime::http::UnixSocket>,
    ops_listener: TcpListener,
    amqp: Arc<cls_bus::Link>,
    topology: Topology,
    registry: Registry,
    projected: Family<Vec<(String, String)>, Counter>,
    projector_lag: Gauge<f64, AtomicU64>,
    projector_dlq: Family<Vec<(String, String)>, Gauge>,
}

impl App {
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let pool = cls_store::pool::connect_now(&settings.database_url, settings.db_pool_size, ServiceKind::Query.name(), cls_store::pool::Planning::Default).await?;
        let read_model = Arc::new(ReadModel::connect(&settings.redis_url, &settings.namespace).await?);
        // The projector's queue is declared here, with its consumer (see cls_bus::topology).
        let amqp = Arc::new(cls_bus::Link::open(&settings.amqp_url, ServiceKind::Query.name()).await?);
        let topology = Topology::new(settings.namespace.clone());
        let channel = amqp.create_channel().await?;
        topology.declare(&channel).await?;
        topology.declare_projector_queue(&channel).await?;
        let _ = channel.close(200, "declared".into()).await;
        let listener = cls_runtime::http::bind(settings.query_addr).await?;
        let socket = settings.query_socket.as_deref().map(cls_runtime::http::UnixSocket::bind).transpose()?;
        let ops_listener = cls_runtime::http::bind(settings.ops_addr).await?;
        let secrets = SecretBox::for_settings(&settings)?;

        let mut registry = Registry::with_prefix("cls");
        let metrics = hot::HotMetrics::default();
        metrics.register(&mut registry);
        let projected = Family::<Vec<(String, String)>, Counter>::default();
        registry.register("projector_events", "Events the projector handled, by event type and outcome", projected.clone());
        let projector_lag = Gauge::<f64, AtomicU64>::default();
        registry.register("projector_lag_seconds", "From the last projected event's occurrence to its projection", projector_lag.clone());
        let projector_dlq = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register("dlq_depth", "Messages waiting in the projector's dead-letter queue", projector_dlq.clone());
        let http = HttpMetrics::default();
        http.register(&mut registry);
        let hot = hot::Hot::new(read_model.clone(), pool.clone(), settings.read_fallback_limit, metrics);
        let internal_token = settings.internal_token.as_ref().context("CLS_INTERNAL_TOKEN is not set")?;
        let internal_token = SecretDigest::of(internal_token.expose().as_bytes());
        let state = Arc::new(State { settings, pool, read_model, hot, secrets, http, internal_token });
        Ok(App { state, listener, socket, ops_listener, amqp, topology, registry, projected, projector_lag, projector_dlq })
    }

    /// The internal address actually bound (port 0 in tests).
    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_listener.local_addr().expect("bound listener has an address")
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let socket = self.socket.as_ref().map(|s| s.path().display().to_string());
        tracing::info!(addr = %self.addr(), socket, ops = %self.ops_addr(), "query service started");
        let consuming = Arc::new(AtomicBool::new(false));
        let projector = Arc::new(projector::Projector {
            queue: self.topology.projector_queue(),
            pool: self.state.pool.clone(),
            read_model: self.state.read_model.clone(),
            consuming: consuming.clone(),
            outcomes: self.projected.clone(),
            lag: self.projector_lag.clone(),
        });
        let pool = self.state.pool.clone();
        let read_model = self.state.read_model.clone();
        let amqp = self.amqp.clone();
        let ops = Ops::new(Arc::new(self.registry))
            .check("db", probe(move || {
                let pool = pool.clone();
                async move { cls_store::pool::ping(&pool).await }
            }))
            // Without Redis the service still answers (hot reads from PostgreSQL, bounded), so
            // /ready does not require it; /health/cache says what is going on.
            .check_degradable("cache", probe(move || {
                let read_model = read_model.clone();
                async move {
                    read_model.ping().await.map_err(|reason| format!("{reason}; hot reads are served from PostgreSQL (bounded)"))
                }
            }))
            .check("broker", probe(move || {
                let amqp = amqp.clone();
                async move { amqp.health().await }
            }))
            .ready_when(probe(move || {
                let ready = if consuming.load(Ordering::Relaxed) { Ok(()) } else { Err("the projector is not consuming yet".to_owned()) };
                async move { ready }
            }));
        let drain = self.state.settings.shutdown_timeout;
        let ops_task = tokio::spawn(ops.serve(self.ops_listener, shutdown.clone()));
        let projector_task = tokio::spawn(projector.run(self.amqp.clone(), shutdown.clone(), drain));
        let dlq_task = tokio::spawn(sample_dlq_depth(
            self.amqp.clone(),
            cls_bus::topology::dead_letter_queue_of(&self.topology.projector_queue()),
            self.projector_dlq.clone(),
            shutdown.clone(),
        ));
        let socket_task = self.socket.map(|socket| {
            let state = self.state.clone();
            let serve = cls_runtime::http::serve(socket, move |req, ()| routes::handle(state.clone(), req), shutdown.clone(), drain);
            tokio::spawn(serve)
        });
        let state = self.state.clone();
        cls_runtime::http::serve(self.listener, move |req, _| routes::handle(state.clone(), req), shutdown.clone(), drain).await;
        if let Some(task) = socket_task {
            let _ = task.await;
        }
        let _ = projector_task.await;
        let _ = dlq_task.await;
        let _ = ops_task.await;
        self.amqp.close().await;
        self.state.read_model.quit().await;
        self.state.pool.close().await;
        tracing::info!("query service stopped");
        Ok(())
    }
}

/// Samples the depth of the projector's dead-letter queue every 5 s for `cls_dlq_depth` (the
/// workers sample the queues they feed the same way; a scrape never waits on the broker).
async fn sample_dlq_depth(amqp: Arc<cls_bus::Link>, queue: String, gauge: Family<Vec<(String, String)>, Gauge>, shutdown: CancellationToken) {
    let labels = vec![("queue".to_owned(), queue.clone())];
    loop {
        let depth = async { anyhow::Ok(cls_bus::dlq::depth(&*amqp.connection().await?, &queue).await?) };
        match tokio::time::timeout(std::time::Duration::from_secs(5), depth).await {
            Ok(Ok(depth)) => {
                gauge.get_or_create(&labels).set(i64::from(depth.unwrap_or(0)));
            }
            Ok(Err(error)) => tracing::debug!(error = format!("{error:#}"), "cannot sample the projector's dead-letter queue"),
            Err(_) => tracing::debug!("sampling the projector's dead-letter queue timed out"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    }
}
