#!/usr/bin/env bash
# Device tokens: the rate of POST /api/iot/token, and of the version poll devices make most
# (GET /api/iot/firmware-version) authenticated with a token next to `Bearer KEY.SECRET`, with the
# device lookup cache on (the default, 2 s) and off. PostgreSQL, s3s-fs and `iotsupport serve`
# (release build) run on free 127.0.0.1 ports (bench/lib.sh).
#   bench/tokens.sh
# Tuning: BENCH_TOKEN_COUNT (default 3000), BENCH_POLL_COUNT (20000), BENCH_CONCURRENCY (32),
# BENCH_MAX_SECONDS per run (30).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

TOKEN_COUNT=${BENCH_TOKEN_COUNT:-3000}
POLL_COUNT=${BENCH_POLL_COUNT:-20000}
CONCURRENCY=${BENCH_CONCURRENCY:-32}
MAX_SECONDS=${BENCH_MAX_SECONDS:-30}
CODE=bench

bench_build
bench_start_postgres
bench_start_s3

declare -A RESULT
for cache in 2 0; do
    export DEVICE_LOOKUP_CACHE_SECONDS=$cache
    bench_start_service
    bench_model_and_device "${CODE}_$cache"
    KEY=${CREDENTIAL%%.*}
    SECRET=${CREDENTIAL#*.}
    CLIENT_ID="iotdevice-${CODE}_$cache-$KEY"
    LOAD=(--concurrency "$CONCURRENCY" --max-seconds "$MAX_SECONDS")
    blog "lookup cache ${cache}s: token x $TOKEN_COUNT"
    RESULT[token_$cache]=$("$LOADGEN" token --url "$SERVICE_URL" --client-id "$CLIENT_ID" \
        --client-secret "$SECRET" --count "$TOKEN_COUNT" "${LOAD[@]}")
    echo "${RESULT[token_$cache]}"
    TOKEN=$(curl -sS --fail-with-body -X POST -H 'Content-Type: application/x-www-form-urlencoded' \
        --data "grant_type=client_credentials&client_id=$CLIENT_ID&client_secret=$SECRET" \
        "$SERVICE_URL/api/iot/token" | json_field access_token)
    for kind in secret token; do
        cred=$CREDENTIAL
        [ "$kind" = token ] && cred=$TOKEN
        blog "lookup cache ${cache}s: poll with $kind x $POLL_COUNT"
        RESULT[poll_${kind}_$cache]=$("$LOADGEN" poll --url "$SERVICE_URL" --credential "$cred" \
            --count "$POLL_COUNT" "${LOAD[@]}")
        echo "${RESULT[poll_${kind}_$cache]}"
    done
    bench_stop_service
done

line() { local r=${RESULT[$1]}; printf '%s (%s / %s)' "$(kv "$r" req_per_s)" "$(kv "$r" p50_ms)" "$(kv "$r" p99_ms)"; }
echo
echo "device tokens, concurrency $CONCURRENCY: req/s (p50 / p99 ms)"
printf '%-34s %-26s %-26s\n' "" "lookup cache 2 s" "lookup cache off"
printf '%-34s %-26s %-26s\n' "POST /api/iot/token" "$(line token_2)" "$(line token_0)"
printf '%-34s %-26s %-26s\n' "poll, Bearer KEY.SECRET" "$(line poll_secret_2)" "$(line poll_secret_0)"
printf '%-34s %-26s %-26s\n' "poll, Bearer <token>" "$(line poll_token_2)" "$(line poll_token_0)"
printf 'token poll / secret poll: %s (cache 2 s), %s (cache off)\n' \
    "$(ratio "$(kv "${RESULT[poll_token_2]}" req_per_s)" "$(kv "${RESULT[poll_secret_2]}" req_per_s)")" \
    "$(ratio "$(kv "${RESULT[poll_token_0]}" req_per_s)" "$(kv "${RESULT[poll_secret_0]}" req_per_s)")"
