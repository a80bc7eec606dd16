//! The projector (SPEC §4): keeps the Redis read model current from the domain events on
//! `<ns>.events`, consumed from the query service's own queue `<ns>.query.events`.
//!
//! An event only says *what* changed; the projector refreshes that entity's documents from a
//! Postgres snapshot read now, through the read model's compare-and-set. So duplicated,
//! reordered or late events are harmless: each refresh writes a state at least as new as the
//! event, and an older one never replaces a newer one. A refresh that fails (Redis or Postgres
//! down) is retried in place with backoff while the delivery stays unacked, which also pauses
//! the consumer through its prefetch; undecodable events go to the queue's dead-letter queue.
//! Workers already wrote what their commands changed (read-your-writes); the projector is what
//! catches up when they could not (and for changes made by reactions and the sweeper). A
//! command's events carry, in a header, the read-model targets its worker had to make visible;
//! when Redis's markers already hold them, the event is acked without asking Postgres anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cls_bus::READ_MODEL_TARGETS_HEADER;
use cls_contracts::event::EVENT_SCHEMA_VERSION;
use cls_contracts::read_model::Target;
use cls_contracts::{Event, EventEnvelope};
use cls_readmodel::{ReadModel, RefreshError};
use cls_store::PgPool;
use cls_store::read_model::{ApiKeySelector, KeySelector};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Events applied at once (also the prefetch).
const CONCURRENCY: u16 = 16;

/// What an event makes the projector refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refresh {
    Key(Uuid),
    KeyOfLicense(Uuid),
    ApiKey(Uuid),
}

/// The entity whose documents an event invalidates; `None` for events no hot read shows.
fn refresh_for(event: &Event) -> Result<Option<Refresh>, String> {
    let id = |s: &str| s.parse::<Uuid>().map_err(|_| format!("not an id: {s:?}"));
    Ok(match event {
        Event::BrandCreated(_) | Event::ProductCreated(_) | Event::ActivationRejected(_) => None,
        Event::ApiKeyCreated(e) => Some(Refresh::ApiKey(id(&e.api_key_id)?)),
        Event::ApiKeyRevoked(e) => Some(Refresh::ApiKey(id(&e.api_key_id)?)),
        Event::LicenseKeyCreated(e) => Some(Refresh::Key(id(&e.license_key_id)?)),
        Event::LicenseProvisioned(e) => Some(Refresh::Key(id(&e.license_key_id)?)),
        Event::LicenseRenewed(s)
        | Event::LicenseSuspended(s)
        | Event::LicenseResumed(s)
        | Event::LicenseCancelled(s)
        | Event::LicenseExpired(s)
        | Event::LicenseSeatsChanged(s) => Some(Refresh::Key(id(&s.license_key_id)?)),
        Event::LicenseKeyRotated(e) | Event::LicenseKeyTransferred(e) => Some(Refresh::Key(id(&e.license_key_id)?)),
        Event::ActivationCreated(e) | Event::ActivationDeactivated(e) => Some(Refresh::KeyOfLicense(id(&e.license_id)?)),
    })
}

pub struct Projector {
    pub queue: String,
    pub pool: PgPool,
    pub read_model: Arc<ReadModel>,
    pub consuming: Arc<AtomicBool>,
    /// Events by type and outcome (`applied`; `already_visible`: the read model held the event's
    /// targets, checked in Redis alone; `ignored`, `dead_lettered`, `requeued`).
    pub outcomes: Family<Vec<(String, String)>, Counter>,
    /// From an event's `occurred_at` to the projector having applied (or ignored) it.
    pub lag: Gauge<f64, AtomicU64>,
}

