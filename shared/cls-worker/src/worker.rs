//! A module worker process: connections, topology, the command consumer, the outbox relay and
//! the ops listener, run until shutdown; plus, for a module that reacts to other modules'
//! events ([`Worker::with_events`]), the event consumer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cls_bus::Topology;
use cls_contracts::Module;
use cls_runtime::ops::{Ops, probe};
use cls_runtime::secret::SecretBox;
use cls_runtime::{CancellationToken, ServiceKind, Settings};
use cls_readmodel::ReadModel;
use cls_store::PgPool;
use cls_bus::Link;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::command::Dispatch;
use crate::consumer::CommandConsumer;
use crate::events::{EventConsumer, EventDispatch};
use crate::relay::Relay;

/// A built worker, ready to run. `build` connects and binds; `run_until_stopped` works.
pub struct Worker {
    settings: Settings,
    kind: ServiceKind,
    module: Module,
    dispatch: Dispatch,
    pool: PgPool,
    consume: Arc<Link>,
    publish: Arc<Link>,
    topology: Topology,
    read_model: Arc<ReadModel>,
    secrets: SecretBox,
    ops_listener: TcpListener,
    /// The module's subscriber queue on `<ns>.events` and its reaction, if it has one.
    events: Option<(String, EventDispatch)>,
}

impl Worker {
    pub async fn build(settings: Settings, kind: ServiceKind, module: Module, dispatch: Dispatch) -> anyhow::Result<Worker> {
        let secrets = SecretBox::for_settings(&settings)?;
        let pool = cls_store::pool::connect_now(&settings.database_url, settings.db_pool_size, kind.name(), cls_store::pool::Planning::Generic).await?;
        // Separate connections for consuming and publishing: a broker that blocks publishers
        // (resource alarm) must not stop deliveries and acks.
        let consume = Arc::new(Link::open(&settings.amqp_url, &format!("{}-consume", kind.name())).await?);
        let publish = Arc::new(Link::open(&settings.amqp_url, &format!("{}-publish", kind.name())).await?);
        let topology = Topology::new(settings.namespace.clone());
        topology.declare(&consume.create_channel().await?).await?;
        let read_model = Arc::new(ReadModel::connect(&settings.redis_url, &settings.namespace).await?);
        let ops_listener = cls_runtime::http::bind(settings.ops_addr).await?;
        Ok(Worker { settings, kind, module, dispatch, pool, consume, publish, topology, read_model, secrets, ops_listener, events: None })
    }

    /// Also consume `queue` (a subscriber queue on `<ns>.events`, declared by the topology)
    /// with `dispatch`, deduplicating by event id under the module's name.
    pub fn with_events(mut self, queue: String, dispatch: EventDispatch) -> Worker {
        self.events = Some((queue, dispatch));
        self
    }

    /// The AMQP names of the worker's namespace.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The read model the worker keeps current (read-your-writes); shared with a module's own
    /// background work (the expiry sweeper).
    pub fn read_model(&self) -> Arc<ReadModel> {
        self.read_model.clone()
    }

    /// The worker's database pool, shared with a module's own background work.
    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_listener.local_addr().expect("bound listener has an address")
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let ops_addr = self.ops_addr();
        let mut registry = Registry::with_prefix("cls");
        let outcomes = Family::<Vec<(String, String)>, Counter>::default();
        registry.register("commands", "Commands handled, by command type and outcome", outcomes.clone());
        let published = Counter::default();
        registry.register("outbox_published", "Events published from the outbox", published.clone());
        let reactions = Family::<Vec<(String, String)>, Counter>::default();
        registry.register("events_consumed", "Events consumed from the module's subscriber queue, by event type and outcome", reactions.clone());
        let handling = cls_runtime::metrics::latency_family();
        registry.register("command_handling_seconds", "From a command's delivery to its reply, by command type", handling.clone());
        let mut watched_queues = vec![self.topology.dead_letter_queue(self.module)];
        watched_queues.extend(self.events.iter().map(|(queue, _)| cls_bus::topology::dead_letter_queue_of(queue)));
        let gauges = crate::gauges::Gauges::new(watched_queues);
        gauges.register(&mut registry);

        let outbox_ready = Arc::new(tokio::sync::Notify::new());
        let consuming = Arc::new(AtomicBool::new(false));
        let consumer = Arc::new(CommandConsumer {
            module: self.module,
            queue: self.topology.command_queue(self.module),
            pool: self.pool.clone(),
            dispatch: self.dispatch,
            secrets: self.secrets,
            concurrency: self.settings.worker_concurrency,
            consuming: consuming.clone(),
            outcomes,
            handling,
            outbox_ready: outbox_ready.clone(),
            read_model: self.read_model.clone(),
        });
        let relay = Relay {
            pool: self.pool.clone(),
            topology: self.topology.clone(),
            published,
            ready: outbox_ready.clone(),
            linger: self.settings.relay_linger,
        };
        let events_consuming = Arc::new(AtomicBool::new(self.events.is_none()));
        let event_consumer = self.events.clone().map(|(queue, dispatch)| {
            Arc::new(EventConsumer {
                consumer: self.module.as_str(),
                queue,
                pool: self.pool.clone(),
                dispatch,
                concurrency: self.settings.worker_concurrency,
                consuming: events_consuming.clone(),
                outcomes: reactions,
                outbox_ready: outbox_ready.clone(),
                read_model: self.read_model.clone(),
            })
        });

        let pool = self.pool.clone();
        let consume = self.consume.clone();
        let publish = self.publish.clone();
        let ops = Ops::new(Arc::new(registry))
            .check("db", probe(move || {
                let pool = pool.clone();
                async move { cls_store::pool::ping(&pool).await }
            }))
            .check_degradable("cache", probe({
                let read_model = self.read_model.clone();
                move || {
                    let read_model = read_model.clone();
                    async move { read_model.ping().await }
                }
            }))
            .check("broker", probe(move || {
                let (consume, publish) = (consume.clone(), publish.clone());
                async move { consume.health().await.and(publish.health().await) }
            }))
            .ready_when(probe(move || {
                let ready = match (consuming.load(Ordering::Relaxed), events_consuming.load(Ordering::Relaxed)) {
                    (false, _) => Err("not consuming commands yet".to_owned()),
                    (true, false) => Err("not consuming events yet".to_owned()),
                    (true, true) => Ok(()),
                };
                async move { ready }
            }));

        tracing::info!(service = self.kind.name(), ops = %ops_addr, "worker started");
        let drain = self.settings.shutdown_timeout;
        let ops_task = tokio::spawn(ops.serve(self.ops_listener, shutdown.clone()));
        let relay_task = tokio::spawn(relay.run(self.publish.clone(), shutdown.clone()));
        let retention_task = tokio::spawn(crate::retention::run(self.pool.clone(), shutdown.clone()));
        let gauges_task = tokio::spawn(gauges.run(self.pool.clone(), self.consume.clone(), shutdown.clone()));
        let events_task = event_consumer.map(|c| tokio::spawn(c.run(self.consume.clone(), shutdown.clone(), drain)));
        consumer.run(self.consume.clone(), self.publish.clone(), shutdown.clone(), drain).await;
        if let Some(task) = events_task {
            let _ = task.await;
        }
        let _ = relay_task.await;
        let _ = retention_task.await;
        let _ = gauges_task.await;
        let _ = ops_task.await;
        self.consume.close().await;
        self.publish.close().await;
        self.read_model.quit().await;
        self.pool.close().await;
        tracing::info!(service = self.kind.name(), "worker stopped");
        Ok(())
    }
}
