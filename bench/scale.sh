#!/usr/bin/env bash
# Cost against fleet size (issue 18 item 5): the same requests against a small and a large
# PostgreSQL database, p50/p99 of each and the large/small ratio.
#   large: 100,000 devices over 50 models, 2,000,000 core-dump rows (20 per device, the default
#          MAX_COREDUMPS), 5,000 firmware versions (100 per model), 1,000 crash groups;
#   small: 100 devices over 2 models (so a page of 50 of a model's devices is full in both),
#          2,000 dumps, 4 versions, 40 crash groups (20 per model in both).
# Rows are seeded with SQL (generate_series) after `serve` migrated the database; the dumps and
# versions have no objects in the bucket (none of the measured requests reads them; retention's
# deletions of the seeded dumps' objects are deletions of absent objects). Every device has the
# secret of one device made through the API, so any device can be measured.
# Measured per database, one `iotsupport serve` (release) each, with DEVICE_LOOKUP_CACHE_SECONDS=0
# so every device request reaches the database:
#   poll        GET /api/iot/firmware-version, BENCH_CREDENTIALS devices round-robin
#   upload      POST /api/iot/coredump (64 KiB), the same devices: each upload also prunes the
#               device's oldest dump (retention)
#   dumps       GET /api/devices/{id}/coredumps (one device, 20 dumps)
#   model-page  GET /api/devices?model_id=M&limit=50 (a page of a model's devices)
#   deep-page   GET /api/devices?limit=50&cursor=… (a page from the middle of the whole fleet)
#   groups      GET /api/device-models/{id}/crash-groups
#   dashboard   GET /api/rotation/dashboard (every device, by design: see bench/README.md)
#   status      GET /api/rotation/status
#   dash-limit  GET /api/rotation/dashboard?limit=$BENCH_DASHBOARD_LIMIT (counts of every device,
#               10 of each list by default: the small database has 10 TIMEOUT devices, so every
#               non-empty list is full in both and both answers hold the same devices' worth)
#   bench/scale.sh
# Tuning: BENCH_LARGE_DEVICES (100000), BENCH_SMALL_DEVICES (100), BENCH_COUNT requests per
# measurement (2000), BENCH_CONCURRENCY (8), BENCH_CREDENTIALS (200), BENCH_DASHBOARD_COUNT (20),
# BENCH_DASHBOARD_LIMIT (10),
# BENCH_PG_STATEMENTS=1 (the statements of the capped dashboard, per database, on stderr),
# BENCH_WRITE_SECONDS (10: each pgbench run of the write-cost measurement below).
# Then, on the large database, what the rotation counters' triggers (migration 16) cost the writes
# that carry them, straight to PostgreSQL: presence writes (one device's last_seen_at, the most
# frequent device UPDATE) per second with the update triggers enabled and disabled (pgbench, 4
# clients, twice each, alternated), and the fleet trigger's UPDATE of every OK device (rolled back).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

LARGE=${BENCH_LARGE_DEVICES:-100000}
SMALL=${BENCH_SMALL_DEVICES:-100}
COUNT=${BENCH_COUNT:-2000}
CONCURRENCY=${BENCH_CONCURRENCY:-8}
NCRED=${BENCH_CREDENTIALS:-200}
DASH_COUNT=${BENCH_DASHBOARD_COUNT:-20}
DASH_LIMIT=${BENCH_DASHBOARD_LIMIT:-10}
WRITE_SECONDS=${BENCH_WRITE_SECONDS:-10}
DUMPS_PER_DEVICE=20
GROUPS_PER_MODEL=20

bench_build
bench_start_postgres
bench_start_s3
BASE_URL=${DATABASE_URL%/postgres}
export DEVICE_LOOKUP_CACHE_SECONDS=0

# sql DB SQL
sql() {
    PGPASSWORD=benchpass "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U app -d "$1" -XAtq -F $'\t' \
        -v ON_ERROR_STOP=1 -c "$2"
}

