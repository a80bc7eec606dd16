#!/usr/bin/env bash
# Property-based API tests with Schemathesis against a whole local cluster (`cls up`), driven by
# the OpenAPI document the gateway serves (docs/openapi.json at /openapi.json). Every answer must
# not be a 5xx and must conform to the document: status, content type, headers, body schema.
#
#   bash scripts/schemathesis.sh            # exit 0 only if both runs pass
#
# Needs PostgreSQL, Redis and RabbitMQ on localhost (scripts/services.sh ensure), python3 and
# the psql / redis-cli / rabbitmqctl clients (for the cleanup). The cluster runs in its own
# namespace, database and ports, and is stopped and removed on exit.
#
# Knobs: SCHEMATHESIS_MAX_EXAMPLES (default 50 per operation), SCHEMATHESIS_SEED (default fixed,
# so a failure reproduces), SCHEMATHESIS_REPORT_DIR (default target/schemathesis), CLS_SKIP_BUILD=1
# (use the binaries already in target/debug instead of `cargo build --bins`).
set -euo pipefail
cd "$(dirname "$0")/.."

readonly SCHEMATHESIS_VERSION=4.32.5
readonly VENV=target/py
readonly MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-50}"
readonly SEED="${SCHEMATHESIS_SEED:-20240601}"
readonly REPORT_DIR="${SCHEMATHESIS_REPORT_DIR:-target/schemathesis}"
readonly CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance

log() { printf '[schemathesis] %s\n' "$*"; }

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
if [[ ${CLS_SKIP_BUILD:-0} != 1 ]]; then
  cargo build --bins --quiet
fi

# A namespace, database and ports of this run only.
suffix="$(date +%s)$$"
namespace="st$suffix"
database="cls_st_$suffix"
read -r http_port query_port ops_base < <(python3 - <<'EOF'
import socket
def free(port=0):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return None
        return s.getsockname()[1]
http, query = free(), free()
# `cls up` gives the gateway's ops listener BASE, the query service BASE+1, workers BASE+10...
base = next(b for b in range(20000, 60000, 97) if all(free(b + o) for o in (0, 1, 10, 11, 12, 13)))
print(http, query, base)
EOF
)
base_url="http://127.0.0.1:$http_port"
export CLS_NAMESPACE="$namespace"
export CLS_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$database"
export CLS_HTTP_ADDR="127.0.0.1:$http_port"
export CLS_QUERY_ADDR="127.0.0.1:$query_port"
export CLS_QUERY_URL="http://127.0.0.1:$query_port"
export CLS_ADMIN_TOKEN="schemathesis-admin-$suffix"
export CLS_LOG="${CLS_LOG:-warn}"
mkdir -p "$REPORT_DIR"
cluster_log="$REPORT_DIR/cluster.log"

cluster_pid=""
cleanup() {
  local status=$?
  if [[ -n $cluster_pid ]] && kill -0 "$cluster_pid" 2>/dev/null; then
    log "stopping the cluster"
    kill -TERM "$cluster_pid" 2>/dev/null || true
    wait "$cluster_pid" 2>/dev/null || true
  fi
  # Best effort: the namespace's queues and exchanges, its Redis keys, its database.
  # (rabbitmqctl reads stdin: keep it off the list being looped over.)
  timeout 60 rabbitmqctl -q list_queues name </dev/null 2>/dev/null | grep "^$namespace\." | while read -r queue; do
    timeout 30 rabbitmqctl -q delete_queue "$queue" </dev/null >/dev/null 2>&1 || true
  done
  for exchange in commands events dlx; do
    timeout 30 rabbitmqctl -q eval </dev/null >/dev/null 2>&1 \
      "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$namespace.$exchange\">>), false, <<\"cls\">>)." || true
  done
  redis-cli --scan --pattern "$namespace:*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
  dropdb -h 127.0.0.1 -U postgres --if-exists --force "$database" 2>/dev/null || true
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting the cluster on $base_url (namespace $namespace; log: $cluster_log)"
./target/debug/cls up --ops-base-port "$ops_base" >"$cluster_log" 2>&1 &
cluster_pid=$!
for _ in $(seq 1 300); do
  if curl -fsS "$base_url/ready" >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$cluster_pid" 2>/dev/null; then
    tail -n 30 "$cluster_log" >&2
    log "the cluster exited before it was ready"
    exit 1
  fi
  sleep 0.3
done
curl -fsS "$base_url/ready" >/dev/null || { tail -n 30 "$cluster_log" >&2; log "the cluster is not ready"; exit 1; }

# A brand whose key may use every brand route, and the product the document's examples name.
api_key="$(./target/debug/cls brand create --slug "st-$suffix" --name Schemathesis --key-prefix ST \
  --scopes licenses:write,ecosystem:read --url "$base_url" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')"
curl -fsS -o /dev/null -X POST "$base_url/v1/products" -H "X-API-Key: $api_key" -H 'Content-Type: application/json' \
  -d '{"code": "seo-pro", "name": "SEO Pro"}'

# From the report directory, where Schemathesis keeps its crash cache.
schemathesis="$PWD/$VENV/bin/schemathesis"
run() {
  local name=$1
  shift
  log "run: $name"
  (cd "$REPORT_DIR" && "$schemathesis" --no-color run "$base_url/openapi.json" --url "$base_url" \
    --checks "$CHECKS" --max-examples "$MAX_EXAMPLES" --seed "$SEED" --workers 1 \
    --request-timeout 30 --generation-database none --report junit --report-junit-path "$name.xml" "$@")
}
status=0
run brand --exclude-path-regex '^/v1/admin/' -H "X-API-Key: $api_key" || status=1
run admin --include-path-regex '^/v1/admin/' -H "X-Admin-Token: $CLS_ADMIN_TOKEN" || status=1
# A 202 is a documented answer, so a change the read model could not take passes the checks
# above; the services say so in their own log.
if grep -qE 'WARN|ERROR' "$cluster_log"; then
  grep -E 'WARN|ERROR' "$cluster_log" | tail -n 20 >&2
  log "the services logged warnings or errors during the runs (see $cluster_log)"
  status=1
fi
exit "$status"
