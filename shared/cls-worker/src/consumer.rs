//! The command consumer: one transaction per command, commit → reply → ack.
//!
//! Per delivery: decode the envelope (undecodable or an unknown schema version → dead letter);
//! claim the inbox row; a command seen before replays its stored outcome (or 422 for another
//! request under the same id); otherwise run the module's use case. A rejection rolls the whole
//! transaction back and stores only the inbox row with its problem outcome, under a fresh claim.
//! A success draws the read-model versions of what it touched, then writes audit entries, outbox
//! events and its outcome and reads the touched keys' documents in one statement, commits,
//! writes the documents to Redis (read-your-writes), wakes the relay, replies and acks.
//! Transient failures are retried
//! in place with backoff (the delivery stays unacked, which also holds back the consumer through
//! its prefetch); fatal ones are recorded as a failed operation and dead-lettered.
//!
//! The retry policy ([`with_retries`]), the acking ([`Settle`]) and the writing of audit entries
//! and outbox events ([`append_effects`]) are shared with the event consumer ([`crate::events`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use cls_contracts::command::COMMAND_SCHEMA_VERSION;
use cls_contracts::event::EVENT_SCHEMA_VERSION;
use cls_contracts::http::Accepted;
use cls_contracts::read_model::Target;
use cls_contracts::{CommandEnvelope, EventEnvelope, Module, Problem, ProblemCode, Reply};
use cls_readmodel::{ReadModel, Staged};
use cls_runtime::secret::SecretBox;
use cls_store::inbox::{self, Claim, NewCommand};
use cls_store::{PgPool, audit, effects, outbox};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use cls_bus::Link;
use lapin::{BasicProperties, Channel};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::command::{Audit, CommandContext, Dispatch, HandleError, NewEvent};

/// How long a transient failure is retried in place before the delivery is handed back to the
/// broker (which counts it toward the delivery limit).
const RETRY_WINDOW: Duration = Duration::from_secs(120);

/// What the consumer needs, shared by every in-flight command.
pub struct CommandConsumer {
    pub module: Module,
    pub queue: String,
    pub pool: PgPool,
    pub dispatch: Dispatch,
    pub secrets: SecretBox,
    pub concurrency: u16,
    pub consuming: Arc<AtomicBool>,
    pub outcomes: Family<Vec<(String, String)>, Counter>,
    /// From the delivery decoded to the reply decided (transaction, retries, read-your-writes).
    pub handling: cls_runtime::metrics::LatencyFamily,
    /// Wakes this process's outbox relay after a commit ([`crate::relay`]).
    pub outbox_ready: Arc<tokio::sync::Notify>,
    pub read_model: Arc<ReadModel>,
}

/// One successful attempt at a command.
struct Transacted {
    reply: Reply,
    /// What the reply's 2xx requires the read model to reflect.
    targets: Vec<Target>,
    /// The targets' documents, read inside the transaction.
    staged: Option<Staged>,
    /// Whether the transaction left events in the outbox.
    wrote_events: bool,
}

/// What to tell the broker about a delivery once it is handled.
pub(crate) enum Settle {
    Ack,
    /// Give it back to the broker (shutdown, or retries exhausted).
    Requeue,
    /// Dead-letter it.
    Reject,
}

impl Settle {
    /// Acks, requeues or rejects the delivery. A channel that died after the commit is not an
    /// error: the broker redelivers and the inbox deduplicates.
    pub(crate) async fn settle(self, delivery: &Delivery) {
        let acked = match self {
            Settle::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
            Settle::Requeue => delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await,
            Settle::Reject => delivery.acker.reject(BasicRejectOptions { requeue: false }).await,
        };
        match acked {
            Ok(true) => {}
            Ok(false) => tracing::debug!("acknowledgement not sent: channel closed"),
            Err(error) => tracing::warn!(%error, "acknowledgement failed"),
        }
    }
}

/// How an attempt that kept failing ended.
pub(crate) enum GaveUp {
    /// Still transient at the end of the retry window, or shutting down: hand it back.
    Transient,
    /// A fatal failure (or a rejection where none is expected).
    Failed(HandleError),
}

/// Runs `attempt` until it succeeds or fails for good. Transient failures are retried in place
/// with exponential backoff (100 ms doubling to 5 s) for up to [`RETRY_WINDOW`], never in a hot
/// loop; the delivery stays unacked meanwhile, so the prefetch bound pauses the consumer.
pub(crate) async fn with_retries<T, F, Fut>(shutdown: &CancellationToken, mut attempt: F) -> Result<T, GaveUp>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, HandleError>>,
{
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(HandleError::Transient(error)) => {
                if shutdown.is_cancelled() || started.elapsed() > RETRY_WINDOW {
                    tracing::warn!(error = format!("{error:#}"), "giving the message back to the broker");
                    return Err(GaveUp::Transient);
                }
                tracing::warn!(error = format!("{error:#}"), retry_in = ?backoff, "transient failure; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(other) => return Err(GaveUp::Failed(other)),
        }
    }
}

