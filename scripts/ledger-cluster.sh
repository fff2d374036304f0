#!/usr/bin/env bash
# Starts a three-node Aegis ledger cluster on this machine and initialises it.
#
#   scripts/ledger-cluster.sh [DATA_DIR]      (default: ./target/ledger-cluster)
#
# Node i (1..3) serves clients on 127.0.0.1:74i0, peers on 127.0.0.1:74i1 and metrics on
# 127.0.0.1:74i2. Logs go to DATA_DIR/node-i.log. Stop the cluster with
#   kill $(cat DATA_DIR/pids)
# Extra flags for every node can be passed in AEGIS_LEDGER_FLAGS (e.g. "--durability-fsync false").
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-target/ledger-cluster}
origin=${AEGIS_ORIGIN:-aegis.local/ledger/dev}
mkdir -p "$data"
cargo build --release --quiet -p ledger-node -p aegisctl --bins
: > "$data/pids"
for i in 1 2 3; do
  # shellcheck disable=SC2086
  ./target/release/aegis-ledger --node-id "$i" --data-dir "$data/node-$i" --origin "$origin" \
    --client-listen "127.0.0.1:74${i}0" --peer-listen "127.0.0.1:74${i}1" --metrics-listen "127.0.0.1:74${i}2" \
    ${AEGIS_LEDGER_FLAGS:-} >"$data/node-$i.log" 2>&1 &
  echo $! >> "$data/pids"
done
# Wait until every node answers, then join them (a no-op error if already initialised).
for i in 1 2 3; do
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/74${i}0") 2>/dev/null; then break; fi
    sleep 0.1
  done
done
if ! [ -e "$data/initialised" ]; then
  ./target/release/aegisctl init --nodes 127.0.0.1:7410,127.0.0.1:7420,127.0.0.1:7430
  touch "$data/initialised"
fi
echo "cluster up: clients at 127.0.0.1:7410,127.0.0.1:7420,127.0.0.1:7430 (pids in $data/pids)"
