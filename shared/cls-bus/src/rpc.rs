//! Request/reply over RabbitMQ's direct reply-to, for the gateway.
//!
//! One channel consumes `amq.rabbitmq.reply-to` (no-ack, as direct reply-to requires) and
//! publishes the requests with confirms and `mandatory`. Each call registers its correlation id
//! *before* publishing, because a fast worker's reply can arrive before the publish confirm.
//! Replies are at-most-once: a lost reply is a timeout, and the caller answers 202.
//!
//! A broker under a resource alarm blocks publishing connections (`connection.blocked`) and a
//! publish would stall until the alarm clears. The client's [`Link`] follows the connection's
//! events and, while blocked, the client refuses at once without publishing, so the gateway
//! answers 503 instead of holding the request for the whole reply timeout. A dead connection
//! is replaced by the link on the next call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};

use crate::link::Link;
use tokio::sync::{RwLock, oneshot};
use tokio::time::Instant;

use crate::publisher::{PublishError, check};

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

/// What became of a request.
#[derive(Debug)]
pub enum RpcOutcome {
    /// The reply payload.
    Replied(Vec<u8>),
    /// Published and confirmed, but no reply within the deadline (still running, or the reply
    /// was lost): the command is not lost, its outcome is stored when it completes.
    TimedOut,
}

/// A request/reply client that re-opens its channel when the channel dies. Cheap to clone.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
}

struct Inner {
    link: Link,
    channel: RwLock<Channel>,
    pending: Pending,
    /// Requests whose publish was not confirmed, being published again in the background.
    republishing: std::sync::atomic::AtomicUsize,
}

/// Requests published again at once, at most; past that an unconfirmed request is logged and
/// left to the caller's retry (its 202 names the operation, and an idempotency key makes the
/// retry safe).
const MAX_REPUBLISHING: usize = 10_000;
/// How long an unconfirmed request is published again before it is given up.
const REPUBLISH_FOR: Duration = Duration::from_secs(600);
/// The bound on one republish attempt.
const REPUBLISH_ATTEMPT: Duration = Duration::from_secs(10);

impl RpcClient {
    pub async fn open(link: Link) -> anyhow::Result<Self> {
        let pending: Pending = Arc::default();
        let channel = open_channel(&*link.connection().await?, pending.clone()).await?;
        let inner = Inner { link, channel: RwLock::new(channel), pending, republishing: Default::default() };
        Ok(RpcClient { inner: Arc::new(inner) })
    }

    /// The broker's reason while it blocks publishing, if it does.
    pub fn blocked(&self) -> Option<String> {
        self.inner.link.blocked()
    }

    /// For `/health/broker`.
    pub async fn health(&self) -> Result<(), String> {
        self.inner.link.health().await
    }

    pub async fn close(&self) {
        self.inner.link.close().await;
    }

