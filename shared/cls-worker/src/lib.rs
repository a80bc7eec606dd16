//! The worker pattern every module worker shares (SPEC §4), written once:
//!
//! - [`command`]: what a module's use case returns ([`Handled`]) or fails with ([`HandleError`]).
//! - [`consumer`]: consume the module's command queue with bounded concurrency; per command one
//!   Postgres transaction holding the inbox row, the state change, its audit entries and its
//!   outbox events; commit, then reply, then ack. A duplicate delivery replays the stored outcome.
//! - [`events`]: consume a module's subscriber queue on `<ns>.events` (its reactions to other
//!   modules' events): per event one transaction holding the `processed_events` row, the
//!   reaction's changes, audit entries and outbox events; commit, then ack.
//! - [`relay`]: publish committed outbox rows to `<ns>.events` with confirms.
//! - [`retention`]: purges old stored outcomes and published events.
//! - [`visibility`]: read-your-writes: versions drawn in the transaction, documents written to the
//!   read model before a 2xx.
//! - [`Worker`]: connects everything, serves the ops listener and runs until shutdown.

pub mod command;
pub mod consumer;
pub mod events;
mod gauges;
pub mod relay;
pub mod retention;
pub mod visibility;
mod worker;

pub use command::{Audit, CommandContext, Dispatch, HandleError, Handled, NewEvent, Touched};
pub use consumer::{Cause, append_effects};
pub use events::{EventContext, EventDispatch, Reaction};
pub use worker::Worker;
