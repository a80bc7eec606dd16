#!/usr/bin/env bash
# The Python subscriber example against a real cluster: every event type the public API can
# make CLS emit reaches a subscriber written in another language, decodes as docs/asyncapi.yaml
# says, and carries the AMQP properties it documents.
#
#   bash scripts/python-subscriber.sh
#
# 1. A venv at target/py (created only if missing; the requirements are installed into it, so
#    other scripts' packages stay) with examples/python-subscriber/requirements.txt.
# 2. `cargo build --workspace --bins` (skip with CLS_SKIP_BUILD=1), then `./target/debug/cls up`
#    in a namespace, database and Redis prefix of its own, on free ports, with a fast expiry sweep.
# 3. examples/python-subscriber/subscriber.py bound to `<ns>.events` with its own exclusive queue.
# 4. A scenario through the public HTTP API (curl) that produces every event type.
# 5. Polls (deadline) until the subscriber printed every expected type, checks the envelope and
#    the AMQP properties of each event, prints the types seen, and exits non-zero otherwise.
# Everything it started is stopped on exit, and the namespace's database, queues, exchanges
# and Redis keys are removed (KEEP=1 keeps them and the logs for a look).
#
# Needs the local PostgreSQL, RabbitMQ and Redis (scripts/services.sh ensure), python3 (3.11),
# curl; psql and redis-cli for the cleanup. Environment: CLS_AMQP_URL, CLS_REDIS_URL (defaults
# as in README), CLS_PG_URL (the server, default postgres://postgres@127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."

