#!/usr/bin/env bash
# Runs each example and checks its output, like Watermill's .validate_example.yml.
set -euo pipefail
cd "$(dirname "$0")/.."

check() { # name regex command...
  local name=$1 want=$2; shift 2
  local out
  printf 'example %s: ' "$name"
  if ! out=$("$@" 2>&1); then
    printf 'FAILED (exit)\n%s\n' "$out"
    return 1
  fi
  if ! grep -Eq "$want" <<<"$out"; then
    printf 'FAILED (output did not match /%s/)\n%s\n' "$want" "$out"
    return 1
  fi
  printf 'ok\n'
}

run() { cargo run --quiet --locked -p herald-examples --bin "$@"; }

check quickstart '^quickstart: 5 published, 5 handled$' run quickstart
if [ -f examples/src/bin/order_saga.rs ]; then
  check order-saga-memory '^OK: the read model matches' run order-saga
  check order-saga-kafka '^OK: the read model matches' run order-saga -- --transport kafka
  check order-saga-nats '^OK: the read model matches' run order-saga -- --transport nats
fi
