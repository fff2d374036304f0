#!/usr/bin/env bash
# Gateway overhead benchmark, in one invocation on this machine:
#   - a three-node ledger cluster (scripts/ledger-cluster.sh) and the standalone mock upstream
#     (aegis-mock-upstream) on 127.0.0.1:9100;
#   - a gateway on 127.0.0.1:8080 forwarding to that mock as an OpenAI-compatible upstream, with
#     the full pipeline (limits, auth, rate limit) and `async` audit to the ledger;
#   - aegis-gateway-loadgen against the mock directly and through the gateway at concurrency
#     1, 4, 32, 128 and 256, then a table: throughput, p50/p99 both ways, the added latency, the
#     gateway's RSS (idle and peak) and the audit records dropped.
#   - with OTEL_BENCH=1, a second gateway on 127.0.0.1:8081, identical but exporting spans over
#     OTLP to a collector that is down (127.0.0.1:4399, nothing listens), measured at the same
#     concurrencies right after the first: tracing export must not slow requests.
# Usage: [OTEL_BENCH=1] scripts/gateway-bench.sh [SECONDS_PER_RUN] [OUTPUT_FILE]
# The machine is shared and noisy: compare figures from the same invocation only.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
out=${2:-target/gateway-bench.txt}
work=target/gateway-bench
cargo build --release --quiet -p gateway -p ledger-node --bins
rm -rf "$work" && mkdir -p "$work"
scripts/ledger-cluster.sh "$work/ledger" >/dev/null
pids=$(cat "$work/ledger/pids")
cleanup() { kill $pids 2>/dev/null || true; }
trap cleanup EXIT

./target/release/aegis-mock-upstream --listen 127.0.0.1:9100 --chunk-count 8 --threads 1 &
pids="$pids $!"
key=sk-bench-key
hash=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
cat > "$work/gateway.toml" <<TOML
gateway_id = "gw-bench"
listen = "127.0.0.1:8080"
[log]
filter = "warn"
[[upstreams]]
name = "mock-http"
kind = "openai"
base_url = "http://127.0.0.1:9100/v1"
models = ["*"]
[[tenants]]
id = "bench"
[[credentials]]
id = "bench-app"
tenant = "bench"
key_sha256 = "$hash"
scopes = ["proxy"]
requests_per_minute = 100000000
requests_burst = 1000000
tokens_per_minute = 100000000000
[audit]
ledger_endpoints = ["http://127.0.0.1:7410", "http://127.0.0.1:7420", "http://127.0.0.1:7430"]
spool_dir = "$work/spool"
TOML
./target/release/aegis-gateway --config "$work/gateway.toml" 2>"$work/gateway.log" &
gateway_pid=$!
pids="$pids $gateway_pid"
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break; sleep 0.1; done
if [ -n "${OTEL_BENCH:-}" ]; then
  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4399 OTEL_SERVICE_NAME=aegis-gateway-bench \
    ./target/release/aegis-gateway --config "$work/gateway.toml" --listen 127.0.0.1:8081 \
    --gateway-id gw-bench-otel --spool-dir "$work/spool-otel" 2>"$work/gateway-otel.log" &
  pids="$pids $!"
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/8081) 2>/dev/null && break; sleep 0.1; done
fi
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/9100) 2>/dev/null && break; sleep 0.1; done
sleep 1
rss_idle_kb=$(awk '/VmRSS/ {print $2}' /proc/$gateway_pid/status)

body='{"model":"mock-1","max_tokens":16,"messages":[{"role":"user","content":"Summarise the audit policy for this quarter in one sentence."}]}'
run() { # label url concurrency -> JSON line
  ./target/release/aegis-gateway-loadgen --url "$2" --concurrency "$3" --duration-secs "$seconds" \
    --warmup-secs 1 --threads 1 --header "authorization: Bearer $key" --body "$body" --label "$1" --json
}
results="$work/results.jsonl"
: > "$results"
for concurrency in 1 4 32 128 256; do
  run direct http://127.0.0.1:9100/v1/chat/completions "$concurrency" >> "$results"
  run gateway http://127.0.0.1:8080/v1/chat/completions "$concurrency" >> "$results"
  if [ -n "${OTEL_BENCH:-}" ]; then
    run gateway-otel-down http://127.0.0.1:8081/v1/chat/completions "$concurrency" >> "$results"
  fi
done
sleep 3
metrics=$(curl -s http://127.0.0.1:8080/metrics || true)
dropped=$(echo "$metrics" | awk '/^aegis_gateway_audit_records_dropped_total/ {print $2}')
submitted=$(echo "$metrics" | awk '/^aegis_gateway_audit_records_submitted_total/ {print $2}')
acknowledged=$(echo "$metrics" | awk '/^aegis_gateway_audit_records_acknowledged_total/ {print $2}')
rss_peak_kb=$(awk '/VmHWM/ {print $2}' /proc/$gateway_pid/status)
{
  echo "== gateway bench $(date -u +%FT%TZ), $(nproc) cores, ${seconds}s per run, chat completion via OpenAI-compatible HTTP mock"
  python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
by = {(r["label"], r["concurrency"]): r for r in rows}
print(f"{'conc':>5} | {'direct rps':>10} {'p50 ms':>8} {'p99 ms':>8} | {'gateway rps':>11} {'p50 ms':>8} {'p99 ms':>8} | {'added p50 us':>12} {'added p99 us':>12} | errors")
for c in sorted({r["concurrency"] for r in rows}):
    d, g = by[("direct", c)], by[("gateway", c)]
    print(f"{c:>5} | {d['requests_per_sec']:>10.0f} {d['latency_us']['p50']/1000:>8.3f} {d['latency_us']['p99']/1000:>8.3f} | "
          f"{g['requests_per_sec']:>11.0f} {g['latency_us']['p50']/1000:>8.3f} {g['latency_us']['p99']/1000:>8.3f} | "
          f"{g['latency_us']['p50']-d['latency_us']['p50']:>12} {g['latency_us']['p99']-d['latency_us']['p99']:>12} | {d['errors']}/{g['errors']}")
g4, g128 = by[("gateway", 4)], by[("gateway", 128)]
print(f"gateway throughput at concurrency 128 / at 4: {g128['requests_per_sec']/g4['requests_per_sec']:.2f}")
if any(r["label"] == "gateway-otel-down" for r in rows):
    print("span export on, collector down, vs export off (same run):")
    print(f"{'conc':>5} | {'off rps':>9} {'p50 ms':>7} {'p99 ms':>7} | {'on rps':>9} {'p50 ms':>7} {'p99 ms':>7} | {'rps on/off':>10} {'p99 on/off':>10} | errors")
    for c in sorted({r["concurrency"] for r in rows}):
        g, o = by[("gateway", c)], by[("gateway-otel-down", c)]
        print(f"{c:>5} | {g['requests_per_sec']:>9.0f} {g['latency_us']['p50']/1000:>7.3f} {g['latency_us']['p99']/1000:>7.3f} | "
              f"{o['requests_per_sec']:>9.0f} {o['latency_us']['p50']/1000:>7.3f} {o['latency_us']['p99']/1000:>7.3f} | "
              f"{o['requests_per_sec']/g['requests_per_sec']:>10.2f} {o['latency_us']['p99']/max(g['latency_us']['p99'],1):>10.2f} | {g['errors']}/{o['errors']}")
PY
  echo "gateway RSS: idle ${rss_idle_kb} KiB, peak ${rss_peak_kb} KiB"
  echo "audit records: submitted ${submitted:-?}, acknowledged ${acknowledged:-?}, dropped ${dropped:-?}"
} | tee "$out"
