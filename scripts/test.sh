#!/usr/bin/env bash
# The project's test command (README "Test it"), against the local PostgreSQL, RabbitMQ and
# Redis (scripts/services.sh ensure starts them):
#   1. builds the service binaries (the crash tests SIGKILL real worker processes; the scripts
#      below run the whole cluster as `cls up`);
#   2. every test but the fault-injection suite, in parallel (nextest);
#   3. the checks that run the real cluster from outside: a Python subscriber decoding every
#      event type, schemathesis against the OpenAPI document, a `cls bench` smoke run, and the
#      compose/Dockerfile checks that need no Docker engine;
#   4. the fault-injection suite (tests/faults), which stops and restarts those services,
#      alone and one test at a time.
# Every step runs even if an earlier one failed; the exit code says whether all passed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
status=0
step() {
  local started=$SECONDS rc=0
  printf '\n== %s ==\n' "$*"
  "$@" || rc=$?
  printf '== %s: exit %s in %ss ==\n' "$*" "$rc" "$((SECONDS - started))"
  if ((rc != 0)); then status=$rc; fi
}
step cargo nextest run --workspace --no-fail-fast -E 'not binary(faults)' "$@"
export CLS_SKIP_BUILD=1
step bash scripts/python-subscriber.sh
step bash scripts/schemathesis.sh
step bash scripts/bench-smoke.sh
step bash scripts/check-compose.sh
step cargo nextest run -p cls-tests --test faults --no-fail-fast --test-threads 1 "$@"
exit "$status"