# seed DB DEVICES VERSIONS_PER_MODEL MODELS: models, devices, dumps, versions and groups (see
# above), then VACUUM ANALYZE (the state autovacuum keeps a live database in).
seed() {
    local db=$1 devices=$2 versions=$3 MODELS=$4 started=$SECONDS
    MODEL_ID=$(api POST /api/device-models '{"code": "m0", "name": "Model 0"}' | json_field id)
    local device secret_hash
    device=$(api POST /api/devices "{\"device_model_id\": $MODEL_ID, \"config\": \"{}\"}")
    SECRET=$(json_field device_secret <<<"$device")
    secret_hash=$(sql "$db" "SELECT secret_hash FROM devices")
    sql "$db" "DELETE FROM devices; DELETE FROM device_models;"
    sql "$db" "
        INSERT INTO device_models (code, name, firmware_version)
            SELECT 'm' || m, 'Model ' || m, '1.0.' || ($versions - 1) FROM generate_series(1, $MODELS) m;
        INSERT INTO firmware_versions (device_model_id, version, uploaded_at, firmware_bin_size, chip)
            SELECT dm.id, '1.0.' || v, now() - (v || ' hours')::interval, 1572864, 'esp32'
            FROM device_models dm, generate_series(0, $versions - 1) v;
        INSERT INTO devices (key, device_model_id, config, secret_hash, device_name)
            SELECT (SELECT string_agg(substr('abcdefghijklmnopqrstuvwxyz234567',
                                             ((i >> (5 * k)) & 31)::int + 1, 1), '' ORDER BY k)
                    FROM generate_series(0, 7) k),
                   (SELECT min(id) FROM device_models) + (i % $MODELS), '{}', '$secret_hash',
                   'device ' || i
            FROM generate_series(1, $devices) i;
        INSERT INTO coredumps (device_id, chip, firmware_version, size, parse_status, uploaded_at,
                               parsed_at, parsed_output)
            SELECT d.id, 'esp32', '1.0.0', 65536, 'PARSED', now() - ((d.id * 97 + n) || ' minutes')::interval,
                   now(), 'seeded'
            FROM devices d, generate_series(1, $DUMPS_PER_DEVICE) n;
        INSERT INTO crash_groups (device_model_id, signature_hash, signature, title, first_seen_at,
                                  last_seen_at, coredump_count, device_count)
            SELECT dm.id, md5(dm.id || '/' || g) || md5(g || '/' || dm.id), 'sig ' || g,
                   'crash ' || g, now() - interval '30 days', now() - (g || ' minutes')::interval,
                   1000 + g, 10 + g
            FROM device_models dm, generate_series(1, $GROUPS_PER_MODEL) g;
        UPDATE devices SET rotation_state = 'TIMEOUT', last_rotation_completed_at = now() - interval '20 days'
            WHERE id % 10 = 0;
"
    sql "$db" "VACUUM ANALYZE"
    blog "$db seeded in $((SECONDS - started)) s: $(sql "$db" "SELECT (SELECT count(*) FROM devices) || ' devices, ' || (SELECT count(*) FROM coredumps) || ' dumps, ' || (SELECT count(*) FROM firmware_versions) || ' versions, ' || (SELECT count(*) FROM crash_groups) || ' groups'")"
}

# measure NAME LOADGEN-ARGS…: runs loadgen, records p50/p99 under RESULTS[NAME/db].
declare -A P50 P99
measure() {
    local name=$1
    shift
    local out
    out=$("$LOADGEN" "$@" --concurrency "$CONCURRENCY" --max-seconds 120)
    if [ "$(kv "$out" ok)" != "$(kv "$out" requests)" ]; then
        blog "$name: not every request succeeded: $out"
        exit 1
    fi
    P50[$name/$CURRENT]=$(kv "$out" p50_ms)
    P99[$name/$CURRENT]=$(kv "$out" p99_ms)
    blog "$CURRENT $name: $out"
}

