#!/usr/bin/env bash
# Throughput of herald against the raw clients (rdkafka, async-nats) on the same brokers,
# in the same run, plus herald's memory transport.
#
#   bash ci/bench.sh            every transport x scenario, 256-byte messages, 5 rounds:
#                               target/bench/results.json and target/bench/results.md
#   bash ci/bench.sh --smoke    a few thousand messages per path, 1 round: checks that the
#                               harness works end to end (exit non-zero on any failure);
#                               writes target/bench/smoke.json and smoke.md
#
# Environment: HERALD_BENCH_ROUNDS (default 5), HERALD_BENCH_KAFKA_MESSAGES (300000),
# HERALD_BENCH_NATS_MESSAGES (100000), HERALD_BENCH_MEMORY_MESSAGES (1000000): counts that make
# each timed run last about a second on a 2-core machine (100 000 Kafka messages drain in
# 0.15 s, too short to measure through the noise of a shared machine).
# Criterion micro-benchmarks are separate: cargo bench -p herald-bench --bench hot_paths
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
case "${1:-}" in
  "") ;;
  --smoke) mode=smoke ;;
  *) echo "usage: $0 [--smoke]" >&2; exit 2 ;;
esac

log() { printf 'bench: %s\n' "$*" >&2; }

eval "$(bash ci/brokers.sh up)"

log "building herald-bench (release)"
cargo build --release --locked -p herald-bench >&2
bin=${CARGO_TARGET_DIR:-target}/release/herald-bench
outdir=target/bench
mkdir -p "$outdir"

if [ "$mode" = smoke ]; then
  rounds=1
  kafka_n=3000
  nats_n=3000
  memory_n=20000
  name=smoke
else
  rounds=${HERALD_BENCH_ROUNDS:-5}
  kafka_n=${HERALD_BENCH_KAFKA_MESSAGES:-300000}
  nats_n=${HERALD_BENCH_NATS_MESSAGES:-100000}
  memory_n=${HERALD_BENCH_MEMORY_MESSAGES:-1000000}
  name=results
fi
size=256
lines="$outdir/$name.jsonl"
: >"$lines"

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)

run() { # transport scenario messages [extra args...]
  local t=$1 s=$2 n=$3
  shift 3
  log "$t $s: $n messages x $size B, $rounds round(s) $*"
  "$bin" --transport "$t" --scenario "$s" --messages "$n" --size "$size" \
    --rounds "$rounds" --format json "$@" | tee -a "$lines" >&2
}

for s in publish consume roundtrip; do run kafka "$s" "$kafka_n"; done
# The same against a raw client that carries herald's envelope (the message id as a
# CloudEvents header): the adapter's own cost, without the cost of the id on the wire.
for s in publish consume; do run kafka "$s" "$kafka_n" --raw-envelope; done
for s in publish consume roundtrip; do run nats "$s" "$nats_n"; done
run nats publish "$nats_n" --raw-envelope
for s in publish consume roundtrip; do run memory "$s" "$memory_n"; done

# Memory transport: peak RSS must not grow with the message count (bounded topic).
rss_small=$(( memory_n / 10 ))
log "memory roundtrip RSS reference: $rss_small messages"
"$bin" --transport memory --scenario roundtrip --messages "$rss_small" --size "$size" \
  --rounds 1 --format json | sed 's/^{"summary":true/{"summary":true,"rss_reference":true/' \
  | tee -a "$lines" >&2

elapsed=$(( $(date +%s) - started ))
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

MODE=$mode NAME=$name OUTDIR=$outdir LINES=$lines ELAPSED=$elapsed \
LOAD_BEFORE=$load_before LOAD_AFTER=$load_after \
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') \
NPROC=$(nproc) MEM_BYTES=$(( $(grep MemTotal /proc/meminfo | awk '{print $2}') * 1024 )) \
KERNEL=$(uname -r) RUSTC=$(rustc --version) \
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown) \
python3 - <<'PY'
import json, os, datetime

env = os.environ
runs, summaries, rss_ref = [], [], None
with open(env["LINES"]) as f:
    for line in f:
        line = line.strip()
        if not line.startswith("{"):
            continue
        obj = json.loads(line)
        if obj.get("rss_reference"):
            rss_ref = obj
        elif obj.get("summary"):
            summaries.append(obj)
        else:
            runs.append(obj)

machine = {
    "nproc": int(env["NPROC"]),
    "cpu_model": env["CPU_MODEL"],
    "memory_bytes": int(env["MEM_BYTES"]),
    "kernel": env["KERNEL"],
    "rustc": env["RUSTC"],
    "commit": env["COMMIT"],
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "load_before": env["LOAD_BEFORE"],
    "load_after": env["LOAD_AFTER"],
    "elapsed_seconds": int(env["ELAPSED"]),
}
targets = {"kafka": 0.95, "nats": 0.95}

