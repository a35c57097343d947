#!/usr/bin/env bash
# Upload-to-PARSED time under sustained ingest (issue 18): BENCH_DEVICES devices upload one real
# core dump (one build, one crash) at BENCH_RATE uploads/s for BENCH_SECONDS (open loop: requests
# start on a fixed schedule, one upload per device at a time) to a service whose workers parse
# them meanwhile, with default settings. Then it waits until the backlog is parsed (at most
# BENCH_DRAIN_TIMEOUT s) and reports, from the rows (`parsed_at - uploaded_at` per dump):
#   - p50, p99 and max over every dump of the run (a dump still PENDING at the end counts with
#     its age then, and the line says so: the true figure is larger);
#   - p99 per 10-s window of upload time, so a time that grows during the run is visible;
#   - the accepted upload rate, the CPU seconds of service, PostgreSQL and s3s-fs and the cores
#     they kept busy, and the machine's load average.
# With BENCH_BASELINE_BIN, every round runs the same against that binary too (rounds alternate).
#   bench/parse_sustained.sh
# PostgreSQL, s3s-fs and the release service run on free 127.0.0.1 ports (bench/lib.sh).
# Tuning: BENCH_RATE (500), BENCH_SECONDS (60), BENCH_DEVICES (32), BENCH_ROUNDS (1),
# BENCH_CASE (esp32_elf_crc32_abort), BENCH_DRAIN_TIMEOUT (120), BENCH_PG_STATEMENTS=1 (prints the
# run's 15 costliest statements on stderr: pg_stat_statements).
set -euo pipefail
source "$(dirname "$0")/parse_lib.sh"

RATE=${BENCH_RATE:-500}
RUN_SECONDS=${BENCH_SECONDS:-60}
ROUNDS=${BENCH_ROUNDS:-1}
DRAIN_TIMEOUT=${BENCH_DRAIN_TIMEOUT:-120}
COUNT=$(awk -v r="$RATE" -v s="$RUN_SECONDS" 'BEGIN { printf "%d", r * s }')
# Keep every dump of the run: retention would delete dumps (and their queued parses) mid-run.
KEEP=$((COUNT / DEVICES + 10))

parse_bench_start

# run LABEL BIN DB: sets RESULT (one line) and WINDOWS (p99 per 10-s window).
run() {
    local label=$1 bin=$2 db=$3 ingest load_before load_after cpu end left row
    fresh_database "$db"
    MAX_COREDUMPS=$KEEP start_service_for "$bin" "$db"
    model_with_build bench
    bench_pg_statements_reset "$db"
    blog "$label: $RATE uploads/s for ${RUN_SECONDS}s from $DEVICES devices"
    load_before=$(load_average)
    cpu_mark
    ingest=$("$LOADGEN" ingest --url "$SERVICE_URL" --credential "$CREDS" --body "$DUMP_FILE" \
        --chip "$CHIP" --firmware-version "$VERSION" --count "$COUNT" --rate "$RATE" \
        --concurrency "$CONCURRENCY" --max-seconds "$RUN_SECONDS") || true
    echo "$ingest" >&2
    local deadline=$((SECONDS + DRAIN_TIMEOUT))
    while :; do
        left=$(sql "$db" "SELECT count(*) FROM coredumps WHERE parse_status = 'PENDING'")
        [ "$left" = 0 ] && break
        [ "$SECONDS" -lt "$deadline" ] || break
        sleep 0.2
    done
    cpu=$(cpu_since)
    load_after=$(load_average)
    end=$(sql "$db" "SELECT now()")
    bench_stop_service
    bench_pg_statements "$db" 15 >&2
    local latency="EXTRACT(EPOCH FROM COALESCE(parsed_at, '$end'::timestamptz) - uploaded_at)"
    row=$(sql "$db" "SELECT count(*), count(*) FILTER (WHERE parse_status = 'PARSED'),
                            count(*) FILTER (WHERE parse_status = 'PENDING'),
                            round((1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY $latency))::numeric, 1),
                            round((1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY $latency))::numeric, 1),
                            round((1000 * max($latency))::numeric, 1)
                     FROM coredumps")
    WINDOWS=$(sql "$db" "WITH l AS (
                             SELECT floor(EXTRACT(EPOCH FROM uploaded_at - min(uploaded_at) OVER ()) / 10) AS w,
                                    $latency AS s FROM coredumps)
                         SELECT string_agg(p, ' ' ORDER BY w) FROM (
                             SELECT w, round((1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY s))::numeric, 0)::text AS p
                             FROM l GROUP BY w) t")
    RESULT="$label round=$ROUND uploaded=$(cut -f1 <<<"$row") parsed=$(cut -f2 <<<"$row")"
    RESULT+=" pending=$(cut -f3 <<<"$row") accepted_per_s=$(kv "$ingest" req_per_s)"
    RESULT+=" p50_ms=$(cut -f4 <<<"$row") p99_ms=$(cut -f5 <<<"$row") max_ms=$(cut -f6 <<<"$row")"
    RESULT+=" $cpu load=$load_before/$load_after"
}

RESULTS=()
WINDOW_LINES=()
for ROUND in $(seq 1 "$ROUNDS"); do
    run current "$CURRENT_BIN" current_build
    echo "$RESULT"
    RESULTS+=("$RESULT")
    WINDOW_LINES+=("current round $ROUND: $WINDOWS")
    if [ -n "$BASELINE_BIN" ]; then
        run baseline "$BASELINE_BIN" baseline_build
        echo "$RESULT"
        RESULTS+=("$RESULT")
        WINDOW_LINES+=("baseline round $ROUND: $WINDOWS")
    fi
done

echo
echo "== upload to PARSED under sustained ingest: $RATE/s offered for ${RUN_SECONDS}s, $DEVICES devices, $CASE =="
printf '%-9s %5s %8s %8s %7s %9s %9s %9s %9s %6s %11s\n' run round uploaded accept/s pending \
    p50_ms p99_ms max_ms wall_s cores load
for r in "${RESULTS[@]}"; do
    printf '%-9s %5s %8s %8s %7s %9s %9s %9s %9s %6s %11s\n' "${r%% *}" "$(kv "$r" round)" \
        "$(kv "$r" uploaded)" "$(kv "$r" accepted_per_s)" "$(kv "$r" pending)" "$(kv "$r" p50_ms)" \
        "$(kv "$r" p99_ms)" "$(kv "$r" max_ms)" "$(kv "$r" wall_s)" "$(kv "$r" cores)" "$(kv "$r" load)"
done
echo "p99 (ms) per 10-s window of upload time:"
for w in "${WINDOW_LINES[@]}"; do echo "  $w"; done
echo "pending > 0: those dumps were not parsed ${DRAIN_TIMEOUT}s after the run; they count with their age then (a lower bound)"
echo "wall_s and cores: from the start of the uploads until the backlog was parsed (or the timeout)"
