#!/usr/bin/env bash
# Firmware bundle uploads, one at a time, against one direct PUT of the bundle's largest artifact
# (the image) to the same S3 server (issue 18: an upload at most 1.3x one PUT). Two services run
# side by side on the same PostgreSQL and bucket: one stores the image while the bundle arrives
# (FIRMWARE_STREAM_IMAGE_PUT=true, the default), the other after the bundle has been checked
# (false). Each of BENCH_UPLOADS steps uploads one new version through each and makes one direct
# PUT of an image of the same size (`loadgen s3put`), so the three see the same load. Printed: the
# median of each, the ratios to the direct PUT, the mean of each upload step
# (`firmware_upload_step_duration_seconds`) and each service's CPU per upload.
#   bench/upload.sh
# Tuning: BENCH_UPLOADS (25), BENCH_IMAGE_SIZE (1572864 bytes).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

UPLOADS=${BENCH_UPLOADS:-25}
IMAGE_SIZE=${BENCH_IMAGE_SIZE:-1572864}
CODE=bench
STEPS="receive early_lock lock validate hash put early_put rows retention commit pipeline"

bench_start_stack
bench_model_and_device "$CODE"
# The second service; the first (streamed, the default) is $SERVICE_URL / $SERVICE_PID.
STREAMED_URL=$SERVICE_URL STREAMED_PID=$SERVICE_PID
FIRMWARE_STREAM_IMAGE_PUT=false bench_start_service
AFTER_URL=$SERVICE_URL AFTER_PID=$SERVICE_PID
BENCH_PIDS+=("$STREAMED_PID")

for i in $(seq 1 $((2 * UPLOADS))); do
    "$LOADGEN" make-bundle --code "$CODE" --version "3.0.$i" --image-size "$IMAGE_SIZE" \
        --out "$WORK/bundle-$i.zip" 2>/dev/null
done
BIN_SIZE=$(python3 -c 'import sys, zipfile; print(zipfile.ZipFile(sys.argv[1]).getinfo(sys.argv[2]).file_size)' \
    "$WORK/bundle-1.zip" "$CODE.bin")

upload() {  # upload URL BUNDLE: prints curl's total time in seconds
    curl -sS --fail-with-body --max-time 120 -o /dev/null -w '%{time_total}' -X POST \
        -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/zip' \
        --data-binary "@$2" "$1/api/device-models/$MODEL_ID/firmware"
}
median_ms() { sort -g | awk '{ t[NR] = $1 } END { printf "%.1f", t[int((NR + 1) / 2)] * 1000 }'; }

SERVICE_URL=$STREAMED_URL metrics_snapshot "$WORK/streamed-before"
SERVICE_URL=$AFTER_URL metrics_snapshot "$WORK/after-before"
CPU_STREAMED=$(cpu_ticks "$STREAMED_PID") CPU_AFTER=$(cpu_ticks "$AFTER_PID")
STREAMED=() AFTER=() DIRECT=()
for i in $(seq 1 "$UPLOADS"); do
    STREAMED+=("$(upload "$STREAMED_URL" "$WORK/bundle-$((2 * i - 1)).zip")")
    AFTER+=("$(upload "$AFTER_URL" "$WORK/bundle-$((2 * i)).zip")")
    OUT=$("$LOADGEN" s3put --endpoint "$S3_ENDPOINT" --bucket "$S3_BUCKET" \
        --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" --size "$BIN_SIZE" \
        --prefix "bench/direct-$i" --concurrency 1 --count 1 --max-seconds 60)
    DIRECT+=("$(awk -v ms="$(kv "$OUT" p50_ms)" 'BEGIN { print ms / 1000 }')")
done
CPU_STREAMED=$(( $(cpu_ticks "$STREAMED_PID") - CPU_STREAMED ))
CPU_AFTER=$(( $(cpu_ticks "$AFTER_PID") - CPU_AFTER ))
SERVICE_URL=$STREAMED_URL metrics_snapshot "$WORK/streamed-after"
SERVICE_URL=$AFTER_URL metrics_snapshot "$WORK/after-after"

STREAMED_MS=$(printf '%s\n' "${STREAMED[@]}" | median_ms)
AFTER_MS=$(printf '%s\n' "${AFTER[@]}" | median_ms)
DIRECT_MS=$(printf '%s\n' "${DIRECT[@]}" | median_ms)
per_upload() { awk -v t="$1" -v hz="$CLK_TCK" -v n="$UPLOADS" 'BEGIN { printf "%.1f ms", t / hz * 1000 / n }'; }
echo "== firmware uploads, $UPLOADS each, interleaved; image $BIN_SIZE bytes =="
echo "one direct PUT of the image:        median $DIRECT_MS ms"
echo "image stored while the body arrives: median $STREAMED_MS ms ($(ratio "$STREAMED_MS" "$DIRECT_MS")x), service CPU $(per_upload "$CPU_STREAMED") per upload"
# shellcheck disable=SC2086
echo "  steps: $(step_means "$WORK/streamed-before" "$WORK/streamed-after" firmware_upload_step_duration_seconds $STEPS)"
echo "image stored after the checks:       median $AFTER_MS ms ($(ratio "$AFTER_MS" "$DIRECT_MS")x), service CPU $(per_upload "$CPU_AFTER") per upload"
# shellcheck disable=SC2086
echo "  steps: $(step_means "$WORK/after-before" "$WORK/after-after" firmware_upload_step_duration_seconds $STEPS)"
echo "goal: <= 1.3x one direct PUT; load average $(cut -d' ' -f1 /proc/loadavg)"
