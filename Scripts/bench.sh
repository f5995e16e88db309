#!/usr/bin/env bash
# Benchmarks a release build of Gatehouse against the no-proxy floor (and squid when
# installed) with the shared harness in ../shared/tools/bench (see its README.md).
# Extra arguments go to the harness before the targets (default: --quick), e.g.:
#   Scripts/bench.sh                 # short run, ~1 minute
#   Scripts/bench.sh --rounds 3      # the full harness run, ~6 minutes
# It ends with a table of Gatehouse's figures as ratios to Squid and direct access, measured
# in the same run, next to the performance targets (Scripts/bench-ratios.py).
set -euo pipefail

cd "$(dirname "$0")/.."

harness=../shared/tools/bench/bench.sh
if [ ! -f "$harness" ]; then
    echo "bench.sh: benchmark harness not found at $(pwd)/$harness" >&2
    echo "bench.sh: it is expected in ../shared/tools/bench relative to the repository root" >&2
    exit 1
fi

if [ -d /opt/swift/usr/bin ]; then
    case ":$PATH:" in
        *:/opt/swift/usr/bin:*) ;;
        *) export PATH="/opt/swift/usr/bin:$PATH" ;;
    esac
fi

swift build -c release --product gatehouse

targets=(direct)
if command -v squid >/dev/null 2>&1; then
    targets+=(squid)
else
    echo "bench.sh: squid not installed; benchmarking without it" >&2
fi
targets+=('cmd:.build/release/gatehouse --listen 127.0.0.1:{port} --htpasswd {htpasswd} --realm {realm} --access-log {log} --connect-ports 21443')

# A short run by default (the issue asks for a benchmark, not a timed test); pass options
# such as --rounds 3 to override.
if [ "$#" -eq 0 ]; then set -- --quick; fi
out="${TMPDIR:-/tmp}/gatehouse-bench-$$.md"
status=0
sh "$harness" --out "$out" "$@" "${targets[@]}" || status=$?
echo
echo "Gatehouse against Squid and direct access, measured in this run:"
python3 Scripts/bench-ratios.py "${out%.md}.json" || true
exit "$status"
