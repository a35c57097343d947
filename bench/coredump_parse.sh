#!/usr/bin/env bash
# Core dump parse latency per real ESP-IDF dump (raw, base64 and ELF-core inputs):
# parse only, warm (firmware ELF loaded once, analyse_with) and cold (analyse from the
# ELF bytes each time), p50/p99 in ms; goal p50 < 50 ms. Builds in release mode.
#   bench/coredump_parse.sh
# Test data: $IOTSUPPORT_TESTDATA, else ../shared/testdata/esp (prints SKIP when absent).
# Tuning: BENCH_ITERS (default 200), BENCH_COLD_ITERS (50), BENCH_MAX_SECS per measurement (5).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p esp-coredump --bench parse "$@"
