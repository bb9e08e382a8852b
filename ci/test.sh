#!/usr/bin/env bash
# The README's test command: brokers up, format check, clippy (-D warnings), docs, the whole
# test suite against real brokers, the schema gate, and the examples' output checks.
# Fails loudly when a broker is missing: nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s ==\n' "$*"; }

step "brokers"
exports=$(bash ci/brokers.sh up)
eval "$exports"
printf '%s\n' "$exports"

# Broker tests must never skip: the fixtures fail when an address is missing.
export CI=${CI:-true}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

step "fmt"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --lib --no-deps --locked

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --test-threads "${HERALD_TEST_THREADS:-4}"
  cargo test --workspace --doc --locked
else
  cargo test --workspace --locked --no-fail-fast
fi

if [ -x ci/examples.sh ]; then
  step "examples"
  bash ci/examples.sh
fi

step "chaos (short): consumers SIGKILLed mid-run on Kafka and NATS, nothing lost or applied twice"
# The full fault matrix is ci/chaos.sh (~20 min: 50 000 messages per scenario, then
# fuzzing); this is its kill scenario at a small scale, on dedicated brokers the driver
# owns. Exits non-zero on any loss or duplicate effect.
export HERALD_TANSU_BIN HERALD_POSTGRES_URL
cargo run --quiet --locked -p herald-chaos --bin herald-chaos -- \
  run --messages 2000 --scenario kill --work-dir "$(mktemp -d "${TMPDIR:-/tmp}/herald-chaos-ci.XXXXXX")"

if [ -d schemas ] && [ -n "$(ls -A schemas 2>/dev/null)" ]; then
  step "schema gate"
  cargo run --quiet --locked -p herald-cli -- schema check --dir schemas/
  cargo run --quiet --locked -p herald-cli -- lint schemas/
fi

step "done"
