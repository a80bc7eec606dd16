//! End-to-end tests: the real services against real PostgreSQL, RabbitMQ and Redis, one
//! isolated cluster per test (see `cls_tests::TestCluster`). One test binary on purpose: it
//! links once.

mod activations;
mod asyncapi;
mod backpressure;
mod brands;
mod cli;
mod bus;
mod commands;
mod connections;
mod crash;
mod dlq;
mod events;
mod import_export;
mod hardening;
mod isolation;
mod licenses;
mod limits;
mod lifecycle;
mod openapi;
mod protocol;
mod read_model;
mod secrets;
mod shutdown;
mod store;
mod validation;
