//! cls-brands-worker
