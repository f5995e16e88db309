#!/usr/bin/env bash
# Runs the Gatehouse test suite. Installs the system packages the build and the
# tests need when they are missing and we are root; extra arguments go to `swift test`.
set -euo pipefail

cd "$(dirname "$0")/.."

packages=(libssl-dev libcrypt-dev curl)
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

exec swift test "$@"
