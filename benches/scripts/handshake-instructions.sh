#!/usr/bin/env bash
# User-space instructions per connection a gateway spends to open it, free of the machine's noise:
# `courier serve --shards 2` under `valgrind --tool=callgrind`, `loadgen connect` opening N
# connections slowly enough that valgrind keeps up (each one: QUIC and TLS 1.3 handshake, Hello
# with its token checked, session set up, then closed), counters zeroed before the first handshake
# and dumped once all are closed, divided by N. Run from the project root after a release build; prints one line.
# Usage: benches/scripts/handshake-instructions.sh [COURIER_BIN] [LOADGEN_BIN] [N]
set -eu
bin=${1:-target/release/courier}; lg=${2:-target/release/loadgen}; n=${3:-500}
command -v valgrind >/dev/null || { echo "valgrind is not installed"; exit 1; }
w=$(mktemp -d); port=$((47000 + RANDOM % 1000))
valgrind --tool=callgrind --callgrind-out-file="$w/cg.%p" "$bin" serve --data-dir "$w/d" \
  --listen "127.0.0.1:$port" --shards 2 >"$w/serve.log" 2>&1 &
vpid=$!
trap 'kill $vpid 2>/dev/null || true; wait $vpid 2>/dev/null || true; rm -rf "$w"' EXIT
for _ in $(seq 120); do grep -q listening "$w/serve.log" && break; sleep 1; done
grep -q listening "$w/serve.log" || { echo "the gateway did not start"; cat "$w/serve.log"; exit 1; }
callgrind_control -z $vpid >/dev/null 2>&1
timeout 600 "$lg" connect --server "127.0.0.1:$port" --ca "$w/d/tls/cert.pem" \
  --issuer-key "$w/d/issuer.key" --conns "$n" --rate 50 --parallel 16 --hold 1 >"$w/lg.log" 2>&1 &
lp=$!
for _ in $(seq 600); do grep -q "loadgen connect:" "$w/lg.log" && break; sleep 1; done
callgrind_control -d $vpid >/dev/null 2>&1
wait $lp || { echo "loadgen failed"; tail -5 "$w/lg.log"; exit 1; }
ir=$(awk '/^summary:/ {print $2}' "$w"/cg.$vpid.1)
awk -v ir="$ir" -v n="$n" 'BEGIN {printf "gateway_instructions_per_handshake=%.0f conns=%d ", ir / n, n}'
grep '^loadgen connect:' "$w/lg.log" | grep -oE '(failed|handshakes_per_s)=[0-9.]*' | tr '\n' ' '; echo
