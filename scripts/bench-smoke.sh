#!/usr/bin/env bash
# `cls bench` (issue 8) on a private cluster: a smoke run for CI, or the full benchmark.
#
# Starts a cluster with `cls up` in its own namespace, database and ports (so it runs beside
# anything else on the machine), runs the benchmark against it, and tears everything down.
#
#   bash scripts/bench-smoke.sh          smoke: every scenario and reference for 2 s at
#                                        concurrency 4 (debug binaries: cargo build --bins); fails
#                                        if the benchmark fails or a scenario is missing or answered
#                                        nothing. It asserts no timing.
#   bash scripts/bench-smoke.sh --full [cls bench options]
#                                        the figures of docs/benchmarks.md: release binaries
#                                        (cargo build --release --bins), `cls bench --concurrency 1,64`
#                                        (10 s measured per run), the table on stdout and the JSON in
#                                        target/bench/latest.json. Extra options go to `cls bench`.
#
# CLS_BIN_DIR overrides where the binaries are.
set -euo pipefail
cd "$(dirname "$0")/.."

full=
if [ "${1:-}" = "--full" ]; then full=1; shift; fi
if [ -n "$full" ]; then bin=${CLS_BIN_DIR:-./target/release}; else bin=${CLS_BIN_DIR:-./target/debug}; fi
for b in cls cls-gateway cls-query cls-brands-worker cls-licenses-worker cls-activations-worker; do
  [ -x "$bin/$b" ] || { echo "bench-smoke: $bin/$b is missing: build first (cargo build --bins; --release for --full)" >&2; exit 1; }
done

suffix=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
ns="bsmoke$suffix"
work=$(mktemp -d)

# A free port: one nobody listens on now (ports stay unbound until the cluster takes them, so
# this only fails if another process grabs one in between).
listening() { ss -Htln | awk '{print $4}' | sed 's/.*://' ; }
free_ports() { # N consecutive free ports in 20000-59999; prints the first
  local n=$1 base used
  used=$(listening)
  for _ in $(seq 50); do
    base=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    if ! seq "$base" $((base + n - 1)) | grep -qxF -f <(printf '%s\n' $used); then echo "$base"; return; fi
  done
  echo "bench-smoke: no free ports" >&2; exit 1
}
http_port=$(free_ports 2)
ops_base=$(free_ports 20)

export CLS_NAMESPACE="$ns"
export CLS_DATABASE_URL="postgres://postgres@127.0.0.1:5432/cls_$ns"
export CLS_HTTP_ADDR="127.0.0.1:$http_port"
export CLS_QUERY_ADDR="127.0.0.1:$((http_port + 1))"
export CLS_ADMIN_TOKEN="bench-smoke-admin-$suffix"
# The benchmark sends far more than the default per-IP and per-key limits allow from one
# address: keep the limiter running, with limits it never reaches.
export CLS_RATE_IP=10000000 CLS_RATE_LICENSE_KEY=10000000 CLS_RATE_API_KEY=10000000
export CLS_LOG=${CLS_LOG:-warn}

up_pid=
cleanup() {
  local status=$?
  if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
    kill -TERM "$up_pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$up_pid" 2>/dev/null || true
  fi
  # The cluster's database, queues, exchanges and Redis keys.
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS \"cls_$ns\" WITH (FORCE)" >/dev/null 2>&1 || true
  if command -v rabbitmqctl >/dev/null; then
    rabbitmqctl list_queues -q --no-table-headers name 2>/dev/null | grep "^$ns\." \
      | xargs -r -P 4 -I{} rabbitmqctl delete_queue -q {} >/dev/null 2>&1 || true
    for exchange in commands events dlx; do
      rabbitmqctl -q eval \
        "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$ns.$exchange\">>), false, <<\"cls\">>)." >/dev/null 2>&1 || true
    done
  fi
  if command -v redis-cli >/dev/null; then
    redis-cli --scan --pattern "$ns:*" 2>/dev/null | xargs -r -n 200 redis-cli del >/dev/null 2>&1 || true
  fi
  if [ "$status" -ne 0 ] && [ -s "$work/up.log" ]; then
    echo "--- cls up log (last 40 lines) ---" >&2; tail -n 40 "$work/up.log" >&2
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

started=$(date +%s)
echo "bench-smoke: cls up in namespace $ns on 127.0.0.1:$http_port (ops from $ops_base)"
"$bin/cls" up --ops-base-port "$ops_base" >"$work/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 600); do
  if ! kill -0 "$up_pid" 2>/dev/null; then echo "bench-smoke: cls up exited" >&2; exit 1; fi
  grep -q "CLS is ready" "$work/up.log" && break
  sleep 0.2
done
grep -q "CLS is ready" "$work/up.log" || { echo "bench-smoke: the cluster was not ready within 120 s" >&2; exit 1; }

if [ -n "$full" ]; then
  mkdir -p target/bench
  # `--concurrency` accumulates in cls bench: the default only when the caller gave none.
  concurrency=(--concurrency 1,64)
  for arg in "$@"; do case $arg in --concurrency|--concurrency=*) concurrency=() ;; esac; done
  echo "bench-smoke: cls bench ${concurrency[*]} $*"
  "$bin/cls" bench --url "http://$CLS_HTTP_ADDR" "${concurrency[@]}" \
    --query-metrics "http://127.0.0.1:$((ops_base + 1))/metrics" --json-out target/bench/latest.json "$@"
  echo "bench-smoke: JSON in target/bench/latest.json ($(( $(date +%s) - started )) s)"
  exit 0
fi

echo "bench-smoke: cls bench --scenario all --duration 2s --warmup 1s --concurrency 4"
"$bin/cls" bench --url "http://$CLS_HTTP_ADDR" --scenario all --duration 2s --warmup 1s --concurrency 4 \
  --keys 20 --activation-keys 8 --query-metrics "http://127.0.0.1:$((ops_base + 1))/metrics" --json >"$work/bench.json"

# Every scenario and reference reported, each answered something, and memory was read.
python3 - "$work/bench.json" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
runs = {r["scenario"]: r for r in report["runs"]}
missing = [s for s in ("ref-redis", "validate", "mixed", "ref-rabbitmq", "activate", "provision") if s not in runs]
silent = [s for s, r in runs.items() if r["requests"] == 0]
for r in report["runs"]:
    print(f'  {r["scenario"]:<13} @{r["concurrency"]:<3} {r["throughput"]:>8.0f} req/s  p50 {r["latency_ms"]["p50"]:.2f} ms  '
          f'p99 {r["latency_ms"]["p99"]:.2f} ms  answers {r["outcomes"]}')
print(f'  memory of {len(report["memory"])} processes ({report["processes_found_by"]})')
problems = []
if missing: problems.append(f"missing scenarios: {missing}")
if silent: problems.append(f"scenarios without a single answer: {silent}")
if not report["memory"]: problems.append("no process memory reported")
if problems:
    print("bench-smoke: FAILED: " + "; ".join(problems), file=sys.stderr)
    sys.exit(1)
EOF
echo "bench-smoke: ok ($(( $(date +%s) - started )) s)"
