#!/usr/bin/env bash
# Builds and runs the libFuzzer targets in Scripts/fuzz/.
#
#   Scripts/fuzz.sh [--minimize] [RUNS] [TARGET...]
#
# RUNS defaults to 100000; TARGET is any of: BasicCredentials Htpasswd RequestTarget (default: all).
# Each target is built with `swiftc -sanitize=fuzzer,address` from its entry file in Scripts/fuzz/
# plus the few Sources/ files it needs, into .build-fuzz/, and run with its corpus directory
# Tests/GatehouseTests/Fixtures/fuzz-corpus/<target>/, so new interesting inputs are added to the
# corpus (which FuzzCorpusTests replays in every `swift test`). Crash reproducers are written to
# .build-fuzz/<target>/. Exits non-zero if any target crashes.
#
# Environment: FUZZ_FLAGS adds libFuzzer flags; FUZZ_OPT overrides -O;
# FUZZ_NO_BUILD=1 reuses existing binaries.
#
# libFuzzer keeps every input that found new coverage, so corpora grow. --minimize shrinks each
# corpus after its run: `-merge=1` into a fresh directory, which then replaces the corpus; the
# hand-written seed-* inputs and crash-* reproducers are always kept under their names. If the
# merged corpus has more than FUZZ_MAX_CORPUS (300) files, it is merged again keeping only a
# minimal set that covers every edge (-use_counters=0).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD

if [ -d /opt/swift/usr/bin ]; then
    case ":$PATH:" in
        *:/opt/swift/usr/bin:*) ;;
        *) PATH=/opt/swift/usr/bin:$PATH ;;
    esac
fi

# Swift's own crash backtracer fights with ASan/libFuzzer's signal handling; let libFuzzer report.
export SWIFT_BACKTRACE=enable=no

minimize=0
if [ "${1:-}" = --minimize ]; then
    minimize=1
    shift
fi

runs=100000
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then
    runs=$1
    shift
fi

all_targets=(BasicCredentials Htpasswd RequestTarget)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi

# Sources/ files each target is compiled with (in one module, GatehouseFuzz, next to the entry file).
sources_for() {
    case "$1" in
        BasicCredentials) echo "Sources/Gatehouse/Auth/BasicCredentials.swift" ;;
        Htpasswd) echo "Sources/Gatehouse/Auth/HtpasswdFile.swift Sources/Gatehouse/Auth/PasswordHash.swift Sources/Gatehouse/Auth/BasicCredentials.swift" ;;
        RequestTarget) echo "Sources/Gatehouse/HTTP/Authority.swift Sources/Gatehouse/HTTP/RequestTarget.swift Tests/GatehouseTests/FuzzInvariants/ReferenceRequestTarget.swift" ;;
        *) echo "fuzz.sh: unknown target '$1' (known: ${all_targets[*]})" >&2; return 1 ;;
    esac
}

build() {
    local target=$1 out=$2
    local srcs
    srcs=$(sources_for "$target")
    # shellcheck disable=SC2086
    swiftc -sanitize=fuzzer,address -parse-as-library "${FUZZ_OPT:--O}" -g \
        -module-name GatehouseFuzz -I Sources/CCrypt \
        -o "$out" "Scripts/fuzz/Fuzz$target.swift" Tests/GatehouseTests/FuzzInvariants/FuzzViolations.swift \
        "Tests/GatehouseTests/FuzzInvariants/${target}Invariants.swift" $srcs
}

summary=()
failed=0
for target in "${targets[@]}"; do
    sources_for "$target" >/dev/null
    workdir="$root/.build-fuzz/$target"
    corpus="$root/Tests/GatehouseTests/Fixtures/fuzz-corpus/$target"
    binary="$workdir/fuzz-$target"
    mkdir -p "$workdir" "$corpus"
    if [ "${FUZZ_NO_BUILD:-0}" != 1 ] || [ ! -x "$binary" ]; then
        echo "== building $target" >&2
        if ! build "$target" "$binary" >"$workdir/build.log" 2>&1; then
            cat "$workdir/build.log" >&2
            echo "fuzz.sh: building $target failed" >&2
            exit 2
        fi
        # ld.gold warns about every ASan-internal symbol; show only the rest.
        grep -v "Cannot export local symbol" "$workdir/build.log" >&2 || true
    fi
    echo "== fuzzing $target for $runs runs" >&2
    log="$workdir/fuzz.log"
    start=$(date +%s)
    set +e
    # shellcheck disable=SC2086
    (cd "$workdir" && "$binary" -runs="$runs" -max_len=4096 -print_final_stats=1 \
        -artifact_prefix="$workdir/" ${FUZZ_FLAGS:-} "$corpus") >"$log" 2>&1
    status=$?
    set -e
    elapsed=$(( $(date +%s) - start ))
    done_runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    size=$(find "$corpus" -type f | wc -l)
    if [ "$status" -eq 0 ]; then
        result="ok, 0 crashes"
    else
        result="CRASH (exit $status), see $log"
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        [ -n "$artifact" ] && result="$result, reproducer $artifact"
        tail -n 40 "$log" >&2
        failed=1
    fi
    if [ "$minimize" = 1 ] && [ "$status" -eq 0 ]; then
        merged="$workdir/merged"
        rm -rf "$merged"
        mkdir -p "$merged"
        "$binary" -merge=1 -max_len=4096 "$merged" "$corpus" >"$workdir/merge.log" 2>&1
        if [ "$(find "$merged" -type f | wc -l)" -gt "${FUZZ_MAX_CORPUS:-300}" ]; then
            # Too many inputs for the repository: keep only a minimal set covering every edge
            # (ignoring hit counters).
            rm -rf "$merged"
            mkdir -p "$merged"
            "$binary" -merge=1 -use_counters=0 -max_len=4096 "$merged" "$corpus" >>"$workdir/merge.log" 2>&1
        fi
        for f in "$corpus"/seed-* "$corpus"/crash-*; do
            [ -e "$f" ] || continue
            cp "$f" "$merged/"
            rm -f "$merged/$(sha1sum "$f" | cut -d' ' -f1)"  # the merge's hash-named copy
        done
        rm -rf "$corpus"
        mv "$merged" "$corpus"
        size="$size->$(find "$corpus" -type f | wc -l)"
    fi
    summary+=("$(printf '%-16s runs=%-9s corpus=%-5s time=%ss  %s' "$target" "${done_runs:-?}" "$size" "$elapsed" "$result")")
done

printf '%s\n' "${summary[@]}"
exit "$failed"
