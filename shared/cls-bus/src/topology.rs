//! The AMQP names and declarations of SPEC §5, all under the namespace.
//!
//! Exchanges `<ns>.commands` (topic), `<ns>.events` (topic), `<ns>.dlx` (direct); per module a
//! quorum command queue `<ns>.<module>.commands` bound with `<module>.#`, with an explicit
//! delivery limit and at-least-once dead-lettering into `<ns>.<module>.commands.dlq`.
//! Declaring is idempotent; changing a queue's arguments needs a new queue name.

use cls_contracts::Module;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

/// On RabbitMQ 3.10 a connection loss counts as a delivery, so the limit must leave room for
/// broker and worker restarts before a healthy command is dead-lettered.
pub const DELIVERY_LIMIT: i64 = 20;
/// Backpressure: past this many ready messages a publish is nacked and the gateway answers 503.
pub const MAX_QUEUE_LENGTH: i64 = 100_000;

/// The names of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    ns: String,
}

impl Topology {
    pub fn new(namespace: impl Into<String>) -> Self {
        Topology { ns: namespace.into() }
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    pub fn commands_exchange(&self) -> String {
        format!("{}.commands", self.ns)
    }

    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.ns)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.ns)
    }

    pub fn command_queue(&self, module: Module) -> String {
        format!("{}.{}.commands", self.ns, module.as_str())
    }

    pub fn dead_letter_queue(&self, module: Module) -> String {
        format!("{}.dlq", self.command_queue(module))
    }

    /// Declares every exchange and queue of the namespace. Safe to run any number of times.
    pub async fn declare(&self, ch: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare(self.commands_exchange().into(), ExchangeKind::Topic, durable, FieldTable::default())
            .await?;
        ch.exchange_declare(self.events_exchange().into(), ExchangeKind::Topic, durable, FieldTable::default())
            .await?;
        ch.exchange_declare(self.dead_letter_exchange().into(), ExchangeKind::Direct, durable, FieldTable::default())
            .await?;
        for module in Module::ALL {
            self.declare_command_queue(ch, module).await?;
        }
        Ok(())
    }

    async fn declare_command_queue(&self, ch: &Channel, module: Module) -> lapin::Result<()> {
        let queue = self.command_queue(module);
        let dlq = self.dead_letter_queue(module);
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };

        let mut dlq_args = FieldTable::default();
        dlq_args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        ch.queue_declare(dlq.clone().into(), durable, dlq_args).await?;
        ch.queue_bind(
            dlq.into(),
            self.dead_letter_exchange().into(),
            queue.clone().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

        ch.queue_declare(queue.clone().into(), durable, self.quorum_args(&queue)).await?;
        ch.queue_bind(
            queue.into(),
            self.commands_exchange().into(),
            format!("{}.#", module.as_str()).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(())
    }

    /// Arguments of a consumed quorum queue: explicit delivery limit, at-least-once
    /// dead-lettering (which needs `reject-publish` overflow), and a length bound.
    pub fn quorum_args(&self, queue: &str) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(DELIVERY_LIMIT));
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(self.dead_letter_exchange().into()));
        args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(queue.into()));
        args.insert("x-dead-letter-strategy".into(), AMQPValue::LongString("at-least-once".into()));
        args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(MAX_QUEUE_LENGTH));
        args
    }

    /// Deletes the namespace's exchanges and queues, plus `extra_queues` (e.g. a test's
    /// subscriber queue). Quorum queues cannot be auto-delete, so tests call this to clean up.
    pub async fn delete(&self, ch: &Channel, extra_queues: &[String]) -> lapin::Result<()> {
        let mut queues: Vec<String> = Module::ALL
            .into_iter()
            .flat_map(|m| [self.command_queue(m), self.dead_letter_queue(m)])
            .collect();
        queues.extend_from_slice(extra_queues);
        for q in queues {
            ch.queue_delete(q.into(), QueueDeleteOptions::default()).await?;
        }
        for x in [self.commands_exchange(), self.events_exchange(), self.dead_letter_exchange()] {
            ch.exchange_delete(x.into(), ExchangeDeleteOptions::default()).await?;
        }
        Ok(())
    }

    /// How many consumers the module's command queue has (a passive declare). Run it on a
    /// throwaway channel: a missing queue closes the channel.
    pub async fn command_consumers(&self, ch: &Channel, module: Module) -> lapin::Result<u32> {
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let q = ch.queue_declare(self.command_queue(module).into(), passive, FieldTable::default()).await?;
        Ok(q.consumer_count())
    }
}
