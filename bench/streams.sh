#!/usr/bin/env bash
# Live streams while the fleet logs: what open admin streams (`GET /api/sse/stream`, one per UI
# tab) cost the database when devices log all the time. Every flush of the log intake (every
# 200 ms while lines arrive) wakes every open stream. PostgreSQL, s3s-fs, Mosquitto and
# `iotsupport serve` (release build, MQTT_URL set) run on free 127.0.0.1 ports (bench/lib.sh).
#   bench/streams.sh
# BENCH_STREAMS (50) streams are opened, each with a request_id of its own; BENCH_SUBSCRIBED (5)
# of them subscribe to the live lines of one device. Then BENCH_LOG_DEVICES (10) devices publish
# one line each BENCH_LOG_INTERVAL_MS (100) for BENCH_SECONDS (10). Reports the statements
# PostgreSQL ran per second (transactions committed, from pg_stat_database), the CPU of the
# service and of PostgreSQL, and the lines the subscribed streams received against those stored.
# With BENCH_PG_STATEMENTS=1 also the statements that took the most time (pg_stat_statements).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

STREAMS=${BENCH_STREAMS:-50}
SUBSCRIBED=${BENCH_SUBSCRIBED:-5}
LOG_DEVICES=${BENCH_LOG_DEVICES:-10}
INTERVAL_MS=${BENCH_LOG_INTERVAL_MS:-100}
DURATION=${BENCH_SECONDS:-10}

bench_start_mqtt_stack
bench_start_service

bench_logging_devices streams "$LOG_DEVICES" stream
WATCHED=$FIRST_DEVICE

blog "opening $STREAMS streams, $SUBSCRIBED of them subscribed to device $WATCHED"
STREAM_PIDS=()
for i in $(seq 1 "$STREAMS"); do
    curl -sN --max-time $((DURATION + 120)) -H "Authorization: Bearer $ADMIN_TOKEN" \
        "$SERVICE_URL/api/sse/stream?request_id=bench-tab-$i" > "$WORK/stream-$i.txt" 2>/dev/null &
    STREAM_PIDS+=($!)
done
sleep 1
for i in $(seq 1 "$SUBSCRIBED"); do
    api POST /api/device-logs/subscribe "{\"request_id\": \"bench-tab-$i\", \"device_id\": $WATCHED}" >/dev/null
done
sleep 3   # every stream past its first reads

xacts() { psql_query "SELECT SUM(xact_commit) FROM pg_stat_database"; }
idle() {  # idle SECONDS: transactions per second with the streams open and no device logging
    local before after
    before=$(xacts); sleep "$1"; after=$(xacts)
    awk -v a="$before" -v b="$after" -v s="$1" 'BEGIN { printf "%.1f", (b - a) / s }'
}
IDLE_XPS=$(idle 5)
bench_pg_statements_reset postgres
BASE_LINES=$(psql_query "SELECT COUNT(*) FROM device_logs WHERE device_id = $WATCHED")
XACT_BEFORE=$(xacts)
cpu_mark
MESSAGES=$((DURATION * 1000 / INTERVAL_MS))
blog "$LOG_DEVICES devices log a line every $INTERVAL_MS ms for $DURATION s"
"$LOADGEN" publish-logs --mqtt-url "$MQTT_URL" --entities "$(IFS=,; echo "${ENTITIES[*]}")" \
    --messages $((MESSAGES * LOG_DEVICES)) --lines-per-message 1 \
    --rate $((LOG_DEVICES * 1000 / INTERVAL_MS)) >/dev/null
CPU=$(cpu_since)
XACT_AFTER=$(xacts)
WALL=$(kv "$CPU" wall_s)
sleep 2   # the last lines reach the streams
STORED=$(( $(psql_query "SELECT COUNT(*) FROM device_logs WHERE device_id = $WATCHED") - BASE_LINES ))
RECEIVED=()
for i in $(seq 1 "$SUBSCRIBED"); do
    RECEIVED+=("$(grep -o '"message"' "$WORK/stream-$i.txt" | wc -l)")
done
TOP=$(bench_pg_statements postgres 8)
kill "${STREAM_PIDS[@]}" 2>/dev/null || true
bench_stop_service

echo
echo "== $STREAMS open streams ($SUBSCRIBED subscribed to one device), $LOG_DEVICES devices logging every $INTERVAL_MS ms =="
echo "transactions/s, streams open, nothing logging:  $IDLE_XPS"
echo "transactions/s while the devices log:            $(awk -v a="$XACT_BEFORE" -v b="$XACT_AFTER" -v w="$WALL" 'BEGIN { printf "%.1f", (b - a) / w }')"
echo "CPU while the devices log:                       $CPU"
echo "lines of the watched device stored: $STORED (before the streams opened: $BASE_LINES); received by each subscribed stream: ${RECEIVED[*]}"
[ -n "$TOP" ] && echo "$TOP"