run_database() {
    local db=$1 devices=$2 versions=$3 models=$4
    CURRENT=$db
    sql postgres "CREATE DATABASE $db"
    DATABASE_URL=$BASE_URL/$db S3_BUCKET=bench-${db//_/-} bench_start_service
    seed "$db" "$devices" "$versions" "$models"
    local creds model_id device_id cursor url=$SERVICE_URL
    # Devices spread over the fleet, each with its secret.
    creds=$(sql "$db" "SELECT string_agg(key || '.$SECRET', ',') FROM (SELECT key FROM devices
            ORDER BY md5(key) LIMIT $NCRED) d")
    model_id=$(sql "$db" "SELECT min(id) + 1 FROM device_models")
    device_id=$(sql "$db" "SELECT min(id) + ($devices / 2) FROM devices")
    cursor=$(curl -sS -H "Authorization: Bearer $ADMIN_TOKEN" \
        "$url/api/devices?limit=1&cursor=$(python3 -c 'import base64,sys; print(base64.urlsafe_b64encode(("device:" + sys.argv[1]).encode()).decode().rstrip("="))' \
            "$(sql "$db" "SELECT key FROM devices ORDER BY key OFFSET ($devices / 2) LIMIT 1")")" \
        | json_field next_cursor)

    measure poll poll --url "$url" --credential "$creds" --count "$COUNT"
    measure upload ingest --url "$url" --credential "$creds" --size 65536 --count "$COUNT"
    measure dumps get --url "$url/api/devices/$device_id/coredumps" --token "$ADMIN_TOKEN" --count "$COUNT"
    measure model-page get --url "$url/api/devices?model_id=$model_id&limit=50" --token "$ADMIN_TOKEN" --count "$COUNT"
    measure deep-page get --url "$url/api/devices?limit=50&cursor=$cursor" --token "$ADMIN_TOKEN" --count "$COUNT"
    measure groups get --url "$url/api/device-models/$model_id/crash-groups" --token "$ADMIN_TOKEN" --count "$COUNT"
    measure status get --url "$url/api/rotation/status" --token "$ADMIN_TOKEN" --count "$COUNT"
    measure dashboard get --url "$url/api/rotation/dashboard" --token "$ADMIN_TOKEN" --count "$DASH_COUNT"
    bench_pg_statements_reset "$db"
    measure dash-limit get --url "$url/api/rotation/dashboard?limit=$DASH_LIMIT" --token "$ADMIN_TOKEN" --count "$COUNT"
    bench_pg_statements "$db" 8 >&2
    bench_stop_service
}

# write_cost DB: see the header.
declare -A WRITES
write_cost() {
    local db=$1 script=$WORK/presence.sql round trigger started
    printf '\\set id random(%s, %s)\nUPDATE devices SET last_seen_at = now() WHERE id = :id;\n' \
        "$(sql "$db" "SELECT min(id) FROM devices")" "$(sql "$db" "SELECT max(id) FROM devices")" > "$script"
    for round in 1 2; do
        for trigger in ENABLE DISABLE; do
            sql "$db" "ALTER TABLE devices $trigger TRIGGER device_rotation_counts_move,
                       $trigger TRIGGER device_rotation_counts_update"
            WRITES[presence/$trigger]+="$(PGPASSWORD=benchpass "$PGBIN/pgbench" -h 127.0.0.1 -p "$PGPORT" \
                -U app -n -T "$WRITE_SECONDS" -c 4 -j 2 -f "$script" "$db" \
                | awk '/^tps/ {printf "%d", $3}')/s "
            started=$(date +%s%N)
            sql "$db" "BEGIN; UPDATE devices SET rotation_state = 'QUEUED' WHERE rotation_state = 'OK' AND active; ROLLBACK;"
            WRITES[fleet/$trigger]+="$(( ($(date +%s%N) - started) / 1000000 )) ms "
        done
    done
    sql "$db" "ALTER TABLE devices ENABLE TRIGGER device_rotation_counts_move,
               ENABLE TRIGGER device_rotation_counts_update"
}

run_database scale_small "$SMALL" 2 2
run_database scale_large "$LARGE" 100 50
write_cost scale_large

printf '%-11s %12s %12s %12s %12s %8s %8s\n' request "p50 small" "p50 large" "p99 small" "p99 large" "p50 ×" "p99 ×"
for name in poll upload dumps model-page deep-page groups status dashboard dash-limit; do
    printf '%-11s %9s ms %9s ms %9s ms %9s ms %8s %8s\n' "$name" \
        "${P50[$name/scale_small]}" "${P50[$name/scale_large]}" \
        "${P99[$name/scale_small]}" "${P99[$name/scale_large]}" \
        "$(ratio "${P50[$name/scale_large]}" "${P50[$name/scale_small]}")" \
        "$(ratio "${P99[$name/scale_large]}" "${P99[$name/scale_small]}")"
done
echo
echo "writes on the large database, the counters' update triggers enabled / disabled (two runs each):"
echo "  presence writes (pgbench, 4 clients): ${WRITES[presence/ENABLE]}/ ${WRITES[presence/DISABLE]}"
echo "  fleet trigger UPDATE of every OK device: ${WRITES[fleet/ENABLE]}/ ${WRITES[fleet/DISABLE]}"
