//! Gauges a worker samples in the background for its `/metrics`: the outbox lag (age of the
//! oldest unpublished event) and the depth of the dead-letter queues it feeds. Sampling, not
//! computing at scrape time, because both need I/O and a scrape must not wait on a sick database
//! or broker; a failed sample leaves the last value and says so at debug level.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use cls_bus::Link;
use cls_store::PgPool;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

const EVERY: Duration = Duration::from_secs(5);

pub(crate) struct Gauges {
    outbox_lag: Gauge<f64, AtomicU64>,
    dlq_depth: Family<Vec<(String, String)>, Gauge>,
    dead_letter_queues: Vec<String>,
}

impl Gauges {
    pub fn new(dead_letter_queues: Vec<String>) -> Gauges {
        Gauges { outbox_lag: Gauge::default(), dlq_depth: Family::default(), dead_letter_queues }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register("outbox_lag_seconds", "Age of the oldest event not yet published from the outbox", self.outbox_lag.clone());
        registry.register("dlq_depth", "Messages waiting in a dead-letter queue this worker feeds", self.dlq_depth.clone());
    }

    pub async fn run(self, pool: PgPool, amqp: Arc<Link>, shutdown: CancellationToken) {
        loop {
            self.sample(&pool, &amqp).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(EVERY) => {}
            }
        }
    }

    async fn sample(&self, pool: &PgPool, amqp: &Link) {
        let lag = async {
            let mut conn = pool.acquire().await?;
            cls_store::outbox::oldest_pending_age_seconds(&mut conn).await.map_err(anyhow::Error::from)
        };
        match tokio::time::timeout(EVERY, lag).await {
            Ok(Ok(seconds)) => {
                self.outbox_lag.set(seconds);
            }
            Ok(Err(error)) => tracing::debug!(error = format!("{error:#}"), "cannot sample the outbox lag"),
            Err(_) => tracing::debug!("sampling the outbox lag timed out"),
        }
        let depths = async {
            let conn = amqp.connection().await?;
            let mut depths = Vec::with_capacity(self.dead_letter_queues.len());
            for queue in &self.dead_letter_queues {
                depths.push((queue, cls_bus::dlq::depth(&conn, queue).await?));
            }
            anyhow::Ok(depths)
        };
        match tokio::time::timeout(EVERY, depths).await {
            Ok(Ok(depths)) => {
                for (queue, depth) in depths {
                    self.dlq_depth.get_or_create(&vec![("queue".to_owned(), queue.clone())]).set(i64::from(depth.unwrap_or(0)));
                }
            }
            Ok(Err(error)) => tracing::debug!(error = format!("{error:#}"), "cannot sample the dead-letter queues"),
            Err(_) => tracing::debug!("sampling the dead-letter queues timed out"),
        }
    }
}
