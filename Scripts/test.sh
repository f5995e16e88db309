#!/usr/bin/env bash
# Runs the whole Gatehouse test suite: the Python (pytest) fixture tests, then `swift test`.
# Installs the system packages the build and the tests need when they are missing and we are
# root; extra arguments go to `swift test` (and skip the Python tests).
set -euo pipefail

cd "$(dirname "$0")/.."

packages=(libssl-dev libcrypt-dev curl iproute2)
missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg -s "$pkg" >/dev/null 2>&1; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "test.sh: installing missing packages: ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}"
    else
        echo "test.sh: missing packages (not root, not installing): ${missing[*]}" >&2
    fi
fi

if [ -d /opt/swift/usr/bin ]; then
    case ":$PATH:" in
        *:/opt/swift/usr/bin:*) ;;
        *) export PATH="/opt/swift/usr/bin:$PATH" ;;
    esac
fi

# The pytest fixture (Tests/pytest) runs the built binary, so build first; run it only for a
# whole-suite run (no arguments), then the Swift suite, whose summary closes the output.
if [ "$#" -eq 0 ]; then
    if ! python3 -c 'import pytest, requests' >/dev/null 2>&1; then
        echo "test.sh: installing pytest and requests for the Python fixture tests" >&2
        python3 -m pip install -q pytest requests
    fi
    swift build --product gatehouse
    GATEHOUSE_BIN="$(swift build --show-bin-path)/gatehouse" python3 -m pytest -q -p no:cacheprovider Tests/pytest
fi

exec swift test "$@"
