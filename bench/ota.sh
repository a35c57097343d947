#!/usr/bin/env bash
# OTA download throughput: devices fetching the current firmware image through the service
# (GET /api/iot/firmware, 256 at once), whole and as random 4 KiB ranges, against the same reads
# directly from the S3 server (s3s-fs), plus the service's peak RSS. The firmware is a synthesised
# but valid bundle (about 1.5 MiB image) uploaded through POST /api/device-models/{id}/firmware.
# PostgreSQL, s3s-fs and `iotsupport serve` (release build) run on free 127.0.0.1 ports.
#   bench/ota.sh
# Then (b): the time to upload a bundle through the service (validation, five PUTs, commit), one
# at a time, against the time of one direct PUT of its largest artifact (the image).
# Tuning: BENCH_WHOLE_COUNT (default 1200), BENCH_RANGE_COUNT (15000), BENCH_CONCURRENCY (256),
# BENCH_RANGE_SIZE (4096), BENCH_IMAGE_SIZE (1572864 bytes), BENCH_MAX_SECONDS per run (30),
# BENCH_UPLOADS (9).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

WHOLE_COUNT=${BENCH_WHOLE_COUNT:-1200}
RANGE_COUNT=${BENCH_RANGE_COUNT:-15000}
CONCURRENCY=${BENCH_CONCURRENCY:-256}
RANGE_SIZE=${BENCH_RANGE_SIZE:-4096}
IMAGE_SIZE=${BENCH_IMAGE_SIZE:-1572864}
MAX_SECONDS=${BENCH_MAX_SECONDS:-30}
UPLOADS=${BENCH_UPLOADS:-9}
CODE=bench
VERSION=1.0.0

bench_start_stack
bench_model_and_device "$CODE"
"$LOADGEN" make-bundle --code "$CODE" --version "$VERSION" --image-size "$IMAGE_SIZE" \
    --out "$WORK/bundle.zip"
curl -sS --fail-with-body --max-time 120 -o /dev/null -X POST \
    -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/zip' \
    --data-binary "@$WORK/bundle.zip" "$SERVICE_URL/api/device-models/$MODEL_ID/firmware"
KEY="firmware/$CODE/$VERSION/firmware.bin"
blog "firmware $VERSION uploaded through the API; device credential ready"

S3=(--endpoint "$S3_ENDPOINT" --bucket "$S3_BUCKET" --access-key "$S3_ACCESS_KEY"
    --secret-key "$S3_SECRET_KEY" --key "$KEY")
SVC=(--url "$SERVICE_URL" --credential "$CREDENTIAL")
run_pair() {  # run_pair COUNT [--range-size N]: sets SVC_OUT and S3_OUT
    local load=(--concurrency "$CONCURRENCY" --count "$1" --max-seconds "$MAX_SECONDS")
    shift
    blog "service: download ${*:-(whole images)} x ${load[3]}"
    cpu_mark
    SVC_OUT=$("$LOADGEN" download "${SVC[@]}" "${load[@]}" "$@") \
        || { echo "$SVC_OUT"; tail -n 20 "$WORK/service.log" >&2; exit 1; }
    SVC_CPU=$(cpu_since)
    echo "$SVC_OUT $SVC_CPU"
    blog "direct: s3get ${*:-(whole images)} x ${load[3]}"
    S3_OUT=$("$LOADGEN" s3get "${S3[@]}" "${load[@]}" "$@")
    echo "$S3_OUT"
}
run_pair "$WHOLE_COUNT"
WHOLE_SVC=$SVC_OUT WHOLE_S3=$S3_OUT WHOLE_CPU=$SVC_CPU
run_pair "$RANGE_COUNT" --range-size "$RANGE_SIZE"
RANGE_SVC=$SVC_OUT RANGE_S3=$S3_OUT RANGE_CPU=$SVC_CPU
RSS=$(service_peak_rss_kib)

# (b) Upload time of a bundle vs its largest single PUT, one request at a time.
metrics_snapshot "$WORK/metrics-before-uploads"
UPLOAD_TIMES=()
# The bundles are made first, so no bundle is being made while another is uploaded.
for i in $(seq 1 "$UPLOADS"); do
    "$LOADGEN" make-bundle --code "$CODE" --version "2.0.$i" --image-size "$IMAGE_SIZE" \
        --out "$WORK/upload-$i.zip" 2>/dev/null
