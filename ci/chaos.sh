#!/usr/bin/env bash
# Reliability under faults and bad input: nothing lost, nothing applied twice.
#
#   bash ci/chaos.sh [--quick] [--no-fuzz] [extra `herald-chaos run` flags…]
#
# 1. the bad-input and credential suites (crates/herald-chaos/tests/) on memory, Kafka
#    (Tansu) and NATS, TLS to NATS and to Kafka;
# 2. `herald-chaos run`: the fault scenarios on a dedicated Tansu and a dedicated
#    nats-server (free ports, started and killed by the driver; the shared brokers are
#    never touched), PostgreSQL behind a TCP proxy the driver owns; prints the table and
#    exits non-zero on any lost message or duplicate effect. The NATS server is SIGKILLed
#    and restarted (file storage); the Kafka broker is made unreachable for 10 s behind a
#    proxy instead, because the only Tansu with storage that survives a restart (crates.io
#    0.6.0 with `libsql`) stalls its consumer groups after the restart;
# 3. cargo fuzz, 60 s per target (full runs only; `--quick` and `--no-fuzz` skip it).
#    New corpus entries go to a temp dir; the committed seeds in fuzz/corpus/ stay as
#    they are.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=""; FUZZ=1; EXTRA=()
for a in "$@"; do
  case "$a" in
    --quick) QUICK="--quick"; FUZZ=0 ;;
    --no-fuzz) FUZZ=0 ;;
    *) EXTRA+=("$a") ;;
  esac
done

eval "$(bash ci/brokers.sh up)"
export HERALD_TANSU_BIN HERALD_POSTGRES_URL HERALD_KAFKA_BROKERS HERALD_NATS_URL
export HERALD_NATS_SERVER_BIN="${HERALD_NATS_SERVER_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/herald-chaos.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "== bad input, credentials (NATS TLS + password, Kafka TLS, no secret in logs)" >&2
cargo test -p herald-chaos --tests

echo "== fault scenarios" >&2
cargo build -p herald-chaos --bin herald-chaos
start=$(date +%s)
"${CARGO_TARGET_DIR:-target}"/debug/herald-chaos run $QUICK --work-dir "$WORK/run" ${EXTRA[@]+"${EXTRA[@]}"}
echo "fault scenarios took $(( $(date +%s) - start )) s" >&2

if [ "$FUZZ" = 1 ]; then
  echo "== fuzz (60 s per target)" >&2
  if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
  fi
  # The toolchain is stable; cargo-fuzz passes nightly flags (-Zsanitizer=…). Its
  # sanitizer builds keep to fuzz/target: in a shared CARGO_TARGET_DIR their different
  # flags would evict the test build.
  export RUSTC_BOOTSTRAP=1
  unset CARGO_TARGET_DIR
  for t in $(cd fuzz && cargo fuzz list); do
    echo "-- fuzz $t" >&2
    mkdir -p "$WORK/corpus/$t"
    (cd fuzz && cargo fuzz run "$t" "$WORK/corpus/$t" "corpus/$t" -- \
      -max_total_time=60 -rss_limit_mb=2048)
  done
fi
echo "chaos: all passed" >&2