AMQP_URL=${CLS_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
REDIS_URL=${CLS_REDIS_URL:-redis://127.0.0.1:6379}
PG_URL=${CLS_PG_URL:-postgres://postgres@127.0.0.1:5432}
VENV=target/py
PY=$VENV/bin/python
NS="pysub$(date +%s)$$"
ADMIN_TOKEN="pysub-admin-$RANDOM$RANDOM$RANDOM"
LOGS=target/python-subscriber/$NS
# How long the cluster may take to report ready, and the events to arrive after the scenario.
READY_DEADLINE_S=120
EVENTS_DEADLINE_S=60

# Every event type the scenario below makes CLS emit: all of them (SPEC §5).
EXPECTED_TYPES="brand.created api_key.created api_key.revoked product.created license_key.created
license_key.rotated license_key.transferred license.provisioned license.renewed license.suspended
license.resumed license.cancelled license.expired license.seats_changed activation.created
activation.deactivated activation.rejected"

log() { printf '[python-subscriber] %s\n' "$*" >&2; }
fail() {
    log "FAIL: $*"
    for f in cluster.log subscriber.err; do
        if [ -s "$LOGS/$f" ]; then
            log "--- last lines of $LOGS/$f"
            tail -n 30 "$LOGS/$f" >&2
        fi
    done
    exit 1
}

# ---- 1. venv -------------------------------------------------------------------------------
if [ ! -x "$PY" ]; then
    log "creating the venv $VENV"
    python3 -m venv "$VENV"
fi
"$PY" -m pip install --quiet --disable-pip-version-check -r examples/python-subscriber/requirements.txt

# ---- 2. the cluster ------------------------------------------------------------------------
if [ "${CLS_SKIP_BUILD:-0}" != 1 ]; then
    cargo build --quiet --workspace --bins
fi
mkdir -p "$LOGS"

# Free ports: the gateway and the query service from the kernel; a base for the ops listeners
# (cls up uses BASE, BASE+1 and BASE+10 upward) where all of them are free.
read -r HTTP_PORT QUERY_PORT OPS_BASE < <("$PY" - <<'EOF'
import random, socket
def free(port=0):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return s
    except OSError:
        s.close()
        return None
held = [free(), free()]
ports = [s.getsockname()[1] for s in held]
while True:
    base = random.randrange(20000, 60000)
    wanted = [base, base + 1] + [base + 10 + i for i in range(8)]
    if any(p in ports for p in wanted):
        continue
    probes = [free(p) for p in wanted]
    for s in probes:
        if s:
            s.close()
    if all(probes):
        break
for s in held:
    s.close()
print(ports[0], ports[1], base)
EOF
)
[ -n "${OPS_BASE:-}" ] || fail "could not pick free ports"
BASE_URL="http://127.0.0.1:$HTTP_PORT"

CLS_PID=""
SUB_PID=""
cleanup() {
    local status=$?
    set +e
    if [ -n "$SUB_PID" ] && kill -0 "$SUB_PID" 2>/dev/null; then
        kill -TERM "$SUB_PID"
        wait "$SUB_PID" 2>/dev/null
    fi
    if [ -n "$CLS_PID" ] && kill -0 "$CLS_PID" 2>/dev/null; then
        # cls stops its children (each in its own process group) within its shutdown bound.
        local children
        children=$(pgrep -P "$CLS_PID")
        kill -TERM "$CLS_PID"
        local deadline=$((SECONDS + 30))
        while kill -0 "$CLS_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
        if kill -0 "$CLS_PID" 2>/dev/null; then
            log "cls up did not stop within 30 s; killing it and its children"
            kill -KILL "$CLS_PID" $children 2>/dev/null
        fi
        wait "$CLS_PID" 2>/dev/null
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        log "KEEP=1: kept namespace $NS (database, queues, Redis keys) and the logs in $LOGS"
    else
        if command -v psql >/dev/null; then
            psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS \"$NS\" WITH (FORCE)" >/dev/null 2>&1 \
                || log "cleanup: could not drop database $NS"
        fi
        if command -v redis-cli >/dev/null; then
            redis-cli -u "$REDIS_URL" --scan --pattern "$NS:*" | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1
        fi
        # The namespace's queues and exchanges, as cls_bus::Topology declares them.
        "$PY" - "$AMQP_URL" "$NS" <<'EOF' || log "cleanup: could not delete the namespace's queues"
import sys, pika
url, ns = sys.argv[1], sys.argv[2]
queues = [f"{ns}.{m}.commands" for m in ("brands", "licenses", "activations")]
queues += [f"{ns}.activations.license-events", f"{ns}.query.events"]
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
for q in queues + [q + ".dlq" for q in queues]:
    ch.queue_delete(queue=q)
for x in ("commands", "events", "dlx"):
    ch.exchange_delete(exchange=f"{ns}.{x}")
conn.close()
EOF
        [ "$status" = 0 ] && rm -rf "$LOGS"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting cls up: namespace $NS, gateway $BASE_URL, ops ports from $OPS_BASE"
CLS_NAMESPACE="$NS" \
CLS_DATABASE_URL="$PG_URL/$NS" \
CLS_AMQP_URL="$AMQP_URL" \
CLS_REDIS_URL="$REDIS_URL" \
CLS_HTTP_ADDR="127.0.0.1:$HTTP_PORT" \
CLS_QUERY_ADDR="127.0.0.1:$QUERY_PORT" \
CLS_QUERY_URL="http://127.0.0.1:$QUERY_PORT" \
CLS_ADMIN_TOKEN="$ADMIN_TOKEN" \
CLS_SWEEP_INTERVAL_MS=500 \
CLS_LOG="${CLS_LOG:-warn}" \
    ./target/debug/cls up --ops-base-port "$OPS_BASE" >"$LOGS/cluster.log" 2>&1 &
CLS_PID=$!

deadline=$((SECONDS + READY_DEADLINE_S))
until curl -fsS -o /dev/null "$BASE_URL/ready" 2>/dev/null; do
    kill -0 "$CLS_PID" 2>/dev/null || fail "cls up exited before the cluster was ready"
    [ "$SECONDS" -lt "$deadline" ] || fail "the gateway did not report ready within ${READY_DEADLINE_S} s"
    sleep 0.2
done
log "cluster ready"

# ---- 3. the subscriber ---------------------------------------------------------------------
"$PY" examples/python-subscriber/subscriber.py --namespace "$NS" --amqp-url "$AMQP_URL" \
    >"$LOGS/events.jsonl" 2>"$LOGS/subscriber.err" &
SUB_PID=$!
deadline=$((SECONDS + 30))
until grep -q '^subscribed:' "$LOGS/subscriber.err" 2>/dev/null; do
    kill -0 "$SUB_PID" 2>/dev/null || fail "the subscriber exited: $(cat "$LOGS/subscriber.err")"
    [ "$SECONDS" -lt "$deadline" ] || fail "the subscriber did not bind its queue within 30 s"
    sleep 0.1
done
log "$(head -n 1 "$LOGS/subscriber.err")"

# ---- 4. the scenario -----------------------------------------------------------------------
RESP="$LOGS/response.json"

# call METHOD PATH EXPECTED_STATUS BODY [curl args, e.g. headers]: the response body lands in
# $RESP. A 202 (the worker answered after the reply timeout) is followed to its outcome.
call() {
    local method=$1 path=$2 expected=$3 body=$4
    shift 4
    local args=(-sS -X "$method" -o "$RESP" -w '%{http_code}' "$@")
    if [ -n "$body" ]; then
        args+=(-H 'Content-Type: application/json' --data "$body")
    fi
    local status
    status=$(curl "${args[@]}" "$BASE_URL$path") || fail "$method $path: curl failed"
    if [ "$status" = 202 ]; then
        local op deadline=$((SECONDS + 30))
        op=$(json operation_id)
        while :; do
            curl -sS -o "$RESP" "$@" "$BASE_URL/v1/operations/$op" || fail "GET operation $op failed"
            [ "$(json status)" = pending ] || break
            [ "$SECONDS" -lt "$deadline" ] || fail "$method $path: operation $op still pending after 30 s"
            sleep 0.2
        done
        status=$(json response status)
        "$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); json.dump(d["response"]["body"], open(sys.argv[1], "w"))' "$RESP"
    fi
    [ "$status" = "$expected" ] || fail "$method $path: expected $expected, got $status: $(cat "$RESP")"
}

# json KEY...: a member of the last response (list indexes as numbers).
json() {
    "$PY" -c '
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    v = v[int(k)] if isinstance(v, list) else v[k]
print(v if not isinstance(v, (dict, list)) else json.dumps(v))' "$RESP" "$@"
}

ADMIN=(-H "X-Admin-Token: $ADMIN_TOKEN")

call POST /v1/admin/brands 201 '{"slug": "pysub", "name": "Python Subscriber", "key_prefix": "PY"}' "${ADMIN[@]}"
BRAND_ID=$(json id)
call POST "/v1/admin/brands/$BRAND_ID/api-keys" 201 '{"name": "scenario", "scopes": ["licenses:read", "licenses:write"]}' "${ADMIN[@]}"
BRAND=(-H "X-API-Key: $(json api_key)")
call POST "/v1/admin/brands/$BRAND_ID/api-keys" 201 '{"name": "to-revoke"}' "${ADMIN[@]}"
REVOKED_KEY_ID=$(json id)

call POST /v1/products 201 '{"code": "pro", "name": "Pro", "default_seat_limit": 1, "default_duration_days": 365}' "${BRAND[@]}"
call POST /v1/products 201 '{"code": "legacy", "name": "Legacy"}' "${BRAND[@]}"
# The legacy license is past due from the start: the sweeper persists it as expired.
call POST /v1/licenses 201 '{"customer_email": "jane@example.com", "products": [{"code": "pro"}, {"code": "legacy", "expires_at": "2020-01-01T00:00:00Z"}]}' \
    "${BRAND[@]}" -H 'Idempotency-Key: pysub-order-1'
KEY=$(json license_key key)
KEY_ID=$(json license_key id)
LICENSE_ID=$("$PY" -c 'import json, sys; print(next(l["id"] for l in json.load(open(sys.argv[1]))["licenses"] if l["product"] == "pro"))' "$RESP")

activate() { call POST /v1/activations "$2" "{\"license_key\": \"$1\", \"product\": \"pro\", \"instance_id\": \"$3\"}"; }
activate "$KEY" 201 host-a
activate "$KEY" 409 host-b # seat limit 1: activation.rejected
call POST "/v1/licenses/$LICENSE_ID/seats" 200 '{"seat_limit": 2}' "${BRAND[@]}"
call POST /v1/activations/deactivate 200 "{\"license_key\": \"$KEY\", \"product\": \"pro\", \"instance_id\": \"host-a\"}"
call POST "/v1/licenses/$LICENSE_ID/renew" 200 '{"extend_days": 30}' "${BRAND[@]}"
call POST "/v1/licenses/$LICENSE_ID/suspend" 200 '{"reason": "chargeback"}' "${BRAND[@]}"
call POST "/v1/licenses/$LICENSE_ID/resume" 200 '{}' "${BRAND[@]}"
call POST "/v1/license-keys/$KEY_ID/rotate" 200 '{}' "${BRAND[@]}"
KEY=$(json key)
call POST "/v1/license-keys/$KEY_ID/transfer" 200 '{"customer_email": "jane.doe@example.com"}' "${BRAND[@]}"
activate "$KEY" 201 host-c
activate "$KEY" 201 host-d
call DELETE "/v1/activations/$(json activation id)" 204 '' "${BRAND[@]}" # released by the brand
call POST "/v1/licenses/$LICENSE_ID/cancel" 200 '{"reason": "refund"}' "${BRAND[@]}" # releases host-c
call DELETE "/v1/admin/api-keys/$REVOKED_KEY_ID" 204 '' "${ADMIN[@]}"
log "scenario done; waiting up to ${EVENTS_DEADLINE_S} s for the events"

# ---- 5. the events -------------------------------------------------------------------------
# check [--report]: exit 0 when every expected type was printed and every event is well-formed,
# 1 while some are missing, 2 on a malformed event (no point waiting).
check() {
    "$PY" - "$LOGS/events.jsonl" "$BRAND_ID" "$EXPECTED_TYPES" "$@" <<'EOF'
import collections, json, sys
path, brand_id, expected, report = sys.argv[1], sys.argv[2], set(sys.argv[3].split()), "--report" in sys.argv
ENVELOPE = {"id", "type", "schema_version", "occurred_at", "brand_id", "aggregate_id",
            "aggregate_version", "correlation_id", "causation_id", "data"}
seen, by, errors = collections.Counter(), set(), []
with open(path) as f:
    for n, raw in enumerate(f, 1):
        if not raw.endswith("\n"):
            break  # a line still being written
        line = json.loads(raw)
        e, p, t = line["payload"], line["properties"], line["type"]
        seen[t] += 1
        if t == "activation.deactivated":
            by.add(e["data"]["deactivated_by"])
        want = {
            "envelope members": (set(e), ENVELOPE),
            "routing key": (line["routing_key"], t),
            "AMQP message_id": (p.get("message_id"), e["id"]),
            "AMQP type": (p.get("type"), t),
            "AMQP content_type": (p.get("content_type"), "application/msgpack"),
            "AMQP delivery_mode": (p.get("delivery_mode"), 2),
            "AMQP header v": ((p.get("headers") or {}).get("v"), 1),
            "schema_version": (e["schema_version"], 1),
            "AMQP correlation_id": (p.get("correlation_id"), e["correlation_id"]),
            "brand_id": (e["brand_id"], brand_id),
        }
        if not isinstance(p.get("timestamp"), int):
            errors.append(f"line {n} ({t}): no AMQP timestamp")
        for what, (got, exp) in want.items():
            if got != exp:
                errors.append(f"line {n} ({t}): {what} is {got!r}, expected {exp!r}")
missing = sorted(expected - set(seen))
if report:
    for t in sorted(expected | set(seen)):
        mark = "ok" if t in seen else "MISSING"
        print(f"  {mark:7} {t:26} x{seen[t]}" + ("   (not expected)" if t not in expected else ""), file=sys.stderr)
    print(f"  activation.deactivated by: {', '.join(sorted(by))}", file=sys.stderr)
    for e in errors:
        print(f"  ERROR {e}", file=sys.stderr)
if errors:
    sys.exit(2)
if missing or by != {"product", "brand", "license_cancelled"}:
    sys.exit(1)
EOF
}

deadline=$((SECONDS + EVENTS_DEADLINE_S))
while :; do
    status=0
    check || status=$?
    [ "$status" = 1 ] || break
    kill -0 "$SUB_PID" 2>/dev/null || break
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.3
done
log "event types decoded by the Python subscriber:"
status=0
check --report || status=$?
if [ "$status" != 0 ]; then
    fail "the subscriber did not decode every expected event type correctly (see above; events in $LOGS/events.jsonl)"
fi
log "PASS: $(wc -l <"$LOGS/events.jsonl") events, all $(echo $EXPECTED_TYPES | wc -w) event types decoded"
