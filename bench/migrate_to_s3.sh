#!/usr/bin/env bash
# Migration rate of `iotsupport migrate-to-s3`: a PostgreSQL database with the Python service's
# schema at Alembic revision 005 (built from tests/fixtures/legacy_schema/) holding BENCH_DUMPS
# core-dump rows with legacy file names, a COREDUMPS_DIR with their files (BENCH_DUMP_SIZE bytes
# each, spread over BENCH_DEVICES devices) and an ASSETS_DIR with BENCH_BUNDLES firmware bundles.
# Runs `iotsupport migrate` (adoption), then times `migrate-to-s3` into s3s-fs, then a second run
# (nothing to do). PostgreSQL and s3s-fs run on free 127.0.0.1 ports and are stopped at the end.
#   bench/migrate_to_s3.sh
# Tuning: BENCH_DUMPS (1000), BENCH_DUMP_SIZE (65536), BENCH_DEVICES (10, at most 26), BENCH_BUNDLES (10),
# BENCH_CONCURRENCY (8, the command's --concurrency), BENCH_REPORT_SIZE (the legacy rows' report,
# 13 bytes), BENCH_ADOPT_ONLY=1 (time the adoption alone: no files, no migrate-to-s3; for large
# BENCH_DUMPS). The adoption's time and the WAL it wrote are printed either way.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DUMPS=${BENCH_DUMPS:-1000}
DUMP_SIZE=${BENCH_DUMP_SIZE:-65536}
DEVICES=${BENCH_DEVICES:-10}
BUNDLES=${BENCH_BUNDLES:-10}
CONCURRENCY=${BENCH_CONCURRENCY:-8}
REPORT_SIZE=${BENCH_REPORT_SIZE:-13}
ADOPT_ONLY=${BENCH_ADOPT_ONLY:-0}

ulimit -n 65536 2>/dev/null || true
bench_build
bench_start_postgres
bench_start_s3

blog "legacy database at revision 005: $DEVICES devices, $DUMPS core dumps"
for step in 002 003 004 005; do
    PGPASSWORD=benchpass "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U app -d postgres -XAtq \
        -v ON_ERROR_STOP=1 -f "$BENCH_ROOT/tests/fixtures/legacy_schema/$step.sql" >/dev/null
done
psql_query "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY);
    INSERT INTO alembic_version VALUES ('005');
    INSERT INTO device_models (code, name) VALUES ('bench', 'Benchmark');
    INSERT INTO devices (key, device_model_id, config)
        SELECT 'benchdv' || chr(96 + i), 1, '{}' FROM generate_series(1, $DEVICES) AS i;
    INSERT INTO coredumps (device_id, filename, chip, firmware_version, size, parse_status,
                           parsed_output, uploaded_at)
        SELECT 1 + (i % $DEVICES), 'coredump_' || lpad(i::text, 8, '0') || '.dmp', 'esp32', '1.0.0',
               $DUMP_SIZE, 'PARSED', rpad('legacy report', $REPORT_SIZE, ' report'), now()
        FROM generate_series(1, $DUMPS) AS i;" >/dev/null

ENV=(DATABASE_URL="$DATABASE_URL" S3_ENDPOINT_URL="$S3_ENDPOINT" S3_ACCESS_KEY_ID="$S3_ACCESS_KEY"
     S3_SECRET_ACCESS_KEY="$S3_SECRET_KEY" S3_BUCKET_NAME="$S3_BUCKET" S3_REGION=us-east-1
     ASSETS_DIR="$WORK/legacy/assets" COREDUMPS_DIR="$WORK/legacy/coredumps"
     LOG_FORMAT=text RUST_LOG=warn)
psql_query "CHECKPOINT" >/dev/null
WAL_BEFORE=$(psql_query "SELECT pg_current_wal_lsn()")
START=$(date +%s.%N)
env "${ENV[@]}" "$SERVICE_BIN" migrate >/dev/null 2>&1
END=$(date +%s.%N)
WAL=$(psql_query "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$WAL_BEFORE')")
TABLE=$(psql_query "SELECT pg_total_relation_size('coredumps')")
printf '\nadoption (migrate) of %d core-dump rows (coredumps %s MiB after): %s s, %s MiB of WAL\n' \
    "$DUMPS" "$(awk -v b="$TABLE" 'BEGIN { printf "%.1f", b / 1048576 }')" \
    "$(awk -v a="$START" -v b="$END" 'BEGIN { printf "%.2f", b - a }')" \
    "$(awk -v b="$WAL" 'BEGIN { printf "%.1f", b / 1048576 }')"
if [ "$ADOPT_ONLY" = 1 ]; then
    exit 0
fi

blog "legacy files: $DUMPS x $DUMP_SIZE bytes, $BUNDLES bundles"
python3 - "$WORK/legacy" "$DUMPS" "$DUMP_SIZE" "$DEVICES" <<'PY'
import os, sys
root, dumps, size, devices = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for i in range(1, dumps + 1):
    device = 'benchdv' + chr(96 + 1 + (i % devices))
    d = os.path.join(root, 'coredumps', device)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'coredump_%08d.dmp' % i), 'wb') as f:
        f.write(os.urandom(size))
PY
# Device n has the key 'benchdv' + the n-th letter, in SQL and in Python alike.
mkdir -p "$WORK/legacy/assets/bench"
for i in $(seq 1 "$BUNDLES"); do
    "$LOADGEN" make-bundle --code bench --version "1.0.$i" --image-size 1048576 \
        --out "$WORK/legacy/assets/bench/firmware-1.0.$i.zip" >/dev/null 2>&1
done

timed() {  # timed LABEL ARGS...: runs migrate-to-s3, prints its summary and wall time
    local label=$1; shift
    local start end
    start=$(date +%s.%N)
    env "${ENV[@]}" "$SERVICE_BIN" migrate-to-s3 "$@" > "$WORK/$label.out"
    end=$(date +%s.%N)
    ELAPSED=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
    grep -E 'migrated|skipped|Nothing' "$WORK/$label.out" | sed "s/^/[$label] /"
}

timed first --concurrency "$CONCURRENCY"
FIRST=$ELAPSED
MOVED=$(psql_query "SELECT count(*) FROM legacy_coredump_files")
timed second --concurrency "$CONCURRENCY"
SECOND=$ELAPSED
ITEMS=$((DUMPS + BUNDLES))
printf '\nmigrate-to-s3: %d dumps (%d bytes) + %d bundles in %s s = %s items/s (%s dumps moved, concurrency %d)\n' \
    "$DUMPS" "$DUMP_SIZE" "$BUNDLES" "$FIRST" "$(ratio "$ITEMS" "$FIRST")" "$MOVED" "$CONCURRENCY"
printf 'second run (nothing to do): %s s\n' "$SECOND"
