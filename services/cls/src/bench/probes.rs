//! Evidence that warm validations never reach Postgres, from two sides:
//!
//! - the query service's own counters (`/metrics` on its ops listener): license-key documents
//!   answered by Redis (`cls_read_model_hits_total`) against those read from Postgres
//!   (`..._misses_total`, `..._fallbacks_total`). Exact, per request.
//! - the database's transaction counter (`pg_stat_database.xact_commit + xact_rollback`,
//!   `tup_returned`) over the run: every transaction of every client, so it also counts the
//!   cluster's background work (outbox relays polling, the sweeper), and is shown per 1000
//!   validations: far below one means the validations themselves did not query.
//!   `pg_stat_statements` would attribute queries, but it must be preloaded at server start,
//!   which this benchmark does not ask of anyone. Backends publish their counters up to a second
//!   late while busy, so each reading waits for that first.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use sqlx::{Connection, PgConnection};

use crate::http::{self, Client};

/// How long backends may take to publish their statistics (PostgreSQL flushes them at most
/// once a second while busy).
const STATS_DELAY: Duration = Duration::from_millis(1100);

/// Read-model counters of the query service (license-key documents).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ReadModelCounters {
    pub hits: u64,
    pub misses: u64,
    pub fallbacks: u64,
}

impl ReadModelCounters {
    pub fn since(self, before: ReadModelCounters) -> ReadModelCounters {
        ReadModelCounters {
            hits: self.hits.saturating_sub(before.hits),
            misses: self.misses.saturating_sub(before.misses),
            fallbacks: self.fallbacks.saturating_sub(before.fallbacks),
        }
    }
}

/// Reads the counters from the query service's `/metrics`; `None` if it cannot be reached.
pub async fn read_model_counters(client: &Client, metrics_url: &str) -> Option<ReadModelCounters> {
    let answer = http::probe(client, metrics_url).await?;
    if !answer.status.is_success() {
        return None;
    }
    let text = String::from_utf8_lossy(&answer.body);
    let value = |name: &str| -> u64 {
        let prefix = format!("cls_read_model_{name}_total{{doc=\"license_key\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse::<f64>().ok()).map_or(0, |v| v as u64)
    };
    Some(ReadModelCounters { hits: value("hits"), misses: value("misses"), fallbacks: value("fallbacks") })
}

/// Database-wide activity counters.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DbCounters {
    pub transactions: i64,
    pub tuples_returned: i64,
}

impl DbCounters {
    pub fn since(self, before: DbCounters) -> DbCounters {
        DbCounters {
            transactions: self.transactions - before.transactions,
            tuples_returned: self.tuples_returned - before.tuples_returned,
        }
    }
}

pub struct Database {
    conn: PgConnection,
}

impl Database {
    pub async fn connect(url: &str) -> anyhow::Result<Database> {
        let conn = PgConnection::connect(url).await.context("cannot connect to the cluster's database")?;
        Ok(Database { conn })
    }

    /// The counters of the connected database, after waiting for backends to publish theirs.
    /// Our own reading is one transaction, subtracted by the caller if it cares.
    pub async fn counters(&mut self) -> anyhow::Result<DbCounters> {
        tokio::time::sleep(STATS_DELAY).await;
        let (transactions, tuples_returned): (i64, i64) = sqlx::query_as(
            "SELECT (xact_commit + xact_rollback)::bigint, tup_returned::bigint FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&mut self.conn)
        .await
        .context("cannot read pg_stat_database")?;
        Ok(DbCounters { transactions, tuples_returned })
    }

    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_subtract() {
        let before = ReadModelCounters { hits: 10, misses: 2, fallbacks: 0 };
        let after = ReadModelCounters { hits: 110, misses: 2, fallbacks: 0 };
        let d = after.since(before);
        assert_eq!((d.hits, d.misses, d.fallbacks), (100, 0, 0));
    }
}
