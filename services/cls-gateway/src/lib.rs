//! cls-gateway
