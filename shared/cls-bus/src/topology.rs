//! The AMQP names and declarations of SPEC §5, all under the namespace.
//!
//! Exchanges `<ns>.commands` (topic), `<ns>.events` (topic), `<ns>.dlx` (direct); per module a
//! quorum command queue `<ns>.<module>.commands` bound with `<module>.#`, with an explicit
//! delivery limit and at-least-once dead-lettering into `<ns>.<module>.commands.dlq`. Each
//! cross-module reaction (SPEC §4) has its own subscriber queue on `<ns>.events` with the same
//! arguments and its own dead-letter queue: `<ns>.activations.license-events`, bound with
//! `license.cancelled`, from which the activations worker releases a cancelled license's seats.
//! The query service's projector has its own queue `<ns>.query.events` bound with `#`; it is
//! declared only by the query service, together with its consumer ([`Topology::declare_projector_queue`]):
//! with `reject-publish` overflow a bound queue nobody drains would end up nacking the relays.
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

/// What the activations module reacts to (SPEC §4): a cancelled license's seats are released.
const LICENSE_EVENTS_BINDINGS: &[&str] = &["license.cancelled"];

/// The dead-letter queue of a consumed queue.
pub fn dead_letter_queue_of(queue: &str) -> String {
    format!("{queue}.dlq")
}

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
        dead_letter_queue_of(&self.command_queue(module))
    }

    /// The activations module's subscriber queue for license events (SPEC §4: it releases the
    /// seats of a cancelled license).
    pub fn license_events_queue(&self) -> String {
        format!("{}.{}.license-events", self.ns, Module::Activations.as_str())
    }

    /// The projector's queue: every event, for the Redis read model.
    pub fn projector_queue(&self) -> String {
        format!("{}.query.events", self.ns)
    }

    /// Declares the projector's queue (and its dead-letter queue), bound to every event type.
    /// Needs the exchanges ([`Topology::declare`]).
    pub async fn declare_projector_queue(&self, ch: &Channel) -> lapin::Result<()> {
        self.declare_consumed_queue(ch, &self.projector_queue(), &self.events_exchange(), &["#"]).await
    }

    /// Every dead-letter queue of the namespace (commands, reactions, the projector).
    pub fn dead_letter_queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = Module::ALL.into_iter().map(|m| self.dead_letter_queue(m)).collect();
        queues.extend(self.event_queues().into_iter().map(|(q, _)| dead_letter_queue_of(&q)));
        queues.push(dead_letter_queue_of(&self.projector_queue()));
        queues
    }

    /// Every subscriber queue of a module reaction, with the routing keys it is bound with on
    /// `<ns>.events`.
    pub fn event_queues(&self) -> Vec<(String, &'static [&'static str])> {
        vec![(self.license_events_queue(), LICENSE_EVENTS_BINDINGS)]
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
            let binding = format!("{}.#", module.as_str());
            self.declare_consumed_queue(ch, &self.command_queue(module), &self.commands_exchange(), &[binding.as_str()]).await?;
        }
        for (queue, bindings) in self.event_queues() {
            self.declare_consumed_queue(ch, &queue, &self.events_exchange(), bindings).await?;
        }
        Ok(())
    }

    /// A consumed quorum queue ([`Self::quorum_args`]) bound to `exchange` with each of
    /// `bindings`, and its dead-letter queue `<queue>.dlq` bound to `<ns>.dlx`.
    async fn declare_consumed_queue(&self, ch: &Channel, queue: &str, exchange: &str, bindings: &[&str]) -> lapin::Result<()> {
        let dlq = dead_letter_queue_of(queue);
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };

        let mut dlq_args = FieldTable::default();
        dlq_args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        ch.queue_declare(dlq.clone().into(), durable, dlq_args).await?;
        ch.queue_bind(
            dlq.into(),
            self.dead_letter_exchange().into(),
            queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

        ch.queue_declare(queue.into(), durable, self.quorum_args(queue)).await?;
        for binding in bindings {
            ch.queue_bind(queue.into(), exchange.into(), (*binding).into(), QueueBindOptions::default(), FieldTable::default())
                .await?;
        }
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
        queues.extend(self.event_queues().into_iter().flat_map(|(q, _)| [dead_letter_queue_of(&q), q]));
        queues.extend([dead_letter_queue_of(&self.projector_queue()), self.projector_queue()]);
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
