#!/usr/bin/env bash
# The project's test command (README "Test it"): builds the service binaries (the crash tests
# SIGKILL real worker processes), then runs every test with nextest against the local
# PostgreSQL, RabbitMQ and Redis (scripts/services.sh ensure starts them).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast "$@"
