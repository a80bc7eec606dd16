//! cls-tests
