//! The gateway (SPEC §4): the only public HTTP entry point. It authenticates, validates input,
//! turns each write into a command published with confirms and `mandatory`, waits for the
//! worker's reply (direct reply-to) up to the reply timeout, and forwards reads to the query
//! service. It holds no business rules and no database connection.

mod auth;
mod commands;
mod handler;
mod query;
mod ratelimit;
/// Public so tests can check the table against the OpenAPI document and the isolation matrix.
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use cls_bus::{Link, RpcClient, Topology};
use cls_runtime::ops::{Ops, probe};
use cls_runtime::{CancellationToken, ServiceKind, Settings};
use cls_runtime::metrics::{HttpMetrics, LatencyFamily, latency_family};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The worker kinds that exist so far; the gateway is ready only when each has a consumer.
pub const SERVED_MODULES: &[cls_contracts::Module] =
    &[cls_contracts::Module::Brands, cls_contracts::Module::Licenses, cls_contracts::Module::Activations];

pub(crate) struct Metrics {
    http: HttpMetrics,
    /// From publishing a command to its worker's reply, by command type (replied ones only).
    round_trip: LatencyFamily,
}

pub(crate) struct State {
    settings: Settings,
    amqp: Link,
    rpc: RpcClient,
    topology: Topology,
    query: query::QueryClient,
    keys: auth::ApiKeyCache,
    limiter: ratelimit::Limiter,
    metrics: Metrics,
}

/// A built gateway: `build` connects and binds, `run_until_stopped` serves.
pub struct App {
    state: Arc<State>,
    registry: Registry,
    listener: TcpListener,
    ops_listener: TcpListener,
}

impl App {
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let amqp = Link::open(&settings.amqp_url, ServiceKind::Gateway.name()).await?;
        let topology = Topology::new(settings.namespace.clone());
        topology.declare(&amqp.create_channel().await?).await?;
        let rpc = RpcClient::open(Link::open(&settings.amqp_url, "gateway-rpc").await?).await?;
        let token = settings.internal_token.as_ref().context("CLS_INTERNAL_TOKEN is not set")?;
        let query = query::QueryClient::new(&settings.query_url, settings.query_socket.clone(), token, settings.reply_timeout)?;
        let listener = cls_runtime::http::bind(settings.http_addr).await?;
        let ops_listener = cls_runtime::http::bind(settings.ops_addr).await?;

        let mut registry = Registry::with_prefix("cls");
        let http = HttpMetrics::default();
        http.register(&mut registry);
        let round_trip = latency_family();
        registry.register("command_round_trip_seconds", "From publishing a command to the worker's reply, by command type", round_trip.clone());

        // Rate-limit buckets live in Redis, shared by every gateway replica (SPEC §3).
        let limiter = ratelimit::Limiter::new(cls_readmodel::connect_redis(&settings.redis_url).await?, &settings.namespace);
        registry.register("rate_limit_fail_open", "Requests let through because the rate limiter's Redis was unavailable", limiter.fail_opens.clone());

        let state = State {
            settings,
            amqp,
            rpc,
            topology,
            query,
            keys: auth::ApiKeyCache::default(),
            limiter,
            metrics: Metrics { http, round_trip },
        };
        Ok(App { state: Arc::new(state), registry, listener, ops_listener })
    }

    /// The public address actually bound (port 0 in tests).
    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_listener.local_addr().expect("bound listener has an address")
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.addr(), ops = %self.ops_addr(), "gateway started");
        let ready_state = self.state.clone();
        let broker_state = self.state.clone();
        let cache_state = self.state.clone();
        let ops = Ops::new(Arc::new(self.registry))
            .check("broker", probe(move || {
                let state = broker_state.clone();
                async move { state.amqp.health().await.and(state.rpc.health().await) }
            }))
            .check_degradable("cache", probe(move || {
                let state = cache_state.clone();
                async move { state.limiter.ping().await }
            }))
            .ready_when(probe(move || {
                let state = ready_state.clone();
                async move { handler::readiness(&state).await }
            }));
        let ops_task = tokio::spawn(ops.serve(self.ops_listener, shutdown.clone()));
        let state = self.state.clone();
        cls_runtime::http::serve(
            self.listener,
            move |req, peer| handler::handle(state.clone(), req, peer),
            shutdown.clone(),
            self.state.settings.shutdown_timeout,
        )
        .await;
        let _ = ops_task.await;
        self.state.amqp.close().await;
        self.state.rpc.close().await;
        self.state.limiter.quit().await;
        tracing::info!("gateway stopped");
        Ok(())
    }
}
