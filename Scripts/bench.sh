#!/usr/bin/env bash
# Benchmarks a release build of Gatehouse against the no-proxy floor (and squid when
# installed) with the shared harness in ../shared/tools/bench (see its README.md).
# Extra arguments go to the harness before the targets, e.g.:
#   Scripts/bench.sh --quick
#   Scripts/bench.sh --rounds 5 --keep
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

exec sh "$harness" "$@" "${targets[@]}"
