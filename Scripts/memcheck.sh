#!/usr/bin/env bash
# Checks that a large download through Gatehouse does not grow its memory: backpressure must
# hold the origin back while the client reads slowly, instead of buffering the body.
#
#   Scripts/memcheck.sh [SIZE_MIB] [CLIENT_RATE]     (defaults: 200 MiB at 50M/s)
#
# Builds release, serves a random file from a local origin (python3 -m http.server), fetches
# it through the proxy with curl --limit-rate, samples the proxy's RSS every 100 ms, and
# prints baseline and peak RSS, and whether the body arrived byte-exact (sha256).
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-200}
rate=${2:-50M}
[ -d /opt/swift/usr/bin ] && export PATH="/opt/swift/usr/bin:$PATH"
swift build -c release --product gatehouse >/dev/null

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
head -c $((size_mib * 1024 * 1024)) /dev/urandom > "$work/big.bin"
origin_port=$((20000 + RANDOM % 10000))
(cd "$work" && exec python3 -m http.server "$origin_port" --bind 127.0.0.1 >/dev/null 2>&1) &
.build/release/gatehouse --listen 127.0.0.1:0 --user mem:check --print-address --access-log /dev/null > "$work/addr" 2>/dev/null &
proxy_pid=$!
for _ in $(seq 50); do [ -s "$work/addr" ] && break; sleep 0.1; done
proxy=$(head -1 "$work/addr")
sleep 0.5
rss() { awk '/VmRSS/ {print $2}' "/proc/$proxy_pid/status"; }
baseline=$(rss)
peak=$baseline
curl -s --limit-rate "$rate" -x "http://mem:check@$proxy" "http://127.0.0.1:$origin_port/big.bin" -o "$work/out.bin" &
curl_pid=$!
while kill -0 "$curl_pid" 2>/dev/null; do
    now=$(rss); [ "$now" -gt "$peak" ] && peak=$now
    sleep 0.1
done
wait "$curl_pid"
if cmp -s "$work/big.bin" "$work/out.bin"; then exact=yes; else exact=NO; fi
echo "download: ${size_mib} MiB at ${rate}/s through Gatehouse; byte-exact: $exact"
echo "RSS baseline: ${baseline} KiB, peak: ${peak} KiB, growth: $((peak - baseline)) KiB"
[ "$exact" = yes ] && [ $((peak - baseline)) -lt 32768 ]
