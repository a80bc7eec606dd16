//! Confirmed publishing: a publish succeeds only when the broker acks it (and, when mandatory,
//! it was routed to a queue).

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection};

/// Why a publish did not take.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Mandatory and no queue was bound for the routing key.
    #[error("no queue is bound for routing key {0}")]
    Unroutable(String),
    /// The broker refused it (e.g. the queue is full: `reject-publish`).
    #[error("the broker refused the message")]
    Nacked,
    /// No confirm within the deadline (e.g. the connection is blocked by a resource alarm).
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
    /// The broker blocked the connection (a memory or disk alarm): nothing was published.
    #[error("the broker blocks publishing: {0}")]
    Blocked(String),
    /// No connection to the broker could be opened.
    #[error("cannot connect to the broker: {0}")]
    Connect(String),
    /// The channel or connection failed.
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
}

/// A channel in confirm mode.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    confirm_timeout: Duration,
}

impl Publisher {
    pub async fn open(conn: &Connection, confirm_timeout: Duration) -> lapin::Result<Self> {
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Publisher { channel, confirm_timeout })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Whether the channel can still publish; a dead channel must be replaced.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes and waits for the confirm (bounded by the confirm timeout).
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let options = BasicPublishOptions { mandatory, ..Default::default() };
        let confirm = async {
            let pending = self
                .channel
                .basic_publish(exchange.into(), routing_key.into(), options, payload, properties)
                .await?;
            pending.await
        };
        let confirmation = tokio::time::timeout(self.confirm_timeout, confirm)
            .await
            .map_err(|_| PublishError::Timeout(self.confirm_timeout))??;
        check(confirmation, routing_key)
    }
}

/// Turns a confirm into success only for an ack of a routed message.
pub fn check(confirmation: Confirmation, routing_key: &str) -> Result<(), PublishError> {
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_returned)) => Err(PublishError::Unroutable(routing_key.to_owned())),
        Confirmation::Nack(_) => Err(PublishError::Nacked),
    }
}
