#!/usr/bin/env bash
# Runs the parsers' fuzz targets (cargo-fuzz, libFuzzer) one after another, each to a given
# number of executions, and prints libFuzzer's execution count and exec/s for each.
#
#   scripts/fuzz.sh [RUNS] [TARGET...]
#   scripts/fuzz.sh --check
#
# RUNS defaults to 10000000. TARGETs default to the four parser targets: bundle,
# parse_app_image, parse_dump, parse_dump_checksummed. `analyse` (core dump analysis against
# real firmware ELFs, about a hundred executions a second) runs only when named.
# See fuzz/README.md for what each target does and the counts of the last full run.
#
# --check only compiles the fuzz crates (`cargo check`, which needs neither nightly nor a C++
# compiler) and checks their formatting; .ci/run runs it so the targets keep compiling.
#
# Needs nightly Rust, cargo-fuzz (`cargo install cargo-fuzz --locked`), a C++ compiler and
# libstdc++ (libFuzzer is compiled from source by libfuzzer-sys; on Debian `apt-get install g++`),
# and python3 (for the seeds).
#
# Environment:
#   FUZZ_DIR         where builds, seeds, corpora, crash artifacts, logs and summary.txt go
#                    (default: $CARGO_TARGET_DIR/fuzz, else target/fuzz; never the source tree)
#   FUZZ_SANITIZER   cargo fuzz --sanitizer: none (default) or address; see fuzz/README.md
#   FUZZ_MAX_TIME    stop a target after this many seconds even before RUNS (default: no limit)
#   FUZZ_NICE        niceness of the fuzzer processes (default 19: the machine is shared)
#   IOTSUPPORT_TESTDATA  the shared `testdata/esp` folder, used for seeds at run time only
#                    (default: ../shared/testdata/esp beside the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

FUZZ_CRATES=(fuzz crates/esp-image/fuzz crates/esp-coredump/fuzz)

# The fuzz crates are workspaces of their own; they are built against the service's lock file so
# the fuzzed code uses the dependency versions the service ships with (cargo then adds what the
# fuzz crate needs on top, and the copy is newer than the service's until that changes).
use_service_lock() {
    [ "$1/Cargo.lock" -nt Cargo.lock ] || cp Cargo.lock "$1/Cargo.lock"
}

if [ "${1:-}" = --check ]; then
    # Into the main target directory, so the dependencies the workspace build already checked
    # are reused. libfuzzer-sys builds libFuzzer from C++ unless CUSTOM_LIBFUZZER_PATH names a
    # library to link; a check links nothing, so a name that does not exist skips the C++.
    for crate in "${FUZZ_CRATES[@]}"; do
        use_service_lock "$crate"
        echo "[fuzz.sh] check $crate" >&2
        cargo fmt --manifest-path "$crate/Cargo.toml" --check
        CUSTOM_LIBFUZZER_PATH=$REPO/target/no-libfuzzer/libfuzzer.a \
            cargo check --quiet --manifest-path "$crate/Cargo.toml" --bins \
            --target-dir "${CARGO_TARGET_DIR:-$REPO/target}"
    done
    exit 0
fi

RUNS=10000000
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then
    RUNS=$1
    shift
fi
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(bundle parse_app_image parse_dump parse_dump_checksummed)

FUZZ_DIR=${FUZZ_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/fuzz}
SANITIZER=${FUZZ_SANITIZER:-none}
MAX_TIME=${FUZZ_MAX_TIME:-0}
NICE=${FUZZ_NICE:-19}
TESTDATA=${IOTSUPPORT_TESTDATA:-$REPO/../shared/testdata/esp}

log() { echo "[fuzz.sh] $*" >&2; }
die() { log "$*"; exit 2; }

# target -> "fuzz crate directory:max input length"
crate_of() {
    case $1 in
        bundle) echo "fuzz:16384" ;;
        parse_app_image) echo "crates/esp-image/fuzz:32768" ;;
        parse_dump | parse_dump_checksummed | analyse) echo "crates/esp-coredump/fuzz:32768" ;;
        *) return 1 ;;
    esac
}
for t in "${TARGETS[@]}"; do crate_of "$t" >/dev/null || die "unknown target $t"; done

cargo +nightly --version >/dev/null 2>&1 || die "needs a nightly toolchain: rustup toolchain install nightly"
cargo +nightly fuzz --version >/dev/null 2>&1 || die "needs cargo-fuzz: cargo install cargo-fuzz --locked"
command -v c++ >/dev/null || command -v clang++ >/dev/null ||
    die "libFuzzer needs a C++ compiler and libstdc++: apt-get install g++"
command -v python3 >/dev/null || die "needs python3 for the seeds"

mkdir -p "$FUZZ_DIR"
SUMMARY=$FUZZ_DIR/summary.txt
[ -d "$TESTDATA" ] || log "no test data at $TESTDATA: synthetic seeds only"
# Seeds are made afresh for each invocation, in a folder of its own, so several invocations (one
# per target) can run side by side.
SEEDS=$(mktemp -d "$FUZZ_DIR/seeds.XXXXXX")
trap 'rm -rf "$SEEDS"' EXIT
python3 scripts/fuzz_seeds.py "$SEEDS" "$TESTDATA"

failed=0
for t in "${TARGETS[@]}"; do
    spec=$(crate_of "$t")
    crate=${spec%%:*}
    max_len=${spec##*:}
    corpus=$FUZZ_DIR/corpus/$t
    artifacts=$FUZZ_DIR/artifacts/$t
    seeds=$SEEDS/$t
    logfile=$FUZZ_DIR/logs/$t.log
    mkdir -p "$corpus" "$artifacts" "$seeds" "$(dirname "$logfile")"
    use_service_lock "$crate"
    args=(-runs="$RUNS" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048
        -print_final_stats=1 -artifact_prefix="$artifacts/")
    [ "$MAX_TIME" = 0 ] || args+=(-max_total_time="$MAX_TIME")
    log "$t: building ($crate, sanitizer $SANITIZER)"
    (cd "$crate" && cargo +nightly fuzz build -O -a -s "$SANITIZER" \
        --target-dir "$FUZZ_DIR/build-$SANITIZER" "$t") >"$logfile" 2>&1 ||
        { tail -30 "$logfile" >&2; die "$t: build failed (log: $logfile)"; }
    log "$t: $RUNS executions, corpus $corpus, log $logfile"
    status=0
    (cd "$crate" && nice -n "$NICE" cargo +nightly fuzz run -O -a -s "$SANITIZER" \
        --target-dir "$FUZZ_DIR/build-$SANITIZER" "$t" "$corpus" "$seeds" -- "${args[@]}") \
        >>"$logfile" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logfile" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logfile" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$logfile" | tail -1)
    if [ "$status" = 0 ]; then
        result="no crash"
    else
        result="FAILED (exit $status; see $logfile and $artifacts)"
        failed=1
        grep -E "ERROR: libFuzzer|panicked at|==ERROR|SUMMARY" "$logfile" | head -5 >&2 || true
    fi
    line="$(date -u +%FT%TZ) $t sanitizer=$SANITIZER executions=${execs:-?} exec/s=${rate:-?} seconds=${secs:-?} corpus=$(find "$corpus" -type f | wc -l) $result"
    echo "$line" | tee -a "$SUMMARY"
done
exit $failed