/// What caused a transaction's effects: the audit entries' actor and request, the events'
/// correlation and causation.
pub struct Cause<'a> {
    pub actor_kind: &'static str,
    pub actor_id: Option<String>,
    /// The HTTP request id behind it all: audit `request_id`, events' `correlation_id`.
    pub correlation_id: Option<&'a str>,
    /// The command that ran, if one did (audit `command_id`).
    pub command_id: Option<Uuid>,
    /// The message that caused the events: a command id, or the id of the event reacted to
    /// (none for scheduled work such as the expiry sweep).
    pub causation_id: Option<String>,
    pub now: chrono::DateTime<Utc>,
}

/// Appends audit entries and outbox events in the caller's transaction, filling in who, the
/// request and the event envelopes.
pub async fn append_effects(tx: &mut sqlx::PgConnection, cause: &Cause<'_>, events: Vec<NewEvent>, audit: Vec<Audit>) -> Result<(), HandleError> {
    let (audit, events) = effects_of(cause, events, audit, None);
    effects::record(tx, &audit, &events, None, &[]).await?;
    Ok(())
}

/// The rows a transaction's audit entries and events become. `targets` (encoded, as the inbox
/// stores them): what the read model must hold for this transaction to be visible, when the
/// writer makes it visible itself (a command's read-your-writes); every event carries them, so
/// the projector can tell from Redis alone that it has nothing to do.
fn effects_of(
    cause: &Cause<'_>,
    events: Vec<NewEvent>,
    audit: Vec<Audit>,
    targets: Option<&[String]>,
) -> (Vec<audit::AuditEntry>, Vec<outbox::NewOutboxEvent>) {
    let read_model_targets = targets.filter(|t| !t.is_empty()).map(|t| t.join(","));
    let entries: Vec<audit::AuditEntry> = audit
        .into_iter()
        .map(|a| audit::AuditEntry {
            id: Uuid::now_v7(),
            brand_id: a.brand_id,
            actor_kind: cause.actor_kind.to_owned(),
            actor_id: cause.actor_id.clone(),
            action: a.action.to_owned(),
            target_type: a.target_type.to_owned(),
            target_id: a.target_id,
            request_id: cause.correlation_id.map(str::to_owned),
            command_id: cause.command_id,
            status_before: a.status_before,
            status_after: a.status_after,
            reason: a.reason,
            at: cause.now,
        })
        .collect();
    let events: Vec<outbox::NewOutboxEvent> = events
        .into_iter()
        .map(|e| {
            let event_id = Uuid::now_v7();
            let event_type = e.event.event_type();
            let envelope = EventEnvelope {
                id: event_id.to_string(),
                schema_version: EVENT_SCHEMA_VERSION,
                occurred_at: cls_contracts::format_time(cause.now),
                brand_id: e.brand_id.map(|b| b.to_string()),
                aggregate_id: e.aggregate_id.to_string(),
                aggregate_version: e.aggregate_version,
                correlation_id: cause.correlation_id.map(str::to_owned),
                causation_id: cause.causation_id.clone(),
                event: e.event,
            };
            outbox::NewOutboxEvent {
                event_id,
                event_type,
                aggregate_id: e.aggregate_id,
                aggregate_version: e.aggregate_version,
                payload: cls_contracts::encode(&envelope),
                correlation_id: cause.correlation_id.map(str::to_owned),
                read_model_targets: read_model_targets.clone(),
            }
        })
        .collect();
    (entries, events)
}

