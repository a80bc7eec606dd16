//! The Postgres store: the only crate that holds SQL (SPEC §4's store port, Postgres now).
//!
//! Every function takes a `&mut PgConnection` (a transaction derefs to one), so a use case
//! writes its state, inbox row, audit entries and outbox events in one commit. Infrastructure
//! errors are translated here: a unique violation comes back as a domain conflict, a lost
//! connection as a transient [`StoreError`].

pub mod activations;
pub mod audit;
pub mod brands;
pub mod effects;
pub mod error;
pub mod inbox;
pub mod licenses;
pub mod outbox;
pub mod pool;
pub mod read_model;
pub mod views;

pub use error::{StoreError, WriteError};
pub use sqlx::{PgConnection, PgPool, Postgres, Transaction};
