#!/usr/bin/env bash
# The project's test command (README "Test it"): builds the service binaries (the crash tests
# SIGKILL real worker processes), then runs every test with nextest against the local
# PostgreSQL, RabbitMQ and Redis (scripts/services.sh ensure starts them): first everything but
# the fault-injection suite, in parallel; then the fault-injection suite (tests/faults), which
# stops and restarts those services, alone and one test at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
status=0
cargo nextest run --workspace --no-fail-fast -E 'not binary(faults)' "$@" || status=$?
cargo nextest run -p cls-tests --test faults --no-fail-fast --test-threads 1 "$@" || status=$?
exit "$status"
