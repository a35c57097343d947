#!/usr/bin/env bash
# What devices run (README "Crash groups"): version polls (GET /api/iot/firmware-version) from
# BENCH_DEVICES devices round-robin, with and without `X-Firmware-Version`, counting the UPDATEs
# of `devices` rows each run caused (PostgreSQL's n_tup_upd for the table) against the number of
# polls, and the poll rate. PostgreSQL, s3s-fs and `iotsupport serve` (release build) run on free
# 127.0.0.1 ports (bench/lib.sh).
#   bench/presence.sh
# Four runs, one after the other against the same service process:
#   1. polls without the header (a device is still noted as seen: `last_seen_at`);
#   2. polls with `X-Firmware-Version: 1.0.0` (the version is new to the service);
#   3. the same again, within the minute after run 2 wrote each device;
#   4. polls with `X-Firmware-Version: 1.0.1` (every device changed version).
# Counting: after a run the script waits for the service's presence flush (every 5 s at most)
# and for the database sessions to report their statistics (PostgreSQL publishes a session's
# counts when it has been idle, within 10 s), then reads n_tup_upd of `devices` until it stops
# changing; the difference to the reading before the run is the number of row updates.
# Tuning: BENCH_DEVICES (100), BENCH_POLL_COUNT per run (50000), BENCH_CONCURRENCY (32),
# BENCH_MAX_SECONDS per run (30; keep runs under a minute, the interval after which an unchanged
# device is written again).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DEVICES=${BENCH_DEVICES:-100}
POLL_COUNT=${BENCH_POLL_COUNT:-50000}
CONCURRENCY=${BENCH_CONCURRENCY:-32}
MAX_SECONDS=${BENCH_MAX_SECONDS:-30}

bench_build
bench_start_postgres
bench_start_s3
bench_start_service
MODEL_ID=$(api POST /api/device-models '{"code": "presence", "name": "Benchmark presence"}' | json_field id)
CREDENTIALS=()
for _ in $(seq 1 "$DEVICES"); do
    device=$(api POST /api/devices "{\"device_model_id\": $MODEL_ID, \"config\": \"{}\"}")
    CREDENTIALS+=("$(json_field key <<<"$device").$(json_field device_secret <<<"$device")")
done
CREDS=$(IFS=,; echo "${CREDENTIALS[*]}")
blog "model $MODEL_ID with $DEVICES devices"

# Row updates of `devices` so far, once the counts have settled: wait for the presence flush and
# the sessions' statistics, then read until two readings 2 s apart agree.
updates() {
    local last now
    sleep 15
    last=$(psql_query "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'devices'")
    for _ in $(seq 1 10); do
        sleep 2
        now=$(psql_query "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'devices'")
        [ "$now" = "$last" ] && break
        last=$now
    done
    echo "$now"
}

declare -A RESULT UPDATES STARTED
T0=$SECONDS
BEFORE=$(updates)
run() {  # run NAME [VERSION]
    local name=$1 after header=()
    [ $# -ge 2 ] && header=(--firmware-version "$2")
    STARTED[$name]=$((SECONDS - T0))
    blog "$name: $POLL_COUNT polls from $DEVICES devices"
    RESULT[$name]=$("$LOADGEN" poll --url "$SERVICE_URL" --credential "$CREDS" "${header[@]}" \
        --count "$POLL_COUNT" --concurrency "$CONCURRENCY" --max-seconds "$MAX_SECONDS")
    echo "${RESULT[$name]}"
    after=$(updates)
    UPDATES[$name]=$((after - BEFORE))
    BEFORE=$after
}

run no_header
run header_1.0.0 1.0.0
run header_1.0.0_again 1.0.0
run header_1.0.1 1.0.1
VERSIONS=$(psql_query "SELECT v || ': ' || n FROM (SELECT COALESCE(running_firmware_version, 'null') AS v,
                       count(*) AS n FROM devices WHERE device_model_id = $MODEL_ID GROUP BY 1) t
                       ORDER BY v" | tr '\n' ' ')

echo
echo "== version polls from $DEVICES devices, concurrency $CONCURRENCY, one service process =="
printf '%-20s %8s %8s %10s %8s %8s %15s\n' run start_s polls req/s p50_ms p99_ms "devices UPDATEs"
for name in no_header header_1.0.0 header_1.0.0_again header_1.0.1; do
    r=${RESULT[$name]}
    printf '%-20s %8s %8s %10s %8s %8s %15s\n' "$name" "${STARTED[$name]}" "$(kv "$r" ok)" \
        "$(kv "$r" req_per_s)" "$(kv "$r" p50_ms)" "$(kv "$r" p99_ms)" "${UPDATES[$name]}"
done
echo "devices by running_firmware_version at the end: $VERSIONS"