impl CommandConsumer {
    /// Consumes until `shutdown`, re-opening the channel whenever it dies; then waits (bounded)
    /// for in-flight commands to finish and ack.
    pub async fn run(self: Arc<Self>, consume: Arc<Link>, publish: Arc<Link>, shutdown: CancellationToken, drain: Duration) {
        let permits = Arc::new(Semaphore::new(self.concurrency as usize));
        while !shutdown.is_cancelled() {
            match self.consume_once(&consume, &publish, &permits, &shutdown).await {
                Ok(()) => {}
                Err(error) => {
                    self.consuming.store(false, Ordering::Relaxed);
                    tracing::warn!(queue = %self.queue, %error, "command consumer stopped; re-opening");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        self.consuming.store(false, Ordering::Relaxed);
        // In-flight commands hold permits; having them all back means everything was acked.
        let all = self.concurrency as u32;
        if tokio::time::timeout(drain, permits.acquire_many(all)).await.is_err() {
            tracing::warn!(queue = %self.queue, "in-flight commands still running at the end of the shutdown bound");
        }
    }

    async fn consume_once(
        self: &Arc<Self>,
        consume: &Link,
        publish: &Link,
        permits: &Arc<Semaphore>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let channel = consume.create_channel().await?;
        channel.basic_qos(self.concurrency, BasicQosOptions::default()).await?;
        let mut replies = publish.create_channel().await?;
        let mut deliveries = channel
            .basic_consume(self.queue.clone().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        self.consuming.store(true, Ordering::Relaxed);
        tracing::info!(queue = %self.queue, "consuming commands");
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("the broker cancelled the consumer"),
                },
            };
            // The reply channel lives on the publish connection, which may die on its own.
            if !replies.status().connected() {
                replies = publish.create_channel().await?;
            }
            let permit = permits.clone().acquire_owned().await.expect("semaphore never closed");
            let this = self.clone();
            let replies = replies.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                this.handle(delivery, &replies, &shutdown).await;
                drop(permit);
            });
        }
    }

    async fn handle(&self, delivery: Delivery, replies: &Channel, shutdown: &CancellationToken) {
        let (ack, reply) = self.process(&delivery, shutdown).await;
        if let (Some(reply), Some(reply_to)) = (reply, delivery.properties.reply_to().as_ref()) {
            let mut properties = BasicProperties::default().with_content_type(cls_bus::MSGPACK.into());
            if let Some(correlation) = delivery.properties.correlation_id() {
                properties = properties.with_correlation_id(correlation.clone());
            }
            let payload = cls_contracts::encode(&reply);
            // Direct reply-to is at-most-once; a lost reply becomes the gateway's 202.
            if let Err(error) = replies
                .basic_publish("".into(), reply_to.as_str().into(), BasicPublishOptions::default(), &payload, properties)
                .await
            {
                tracing::warn!(%error, "could not send the reply");
            }
        }
        // A channel that died after we committed: the broker redelivers and the inbox replays.
        ack.settle(&delivery).await;
    }

    /// Decides the reply and what to tell the broker.
    async fn process(&self, delivery: &Delivery, shutdown: &CancellationToken) -> (Settle, Option<Reply>) {
        let envelope: CommandEnvelope = match cls_contracts::decode(&delivery.data) {
            Ok(e) => e,
            Err(error) => {
                tracing::error!(queue = %self.queue, %error, "dead-lettering an undecodable command");
                self.count("?", "dead_lettered");
                return (Settle::Reject, None);
            }
        };
        let command_type = envelope.command.routing_key();
        let Ok(command_id) = envelope.command_id.parse::<Uuid>() else {
            tracing::error!(command_type, "dead-lettering a command without a valid id");
            self.count(command_type, "dead_lettered");
            return (Settle::Reject, None);
        };
        let span = tracing::info_span!("command", %command_id, command_type, request_id = %envelope.request_id);
        // Instrumented, not entered: the span must follow this future across awaits and threads.
        async {
            if envelope.schema_version != COMMAND_SCHEMA_VERSION || envelope.command.module() != self.module {
                let why = format!("schema version {} / module {:?} not handled here", envelope.schema_version, envelope.command.module());
                return self.dead_letter(command_id, &envelope, &why).await;
            }

            let started = std::time::Instant::now();
            match with_retries(shutdown, || self.transact(command_id, &envelope)).await {
                Ok(done) => {
                    self.count(command_type, if done.reply.replayed { "replayed" } else { "handled" });
                    let reply = self.visible(done.reply, &done.targets, done.staged).await;
                    // Its events are in the outbox: this process's relay publishes them now that
                    // the read model holds the change (the relay's transaction would otherwise
                    // compete with the read-model write the caller waits for).
                    if done.wrote_events {
                        self.outbox_ready.notify_one();
                    }
                    self.handling
                        .get_or_create(&vec![("command".to_owned(), command_type.to_owned())])
                        .observe(started.elapsed().as_secs_f64());
                    (Settle::Ack, Some(reply))
                }
                Err(GaveUp::Transient) => {
                    self.count(command_type, "requeued");
                    (Settle::Requeue, None)
                }
                Err(GaveUp::Failed(HandleError::Fatal(error))) => self.dead_letter(command_id, &envelope, &format!("{error:#}")).await,
                Err(GaveUp::Failed(other)) => unreachable!("rejections are stored outcomes, not errors: {other:?}"),
            }
        }
        .instrument(span)
        .await
    }

    /// Read-your-writes: a 2xx goes out only once every read reflects it; otherwise the caller
    /// gets 202 and polls the operation (committed; it reads `succeeded` once visible).
    async fn visible(&self, reply: Reply, targets: &[Target], staged: Option<Staged>) -> Reply {
        if !(200..300).contains(&reply.status) {
            return reply;
        }
        // The documents read in the transaction; if they cannot be written, a fresh snapshot.
        if let Some(staged) = staged
            && self.read_model.apply_staged(&staged).await.is_ok()
        {
            return reply;
        }
        if crate::visibility::make_visible(&self.read_model, &self.pool, targets).await {
            return reply;
        }
        self.count("?", "accepted_not_visible");
        let body = serde_json::to_string(&Accepted { operation_id: reply.command_id.clone() }).expect("serializable");
        Reply { status: 202, body, ..reply }
    }

    /// Records the failed operation, answers 500 so the caller is not left waiting, and
    /// dead-letters the delivery.
    async fn dead_letter(&self, command_id: Uuid, envelope: &CommandEnvelope, why: &str) -> (Settle, Option<Reply>) {
        tracing::error!(failure = why, "dead-lettering the command");
        self.count(envelope.command.routing_key(), "dead_lettered");
        let principal = envelope.principal.scope();
        let record = NewCommand {
            command_id,
            module: self.module.as_str(),
            command_type: envelope.command.routing_key(),
            principal: &principal,
            request_hash: &envelope.request_hash,
            request_id: &envelope.request_id,
            received_at: Utc::now(),
        };
        if let Ok(mut conn) = self.pool.acquire().await
            && let Err(error) = inbox::record_failure(&mut conn, &record, why, Utc::now()).await
        {
            tracing::warn!(%error, "could not record the failed operation");
        }
        let problem = Problem::new(ProblemCode::Internal, "The command could not be processed.", &envelope.request_id);
        let reply = Reply { command_id: command_id.to_string(), status: 500, body: problem.to_json(), replayed: false };
        (Settle::Reject, Some(reply))
    }

    /// One attempt: the whole command in one transaction. Returns the reply to send and what it
    /// must make visible in the read model.
    async fn transact(&self, command_id: Uuid, envelope: &CommandEnvelope) -> Result<Transacted, HandleError> {
        let now = Utc::now();
        let principal = envelope.principal.scope();
        let record = NewCommand {
            command_id,
            module: self.module.as_str(),
            command_type: envelope.command.routing_key(),
            principal: &principal,
            request_hash: &envelope.request_hash,
            request_id: &envelope.request_id,
            received_at: now,
        };
        let mut tx = self.pool.begin().await?;
        if let Claim::Existing(stored) = inbox::claim(&mut tx, &record).await? {
            tx.commit().await?;
            return Ok(self.replayed(command_id, envelope, stored));
        }
        let context = CommandContext {
            command_id,
            request_id: envelope.request_id.clone(),
            principal: envelope.principal.clone(),
            now,
            command: envelope.command.clone(),
        };
        let mut handled = match (self.dispatch)(&mut tx, &context).await {
            Ok(handled) => handled,
            Err(HandleError::Rejected { code, detail, errors, extra }) => {
                // Nothing the use case did may stay: the whole transaction goes, and the refusal
                // is stored under a fresh claim. (A savepoint would keep the claim, at two round
                // trips on every command that is not refused.)
                tx.rollback().await?;
                let problem = Problem { errors, extra, ..Problem::new(code, detail, &envelope.request_id) };
                return self.store_refusal(command_id, envelope, &record, problem).await;
            }
            Err(other) => return Err(other),
        };
        let (status, body, secret) = (handled.status, handled.body.to_string(), handled.secret);
        let targets = crate::visibility::draw_versions(&mut tx, &std::mem::take(&mut handled.touched)).await?;
        // Redis trouble: the change is made visible (or answered 202) after the commit.
        let staging = self.read_model.staging(&targets).await.unwrap_or(None);
        let snapshot_keys = staging.as_ref().map(cls_readmodel::Staging::key_ids).unwrap_or_default();
        let encoded: Vec<String> = targets.iter().map(Target::encode).collect();
        let (audit, events) = effects_of(&self.cause(&context), handled.events, handled.audit, Some(&encoded));
        let stored = if secret { self.secrets.seal(body.as_bytes()) } else { body.clone().into_bytes() };
        let outcome = inbox::Outcome { status, body: &stored, sealed: secret, read_model_targets: &encoded };
        let command = effects::CommandOutcome { command_id, outcome: &outcome, completed_at: now };
        let snapshots = effects::record(&mut tx, &audit, &events, Some(&command), &snapshot_keys).await?;
        let staged = match staging {
            Some(staging) => Some(staging.finish(&mut tx, snapshots).await?),
            None => None,
        };
        tx.commit().await?;
        Ok(Transacted {
            reply: Reply { command_id: command_id.to_string(), status, body, replayed: false },
            targets,
            staged,
            wrote_events: !events.is_empty(),
        })
    }

    /// Stores a refused command's problem as its outcome, in a transaction of its own (the use
    /// case's was rolled back). A duplicate that claimed the command in between wins: its
    /// outcome is replayed.
    async fn store_refusal(&self, command_id: Uuid, envelope: &CommandEnvelope, record: &NewCommand<'_>, problem: Problem) -> Result<Transacted, HandleError> {
        let body = problem.to_json();
        let mut tx = self.pool.begin().await?;
        if let Claim::Existing(stored) = inbox::claim(&mut tx, record).await? {
            tx.commit().await?;
            return Ok(self.replayed(command_id, envelope, stored));
        }
        let outcome = inbox::Outcome { status: problem.status, body: body.as_bytes(), sealed: false, read_model_targets: &[] };
        inbox::complete(&mut tx, command_id, &outcome, record.received_at).await?;
        tx.commit().await?;
        Ok(Transacted {
            reply: Reply { command_id: command_id.to_string(), status: problem.status, body, replayed: false },
            targets: Vec::new(),
            staged: None,
            wrote_events: false,
        })
    }

    /// A command seen before: its stored outcome, whose 2xx must be visible too (the first
    /// answer may have been a 202).
    fn replayed(&self, command_id: Uuid, envelope: &CommandEnvelope, stored: inbox::StoredCommand) -> Transacted {
        let targets = stored.read_model_targets.iter().filter_map(|t| Target::decode(t)).collect();
        Transacted { reply: self.replay(command_id, envelope, stored), targets, staged: None, wrote_events: false }
    }

    /// Who and what caused a command's audit entries and events.
    fn cause<'a>(&self, context: &'a CommandContext) -> Cause<'a> {
        let (actor_kind, actor_id) = match &context.principal {
            cls_contracts::Principal::Admin => ("admin", None),
            cls_contracts::Principal::ApiKey { api_key_id, .. } => ("api_key", Some(api_key_id.clone())),
            cls_contracts::Principal::LicenseKey { .. } => ("license_key", None),
        };
        Cause {
            actor_kind,
            actor_id,
            correlation_id: Some(&context.request_id),
            command_id: Some(context.command_id),
            causation_id: Some(context.command_id.to_string()),
            now: context.now,
        }
    }

    /// The reply for a command seen before.
    fn replay(&self, command_id: Uuid, envelope: &CommandEnvelope, stored: inbox::StoredCommand) -> Reply {
        let reply = |status: u16, body: String, replayed: bool| Reply { command_id: command_id.to_string(), status, body, replayed };
        if stored.request_hash != envelope.request_hash {
            let problem = Problem::new(
                ProblemCode::IdempotencyKeyReused,
                "This Idempotency-Key was already used with a different request.",
                &envelope.request_id,
            );
            return reply(422, problem.to_json(), false);
        }
        match (stored.succeeded(), stored.response_status, stored.response_body) {
            (true, Some(status), Some(body)) => {
                let body = if stored.response_sealed {
                    match self.secrets.open(&body) {
                        Ok(plain) => plain,
                        Err(error) => {
                            tracing::error!(%error, "stored outcome cannot be opened; is CLS_SECRET_KEY the same everywhere, and was it rotated without CLS_SECRET_KEY_PREVIOUS?");
                            let problem = Problem::new(ProblemCode::Internal, "The stored outcome cannot be read.", &envelope.request_id);
                            return reply(500, problem.to_json(), false);
                        }
                    }
                } else {
                    body
                };
                reply(status as u16, String::from_utf8_lossy(&body).into_owned(), true)
            }
            // Dead-lettered before: its operation reads `failed`.
            _ => {
                let problem = Problem::new(ProblemCode::Internal, "The command could not be processed.", &envelope.request_id);
                reply(500, problem.to_json(), true)
            }
        }
    }

    fn count(&self, command_type: &str, outcome: &str) {
        self.outcomes
            .get_or_create(&vec![("command".to_owned(), command_type.to_owned()), ("outcome".to_owned(), outcome.to_owned())])
            .inc();
    }
}
