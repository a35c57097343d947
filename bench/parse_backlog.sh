#!/usr/bin/env bash
# Draining a backlog of parse jobs (issue 18): BENCH_DUMPS uploads of one real core dump (one build
# of one crash, as in a crash loop across a fleet after a bad release: every dump joins the same
# crash group) from BENCH_DEVICES devices, made while the service's workers sleep; then a fresh
# `iotsupport serve` with its default settings drains them. Per round it reports:
#   - dumps/s: dumps parsed per second, from the first to the last `parsed_at`;
#   - the CPU seconds of the service, PostgreSQL and s3s-fs during the drain, and the cores they
#     kept busy together (2.0 on this 2-core machine = CPU-bound), per dump in ms;
#   - the parse job's mean time per step (coredump_parse_step_duration_seconds from /metrics);
#   - the machine's 1-minute load average before and after (other work on the machine).
# With BENCH_BASELINE_BIN (an `iotsupport` built before this change), every round also drains a
# backlog of BENCH_BASELINE_DUMPS with it, in a database of its own; rounds alternate, so load from
# elsewhere on the machine hits both alike.
#   bench/parse_backlog.sh
# PostgreSQL, s3s-fs and the release service run on free 127.0.0.1 ports (bench/lib.sh).
# Tuning: BENCH_DUMPS (10000), BENCH_BASELINE_DUMPS (= BENCH_DUMPS), BENCH_DEVICES (32),
# BENCH_ROUNDS (1), BENCH_CASE (esp32_elf_crc32_abort), BENCH_DRAIN_TIMEOUT seconds (1800),
# BENCH_PG_STATEMENTS=1 (prints the drain's 15 costliest statements on stderr: pg_stat_statements).
set -euo pipefail
source "$(dirname "$0")/parse_lib.sh"

DUMPS=${BENCH_DUMPS:-10000}
BASELINE_DUMPS=${BENCH_BASELINE_DUMPS:-$DUMPS}
ROUNDS=${BENCH_ROUNDS:-1}
DRAIN_TIMEOUT=${BENCH_DRAIN_TIMEOUT:-1800}

parse_bench_start

# prepare BIN DB N: a model with the build, DEVICES devices and N uploads of the dump while the
# workers sleep; leaves the service stopped with N parse jobs queued.
prepare() {
    local bin=$1 db=$2 n=$3 queued
    fresh_database "$db"
    WORKER_POLL_SECONDS=86400 MAX_COREDUMPS=$n start_service_for "$bin" "$db"
    model_with_build bench
    "$LOADGEN" ingest --url "$SERVICE_URL" --credential "$CREDS" --body "$DUMP_FILE" \
        --chip "$CHIP" --firmware-version "$VERSION" --count "$n" \
        --concurrency "$CONCURRENCY" --max-seconds 900 >&2 \
        || { tail -n 20 "$WORK/service.log" >&2; exit 1; }
    bench_stop_service
    queued=$(sql "$db" "SELECT count(*) FROM jobs WHERE kind = 'parse_coredump' AND status = 'queued'")
    [ "$queued" = "$n" ] || { blog "expected $n queued parse jobs, found $queued"; exit 1; }
}

# drain LABEL BIN DB N: prepares a backlog of N and drains it with BIN; sets RESULT.
drain() {
    local label=$1 bin=$2 db=$3 n=$4 load_before load_after cpu metrics row parsed span rate
    prepare "$bin" "$db" "$n"
    blog "$label: draining $n parse jobs"
    load_before=$(load_average)
    bench_pg_statements_reset "$db"
    MAX_COREDUMPS=$n start_service_for "$bin" "$db"
    cpu_mark
    local deadline=$((SECONDS + DRAIN_TIMEOUT)) left
    while :; do
        left=$(sql "$db" "SELECT count(*) FROM coredumps WHERE parse_status = 'PENDING'")
        [ "$left" = 0 ] && break
        [ "$SECONDS" -lt "$deadline" ] || { blog "$label: $left dumps still pending after ${DRAIN_TIMEOUT}s"; exit 1; }
        sleep 0.2
    done
    cpu=$(cpu_since)
    load_after=$(load_average)
    metrics=$(curl -sS --max-time 10 "$SERVICE_URL/metrics")
    bench_stop_service
    bench_pg_statements "$db" 15 >&2
    row=$(sql "$db" "SELECT count(*) FILTER (WHERE parse_status = 'PARSED'),
                            EXTRACT(EPOCH FROM max(parsed_at) - min(parsed_at)) FROM coredumps")
    parsed=$(cut -f1 <<<"$row")
    span=$(cut -f2 <<<"$row")
    [ "$parsed" = "$n" ] || { blog "$label: only $parsed of $n dumps PARSED"; tail -n 20 "$WORK/service.log" >&2; exit 1; }
    rate=$(awk -v n="$parsed" -v s="$span" 'BEGIN { printf "%.1f", (n - 1) / s }')
    local per_dump
    per_dump=$(awk -v n="$n" -v a="$(kv "$cpu" service_cpu_s)" -v b="$(kv "$cpu" postgres_cpu_s)" \
        -v c="$(kv "$cpu" s3_cpu_s)" 'BEGIN { printf "%.2f/%.2f/%.2f", 1000 * a / n, 1000 * b / n, 1000 * c / n }')
    RESULT="$label round=$ROUND dumps=$parsed dumps_per_s=$rate $cpu cpu_ms_per_dump=$per_dump"
    RESULT+=" load=$load_before/$load_after"
    for step in target dump firmware analyse record; do
        RESULT+=" $step=$(step_ms "$metrics" "$step")"
    done
    RESULT+=" cache_hits=$(metric "$metrics" parse_cache_lookups_total 'outcome="hit"')"
}

RESULTS=()
for ROUND in $(seq 1 "$ROUNDS"); do
    drain current "$CURRENT_BIN" current_build "$DUMPS"
    echo "$RESULT"
    RESULTS+=("$RESULT")
    if [ -n "$BASELINE_BIN" ]; then
        drain baseline "$BASELINE_BIN" baseline_build "$BASELINE_DUMPS"
        echo "$RESULT"
        RESULTS+=("$RESULT")
    fi
done

echo
echo "== parse backlog drain: one build ($CASE), $DEVICES devices, $ROUNDS round(s) =="
printf '%-9s %5s %6s %8s %6s %16s %11s | %7s %7s %8s %8s %7s\n' run round dumps dumps/s cores \
    "cpu_ms/dump" load target dump firmware analyse record
for r in "${RESULTS[@]}"; do
    printf '%-9s %5s %6s %8s %6s %16s %11s | %7s %7s %8s %8s %7s\n' "${r%% *}" "$(kv "$r" round)" \
        "$(kv "$r" dumps)" "$(kv "$r" dumps_per_s)" "$(kv "$r" cores)" "$(kv "$r" cpu_ms_per_dump)" \
        "$(kv "$r" load)" "$(kv "$r" target)" "$(kv "$r" dump)" "$(kv "$r" firmware)" \
        "$(kv "$r" analyse)" "$(kv "$r" record)"
done
echo "cores: CPU seconds of service + PostgreSQL + s3s-fs during the drain / its wall time"
echo "cpu_ms/dump: service/PostgreSQL/s3s-fs; load: 1-minute load average before/after the drain"
echo "step columns: mean ms per parse job (coredump_parse_step_duration_seconds; '-': not measured by that build)"
