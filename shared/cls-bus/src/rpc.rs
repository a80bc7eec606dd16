//! Request/reply over RabbitMQ's direct reply-to, for the gateway.
//!
//! One channel consumes `amq.rabbitmq.reply-to` (no-ack, as direct reply-to requires) and
//! publishes the requests with confirms and `mandatory`. Each call registers its correlation id
//! *before* publishing, because a fast worker's reply can arrive before the publish confirm.
//! Replies are at-most-once: a lost reply is a timeout, and the caller answers 202.
//!
//! A broker under a resource alarm blocks publishing connections (`connection.blocked`) and a
//! publish would stall until the alarm clears. The client follows the connection's events and,
//! while blocked, refuses at once without publishing, so the gateway answers 503 instead of
//! holding the request for the whole reply timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
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

/// A request/reply client that re-opens its channel when the channel dies.
pub struct RpcClient {
    conn: Connection,
    channel: RwLock<Channel>,
    pending: Pending,
    /// The broker's reason while it blocks this connection.
    blocked: Arc<Mutex<Option<String>>>,
}

impl RpcClient {
    pub async fn open(conn: Connection) -> lapin::Result<Self> {
        let pending: Pending = Arc::default();
        let channel = open_channel(&conn, pending.clone()).await?;
        let blocked: Arc<Mutex<Option<String>>> = Arc::default();
        let mut events = conn.events_listener();
        let flag = blocked.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let now = match event {
                    lapin::Event::ConnectionBlocked(reason) => Some(if reason.is_empty() { "resource alarm".to_owned() } else { reason }),
                    lapin::Event::ConnectionUnblocked | lapin::Event::Connected => None,
                    _ => continue,
                };
                match &now {
                    Some(reason) => tracing::warn!(reason, "the broker blocks publishing; commands answer 503"),
                    None => tracing::info!("publishing possible"),
                }
                *flag.lock().expect("blocked flag poisoned") = now;
            }
        });
        Ok(RpcClient { conn, channel: RwLock::new(channel), pending, blocked })
    }

    /// The broker's reason while it blocks publishing, if it does.
    pub fn blocked(&self) -> Option<String> {
        self.blocked.lock().expect("blocked flag poisoned").clone()
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
        self.pending.lock().expect("rpc map poisoned").insert(correlation.clone(), tx);
        let _forget = Forget { pending: &self.pending, correlation: &correlation };

        let properties = properties.with_reply_to(REPLY_TO.into()).with_correlation_id(correlation.clone().into());
        let channel = self.usable_channel().await?;
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        // Once basic_publish returns, the frames are queued and may reach the broker whatever
        // happens next: from here on the command is "in flight", never "not queued". An error
        // before that point (or a nack / return) is the only case where it certainly was not.
        let pending = channel.basic_publish(exchange.into(), routing_key.into(), options, payload, properties).await?;
        let confirmation = match tokio::time::timeout_at(deadline, pending).await {
            Ok(confirmation) => confirmation?,
            // No confirm yet: it may still be routed and run, so the caller must answer 202.
            Err(_) => return Ok(RpcOutcome::TimedOut),
        };
        check(confirmation, routing_key)?;

        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => Ok(RpcOutcome::Replied(reply)),
            // Sender dropped (channel replaced) or deadline passed: the outcome is stored anyway.
            Ok(Err(_)) | Err(_) => Ok(RpcOutcome::TimedOut),
        }
    }

    /// Whether requests can be published now.
    pub async fn is_open(&self) -> bool {
        self.channel.read().await.status().connected()
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
            *ch = open_channel(&self.conn, self.pending.clone()).await?;
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
