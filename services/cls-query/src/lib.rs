//! cls-query
