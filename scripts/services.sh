#!/usr/bin/env bash
# Local backing services for the CLS test suite: PostgreSQL, Redis, RabbitMQ.
#
# Usage:
#   bash scripts/services.sh ensure   # install (apt-get) / start / wait for whatever is missing
#   bash scripts/services.sh status   # print up/down for each service (exit 1 if any is down)
#
# Targets a Debian 12 machine without systemd or Docker. Every service listens on
# loopback only:
#   PostgreSQL 127.0.0.1:5432  user postgres, trust auth, max_connections >= 200
#   Redis      127.0.0.1:6379
#   RabbitMQ   127.0.0.1:5672  guest/guest
#
# `ensure` is idempotent: when all three are up it only checks them and prints so.
#
# Environment knobs:
#   CLS_SERVICES_TIMEOUT   seconds to wait for each service to come up (default 120)
#   CLS_SERVICES_LOG_DIR   where start-up output is written (default /tmp/cls-services)
#   CLS_PG_FORCE_RESTART=1 restart PostgreSQL to raise max_connections even if other
#                          clients are connected (this is the default when CI=true)
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

readonly PG_HOST=127.0.0.1 PG_PORT=5432 PG_USER=postgres PG_MIN_CONNECTIONS=200
readonly REDIS_HOST=127.0.0.1 REDIS_PORT=6379
readonly AMQP_HOST=127.0.0.1 AMQP_PORT=5672
readonly WAIT_SECS="${CLS_SERVICES_TIMEOUT:-120}"
readonly LOG_DIR="${CLS_SERVICES_LOG_DIR:-/tmp/cls-services}"
readonly SERVICES=(postgres redis rabbitmq)

log() { printf '[services] %s\n' "$*"; }
warn() { printf '[services] WARNING: %s\n' "$*" >&2; }
die() {
  printf '[services] ERROR: %s\n' "$*" >&2
  exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# Run a command as root (directly when we are root, else through non-interactive sudo).
as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif have sudo; then
    sudo -n -E "$@"
  else
    die "need root (or passwordless sudo) to run: $*"
  fi
}

# ---------------------------------------------------------------------------
# Probes: each returns 0 when the service answers, quickly, without side effects.
# ---------------------------------------------------------------------------

postgres_up() {
  have pg_isready || return 1
  timeout 10 pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3 </dev/null >/dev/null 2>&1
}

redis_up() {
  have redis-cli || return 1
  [[ "$(timeout 10 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping </dev/null 2>/dev/null)" == PONG ]]
}

# AMQP 0-9-1 handshake: send the protocol header; a ready broker answers with a
# Connection.Start method frame (frame type 0x01). Much cheaper than booting an Erlang
# VM for `rabbitmq-diagnostics ping`, and only true once the broker accepts clients.
rabbitmq_up() {
  (
    exec 3<>"/dev/tcp/${AMQP_HOST}/${AMQP_PORT}" || exit 1
    printf 'AMQP\x00\x00\x09\x01' >&3 || exit 1
    IFS= read -r -N 1 -t 5 byte <&3 || exit 1
    [[ $byte == $'\x01' ]]
  ) 2>/dev/null
}

service_up() { "${1}_up"; }

# Run "$@" with every file descriptor above 2 closed (the caller redirects 0-2), so that a
# daemon started by it cannot hold our lock (fd 9) or a CI log pipe open after we exit.
run_detached() {
  (
    for fd in /proc/"$BASHPID"/fd/*; do
      fd=${fd##*/}
      if ((fd > 2)); then eval "exec ${fd}>&-" 2>/dev/null || true; fi
    done
    "$@"
  )
}

service_addr() {
  case $1 in
    postgres) echo "$PG_HOST:$PG_PORT" ;;
    redis) echo "$REDIS_HOST:$REDIS_PORT" ;;
    rabbitmq) echo "$AMQP_HOST:$AMQP_PORT" ;;
  esac
}

# ---------------------------------------------------------------------------
# Installation (only for services that are down and whose binaries are missing).
# ---------------------------------------------------------------------------

pg_server_installed() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }

