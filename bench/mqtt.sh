#!/usr/bin/env bash
# MQTT: notification latency and device-log ingest (issue 14). PostgreSQL, s3s-fs, Mosquitto and
# `iotsupport serve` (release build, MQTT_URL set) run on free 127.0.0.1 ports (bench/lib.sh).
#   bench/mqtt.sh
#
# 1. Notification latency: a firmware upload to a model with BENCH_DEVICES (1000) devices; for
#    each device, the time from the upload's answer (which comes after the commit) to its message
#    at a subscriber. Run at the default pace (MQTT_NOTIFICATIONS_PER_SECOND=100) and unpaced
#    (100000), which shows the queue's own overhead.
# 2. Log ingest: for each offered rate in BENCH_LOG_RATES (5000 20000 40000 80000 lines/s),
#    BENCH_LOG_SECONDS (5) of messages of BENCH_LOG_LINES_PER_MESSAGE (10) lines over
#    BENCH_LOG_DEVICES (100) devices; how many were stored, the rate from the first publish to the
#    last line stored, messages dropped by the intake, and the service's RSS.
# 3. History at size: BENCH_HISTORY_ROWS (2,000,000) lines over BENCH_LOG_DEVICES devices inserted
#    with SQL, then `GET /api/devices/{id}/logs` (the last hour, and backwards from now) timed.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DEVICES=${BENCH_DEVICES:-1000}
LOG_LINES=${BENCH_LOG_LINES_PER_MESSAGE:-10}
LOG_DEVICES=${BENCH_LOG_DEVICES:-100}
HISTORY_ROWS=${BENCH_HISTORY_ROWS:-2000000}
# BENCH_PACES="" skips the notification part.

bench_start_mqtt_stack

declare -A NOTIFY
PACES=${BENCH_PACES-100 100000}
for pace in $PACES; do
    export MQTT_NOTIFICATIONS_PER_SECOND=$pace
    bench_start_service
    "$LOADGEN" make-bundle --code "notify_$pace" --version "1.0.$pace" --image-size 1048576 \
        --out "$WORK/bundle_$pace.zip" 2>/dev/null
    blog "notification latency, $DEVICES devices, pace $pace/s"
    NOTIFY[$pace]=$("$LOADGEN" notify-latency --url "$SERVICE_URL" --token "$ADMIN_TOKEN" \
        --mqtt-url "$MQTT_URL" --code "notify_$pace" --devices "$DEVICES" \
        --bundle "$WORK/bundle_$pace.zip")
    echo "${NOTIFY[$pace]}"
    bench_stop_service
done

