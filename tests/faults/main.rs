//! The fault-injection suite (issue 6): the cluster under load while the machine's own
//! PostgreSQL, RabbitMQ or Redis is stopped, restarted or flushed. These tests stop shared
//! services, so they run on their own, one at a time, after the e2e suite
//! (`scripts/test.sh` runs this binary with one test thread). Every test restores what it
//! stopped, also when it fails ([`support::Restore`]).

mod backpressure;
mod load;
mod postgres;
mod rabbitmq;
mod redis;
mod support;