missing_packages() { # $1 = service
  case $1 in
    postgres)
      if ! have pg_ctlcluster || ! have pg_isready || ! have psql || ! pg_server_installed; then
        echo postgresql
      fi
      ;;
    redis)
      if ! have redis-server || ! have redis-cli; then echo redis-server; fi
      ;;
    rabbitmq)
      if ! have rabbitmq-server || ! have rabbitmqctl || ! have rabbitmq-diagnostics; then
        echo rabbitmq-server
      fi
      ;;
  esac
}

POLICY_RC_CREATED=0
cleanup() {
  if ((POLICY_RC_CREATED)); then
    as_root rm -f /usr/sbin/policy-rc.d || true
  fi
}
trap cleanup EXIT

apt_install() { # packages...
  have apt-get || die "apt-get not found; install these packages by hand: $*"
  # Never let package scripts auto-start the daemons with their stock configuration;
  # they are configured and started explicitly below. Respect an existing policy-rc.d.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\n# temporary, created by CLS scripts/services.sh\nexit 101\n' |
      as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 755 /usr/sbin/policy-rc.d
    POLICY_RC_CREATED=1
  fi
  log "apt-get update"
  as_root apt-get update -q </dev/null || die "apt-get update failed"
  log "apt-get install -y --no-install-recommends $*"
  as_root apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "$@" </dev/null 9>&- || die "apt-get install $* failed"
  cleanup
  POLICY_RC_CREATED=0
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

PG_VERSION=""
PG_FRESH=0

# Highest version that has a "main" cluster configured (normally 15).
pg_cluster_version() {
  local f versions=()
  for f in /etc/postgresql/*/main/postgresql.conf; do
    [[ -e $f ]] || continue
    f=${f#/etc/postgresql/}
    versions+=("${f%%/*}")
  done
  ((${#versions[@]})) || return 1
  printf '%s\n' "${versions[@]}" | sort -V | tail -n 1
}

pg_prepare_cluster() {
  if PG_VERSION=$(pg_cluster_version); then
    return 0
  fi
  local bin
  bin=$(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -n 1) ||
    die "no PostgreSQL server binary under /usr/lib/postgresql"
  PG_VERSION=${bin#/usr/lib/postgresql/}
  PG_VERSION=${PG_VERSION%%/*}
  log "postgres: creating cluster $PG_VERSION/main"
  as_root pg_createcluster "$PG_VERSION" main </dev/null
  PG_FRESH=1
}

# start|stop|restart|reload; output goes to $LOG_DIR/postgres-ctl.log (never to a pipe a
# daemon could inherit), and is shown when the command fails.
pg_cluster_ctl() {
  mkdir -p "$LOG_DIR"
  if run_detached as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main "$1" \
    </dev/null >"$LOG_DIR/postgres-ctl.log" 2>&1; then
    return 0
  else
    local rc=$?
    warn "postgres: pg_ctlcluster $PG_VERSION main $1 failed (status $rc):"
    sed 's/^/    /' "$LOG_DIR/postgres-ctl.log" >&2 || true
    return "$rc"
  fi
}

# Trust for local socket, 127.0.0.1 and ::1 -- placed first so it wins over the stock rules.
pg_configure_hba() {
  local hba="/etc/postgresql/$PG_VERSION/main/pg_hba.conf" tmp
  [[ -f $hba ]] || die "postgres: $hba not found"
  if as_root grep -q '^# CLS: trust on loopback' "$hba"; then
    return 0
  fi
  log "postgres: enabling trust auth for local/127.0.0.1/::1 in $hba"
  tmp=$(mktemp)
  {
    echo '# CLS: trust on loopback (added by scripts/services.sh)'
    echo 'local   all             all                                     trust'
    echo 'host    all             all             127.0.0.1/32            trust'
    echo 'host    all             all             ::1/128                 trust'
    echo
    as_root cat "$hba"
  } >"$tmp"
  as_root cp "$tmp" "$hba"
  rm -f "$tmp"
}

# Writes max_connections = $PG_MIN_CONNECTIONS into the file that currently sets it
# ($1, as reported by pg_settings.sourcefile), defaulting to postgresql.conf.
pg_write_max_connections() {
  local src=${1:-} conf="/etc/postgresql/$PG_VERSION/main/postgresql.conf"
  if [[ $src == */postgresql.auto.conf ]]; then
    log "postgres: ALTER SYSTEM SET max_connections = $PG_MIN_CONNECTIONS"
    psql_pg -c "ALTER SYSTEM SET max_connections = $PG_MIN_CONNECTIONS" >/dev/null
    return
  fi
  if [[ $src == /etc/postgresql/* && -f $src ]]; then
    conf=$src
  fi
  log "postgres: setting max_connections = $PG_MIN_CONNECTIONS in $conf"
  if as_root grep -qE '^[[:space:]]*max_connections[[:space:]]*=' "$conf"; then
    as_root sed -i -E \
      "s/^([[:space:]]*max_connections[[:space:]]*=[[:space:]]*)[0-9]+/\1$PG_MIN_CONNECTIONS/" "$conf"
  else
    echo "max_connections = $PG_MIN_CONNECTIONS" | as_root tee -a "$conf" >/dev/null
  fi
}

psql_pg() {
  PGCONNECT_TIMEOUT=5 timeout 30 psql -X -w -q -v ON_ERROR_STOP=1 \
    -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -tA "$@" </dev/null
}

pg_start() {
  as_root install -d -m 2775 -o postgres -g postgres /var/run/postgresql
  log "postgres: pg_ctlcluster --skip-systemctl-redirect $PG_VERSION main start"
  # On failure (e.g. "Cluster is already running" while it is still starting up) the
  # message is shown and we keep waiting: the deadline decides.
  pg_cluster_ctl start || true
}

# After PostgreSQL answers: require trust auth and max_connections >= PG_MIN_CONNECTIONS.
pg_check_config() {
  local out row value src others
  if ! out=$(psql_pg -c 'show max_connections' 2>&1); then
    have pg_ctlcluster && PG_VERSION=${PG_VERSION:-$(pg_cluster_version || true)}
    [[ -n $PG_VERSION ]] || die "postgres: cannot connect as $PG_USER without a password ($out)"
    warn "postgres: cannot connect as $PG_USER without a password: ${out//$'\n'/ }"
    pg_configure_hba
    pg_cluster_ctl reload
    sleep 1
    out=$(psql_pg -c 'show max_connections' 2>&1) ||
      die "postgres: still cannot connect with trust auth: $out"
  fi
  if ((out >= PG_MIN_CONNECTIONS)); then
    return 0
  fi
  PG_VERSION=${PG_VERSION:-$(pg_cluster_version)} ||
    die "postgres: max_connections is $out (< $PG_MIN_CONNECTIONS) and no cluster config found"
  row=$(psql_pg -F '|' -c "select setting, coalesce(sourcefile, '') from pg_settings where name = 'max_connections'")
  value=${row%%|*}
  src=${row#*|}
  log "postgres: max_connections is $value, need >= $PG_MIN_CONNECTIONS"
  pg_write_max_connections "$src"

  others=$(psql_pg -c "select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()")
  if ((others > 0)) && [[ ${CI:-} != true && ${CLS_PG_FORCE_RESTART:-0} != 1 ]]; then
    warn "postgres: $others other client connection(s) open; NOT restarting now."
    warn "postgres: max_connections = $PG_MIN_CONNECTIONS takes effect at the next restart" \
      "(re-run with CLS_PG_FORCE_RESTART=1 to restart now)."
    return 0
  fi
  log "postgres: restarting to apply max_connections ($others other client connection(s))"
  pg_cluster_ctl restart
  wait_for postgres "$SECONDS" || die "postgres did not come back after the restart"
  out=$(psql_pg -c 'show max_connections')
  if ((out < PG_MIN_CONNECTIONS)); then
    warn "postgres: max_connections is still $out after the restart; check the cluster configuration"
  else
    log "postgres: max_connections = $out"
  fi
}

# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------

redis_start() {
  log "redis: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port $REDIS_PORT --save \"\" --appendonly no"
  (
    cd /
    run_detached setsid -w redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
      --save "" --appendonly no --logfile "$LOG_DIR/redis.log" \
      </dev/null >>"$LOG_DIR/redis-start.log" 2>&1
  ) || warn "redis: redis-server exited with status $? (see $LOG_DIR/redis.log)"
}

# ---------------------------------------------------------------------------
# RabbitMQ
# ---------------------------------------------------------------------------

# Loopback-only configuration. A fresh install gets the full set (node name, epmd and
# distribution bound to loopback); an existing install only gets a loopback AMQP
# listener if it has none configured (its node name must not change: data is keyed by it).
rabbitmq_configure() { # $1 = 1 for a fresh install
  local fresh=$1 env_conf=/etc/rabbitmq/rabbitmq-env.conf conf=/etc/rabbitmq/rabbitmq.conf
  as_root install -d -m 755 /etc/rabbitmq
  if ((fresh)) && ! as_root grep -qsE '^[[:space:]]*(export[[:space:]]+)?(RABBITMQ_)?NODENAME=' "$env_conf"; then
    log "rabbitmq: writing loopback-only settings to $env_conf"
    printf '%s\n' \
      '# CLS: loopback only (added by scripts/services.sh)' \
      'NODENAME=rabbit@localhost' \
      'NODE_IP_ADDRESS=127.0.0.1' \
      'ERL_EPMD_ADDRESS=127.0.0.1' \
      'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"' |
      as_root tee -a "$env_conf" >/dev/null
  fi
  if ! as_root grep -qsE '^[[:space:]]*listeners\.tcp' "$conf" &&
    ! as_root grep -qsE '^[[:space:]]*(export[[:space:]]+)?(RABBITMQ_)?NODE_IP_ADDRESS=' "$env_conf"; then
    log "rabbitmq: adding listeners.tcp.default = $AMQP_HOST:$AMQP_PORT to $conf"
    printf '%s\n' '# CLS: loopback only (added by scripts/services.sh)' \
      "listeners.tcp.default = $AMQP_HOST:$AMQP_PORT" | as_root tee -a "$conf" >/dev/null
  fi
}

rabbitmq_start() {
  # The node may be running but still booting (or its listener not yet open).
  if timeout 30 rabbitmq-diagnostics -q ping </dev/null >/dev/null 2>&1; then
    log "rabbitmq: node is running but AMQP is not ready yet; waiting instead of starting"
    return 0
  fi
  log "rabbitmq: rabbitmq-server -detached"
  run_detached as_root setsid -w rabbitmq-server -detached \
    </dev/null >>"$LOG_DIR/rabbitmq-start.log" 2>&1 ||
    warn "rabbitmq: rabbitmq-server -detached exited with status $? (see $LOG_DIR/rabbitmq-start.log)"
}

# ---------------------------------------------------------------------------
# Waiting / diagnostics
# ---------------------------------------------------------------------------

show_logs() {
  local pattern f files=()
  case $1 in
    postgres) files=("/var/log/postgresql/postgresql-${PG_VERSION:-*}-main.log") ;;
    redis) files=("$LOG_DIR/redis-start.log" "$LOG_DIR/redis.log") ;;
    rabbitmq) files=("$LOG_DIR/rabbitmq-start.log" /var/log/rabbitmq/startup_err /var/log/rabbitmq/rabbit*.log) ;;
  esac
  for pattern in "${files[@]}"; do
    # shellcheck disable=SC2086 # the pattern may contain a glob
    for f in $pattern; do
      [[ -s $f ]] || continue
      echo "----- last lines of $f -----" >&2
      as_root tail -n 25 "$f" >&2 || true
    done
  done
}

wait_for() { # service, start time (in $SECONDS)
  local name=$1 started=$2
  local deadline=$((started + WAIT_SECS)) next_note=$((SECONDS + 10))
  log "$name: waiting for $(service_addr "$name") (timeout ${WAIT_SECS}s)"
  until service_up "$name"; do
    if ((SECONDS >= deadline)); then
      printf '[services] ERROR: %s did not come up on %s within %ss\n' \
        "$name" "$(service_addr "$name")" "$WAIT_SECS" >&2
      show_logs "$name"
      return 1
    fi
    if ((SECONDS >= next_note)); then
      log "$name: still waiting ($((SECONDS - started))s)"
      next_note=$((SECONDS + 10))
    fi
    sleep 1
  done
  log "$name: up on $(service_addr "$name") (after $((SECONDS - started))s)"
}

# ---------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------

cmd_status() {
  local s rc=0
  for s in "${SERVICES[@]}"; do
    if service_up "$s"; then
      printf '%-9s up    %s\n' "$s" "$(service_addr "$s")"
    else
      printf '%-9s down  %s\n' "$s" "$(service_addr "$s")"
      rc=1
    fi
  done
  return "$rc"
}

cmd_ensure() {
  local t0=$SECONDS s pkg down=() pkgs=() failed=()
  local -A started=() fresh=()

  # Serialise concurrent `ensure` runs on this machine. Daemons are started through
  # run_detached (fd 9 closed), so the lock is released when this script exits.
  local lock=/tmp/cls-services.lock
  if have flock && { [[ -w $lock ]] || [[ ! -e $lock && -w ${lock%/*} ]]; }; then
    exec 9>>"$lock"
    flock -w 600 9 || die "timed out waiting for another 'services.sh ensure' to finish"
  fi

  for s in "${SERVICES[@]}"; do
    if service_up "$s"; then
      log "$s: up on $(service_addr "$s")"
    else
      log "$s: down"
      down+=("$s")
    fi
  done

  if ((${#down[@]})); then
    mkdir -p "$LOG_DIR"

    # 1. Install what is missing (one apt-get update, one apt-get install).
    for s in "${down[@]}"; do
      pkg=$(missing_packages "$s")
      if [[ -n $pkg ]]; then
        pkgs+=("$pkg")
        fresh[$s]=1
      fi
    done
    if ((${#pkgs[@]})); then
      log "installing missing packages: ${pkgs[*]}"
      apt_install "${pkgs[@]}"
      for s in "${down[@]}"; do
        [[ -z ${fresh[$s]:-} ]] || [[ -z $(missing_packages "$s") ]] ||
          die "$s: binaries still missing after installing ${pkgs[*]}"
      done
    fi

    # 2. Configure and start each service that is down.
    for s in "${down[@]}"; do
      if service_up "$s"; then # e.g. started by a package script after all
        log "$s: up now"
        continue
      fi
      case $s in
        postgres)
          pg_prepare_cluster
          if [[ -n ${fresh[postgres]:-} ]] || ((PG_FRESH)); then
            pg_configure_hba
            pg_write_max_connections ""
          fi
          pg_start
          ;;
        redis) redis_start ;;
        rabbitmq)
          rabbitmq_configure "${fresh[rabbitmq]:-0}"
          rabbitmq_start
          ;;
      esac
      started[$s]=$SECONDS
    done

    # 3. Wait for each (RabbitMQ is usually the slow one).
    for s in "${down[@]}"; do
      [[ -n ${started[$s]:-} ]] || continue
      wait_for "$s" "${started[$s]}" || failed+=("$s")
    done
    if ((${#failed[@]})); then
      die "service(s) not up after ${WAIT_SECS}s: ${failed[*]} (start output in $LOG_DIR)"
    fi
  fi

  # PostgreSQL must accept passwordless connections and allow enough connections.
  if have psql; then
    pg_check_config
  else
    warn "postgres: psql not installed; skipping the auth/max_connections check"
  fi

  if ((${#down[@]})); then
    log "all services up ($((SECONDS - t0))s)"
  else
    log "all services were already up"
  fi
}

usage() {
  cat <<EOF
usage: $0 <ensure|status>
  ensure  install (apt-get) and start PostgreSQL, Redis and RabbitMQ if needed; wait until they answer
  status  print up/down for each service (exit status 1 if any is down)
EOF
}

main() {
  case ${1:-} in
    ensure) cmd_ensure ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