# --- log ingest ---------------------------------------------------------------------------------
unset MQTT_NOTIFICATIONS_PER_SECOND
export DEVICE_LOG_MAX_LINES=1000000
bench_start_service
RSS_BEFORE=$(awk '/^VmRSS/ {print $2}' "/proc/$SERVICE_PID/status")
bench_logging_devices logs "$LOG_DEVICES" bench
# ingest_at LINES_PER_S: publishes BENCH_LOG_SECONDS of lines at that rate, waits until the
# database stops growing; sets STORED, TOTAL, INGEST_S (first publish to last line stored).
ingest_at() {
    local rate=$1 base start_ns end_ns last=-1 quiet=0 now
    local messages=$((rate * LOG_SECONDS / LOG_LINES))
    TOTAL=$((messages * LOG_LINES))
    base=$(psql_query 'SELECT COUNT(*) FROM device_logs')
    start_ns=$(date +%s%N)
    "$LOADGEN" publish-logs --mqtt-url "$MQTT_URL" --entities "$(IFS=,; echo "${ENTITIES[*]}")" \
        --messages "$messages" --lines-per-message "$LOG_LINES" --rate "$((rate / LOG_LINES))" >/dev/null
    end_ns=$start_ns
    while [ "$quiet" -lt 20 ]; do
        now=$(( $(psql_query 'SELECT COUNT(*) FROM device_logs') - base ))
        if [ "$now" != "$last" ]; then quiet=0; last=$now; end_ns=$(date +%s%N); else quiet=$((quiet + 1)); fi
        [ "$now" -ge "$TOTAL" ] && break
        sleep 0.1
    done
    STORED=$last
    INGEST_S=$(awk -v a="$start_ns" -v b="$end_ns" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
}

LOG_SECONDS=${BENCH_LOG_SECONDS:-5}
declare -A INGEST
for rate in ${BENCH_LOG_RATES:-5000 20000 40000 80000}; do
    blog "log ingest: $rate lines/s for $LOG_SECONDS s ($LOG_LINES lines a message, $LOG_DEVICES devices)"
    ingest_at "$rate"
    INGEST[$rate]="$STORED $TOTAL $INGEST_S"
    echo "offered $rate lines/s: $STORED of $TOTAL stored, last one $INGEST_S s after the first publish"
done
RSS_AFTER=$(awk '/^VmRSS/ {print $2}' "/proc/$SERVICE_PID/status")
RSS_PEAK=$(service_peak_rss_kib)
DROPPED=$(curl -s -H "Authorization: Bearer $ADMIN_TOKEN" "$SERVICE_URL/metrics" \
    | awk '/^mqtt_received_dropped_total/ {s += $2} END {print s + 0}')

# --- history at size ------------------------------------------------------------------------------
blog "history: inserting $HISTORY_ROWS lines with SQL"
psql_query "INSERT INTO device_logs (device_id, logged_at, message)
    SELECT $FIRST_DEVICE + (g % $LOG_DEVICES),
           now() - make_interval(secs => (g / $LOG_DEVICES) * 0.05),
           'I (' || g || ') bench: a line of history with some text in it'
    FROM generate_series(1, $HISTORY_ROWS) g" >/dev/null
psql_query "ANALYZE device_logs" >/dev/null
ROWS=$(psql_query 'SELECT COUNT(*) FROM device_logs')
TABLE_MB=$(psql_query "SELECT pg_total_relation_size('device_logs') / 1048576")
LAST_HOUR=$("$LOADGEN" get --url "$SERVICE_URL/api/devices/$FIRST_DEVICE/logs" --token "$ADMIN_TOKEN" \
    --count 300 --concurrency 4)
END_Q=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
BACKWARD=$("$LOADGEN" get --url "$SERVICE_URL/api/devices/$FIRST_DEVICE/logs?end=$END_Q" \
    --token "$ADMIN_TOKEN" --count 300 --concurrency 4)
QUERY=$("$LOADGEN" get --url "$SERVICE_URL/api/devices/$FIRST_DEVICE/logs?query=*line%20of*" \
    --token "$ADMIN_TOKEN" --count 100 --concurrency 4)
PLAN=$(psql_query "EXPLAIN SELECT id, device_id, logged_at, message FROM device_logs
    WHERE device_id = $FIRST_DEVICE AND logged_at <= now() ORDER BY logged_at DESC, id DESC LIMIT 1001" | head -n 3)
bench_stop_service

echo
echo "notification latency, firmware upload to a model with $DEVICES devices (from the upload's answer):"
for pace in $PACES; do
    r=${NOTIFY[$pace]}
    printf '  pace %-7s received %s/%s, duplicates %s, upload %s ms, p50 %s ms, p99 %s ms, max %s ms\n' \
        "$pace/s" "$(kv "$r" received)" "$DEVICES" "$(kv "$r" duplicates)" "$(kv "$r" upload_ms)" \
        "$(kv "$r" p50_ms)" "$(kv "$r" p99_ms)" "$(kv "$r" max_ms)"
done
echo "log ingest (offered rate: stored of published, first publish to last line stored):"
for rate in ${BENCH_LOG_RATES:-5000 20000 40000 80000}; do
    read -r stored total secs <<<"${INGEST[$rate]}"
    printf '  %6s lines/s offered: %s of %s stored in %s s = %s lines/s\n' "$rate" "$stored" "$total" "$secs" \
        "$(awk -v n="$stored" -v s="$secs" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print "n/a" }')"
done
echo "  messages the intake dropped (buffer full): $DROPPED; service RSS ${RSS_BEFORE} KiB idle, ${RSS_AFTER} KiB after, peak ${RSS_PEAK} KiB"
echo "history with $ROWS rows ($TABLE_MB MiB with indexes), 1000-line pages of one device:"
printf '  %-34s %s req/s, p50 %s ms, p99 %s ms\n' \
    "last hour (no parameters)" "$(kv "$LAST_HOUR" req_per_s)" "$(kv "$LAST_HOUR" p50_ms)" "$(kv "$LAST_HOUR" p99_ms)" \
    "backwards (end only)" "$(kv "$BACKWARD" req_per_s)" "$(kv "$BACKWARD" p50_ms)" "$(kv "$BACKWARD" p99_ms)" \
    "query *line of* (last hour)" "$(kv "$QUERY" req_per_s)" "$(kv "$QUERY" p50_ms)" "$(kv "$QUERY" p99_ms)"
echo "plan of the backward page: $(tr '\n' ' ' <<<"$PLAN")"