impl Projector {
    /// Consumes until `shutdown`, re-opening the channel whenever it dies; then waits (bounded)
    /// for in-flight events to settle.
    pub async fn run(self: Arc<Self>, connection: Arc<cls_bus::Link>, shutdown: CancellationToken, drain: Duration) {
        let permits = Arc::new(Semaphore::new(CONCURRENCY as usize));
        while !shutdown.is_cancelled() {
            if let Err(error) = self.consume_once(&connection, &permits, &shutdown).await {
                self.consuming.store(false, Ordering::Relaxed);
                tracing::warn!(queue = %self.queue, %error, "projector stopped consuming; re-opening");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        self.consuming.store(false, Ordering::Relaxed);
        if tokio::time::timeout(drain, permits.acquire_many(CONCURRENCY as u32)).await.is_err() {
            tracing::warn!(queue = %self.queue, "projector still applying events at the end of the shutdown bound");
        }
    }

    async fn consume_once(self: &Arc<Self>, connection: &cls_bus::Link, permits: &Arc<Semaphore>, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let channel = connection.create_channel().await?;
        channel.basic_qos(CONCURRENCY, BasicQosOptions::default()).await?;
        let mut deliveries = channel
            .basic_consume(self.queue.clone().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        self.consuming.store(true, Ordering::Relaxed);
        tracing::info!(queue = %self.queue, "projecting events");
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
                this.handle(&delivery, &shutdown).await;
                drop(permit);
            });
        }
    }

