#!/usr/bin/env bash
# Measures the embedded default: time from exec to the first 200 from /health/readyz, and the
# process's resident memory once idle. Builds the release binary first.
#   bench/startup.sh [runs]        (default 5 runs; prints one line per run and the median)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/iotsupport
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ready_ms=(); rss_kb=()
for i in $(seq 1 "$RUNS"); do
    DIR=$(mktemp -d)
    START=$(date +%s%N)
    (cd "$DIR" && PORT=$PORT LOG_FORMAT=text exec "$BIN" serve >/dev/null 2>&1) &
    PID=$!
    # curl polls cheaply; python3 (slower to start, so the figure is coarser) where curl is missing.
    if command -v curl >/dev/null; then
        until curl -sf -o /dev/null "http://127.0.0.1:$PORT/health/readyz"; do sleep 0.005; done
    else
        until python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health/readyz', timeout=1)" 2>/dev/null; do sleep 0.005; done
    fi
    END=$(date +%s%N)
    sleep 2
    RSS=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
    kill -TERM $PID; wait $PID || true
    rm -rf "$DIR"
    ms=$(( (END - START) / 1000000 ))
    echo "run $i: ready in ${ms} ms (first start: creates and migrates the SQLite file), idle RSS ${RSS} KiB"
    ready_ms+=("$ms"); rss_kb+=("$RSS")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median: ready in $(median "${ready_ms[@]}") ms, idle RSS $(median "${rss_kb[@]}") KiB"
