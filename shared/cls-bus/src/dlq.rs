//! Dead-letter queues (SPEC §5): what is in them, and replaying messages back to work.
//!
//! Every consumed queue `<q>` dead-letters into `<q>.dlq` (through `<ns>.dlx`), and the broker
//! stamps each dead letter with `x-first-death-queue` / `-reason`. Listing peeks with
//! unacknowledged `basic.get`s and closes the channel, which puts every peeked message back.
//! Replaying publishes a message (payload and properties as they were, minus the dead reply
//! address and the death headers) to its original queue through the default exchange — not to
//! the topic exchange, which would deliver an event again to every subscriber — waits for the
//! confirm, and only then acks it out of the dead-letter queue. A command replayed this way is
//! taken on again by its worker (its `failed` inbox row may be claimed again).

use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};

use crate::publisher::{PublishError, Publisher};
use crate::topology::Topology;

/// A dead letter as the operator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    /// The AMQP `type` (the command's or event's routing key).
    pub kind: Option<String>,
    /// The queue it died in, and why (`rejected`, `delivery_limit`, ...).
    pub queue: Option<String>,
    pub reason: Option<String>,
    pub bytes: usize,
}

/// One dead-letter queue and how many messages wait in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Depth {
    pub queue: String,
    pub messages: u32,
}

fn header(headers: &Option<FieldTable>, name: &str) -> Option<String> {
    match headers.as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn describe(delivery: &lapin::message::Delivery) -> DeadLetter {
    let p = &delivery.properties;
    DeadLetter {
        message_id: p.message_id().as_ref().map(|s| s.to_string()),
        kind: p.kind().as_ref().map(|s| s.to_string()),
        queue: header(p.headers(), "x-first-death-queue"),
        reason: header(p.headers(), "x-first-death-reason"),
        bytes: delivery.data.len(),
    }
}

/// The namespace's dead-letter queues with their depths.
pub async fn depths(conn: &Connection, topology: &Topology) -> lapin::Result<Vec<Depth>> {
    let mut out = Vec::new();
    for queue in topology.dead_letter_queues() {
        if let Some(messages) = depth(conn, &queue).await? {
            out.push(Depth { queue, messages });
        }
    }
    Ok(out)
}

/// How many messages a queue holds; `None` if it does not exist.
pub async fn depth(conn: &Connection, queue: &str) -> lapin::Result<Option<u32>> {
    // A passive declare of a missing queue closes the channel: one channel per queue.
    let channel = conn.create_channel().await?;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    match channel.queue_declare(queue.into(), passive, FieldTable::default()).await {
        Ok(q) => {
            let _ = channel.close(200, "done".into()).await;
            Ok(Some(q.message_count()))
        }
        Err(_) => Ok(None),
    }
}

/// Up to `limit` messages of a dead-letter queue, left in place.
pub async fn peek(conn: &Connection, queue: &str, limit: usize) -> lapin::Result<Vec<DeadLetter>> {
    let channel = conn.create_channel().await?;
    let mut out = Vec::new();
    while out.len() < limit {
        match channel.basic_get(queue.into(), BasicGetOptions { no_ack: false }).await? {
            Some(message) => out.push(describe(&message.delivery)),
            None => break,
        }
    }
    // Closing the channel returns every unacknowledged message to the queue.
    let _ = channel.close(200, "peeked".into()).await;
    Ok(out)
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Replayed {
    pub replayed: Vec<DeadLetter>,
    /// Messages left in the queue (not selected, or not replayable: no original queue known).
    pub left: usize,
}

/// Replays the messages of a dead-letter queue to their original queues: all of them, or only
/// those whose `message_id` is `only`. Only the messages there when it starts: one that dies
/// again meanwhile (still poison) is not replayed twice.
pub async fn replay(conn: &Connection, queue: &str, only: Option<&str>) -> Result<Replayed, PublishError> {
    let channel = conn.create_channel().await?;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let waiting = channel.queue_declare(queue.into(), passive, FieldTable::default()).await?.message_count();
    let publisher = Publisher::open(conn, Duration::from_secs(10)).await?;
    let mut done = Replayed::default();
    for _ in 0..waiting {
        let Some(message) = channel.basic_get(queue.into(), BasicGetOptions { no_ack: false }).await? else { break };
        let delivery = message.delivery;
        let letter = describe(&delivery);
        let selected = only.is_none_or(|id| letter.message_id.as_deref() == Some(id));
        let Some(origin) = letter.queue.clone().filter(|_| selected) else {
            done.left += 1;
            continue;
        };
        publisher.publish("", &origin, &delivery.data, revived(&delivery.properties), true).await?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        done.replayed.push(letter);
    }
    // The messages not replayed were never acked: closing the channel puts them back.
    let _ = channel.close(200, "replayed".into()).await;
    let _ = publisher.channel().close(200, "replayed".into()).await;
    Ok(done)
}

/// The properties to publish a dead letter again with: as they were, without the reply address
/// (its requester is long gone) and without the death headers.
fn revived(p: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(old) = p.headers() {
        for (k, v) in old.inner() {
            if !k.as_str().starts_with("x-death") && !k.as_str().starts_with("x-first-death") && !k.as_str().starts_with("x-last-death") {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    let mut out = BasicProperties::default().with_headers(headers).with_delivery_mode(2);
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    out
}
