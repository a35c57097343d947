#!/usr/bin/env bash
# Core-dump ingest throughput: devices uploading 64 KiB dumps through the service
# (POST /api/iot/coredump, 32 at once) against the raw PUT rate of same-size objects on the same
# S3 server (s3s-fs), plus the service's peak RSS. PostgreSQL, s3s-fs and `iotsupport serve`
# (release build) run on free 127.0.0.1 ports and are stopped at the end.
#   bench/ingest.sh
# Tuning: BENCH_COUNT (default 3000), BENCH_CONCURRENCY (32), BENCH_DEVICES (32: uploads go to
# the devices round-robin, one at a time per device), BENCH_SIZE (65536 bytes),
# BENCH_MAX_SECONDS per run (120). BENCH_PG_STATEMENTS=1 adds PostgreSQL's costliest statements
# of the ingest run. Besides the rates it prints the CPU per request of each process.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

COUNT=${BENCH_COUNT:-3000}
CONCURRENCY=${BENCH_CONCURRENCY:-32}
SIZE=${BENCH_SIZE:-65536}
DEVICES=${BENCH_DEVICES:-32}
MAX_SECONDS=${BENCH_MAX_SECONDS:-120}
LOAD=(--concurrency "$CONCURRENCY" --count "$COUNT" --max-seconds "$MAX_SECONDS")

bench_start_stack
bench_model_and_device bench
CREDENTIALS=$CREDENTIAL
for _ in $(seq 2 "$DEVICES"); do CREDENTIALS+=",$(bench_device "$MODEL_ID")"; done
blog "model $MODEL_ID and $DEVICES devices created"

# Direct PUTs first, while the service is idle.
blog "s3put: $COUNT x $SIZE bytes, $CONCURRENCY at once, directly to s3s-fs"
cpu_mark
S3PUT=$("$LOADGEN" s3put --endpoint "$S3_ENDPOINT" --bucket "$S3_BUCKET" \
    --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" --size "$SIZE" "${LOAD[@]}")
S3PUT_CPU=$(cpu_since)
echo "$S3PUT"
metrics_snapshot "$WORK/metrics-before"
blog "ingest: $COUNT x $SIZE bytes, $CONCURRENCY at once, through the service"
bench_pg_statements_reset postgres
cpu_mark
INGEST=$("$LOADGEN" ingest --url "$SERVICE_URL" --credential "$CREDENTIALS" --size "$SIZE" \
    "${LOAD[@]}") || { echo "$INGEST"; tail -n 20 "$WORK/service.log" >&2; exit 1; }
INGEST_CPU=$(cpu_since)
echo "$INGEST"
RSS=$(service_peak_rss_kib)
metrics_snapshot "$WORK/metrics-after"
STEPS=$(step_means "$WORK/metrics-before" "$WORK/metrics-after" \
    coredump_ingest_step_duration_seconds receive insert put record commit)
STATUS=$(psql_query "SELECT parse_status || '=' || count(*) FROM coredumps GROUP BY parse_status ORDER BY parse_status" | tr '\n' ' ')
QUEUED=$(psql_query "SELECT count(*) FROM jobs WHERE kind = 'parse_coredump'")
OUTBOX=$(psql_query "SELECT count(*) FROM object_deletions")

line() {  # line LABEL RESULT
    printf '%-22s %8s req/s  %7s MiB/s  p50 %7s ms  p99 %7s ms  failed %s\n' "$1" \
        "$(kv "$2" req_per_s)" "$(kv "$2" mib_per_s)" "$(kv "$2" p50_ms)" "$(kv "$2" p99_ms)" \
        "$(( $(kv "$2" requests) - $(kv "$2" ok) ))"
}
echo
echo "== core-dump ingest: $COUNT x $SIZE bytes, $CONCURRENCY concurrent, $DEVICES devices =="
line "service POST coredump" "$INGEST"
line "direct S3 PUT" "$S3PUT"
echo "non-201 answers from the service: $(kv "$INGEST" bad_status) (transport errors: $(kv "$INGEST" errors))"
echo "service / direct: $(ratio "$(kv "$INGEST" req_per_s)" "$(kv "$S3PUT" req_per_s)")x"
echo "service peak RSS (VmHWM): $RSS KiB ($((RSS / 1024)) MiB)"
echo "ingest steps (means): ${STEPS:-not reported by this build}"
per_request() {  # per_request CPU_SINCE_OUTPUT REQUESTS: ms of CPU per request, per process
    awk -v n="$2" -v s="$(kv "$1" service_cpu_s)" -v p="$(kv "$1" postgres_cpu_s)" \
        -v o="$(kv "$1" s3_cpu_s)" -v c="$(kv "$1" cores)" 'BEGIN {
        printf "service %.2f, PostgreSQL %.2f, s3s-fs %.2f ms (%.2f cores busy)", \
            1000 * s / n, 1000 * p / n, 1000 * o / n, c }'
}
echo "CPU per dump through the service: $(per_request "$INGEST_CPU" "$(kv "$INGEST" requests)")"
echo "CPU per direct PUT:               $(per_request "$S3PUT_CPU" "$(kv "$S3PUT" requests)")"
bench_pg_statements postgres 12
echo "for comparison: the Python service reached about 25 dumps/s on the reference machine"
echo "note: every dump also enqueues a parse job that the service's workers (JOB_CONCURRENCY=32 by default on PostgreSQL)"
echo "      run concurrently with the uploads (they end in ERROR: no firmware ELF is stored), and"
echo "      per-device retention (MAX_COREDUMPS=20) prunes older dumps through the outbox."
echo "      at the end: dumps by status: ${STATUS:-none}; parse jobs left: $QUEUED; outbox entries left: $OUTBOX"
