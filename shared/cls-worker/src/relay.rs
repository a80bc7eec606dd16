//! The outbox relay: publishes committed outbox rows to `<ns>.events` with confirms.
//!
//! Each batch is its own short transaction: lock up to [`BATCH`] unpublished rows with
//! `FOR UPDATE SKIP LOCKED` (so N replicas share the work) and mark them published in the same
//! statement, publish them, wait for the confirms, take the mark back from the unconfirmed ones,
//! commit. Nothing is marked unless the transaction commits; a crash between confirm and commit
//! republishes (at-least-once; consumers deduplicate by event id).
//!
//! Woken in-process: the consumers of the same process signal [`Relay::ready`] after each
//! commit, so a write wakes the one relay that has its events instead of every worker process
//! on the database (a NOTIFY woke all of them: three claim transactions per write, two finding
//! nothing). Rows nobody signals for — committed by a process that died before relaying them,
//! or by the expiry sweeper — are found by polling every second.
//!
//! Once woken, the relay lingers ([`Relay::linger`], `CLS_RELAY_LINGER_MS`, 50 ms by default)
//! before it claims, so the events of the commands that commit meanwhile share one batch. Every
//! event is a write to the broker's quorum-queue log and a delivery to the projector; published
//! one by one, right after each command, that work met the next command on its way through the
//! same broker and cost a single client 0.7 ms per activation (docs/benchmarks.md, proposal 17).
//! Events are asynchronous to their writers (the worker has already made the change visible to
//! reads), so subscribers see them up to the linger later.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use cls_bus::{MSGPACK, Publisher, READ_MODEL_TARGETS_HEADER, Topology};
use cls_store::{PgPool, outbox};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const BATCH: i64 = 100;
const POLL: Duration = Duration::from_secs(1);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Relay {
    pub pool: PgPool,
    pub topology: Topology,
    pub published: Counter,
    /// Signalled after a commit that may have appended events.
    pub ready: Arc<Notify>,
    /// How long to wait after a signal before claiming, to batch the events committed meanwhile.
    pub linger: Duration,
}

impl Relay {
    /// Relays until `shutdown`, rebuilding the channel after failures. A shutdown during the
    /// linger publishes what is there once more, then stops.
    pub async fn run(self, publish: Arc<cls_bus::Link>, shutdown: CancellationToken) {
        let mut publisher: Option<Publisher> = None;
        loop {
            if publisher.as_ref().is_none_or(|p| !p.is_open()) {
                if shutdown.is_cancelled() {
                    break;
                }
                let opened = match publish.connection().await {
                    Ok(conn) => Publisher::open(&conn, CONFIRM_TIMEOUT).await.map_err(anyhow::Error::from),
                    Err(error) => Err(error),
                };
                publisher = match opened {
                    Ok(p) => Some(p),
                    Err(error) => {
                        tracing::warn!(%error, "relay cannot open a channel");
                        None
                    }
                };
            }
            let more = match &publisher {
                Some(p) => match self.relay_batch(p).await {
                    Ok(n) => n == BATCH as usize,
                    Err(error) => {
                        tracing::warn!(error = format!("{error:#}"), "relay batch failed");
                        false
                    }
                },
                None => false,
            };
            if shutdown.is_cancelled() {
                break;
            }
            if more {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.ready.notified() => {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(self.linger) => {}
                    }
                }
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Publishes one batch; returns how many rows it claimed.
    async fn relay_batch(&self, publisher: &Publisher) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let rows = outbox::claim_and_mark(&mut tx, BATCH, Utc::now()).await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let exchange = self.topology.events_exchange();
        let channel = publisher.channel();
        // One deadline for the whole batch (publishes and confirms), well inside
        // idle_in_transaction_session_timeout, so a stalled broker cannot keep this transaction
        // (and its row locks) open.
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        let mut confirms = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut headers = FieldTable::default();
            headers.insert("v".into(), AMQPValue::ShortInt(cls_contracts::event::EVENT_SCHEMA_VERSION as i16));
            if let Some(targets) = &row.read_model_targets {
                headers.insert(READ_MODEL_TARGETS_HEADER.into(), AMQPValue::LongString(targets.as_str().into()));
            }
            let mut properties = BasicProperties::default()
                .with_message_id(row.event_id.to_string().into())
                .with_type(row.event_type.clone().into())
                .with_content_type(MSGPACK.into())
                .with_delivery_mode(2)
                .with_timestamp(Utc::now().timestamp() as u64)
                .with_headers(headers);
            if let Some(c) = &row.correlation_id {
                properties = properties.with_correlation_id(c.clone().into());
            }
            // Not mandatory: an event nobody subscribed to yet is not an error.
            let publish = channel.basic_publish(
                exchange.clone().into(),
                row.event_type.clone().into(),
                BasicPublishOptions::default(),
                &row.payload,
                properties,
            );
            let confirm = tokio::time::timeout_at(deadline, publish).await.ok().and_then(Result::ok);
            confirms.push((row.id, confirm));
        }
        let mut published = Vec::new();
        let mut failed = Vec::new();
        for (id, confirm) in confirms {
            let ok = match confirm {
                Some(pending) => matches!(tokio::time::timeout_at(deadline, pending).await, Ok(Ok(c)) if c.is_ack()),
                None => false,
            };
            if ok { published.push(id) } else { failed.push(id) }
        }
        outbox::unmark(&mut tx, &failed, "not confirmed by the broker").await?;
        tx.commit().await?;
        self.published.inc_by(published.len() as u64);
        if !failed.is_empty() {
            anyhow::bail!("{} events not confirmed; they stay in the outbox", failed.len());
        }
        Ok(rows.len())
    }
}
