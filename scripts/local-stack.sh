#!/usr/bin/env bash
# The whole Aegis stack on this machine, in the foreground: three ledger nodes (each with its
# own data directory and signing key), initialised as one cluster, and two gateways with the
# built-in mock model provider, sharing one port (SO_REUSEPORT: the kernel spreads connections
# between them). Ctrl-C stops everything cleanly; the next run reuses the data.
#
#   scripts/local-stack.sh
#
# Settings (environment):
#   AEGIS_LOCAL_DIR           data, logs and config       (default: target/aegis-local)
#   AEGIS_LOCAL_GATEWAY_PORT  the gateways' shared port   (default: 8080)
#   AEGIS_LOCAL_LEDGER_PORT   node i uses PORT+10(i-1) for clients, +1 peers, +2 metrics (default: 7410)
#   AEGIS_BIN_DIR             use the binaries there instead of building them (tests do)
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${AEGIS_LOCAL_DIR:-target/aegis-local}
gateway_port=${AEGIS_LOCAL_GATEWAY_PORT:-8080}
ledger_port=${AEGIS_LOCAL_LEDGER_PORT:-7410}
origin=aegis.local/ledger/dev
api_key=sk-aegis-local-demo

if [ -n "${AEGIS_BIN_DIR:-}" ]; then
  bin=$AEGIS_BIN_DIR
else
  echo "building (release; the first build takes a few minutes)..."
  cargo build --release --locked --quiet -p ledger-node -p gateway -p aegisctl --bins
  bin=target/release
fi
mkdir -p "$dir"

# Children run in their own sessions (setsid): a Ctrl-C in this terminal reaches only this
# script, which then stops them in order, once each.
pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping: gateways first (they flush their audit records), then the ledger..."
  for pid in "${pids[@]:3}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]:3}"; do wait "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]:0:3}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]:0:3}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped; data kept in $dir"
}
trap stop INT TERM EXIT

wait_for_port() { # port log
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on port $1 after 30 s; see $2" >&2
  tail -n 20 "$2" >&2
  exit 1
}

ledgers=()
for i in 1 2 3; do
  client=$((ledger_port + 10 * (i - 1)))
  ledgers+=("127.0.0.1:$client")
  setsid "$bin/aegis-ledger" --node-id "$i" --data-dir "$dir/ledger-$i" --origin "$origin" \
    --client-listen "127.0.0.1:$client" --peer-listen "127.0.0.1:$((client + 1))" \
    --metrics-listen "127.0.0.1:$((client + 2))" >>"$dir/ledger-$i.log" 2>&1 &
  pids+=($!)
done
for i in 1 2 3; do wait_for_port "${ledgers[$((i - 1))]##*:}" "$dir/ledger-$i.log"; done
nodes=$(IFS=,; echo "${ledgers[*]}")
"$bin/aegisctl" init --nodes "$nodes" >"$dir/init.txt"
if [ ! -e "$dir/trust.toml" ]; then
  "$bin/aegisctl" pin --ledger "$nodes" --out "$dir/trust.toml" >/dev/null
fi

key_sha256=$(printf %s "$api_key" | "$bin/aegisctl" --json hash-key | sed 's/.*"key_sha256":"\([0-9a-f]*\)".*/\1/')
endpoints=$(printf '"http://%s", ' "${ledgers[@]}")
cat >"$dir/gateway.toml" <<TOML
# Written by scripts/local-stack.sh on every start.
gateway_id = "gw-local"
listen = "127.0.0.1:$gateway_port"
listen_reuse_port = true

[[upstreams]]
name = "mock"
kind = "mock"
models = ["*"]

[[tenants]]
id = "demo"
audit_mode = "async"

[[credentials]]
id = "demo-app"
tenant = "demo"
key_sha256 = "$key_sha256"
scopes = ["proxy", "audit:read"]

[audit]
ledger_endpoints = [${endpoints%, }]
spool_dir = "$dir/spool"
TOML
for g in 1 2; do
  setsid "$bin/aegis-gateway" --config "$dir/gateway.toml" --gateway-id "gw-$g" --spool-dir "$dir/gateway-$g-spool" \
    >>"$dir/gateway-$g.log" 2>&1 &
  pids+=($!)
done
wait_for_port "$gateway_port" "$dir/gateway-1.log"

cat <<TEXT

Aegis is running.
  gateways  http://127.0.0.1:$gateway_port (gw-1 and gw-2, one port; logs $dir/gateway-*.log)
  ledger    $nodes (gRPC; logs $dir/ledger-*.log)
  API key   $api_key (tenant "demo")

Send a chat completion through the gateway (the x-aegis-record-id header names its audit record):
  curl -sS -i http://127.0.0.1:$gateway_port/v1/chat/completions -H 'authorization: Bearer $api_key' -H 'content-type: application/json' -d '{"model":"mock-1","messages":[{"role":"user","content":"Hello"}]}'

Prove that request's record is in the ledger (signatures, inclusion proof; put the id from the header):
  $bin/aegisctl prove --ledger $nodes --trust $dir/trust.toml RECORD_ID

Both at once:
  id=\$(curl -sS -o /dev/null -D - http://127.0.0.1:$gateway_port/v1/chat/completions -H 'authorization: Bearer $api_key' -H 'content-type: application/json' -d '{"model":"mock-1","messages":[{"role":"user","content":"Hello"}]}' | tr -d '\r' | sed -n 's/^x-aegis-record-id: //p'); $bin/aegisctl prove --ledger $nodes --trust $dir/trust.toml "\$id"

Cluster status: $bin/aegisctl status --ledger $nodes
Press Ctrl-C to stop.
TEXT
wait
