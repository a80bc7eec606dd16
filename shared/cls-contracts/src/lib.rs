//! Wire contracts: every type CLS serializes lives here, versioned and separate from the domain.
//!
//! - [`command`]: the MessagePack command envelope the gateway publishes and workers consume, and
//!   the [`reply`](command::Reply) a worker sends back.
//! - [`event`]: the MessagePack event envelope of SPEC §5 and every event payload.
//! - [`http`]: JSON bodies of the public API (requests and responses).
//! - [`problem`]: RFC 9457 problem bodies and the stable code enum of SPEC §3.
//! - [`internal`]: the gateway ↔ query service contract.
//! - [`read_model`]: the documents of the Redis read model and the targets a command makes visible.
//!
//! Messages are encoded with [`encode`] (`rmp_serde::to_vec_named`: structs as maps), so a reader
//! ignores fields it does not know and a writer may add optional ones. Ids and times are strings
//! inside messages so that any language can read them.

pub mod command;
pub mod event;
pub mod http;
pub mod internal;
pub mod problem;
pub mod read_model;
pub mod strict_json;

pub use command::{CommandEnvelope, Module, Principal, Reply};
pub use event::{Event, EventEnvelope};
pub use problem::{Problem, ProblemCode};

/// Encodes a message as MessagePack with named fields (never positional arrays).
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("contract types always encode")
}

/// Decodes a MessagePack message.
pub fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(bytes).map_err(|e| DecodeError(e.to_string()))
}

/// A message that could not be decoded: a poison message for whoever received it.
#[derive(Debug, thiserror::Error)]
#[error("undecodable message: {0}")]
pub struct DecodeError(String);

/// Formats a time the way every message and response carries it: RFC 3339, UTC, microseconds.
pub fn format_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Parses a time written by [`format_time`] (or any RFC 3339 time), as UTC.
pub fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&chrono::Utc))
}
