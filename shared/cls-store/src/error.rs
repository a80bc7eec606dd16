//! Store errors, classified for the worker: transient (retry later) or not.

/// A database failure, with the decision the caller needs: retry or not.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable, restarting, overloaded, or the transaction lost a race
    /// (serialization failure, deadlock): the same work may succeed on a retry.
    #[error("database temporarily unavailable")]
    Transient(#[source] sqlx::Error),
    /// Anything else: a bug or a violated invariant.
    #[error("database error")]
    Fatal(#[source] sqlx::Error),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_transient(&e) { StoreError::Transient(e) } else { StoreError::Fatal(e) }
    }
}

fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // serialization_failure, deadlock_detected, lock_not_available, query_canceled
            // (statement_timeout), too_many_connections, the shutdown family, connection exceptions.
            Some(code) => matches!(code, "40001" | "40P01" | "55P03" | "57014" | "53300" | "57P01" | "57P02" | "57P03")
                || code.starts_with("08"),
            None => false,
        },
        _ => false,
    }
}

/// The name of the unique constraint a statement violated, if that is what failed.
pub(crate) fn unique_violation(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => Some(db.constraint().unwrap_or_default().to_owned()),
        _ => None,
    }
}

/// A write that can hit a domain conflict (a unique constraint) or fail in the store.
#[derive(Debug, thiserror::Error)]
pub enum WriteError<C: std::fmt::Debug> {
    #[error("conflict: {0:?}")]
    Conflict(C),
    #[error(transparent)]
    Store(#[from] StoreError),
}