done
for i in $(seq 1 "$UPLOADS"); do
    UPLOAD_TIMES+=("$(curl -sS --fail-with-body --max-time 120 -o /dev/null -w '%{time_total}' \
        -X POST -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/zip' \
        --data-binary "@$WORK/upload-$i.zip" "$SERVICE_URL/api/device-models/$MODEL_ID/firmware")")
done
metrics_snapshot "$WORK/metrics-after-uploads"
UPLOAD_STEPS=$(step_means "$WORK/metrics-before-uploads" "$WORK/metrics-after-uploads" \
    firmware_upload_step_duration_seconds receive early_lock lock validate hash put early_put rows retention commit pipeline)
UPLOAD_MS=$(printf '%s\n' "${UPLOAD_TIMES[@]}" | sort -g | awk '{ t[NR] = $1 } END { printf "%.1f", t[int((NR + 1) / 2)] * 1000 }')
BIN_SIZE=$(python3 -c 'import sys, zipfile; print(zipfile.ZipFile(sys.argv[1]).getinfo(sys.argv[2]).file_size)' \
    "$WORK/upload-1.zip" "$CODE.bin")
PUT_OUT=$("$LOADGEN" s3put --endpoint "$S3_ENDPOINT" --bucket "$S3_BUCKET" \
    --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" --size "$BIN_SIZE" \
    --concurrency 1 --count "$UPLOADS" --max-seconds "$MAX_SECONDS")
echo "$PUT_OUT"

line() {  # line LABEL RESULT
    printf '%-24s %9s req/s  %8s MiB/s  p50 %7s ms  p99 %7s ms  requests %6s  failed %s\n' "$1" \
        "$(kv "$2" req_per_s)" "$(kv "$2" mib_per_s)" "$(kv "$2" p50_ms)" "$(kv "$2" p99_ms)" \
        "$(kv "$2" requests)" "$(( $(kv "$2" requests) - $(kv "$2" ok) ))"
}
echo
echo "== OTA downloads: $(stat -c %s "$WORK/bundle.zip") byte bundle, image $KEY, $CONCURRENCY concurrent =="
line "service whole image" "$WHOLE_SVC"
line "direct S3 whole image" "$WHOLE_S3"
line "service ${RANGE_SIZE} B ranges" "$RANGE_SVC"
line "direct S3 ${RANGE_SIZE} B ranges" "$RANGE_S3"
echo "service / direct, whole images (MiB/s): $(ratio "$(kv "$WHOLE_SVC" mib_per_s)" "$(kv "$WHOLE_S3" mib_per_s)")x"
echo "service / direct, ranges (req/s):       $(ratio "$(kv "$RANGE_SVC" req_per_s)" "$(kv "$RANGE_S3" req_per_s)")x"
per_request() {  # per_request CPU_SINCE RESULT: ms of CPU per request of the service, PostgreSQL, s3s-fs
    awk -v s="$(kv "$1" service_cpu_s)" -v p="$(kv "$1" postgres_cpu_s)" -v o="$(kv "$1" s3_cpu_s)" \
        -v n="$(kv "$2" requests)" 'BEGIN { if (n > 0) printf "service %.3f, PostgreSQL %.3f, s3s-fs %.3f", s * 1000 / n, p * 1000 / n, o * 1000 / n }'
}
echo "CPU per request through the service (ms), whole images: $(per_request "$WHOLE_CPU" "$WHOLE_SVC"); ranges: $(per_request "$RANGE_CPU" "$RANGE_SVC")"
echo "non-2xx answers from the service: whole $(kv "$WHOLE_SVC" bad_status), ranges $(kv "$RANGE_SVC" bad_status)"
echo "service peak RSS (VmHWM): $RSS KiB ($((RSS / 1024)) MiB)   goal: >= 0.9x direct, RSS < 64 MB (caches off)"
echo "bundle upload through the service, median of $UPLOADS: $UPLOAD_MS ms; one direct PUT of its $BIN_SIZE byte image: p50 $(kv "$PUT_OUT" p50_ms) ms ($(ratio "$UPLOAD_MS" "$(kv "$PUT_OUT" p50_ms)")x)"
echo "upload steps (means; validate/hash run on a blocking thread beside lock and put, rows beside put): ${UPLOAD_STEPS:-not reported by this build}"
echo "for comparison: the Python service reached ~22 MiB/s for whole images vs 139-265 MiB/s from S3 directly"
