#!/usr/bin/env bash
# User-space instructions per message of a whole gateway, free of the machine's noise: `courier
# serve --shards 2` under `valgrind --tool=callgrind`, an open loop slow enough that valgrind
# keeps up and every message is its own packet (200 users, 200 msg/s), counters zeroed after the
# warm-up and dumped 20 s later (`callgrind_control`), divided by the messages acknowledged in
# that window. Run from the project root after a release build; prints one line.
# Usage: benches/scripts/gateway-instructions.sh [COURIER_BIN] [LOADGEN_BIN]
set -eu
bin=${1:-target/release/courier}; lg=${2:-target/release/loadgen}
command -v valgrind >/dev/null || { echo "valgrind is not installed"; exit 1; }
w=$(mktemp -d); port=$((46000 + RANDOM % 1000)); rate=200
valgrind --tool=callgrind --callgrind-out-file="$w/cg.%p" "$bin" serve --data-dir "$w/d" \
  --listen "127.0.0.1:$port" --shards 2 >"$w/serve.log" 2>&1 &
vpid=$!
trap 'kill $vpid 2>/dev/null || true; wait $vpid 2>/dev/null || true; rm -rf "$w"' EXIT
for _ in $(seq 120); do grep -q listening "$w/serve.log" && break; sleep 1; done
grep -q listening "$w/serve.log" || { echo "the gateway did not start"; cat "$w/serve.log"; exit 1; }
timeout 200 "$lg" run --server "127.0.0.1:$port" --ca "$w/d/tls/cert.pem" --issuer-key "$w/d/issuer.key" \
  --users 200 --rate $rate --warmup 8 --duration 30 >"$w/lg.log" 2>&1 &
lp=$!
for _ in $(seq 180); do grep -q "warming up" "$w/lg.log" && break; sleep 1; done
sleep 10
callgrind_control -z $vpid >/dev/null 2>&1; t0=$(date +%s.%N)
sleep 20
callgrind_control -d $vpid >/dev/null 2>&1; t1=$(date +%s.%N)
wait $lp || { echo "loadgen failed"; tail -5 "$w/lg.log"; exit 1; }
ir=$(awk '/^summary:/ {print $2}' "$w"/cg.$vpid.1)
acked=$(grep -o 'acked_per_s=[0-9]*' "$w/lg.log" | cut -d= -f2)
awk -v ir="$ir" -v a="$acked" -v t0="$t0" -v t1="$t1" 'BEGIN {printf "gateway_instructions_per_msg=%.0f window_s=%.1f acked_per_s=%s ", ir / (a * (t1 - t0)), t1 - t0, a}'
grep '^loadgen run:' "$w/lg.log" | grep -oE '(lost|dup|gaps|dgrams_in_per_msg|dgrams_out_per_msg)=[0-9.]*' | tr '\n' ' '; echo
