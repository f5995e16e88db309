#!/usr/bin/env bash
# Soak test: mixed load through Gatehouse for a given time, then byte-exactness and leak checks.
# See Scripts/soak.py for what it does. Usage:
#   Scripts/soak.sh [--build] [--duration 600] [--binary PATH] [--concurrency 16] [--slowloris 200] [--json OUT]
# --build first builds the release binary (swift build -c release --product gatehouse);
# every other argument goes to soak.py.
set -euo pipefail
cd "$(dirname "$0")/.."

build=0
args=()
for arg in "$@"; do
    if [ "$arg" = --build ]; then build=1; else args+=("$arg"); fi
done

if [ "$build" = 1 ]; then
    if [ -d /opt/swift/usr/bin ]; then
        case ":$PATH:" in
            *:/opt/swift/usr/bin:*) ;;
            *) export PATH="/opt/swift/usr/bin:$PATH" ;;
        esac
    fi
    swift build -c release --product gatehouse
fi

exec python3 Scripts/soak.py ${args[@]+"${args[@]}"}
