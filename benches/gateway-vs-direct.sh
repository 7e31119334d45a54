#!/usr/bin/env bash
# Measures the gateway against its mock upstream directly, in the same run (see README.md).
#   bash benches/gateway-vs-direct.sh [SECONDS_PER_ROUND] [ROUNDS] [CONNECTIONS]
# Builds the release gateway, null_proxy and loadgen, starts the gateway on
# benches/gateway.toml (one in-process mock upstream behind the full stack) and a null proxy
# forwarding to that same mock, then runs loadgen twice with three targets, the mock directly
# (the baseline), the null proxy (the cost of one HTTP hop alone) and the gateway: open loop
# at 100 requests/s, then closed loop with CONNECTIONS connections. Stops both at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
rounds=${2:-3}
conns=${3:-16}
cargo build --release -p tower-llm-gateway
cargo build --release -p example-loadgen
target=${CARGO_TARGET_DIR:-target}/release
log=$(mktemp)
"$target/tower-llm-gateway" --config benches/gateway.toml >"$log" 2>&1 &
gateway=$!
proxy=
trap 'kill $gateway $proxy 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 50); do
  grep -q "listening on" "$log" && break
  sleep 0.1
done
cat "$log"
mock=$(sed -n 's/^gateway: mock upstream mock at \(http:[^ ]*\)$/\1/p' "$log")
listen=$(sed -n 's/^gateway: listening on \(http:[^ ]*\)$/\1/p' "$log")
[ -n "$mock" ] && [ -n "$listen" ] || { echo "gateway did not start" >&2; exit 1; }
"$target/null_proxy" "$mock" 127.0.0.1:8090 &
proxy=$!
sleep 0.5
echo
echo "== open loop, 100 requests/s"
"$target/loadgen" --target "$mock" --target http://127.0.0.1:8090 --target "$listen" --key sk-bench \
  --rate 100 --duration "${secs}s" --warmup 2s --rounds "$rounds"
echo
echo "== closed loop, $conns connections"
"$target/loadgen" --target "$mock" --target http://127.0.0.1:8090 --target "$listen" --key sk-bench \
  --connections "$conns" --duration "${secs}s" --warmup 2s --rounds "$rounds"
