//! The event consumer: a module's reactions to other modules' domain events (SPEC §4
//! "cross-module reactions go through events"), e.g. the activations module releasing the seats
//! of a cancelled license.
//!
//! The module's subscriber queue on `<ns>.events` is consumed with bounded concurrency. Per
//! delivery: decode the event envelope (undecodable, without a valid id, or of an unknown schema
//! version → dead letter); then one transaction that first records the event in
//! `processed_events` (a redelivery, or a concurrent duplicate on another replica, finds it
//! there and changes nothing), runs the module's [`EventDispatch`], appends its audit entries and
//! outbox events exactly as a command does; commit, then ack. Transient failures are retried in
//! place with backoff like commands; anything else dead-letters the delivery and the worker
//! keeps running. A dead channel is re-opened.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cls_contracts::EventEnvelope;
use cls_contracts::read_model::Target;
use cls_contracts::event::EVENT_SCHEMA_VERSION;
use cls_store::PgPool;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sqlx::PgConnection;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::command::{Audit, HandleError, NewEvent, Touched};
use crate::consumer::{Cause, GaveUp, Settle, append_effects, with_retries};

/// One event as a reaction sees it.
#[derive(Debug, Clone)]
pub struct EventContext {
    pub event_id: Uuid,
    pub envelope: EventEnvelope,
    /// The worker's clock at the start of the transaction; reactions take time from here.
    pub now: DateTime<Utc>,
}

/// What a reaction changed besides its own state: events for the outbox and audit entries
/// (written with the system actor named after the consumer).
#[derive(Debug, Default)]
pub struct Reaction {
    pub events: Vec<NewEvent>,
    pub audit: Vec<Audit>,
    /// What the reaction changed that hot reads show (see [`Handled::touched`](crate::command::Handled)).
    pub touched: Vec<Touched>,
}

/// A module's reaction to the events of its subscriber queue: one `match` over the event types
/// it subscribed to. It runs inside the event's transaction. A `Rejected` error makes no sense
/// for an event and dead-letters it like `Fatal`.
pub type EventDispatch =
    for<'a> fn(&'a mut PgConnection, &'a EventContext) -> std::pin::Pin<Box<dyn Future<Output = Result<Reaction, HandleError>> + Send + 'a>>;

/// What the consumer needs, shared by every in-flight event.
pub struct EventConsumer {
    /// The name recorded in `processed_events` and as the audit actor (`system`).
    pub consumer: &'static str,
    pub queue: String,
    pub pool: PgPool,
    pub dispatch: EventDispatch,
    pub concurrency: u16,
    pub consuming: Arc<AtomicBool>,
    /// Wakes this process's outbox relay after a commit ([`crate::relay`]).
    pub outbox_ready: Arc<tokio::sync::Notify>,
    pub outcomes: Family<Vec<(String, String)>, Counter>,
    pub read_model: Arc<cls_readmodel::ReadModel>,
}

