#!/usr/bin/env bash
# Measures a fresh local three-node ledger cluster with aegis-ledger-loadgen:
#   1. appends as fast as the cluster takes them (200k records of 512 B, batches of 100)
#   2. appends offered at 20,000 records/s (acknowledgement latency, open loop)
#   3. appends until the tree holds 1.2 million leaves
#   4. inclusion proofs of random leaves against the latest checkpoint: once cold, then warm at
#      64, 32 and 16 requests in flight (latency depends on it: mean = in flight / throughput)
# Usage: scripts/ledger-bench.sh [OUTPUT_FILE]     (default: target/ledger-bench.txt)
# The machine is shared and noisy: compare figures from the same invocation only.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/ledger-bench.txt}
data=target/ledger-bench-cluster
if [ -f "$data/pids" ]; then kill $(cat "$data/pids") 2>/dev/null || true; sleep 1; fi
rm -rf "$data"
scripts/ledger-cluster.sh "$data" >/dev/null
trap 'kill $(cat "$data/pids") 2>/dev/null || true' EXIT
sleep 3
loadgen=./target/release/aegis-ledger-loadgen
leader=127.0.0.1:7410
all=127.0.0.1:7410,127.0.0.1:7420,127.0.0.1:7430
{
  echo "== ledger bench $(date -u +%FT%TZ), $(nproc) cores"
  $loadgen append --targets $leader --records 200000 --batch 100 --concurrency 64
  $loadgen append --targets $leader --records 200000 --batch 100 --concurrency 256 --rate 20000
  $loadgen append --targets $leader --records 800000 --batch 100 --concurrency 64
  sleep 2
  $loadgen proofs --targets $all --requests 100000 --concurrency 64
  for concurrency in 64 32 16; do
    $loadgen proofs --targets $all --requests 100000 --concurrency $concurrency
  done
} 2>&1 | grep -v '^append failed' | tee "$out"