memory_rss = None
big = next((s for s in summaries if s["transport"] == "memory" and s["scenario"] == "roundtrip"), None)
if big and rss_ref:
    memory_rss = {
        "messages": big["messages"],
        "peak_rss_bytes": big["herald_peak_rss_bytes"],
        "reference_messages": rss_ref["messages"],
        "reference_peak_rss_bytes": rss_ref["herald_peak_rss_bytes"],
        "ratio": big["herald_peak_rss_bytes"] / max(1, rss_ref["herald_peak_rss_bytes"]),
        "target": 1.2,
    }

doc = {"mode": env["MODE"], "machine": machine, "summaries": summaries, "runs": runs,
       "memory_rss": memory_rss}
with open(os.path.join(env["OUTDIR"], env["NAME"] + ".json"), "w") as f:
    json.dump(doc, f, indent=2)

def rate(x):
    return "—" if x is None else f"{x:,.0f}"

def mib(b):
    return "—" if b is None else f"{b / 2**20:.1f} MiB"

md = []
md.append(f"# herald benchmarks ({env['MODE']})\n")
md.append(f"Machine: {machine['nproc']} CPUs ({machine['cpu_model']}), "
          f"{machine['memory_bytes'] / 2**30:.1f} GiB memory, Linux {machine['kernel']}, "
          f"{machine['rustc']}, commit {machine['commit']}, {machine['date']}.  ")
md.append(f"Load average (1/5/15 min) before: {machine['load_before']}, after: "
          f"{machine['load_after']}; the whole run took {machine['elapsed_seconds']} s.\n")
md.append("Each cell is the median over rounds; the ratio is the median of herald/raw of the "
          "same round. Every run is its own process on a fresh topic/stream after a warm-up; "
          "herald and raw alternate. 256-byte payloads.\n")
md.append("| transport | scenario | messages | rounds | raw window / herald batch × calls | herald msgs/s | raw msgs/s | herald/raw | target | herald peak RSS | raw peak RSS |")
md.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for s in summaries:
    ratio = s.get("ratio_median")
    target = targets.get(s["transport"])
    verdict = ""
    if ratio is not None and target is not None:
        verdict = f"≥ {target} {'✅' if ratio >= target else '❌'}"
    scenario = s["scenario"] + (" (raw + envelope)" if s.get("raw_envelope") else "")
    md.append(
        f"| {s['transport']} | {scenario} | {s['messages']:,} | {s['rounds']} | {s['window']:,} / {s['batch']:,} × {s.get('calls', 1)} | "
        f"{rate(s['herald_msgs_per_sec_median'])} | {rate(s.get('raw_msgs_per_sec_median'))} | "
        f"{'—' if ratio is None else f'{ratio:.3f}'} | {verdict} | "
        f"{mib(s['herald_peak_rss_bytes'])} | {mib(s.get('raw_peak_rss_bytes'))} |")
md.append("")
if memory_rss:
    ok = memory_rss["ratio"] <= memory_rss["target"]
    md.append(f"Memory transport peak RSS, roundtrip: {memory_rss['messages']:,} messages "
              f"{mib(memory_rss['peak_rss_bytes'])} vs {memory_rss['reference_messages']:,} "
              f"messages {mib(memory_rss['reference_peak_rss_bytes'])}: ratio "
              f"{memory_rss['ratio']:.2f} (target ≤ {memory_rss['target']}) {'✅' if ok else '❌'}\n")
md.append("Settings: Kafka — both sides use herald's effective librdkafka settings "
          "(idempotence, acks=all, linger.ms=5; session 6 s, heartbeat 1 s); raw consumer stores "
          "each offset after handling and auto-commits every second, herald commits acked "
          "offsets every second. NATS — same file-storage streams; raw publishes with Nats-Msg-Id "
          "and at most `window` PubAcks outstanding, herald's max_pending_acks = window; both "
          "consume with an explicit-ack pull consumer (max_ack_pending 256, batch 256), one ack "
          "per message. Rows marked \"raw + envelope\": the raw client also sends herald's "
          "`ce_id`/`ce_specversion` headers and the raw Kafka consumer reads each record's id. "
          "herald publishes in `publish` calls of window/2 messages, two calls in flight (at most a window unacknowledged, like the raw sliding window).\n")
with open(os.path.join(env["OUTDIR"], env["NAME"] + ".md"), "w") as f:
    f.write("\n".join(md) + "\n")
print("\n".join(md))
PY
log "wrote $outdir/$name.json and $outdir/$name.md"
