#!/usr/bin/env bash
# What crash grouping costs the parse job. A backlog of BENCH_DUMPS copies of one real core dump
# (one build of one crash, so every dump joins the same group: the most contended case, each
# grouping waits for the group row lock of the one before) is uploaded by BENCH_DEVICES devices
# while the service's workers sleep, then drained by a fresh `iotsupport serve` with the default
# JOB_CONCURRENCY (32 on PostgreSQL). Per round it reports:
#   - the drain rate: dumps parsed per second, from the first to the last `parsed_at`;
#   - from the draining service's /metrics: the time the parse job spent grouping
#     (coredump_grouping_duration_seconds: sign + assign) as a share of the time it spent in
#     parse attempts (coredump_parse_duration_seconds{outcome="parsed"}: fetching the dump and
#     the ELF, parsing, and the transaction that records the result, grouping included).
# With BENCH_BASELINE_BIN (an `iotsupport` built from a commit before crash groups, e.g. 5c62d94),
# every round also drains the same backlog with that binary, in a database and bucket of its own,
# for an end-to-end comparison of drain rates (rounds alternate, so load from elsewhere on the
# machine hits both alike).
#   bench/crash_groups.sh
# PostgreSQL, s3s-fs and the release service run on free 127.0.0.1 ports (bench/lib.sh).
# Test data: $IOTSUPPORT_TESTDATA, else ../shared/testdata/esp (prints SKIP when absent).
# Tuning: BENCH_DUMPS (1000), BENCH_DEVICES (50), BENCH_ROUNDS (3), BENCH_CASE
# (esp32_elf_crc32_abort: any coredump/<case> with a coredump.bin or coredump_bin.bin),
# BENCH_DRAIN_TIMEOUT seconds per drain (600).
set -euo pipefail
# parse_lib.sh: the case's dump and ELF, DEVICES, VERSION, CHIP, CONCURRENCY, sql, metric and
# model_with_build (it sources lib.sh).
BENCH_DEVICES=${BENCH_DEVICES:-50}
source "$(dirname "$0")/parse_lib.sh"

DUMPS=${BENCH_DUMPS:-1000}
ROUNDS=${BENCH_ROUNDS:-3}
DRAIN_TIMEOUT=${BENCH_DRAIN_TIMEOUT:-600}

parse_bench_start