    /// Publishes `payload` and waits until `deadline` for the reply.
    pub async fn call(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        deadline: Instant,
    ) -> Result<RpcOutcome, PublishError> {
        if let Some(reason) = self.blocked() {
            return Err(PublishError::Blocked(reason));
        }
        let correlation = uuid::Uuid::now_v7().to_string();
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().expect("rpc map poisoned").insert(correlation.clone(), tx);
        let _forget = Forget { pending: &self.inner.pending, correlation: &correlation };

        let properties = properties.with_reply_to(REPLY_TO.into()).with_correlation_id(correlation.clone().into());
        // Re-opening a dead channel may reconnect, which a hung broker could stretch to the
        // connect timeout: bounded by the caller's deadline (nothing was published yet: 503).
        let channel = match tokio::time::timeout_at(deadline, self.inner.usable_channel()).await {
            Ok(channel) => channel?,
            Err(_) => return Err(PublishError::Connect("no usable connection within the reply timeout".to_owned())),
        };
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        // Once basic_publish returns, the frames are queued and may reach the broker whatever
        // happens next: from here on the command is "in flight", never "not queued". An error
        // before that point (or a nack / return) is the only case where it certainly was not.
        // The publish itself can stall (a broker that stopped reading the socket): bounded too,
        // and a publish cut short by the deadline may still have gone out, like an unconfirmed one.
        let publish = channel.basic_publish(exchange.into(), routing_key.into(), options, payload, properties.clone());
        let pending = match tokio::time::timeout_at(deadline, publish).await {
            Ok(pending) => pending?,
            Err(_) => {
                self.republish(exchange, routing_key, payload, properties);
                return Ok(RpcOutcome::TimedOut);
            }
        };
        let confirmation = match tokio::time::timeout_at(deadline, pending).await {
            Ok(Ok(confirmation)) => confirmation,
            // No confirm (yet, or ever: the channel or the broker died with the frames in
            // flight). It may have been taken, so the caller answers 202; and since it may also
            // have been lost, it is published again until the broker confirms it. The worker's
            // inbox makes the second copy (same command id) a no-op if the first one arrived.
            Ok(Err(_)) | Err(_) => {
                self.republish(exchange, routing_key, payload, properties);
                return Ok(RpcOutcome::TimedOut);
            }
        };
        check(confirmation, routing_key)?;

        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => Ok(RpcOutcome::Replied(reply)),
            // Sender dropped (channel replaced) or deadline passed: the outcome is stored anyway.
            Ok(Err(_)) | Err(_) => Ok(RpcOutcome::TimedOut),
        }
    }

    /// Whether requests can be published now (re-opening the channel, and the connection under
    /// it, if they died: a gateway without traffic must not stay unready after a broker restart).
    pub async fn is_open(&self) -> bool {
        self.inner.usable_channel().await.is_ok()
    }

    /// Publishes an unconfirmed request again, in the background, until the broker confirms it
    /// (or [`REPUBLISH_FOR`] passes).
    fn republish(&self, exchange: &str, routing_key: &str, payload: &[u8], properties: BasicProperties) {
        use std::sync::atomic::Ordering;
        if self.inner.republishing.fetch_add(1, Ordering::Relaxed) >= MAX_REPUBLISHING {
            self.inner.republishing.fetch_sub(1, Ordering::Relaxed);
            tracing::error!(routing_key, "too many unconfirmed requests; not publishing this one again");
            return;
        }
        let (inner, exchange, routing_key, payload) = (self.inner.clone(), exchange.to_owned(), routing_key.to_owned(), payload.to_vec());
        tokio::spawn(async move {
            let until = Instant::now() + REPUBLISH_FOR;
            let mut backoff = Duration::from_millis(200);
            loop {
                match inner.publish_confirmed(&exchange, &routing_key, &payload, properties.clone()).await {
                    Ok(()) => {
                        tracing::info!(routing_key, "unconfirmed request published again and confirmed");
                        break;
                    }
                    Err(error) if Instant::now() < until => {
                        tracing::debug!(%error, routing_key, "publishing an unconfirmed request again failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    Err(error) => {
                        tracing::error!(%error, routing_key, "gave up publishing an unconfirmed request");
                        break;
                    }
                }
            }
            inner.republishing.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

impl Inner {
    /// One confirmed, mandatory publish, all of it (channel, publish, confirm) within
    /// [`REPUBLISH_ATTEMPT`]: a republish loop stuck on one attempt would never retry.
    async fn publish_confirmed(&self, exchange: &str, routing_key: &str, payload: &[u8], properties: BasicProperties) -> Result<(), PublishError> {
        if let Some(reason) = self.link.blocked() {
            return Err(PublishError::Blocked(reason));
        }
        let attempt = async {
            let channel = self.usable_channel().await?;
            let options = BasicPublishOptions { mandatory: true, ..Default::default() };
            let pending = channel.basic_publish(exchange.into(), routing_key.into(), options, payload, properties).await?;
            check(pending.await?, routing_key)
        };
        tokio::time::timeout(REPUBLISH_ATTEMPT, attempt).await.map_err(|_| PublishError::Timeout(REPUBLISH_ATTEMPT))?
    }

    /// The current channel, or a fresh one if it died (a broker soft error kills a channel and
    /// automatic recovery does not revive it).
    async fn usable_channel(&self) -> Result<Channel, PublishError> {
        {
            let ch = self.channel.read().await;
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        let mut ch = self.channel.write().await;
        if !ch.status().connected() {
            let conn = self.link.connection().await.map_err(|e| PublishError::Connect(format!("{e:#}")))?;
            // Bounded: the write lock is held meanwhile, and every caller waits on it.
            *ch = tokio::time::timeout(crate::CONNECT_TIMEOUT, open_channel(&conn, self.pending.clone()))
                .await
                .map_err(|_| PublishError::Connect("RabbitMQ did not open a channel in time".to_owned()))??;
            tracing::info!("rpc channel re-opened");
        }
        Ok(ch.clone())
    }
}

/// Removes a call's correlation entry however the call ends.
struct Forget<'a> {
    pending: &'a Pending,
    correlation: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.pending.lock() {
            map.remove(self.correlation);
        }
    }
}

async fn open_channel(conn: &Connection, pending: Pending) -> lapin::Result<Channel> {
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut replies = channel.basic_consume(REPLY_TO.into(), "".into(), options, FieldTable::default()).await?;
    tokio::spawn(async move {
        while let Some(delivery) = replies.next().await {
            let Ok(delivery) = delivery else { break };
            let Some(correlation) = delivery.properties.correlation_id().as_ref().map(|c| c.to_string()) else {
                continue;
            };
            let waiter = pending.lock().expect("rpc map poisoned").remove(&correlation);
            if let Some(waiter) = waiter {
                let _ = waiter.send(delivery.data);
            }
        }
        tracing::debug!("rpc reply consumer ended");
    });
    Ok(channel)
}

/// The channel and the delay a caller may use for a reply of its own, e.g. `Duration`.
pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}