    async fn handle(&self, delivery: &Delivery, shutdown: &CancellationToken) {
        let envelope = match cls_contracts::decode::<EventEnvelope>(&delivery.data) {
            Ok(e) if e.schema_version == EVENT_SCHEMA_VERSION => e,
            Ok(e) => return self.dead_letter(delivery, e.event.event_type(), &format!("unknown schema version {}", e.schema_version)).await,
            Err(error) => return self.dead_letter(delivery, "?", &error.to_string()).await,
        };
        let event_type = envelope.event.event_type();
        let _lag = LagOnDrop { gauge: &self.lag, occurred_at: cls_contracts::parse_time(&envelope.occurred_at) };
        let refresh = match refresh_for(&envelope.event) {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.count(event_type, "ignored");
                return ack(delivery).await;
            }
            Err(why) => return self.dead_letter(delivery, event_type, &why).await,
        };
        if self.already_visible(&delivery.properties).await {
            self.count(event_type, "already_visible");
            return ack(delivery).await;
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.apply(refresh).await {
                Ok(()) => {
                    self.count(event_type, "applied");
                    return ack(delivery).await;
                }
                Err(error) => {
                    if shutdown.is_cancelled() {
                        self.count(event_type, "requeued");
                        let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                        return;
                    }
                    tracing::warn!(event_id = %envelope.id, event_type, error = format!("{error:#}"), retry_in = ?backoff, "cannot project the event yet");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Whether the read model already holds everything the event's transaction changed. Its
    /// writer (a worker's read-your-writes) names those targets in a header, and the markers in
    /// Redis answer without Postgres. Anything short of a yes (no header, Redis unreachable, a
    /// marker behind) takes the path of every event: the version check in Postgres, then a
    /// refresh if needed.
    async fn already_visible(&self, properties: &BasicProperties) -> bool {
        match header_targets(properties) {
            Some(targets) => matches!(self.read_model.reflects(&targets).await, Ok(true)),
            None => false,
        }
    }

    async fn apply(&self, refresh: Refresh) -> Result<(), RefreshError> {
        match refresh {
            Refresh::Key(id) => self.refresh_key(KeySelector::Id(id)).await,
            Refresh::KeyOfLicense(id) => self.refresh_key(KeySelector::License(id)).await,
            Refresh::ApiKey(id) => self.read_model.refresh_api_key(&self.pool, ApiKeySelector::Id(id)).await.map(drop),
        }
    }

    /// The worker that made the change has usually made it visible already (read-your-writes):
    /// then the marker is at Postgres's version and the snapshot and compare-and-set are skipped.
    /// The event still counts as applied: the read model reflects it.
    async fn refresh_key(&self, selector: KeySelector<'_>) -> Result<(), RefreshError> {
        if self.read_model.key_is_current(&self.pool, selector).await? {
            return Ok(());
        }
        self.read_model.refresh_key(&self.pool, selector).await.map(drop)
    }

    async fn dead_letter(&self, delivery: &Delivery, event_type: &str, why: &str) {
        tracing::error!(queue = %self.queue, event_type, failure = why, "dead-lettering an event the projector cannot read");
        self.count(event_type, "dead_lettered");
        let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
    }

    fn count(&self, event_type: &str, outcome: &str) {
        self.outcomes
            .get_or_create(&vec![("event".to_owned(), event_type.to_owned()), ("outcome".to_owned(), outcome.to_owned())])
            .inc();
    }
}

/// The read-model targets named by an event's header; `None` without one, or if any of them does
/// not decode (then Postgres decides, as for any event).
fn header_targets(properties: &BasicProperties) -> Option<Vec<Target>> {
    let value = properties.headers().as_ref()?.inner().get(READ_MODEL_TARGETS_HEADER)?;
    let AMQPValue::LongString(text) = value else { return None };
    let text = std::str::from_utf8(text.as_bytes()).ok()?;
    let targets: Option<Vec<Target>> = text.split(',').map(Target::decode).collect();
    targets.filter(|t| !t.is_empty())
}

/// Sets the projector lag when an event's handling ends, whichever way it ends.
struct LagOnDrop<'a> {
    gauge: &'a Gauge<f64, AtomicU64>,
    occurred_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Drop for LagOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(at) = self.occurred_at {
            self.gauge.set((chrono::Utc::now() - at).as_seconds_f64().max(0.0));
        }
    }
}

async fn ack(delivery: &Delivery) {
    // A channel that died meanwhile: the broker redelivers, and applying again is harmless.
    if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::debug!(%error, "ack failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cls_contracts::event::{ActivationRejected, ApiKeyRevoked};

    #[test]
    fn only_events_that_hot_reads_show_refresh_something() {
        let id = Uuid::now_v7();
        let revoked = Event::ApiKeyRevoked(ApiKeyRevoked { api_key_id: id.to_string(), brand_id: "b".into(), revoked_at: "t".into() });
        assert_eq!(refresh_for(&revoked), Ok(Some(Refresh::ApiKey(id))));
        let rejected = Event::ActivationRejected(ActivationRejected {
            license_id: None,
            brand_id: None,
            product: "p".into(),
            instance_id: "i".into(),
            code: "SEAT_LIMIT_REACHED".into(),
            at: "t".into(),
        });
        assert_eq!(refresh_for(&rejected), Ok(None));
        let garbage = Event::ApiKeyRevoked(ApiKeyRevoked { api_key_id: "nope".into(), brand_id: "b".into(), revoked_at: "t".into() });
        assert!(refresh_for(&garbage).is_err());
    }

    fn with_header(value: Option<AMQPValue>) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert("v".into(), AMQPValue::ShortInt(1));
        if let Some(value) = value {
            headers.insert(READ_MODEL_TARGETS_HEADER.into(), value);
        }
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn targets_come_from_the_header_and_nothing_less_than_all_of_them_counts() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let text = |s: String| Some(AMQPValue::LongString(s.into()));
        assert_eq!(
            header_targets(&with_header(text(format!("key:{a}:7,api_key:{b}:2")))),
            Some(vec![Target::LicenseKey { id: a, version: 7 }, Target::ApiKey { id: b, version: 2 }])
        );
        assert_eq!(header_targets(&BasicProperties::default()), None, "no headers");
        assert_eq!(header_targets(&with_header(None)), None, "no such header");
        assert_eq!(header_targets(&with_header(text(String::new()))), None, "empty");
        assert_eq!(header_targets(&with_header(text(format!("key:{a}:7,nonsense")))), None, "one undecodable");
        assert_eq!(header_targets(&with_header(Some(AMQPValue::ShortInt(3)))), None, "not a string");
    }
}