impl EventConsumer {
    /// Consumes until `shutdown`, re-opening the channel whenever it dies; then waits (bounded)
    /// for in-flight events to finish and ack.
    pub async fn run(self: Arc<Self>, consume: Arc<cls_bus::Link>, shutdown: CancellationToken, drain: Duration) {
        let permits = Arc::new(Semaphore::new(self.concurrency as usize));
        while !shutdown.is_cancelled() {
            if let Err(error) = self.consume_once(&consume, &permits, &shutdown).await {
                self.consuming.store(false, Ordering::Relaxed);
                tracing::warn!(queue = %self.queue, %error, "event consumer stopped; re-opening");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        self.consuming.store(false, Ordering::Relaxed);
        if tokio::time::timeout(drain, permits.acquire_many(self.concurrency as u32)).await.is_err() {
            tracing::warn!(queue = %self.queue, "in-flight events still running at the end of the shutdown bound");
        }
    }

    async fn consume_once(self: &Arc<Self>, consume: &cls_bus::Link, permits: &Arc<Semaphore>, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let channel = consume.create_channel().await?;
        channel.basic_qos(self.concurrency, BasicQosOptions::default()).await?;
        let mut deliveries = channel
            .basic_consume(self.queue.clone().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        self.consuming.store(true, Ordering::Relaxed);
        tracing::info!(queue = %self.queue, "consuming events");
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("the broker cancelled the consumer"),
                },
            };
            let permit = permits.clone().acquire_owned().await.expect("semaphore never closed");
            let this = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let ack = this.process(&delivery, &shutdown).await;
                ack.settle(&delivery).await;
                drop(permit);
            });
        }
    }

    /// Handles one delivery and decides what to tell the broker.
    async fn process(&self, delivery: &Delivery, shutdown: &CancellationToken) -> Settle {
        let envelope: EventEnvelope = match cls_contracts::decode(&delivery.data) {
            Ok(e) => e,
            Err(error) => {
                tracing::error!(queue = %self.queue, %error, "dead-lettering an undecodable event");
                self.count("?", "dead_lettered");
                return Settle::Reject;
            }
        };
        let event_type = envelope.event.event_type();
        let Ok(event_id) = envelope.id.parse::<Uuid>() else {
            tracing::error!(queue = %self.queue, event_type, "dead-lettering an event without a valid id");
            self.count(event_type, "dead_lettered");
            return Settle::Reject;
        };
        let span = tracing::info_span!("event", %event_id, event_type, correlation_id = envelope.correlation_id.as_deref().unwrap_or(""));
        // Instrumented, not entered: the span must follow this future across awaits and threads.
        async {
            if envelope.schema_version != EVENT_SCHEMA_VERSION {
                tracing::error!(schema_version = envelope.schema_version, "dead-lettering an event of an unknown schema version");
                self.count(event_type, "dead_lettered");
                return Settle::Reject;
            }
            let context = EventContext { event_id, envelope, now: Utc::now() };
            match with_retries(shutdown, || self.transact(&context)).await {
                Ok(Some(targets)) => {
                    // Best effort: the projector also applies the events this reaction emitted.
                    crate::visibility::make_visible(&self.read_model, &self.pool, &targets).await;
                    self.count(event_type, "handled");
                    Settle::Ack
                }
                Ok(None) => {
                    self.count(event_type, "duplicate");
                    Settle::Ack
                }
                Err(GaveUp::Transient) => {
                    self.count(event_type, "requeued");
                    Settle::Requeue
                }
                Err(GaveUp::Failed(error)) => {
                    tracing::error!(failure = format!("{:#}", anyhow::Error::from(error)), "dead-lettering the event");
                    self.count(event_type, "dead_lettered");
                    Settle::Reject
                }
            }
        }
        .instrument(span)
        .await
    }

    /// One attempt: the whole reaction in one transaction. Returns what it made visible, or
    /// `None` for an event handled before.
    async fn transact(&self, context: &EventContext) -> Result<Option<Vec<Target>>, HandleError> {
        let now = Utc::now();
        let context = EventContext { now, ..context.clone() };
        let mut tx = self.pool.begin().await?;
        if !cls_store::inbox::claim_event(&mut tx, self.consumer, context.event_id).await? {
            tx.commit().await?;
            return Ok(None);
        }
        let reaction = (self.dispatch)(&mut tx, &context).await?;
        let targets = crate::visibility::draw_versions(&mut tx, &reaction.touched).await?;
        let cause = Cause {
            actor_kind: "system",
            actor_id: Some(self.consumer.to_owned()),
            correlation_id: context.envelope.correlation_id.as_deref(),
            command_id: None,
            causation_id: Some(context.event_id.to_string()),
            now,
        };
        append_effects(&mut tx, &cause, reaction.events, reaction.audit).await?;
        tx.commit().await?;
        self.outbox_ready.notify_one();
        Ok(Some(targets))
    }

    fn count(&self, event_type: &str, outcome: &str) {
        self.outcomes
            .get_or_create(&vec![("event".to_owned(), event_type.to_owned()), ("outcome".to_owned(), outcome.to_owned())])
            .inc();
    }
}