# prepare BIN DB CODE: with BIN's workers asleep, a model CODE with the build and DEVICES devices,
# and DUMPS uploads of the dump; leaves the service stopped with DUMPS parse jobs queued.
prepare() {
    local bin=$1 db=$2 code=$3
    SERVICE_BIN=$bin DATABASE_URL=$BASE_URL/$db S3_BUCKET=bench-${db//_/-} \
        WORKER_POLL_SECONDS=86400 MAX_COREDUMPS=$DUMPS bench_start_service
    model_with_build "$code"
    "$LOADGEN" ingest --url "$SERVICE_URL" --credential "$CREDS" --body "$DUMP_FILE" \
        --chip "$CHIP" --firmware-version "$VERSION" --count "$DUMPS" \
        --concurrency "$CONCURRENCY" --max-seconds 600 >&2 \
        || { tail -n 20 "$WORK/service.log" >&2; exit 1; }
    bench_stop_service
    local queued
    queued=$(sql "$db" "SELECT count(*) FROM jobs j WHERE j.kind = 'parse_coredump' AND j.status = 'queued'")
    [ "$queued" = "$DUMPS" ] || { blog "expected $DUMPS queued parse jobs, found $queued"; exit 1; }
}

# drain LABEL BIN DB: prepares a backlog, drains it with BIN; sets RESULT to one result line.
drain() {
    local label=$1 bin=$2 db=$3 code
    code="bench_$ROUND"
    prepare "$bin" "$db" "$code"
    blog "$label: draining $DUMPS parse jobs"
    SERVICE_BIN=$bin DATABASE_URL=$BASE_URL/$db S3_BUCKET=bench-${db//_/-} \
        MAX_COREDUMPS=$DUMPS bench_start_service
    local deadline=$((SECONDS + DRAIN_TIMEOUT)) left
    while :; do
        left=$(sql "$db" "SELECT count(*) FROM coredumps WHERE parse_status = 'PENDING'")
        [ "$left" = 0 ] && break
        [ "$SECONDS" -lt "$deadline" ] || { blog "$label: $left dumps still pending after ${DRAIN_TIMEOUT}s"; exit 1; }
        sleep 0.5
    done
    local metrics row parsed span rate
    metrics=$(curl -sS --max-time 10 "$SERVICE_URL/metrics")
    echo "$metrics" > "$WORK/metrics-$label-$ROUND.txt"
    bench_stop_service
    row=$(sql "$db" "SELECT count(*) FILTER (WHERE c.parse_status = 'PARSED'),
                            EXTRACT(EPOCH FROM max(c.parsed_at) - min(c.parsed_at))
                     FROM coredumps c JOIN devices d ON d.id = c.device_id
                     JOIN device_models m ON m.id = d.device_model_id WHERE m.code = '$code'")
    parsed=$(cut -f1 <<<"$row")
    span=$(cut -f2 <<<"$row")
    [ "$parsed" = "$DUMPS" ] || { blog "$label: only $parsed of $DUMPS dumps PARSED"; tail -n 20 "$WORK/service.log" >&2; exit 1; }
    rate=$(awk -v n="$parsed" -v s="$span" 'BEGIN { printf "%.1f", (n - 1) / s }')
    local groups="-" parse_sum parse_count sign assign share overhead
    if [ "$(sql "$db" "SELECT to_regclass('crash_groups') IS NOT NULL")" = t ]; then
        groups=$(sql "$db" "SELECT count(*) || ' group(s), ' || COALESCE(max(coredump_count), 0) || ' dumps, '
                               || COALESCE(max(device_count), 0) || ' devices'
                            FROM crash_groups g WHERE g.device_model_id = $MODEL")
    fi
    parse_sum=$(metric "$metrics" coredump_parse_duration_seconds_sum 'outcome="parsed"')
    parse_count=$(metric "$metrics" coredump_parse_duration_seconds_count 'outcome="parsed"')
    sign=$(metric "$metrics" coredump_grouping_duration_seconds_sum 'step="sign"')
    assign=$(metric "$metrics" coredump_grouping_duration_seconds_sum 'step="assign"')
    share=$(awk -v g="$sign" -v a="$assign" -v p="$parse_sum" 'BEGIN { printf "%.2f", (p > 0 ? 100 * (g + a) / p : 0) }')
    overhead=$(awk -v g="$sign" -v a="$assign" -v p="$parse_sum" 'BEGIN { printf "%.2f", (p > g + a ? 100 * (g + a) / (p - g - a) : 0) }')
    RESULT=$(printf '%s round=%s dumps=%s drain_seconds=%.2f dumps_per_s=%s attempt_ms=%s sign_ms=%s assign_ms=%s grouping_share_pct=%s grouping_overhead_pct=%s groups="%s"\n' \
        "$label" "$ROUND" "$parsed" "$span" "$rate" \
        "$(awk -v s="$parse_sum" -v n="$parse_count" 'BEGIN { printf "%.2f", (n > 0 ? 1000 * s / n : 0) }')" \
        "$(awk -v s="$sign" -v n="$parse_count" 'BEGIN { printf "%.3f", (n > 0 ? 1000 * s / n : 0) }')" \
        "$(awk -v s="$assign" -v n="$parse_count" 'BEGIN { printf "%.3f", (n > 0 ? 1000 * s / n : 0) }')" \
        "$share" "$overhead" "$groups")
}

BASE_URL=${DATABASE_URL%/*}
sql postgres "CREATE DATABASE current_build" >/dev/null
[ -z "$BASELINE_BIN" ] || sql postgres "CREATE DATABASE baseline_build" >/dev/null
RESULTS=()
for ROUND in $(seq 1 "$ROUNDS"); do
    drain grouping "$CURRENT_BIN" current_build
    echo "$RESULT"
    RESULTS+=("$RESULT")
    if [ -n "$BASELINE_BIN" ]; then
        drain baseline "$BASELINE_BIN" baseline_build
        echo "$RESULT"
        RESULTS+=("$RESULT")
    fi
done

echo
echo "== parse-job drain: $DUMPS x $CASE ($CHIP), $DEVICES devices, default JOB_CONCURRENCY, $ROUNDS round(s) =="
printf '%-9s %5s %9s %11s %12s %9s %10s %8s %9s\n' run round dumps/s attempt_ms sign_ms assign_ms share_% over_% ""
for r in "${RESULTS[@]}"; do
    printf '%-9s %5s %9s %11s %12s %9s %10s %8s\n' "${r%% *}" "$(kv "$r" round)" "$(kv "$r" dumps_per_s)" \
        "$(kv "$r" attempt_ms)" "$(kv "$r" sign_ms)" "$(kv "$r" assign_ms)" \
        "$(kv "$r" grouping_share_pct)" "$(kv "$r" grouping_overhead_pct)"
done
echo "share_% = (sign + assign) / parse attempt time; over_% = (sign + assign) / (attempt time without them)"
if [ -n "$BASELINE_BIN" ]; then
    median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
    g=$(for r in "${RESULTS[@]}"; do [ "${r%% *}" = grouping ] && kv "$r" dumps_per_s; done | median)
    b=$(for r in "${RESULTS[@]}"; do [ "${r%% *}" = baseline ] && kv "$r" dumps_per_s; done | median)
    echo "median drain rate: grouping $g dumps/s, baseline $b dumps/s (grouping / baseline: $(ratio "$g" "$b"))"
fi
