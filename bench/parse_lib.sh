# Shared by bench/parse_backlog.sh and bench/parse_sustained.sh (sourced, not run; sources
# bench/lib.sh): the real dump and firmware ELF of one test case, a database per build under test,
# a model with that build and a fleet of devices, CPU accounting of the three processes, and
# percentiles from PostgreSQL.
#
# Test data: $IOTSUPPORT_TESTDATA, else ../shared/testdata/esp; BENCH_CASE picks the case
# (esp32_elf_crc32_abort: any coredump/<case> with a coredump.bin or coredump_bin.bin).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CASE=${BENCH_CASE:-esp32_elf_crc32_abort}
DEVICES=${BENCH_DEVICES:-32}
BASELINE_BIN=${BENCH_BASELINE_BIN:-}
VERSION=1.0.0
TESTDATA=${IOTSUPPORT_TESTDATA:-$BENCH_ROOT/../shared/testdata/esp}
CASE_DIR=$TESTDATA/coredump/$CASE
DUMP_FILE=$(ls "$CASE_DIR"/coredump.bin "$CASE_DIR"/coredump_bin.bin 2>/dev/null | head -n 1 || true)
ELF_FILE=$(ls "$CASE_DIR"/*.elf 2>/dev/null | grep -v '\.core\.elf$' | head -n 1 || true)
CHIP=${CASE%%_*}
# loadgen sends one upload per device at a time.
CONCURRENCY=$((DEVICES < 32 ? DEVICES : 32))

parse_bench_check() {
    if [ -z "$DUMP_FILE" ] || [ -z "$ELF_FILE" ]; then
        echo "SKIP: no dump and firmware ELF in $CASE_DIR (set IOTSUPPORT_TESTDATA)"
        exit 0
    fi
    if [ -n "$BASELINE_BIN" ] && [ ! -x "$BASELINE_BIN" ]; then
        blog "BENCH_BASELINE_BIN $BASELINE_BIN is not executable"
        exit 1
    fi
}

# parse_bench_start: skips without test data, builds, starts PostgreSQL and s3s-fs; sets
# CURRENT_BIN (the service binary under test).
parse_bench_start() {
    parse_bench_check
    bench_build
    bench_start_postgres
    bench_start_s3
    CURRENT_BIN=$SERVICE_BIN
    blog "case $CASE: $(basename "$DUMP_FILE") ($(stat -c %s "$DUMP_FILE") bytes, chip $CHIP), $(basename "$ELF_FILE")"
}

# sql DB SQL: psql_query on database DB.
sql() {
    PGPASSWORD=benchpass "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U app -d "$1" -XAtq -F $'\t' -c "$2"
}

# fresh_database DB: drops and creates DB (each round starts from an empty database and bucket).
fresh_database() {
    sql postgres "DROP DATABASE IF EXISTS $1" >/dev/null
    sql postgres "CREATE DATABASE $1" >/dev/null
}

# start_service_for BIN DB: `iotsupport serve` from BIN on database DB and a bucket of its own.
# Extra environment for the service goes before the call (`JOB_CONCURRENCY=4 start_service_for …`).
start_service_for() {
    SERVICE_BIN=$1 DATABASE_URL=${DATABASE_URL%/*}/$2 S3_BUCKET=bench-${2//_/-} bench_start_service
}

# model_with_build CODE: a model CODE with the case's build (its real ELF in a bundle) and DEVICES
# devices; sets MODEL and CREDS (comma-separated credentials).
model_with_build() {
    local code=$1 device credentials=()
    MODEL=$(api POST /api/device-models "{\"code\": \"$code\", \"name\": \"Benchmark $code\"}" | json_field id)
    "$LOADGEN" make-bundle --code "$code" --version "$VERSION" --elf "$ELF_FILE" \
        --image-size 65536 --out "$WORK/bundle.zip" 2>/dev/null
    curl -sS --fail-with-body --max-time 120 -o /dev/null -X POST \
        -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/zip' \
        --data-binary "@$WORK/bundle.zip" "$SERVICE_URL/api/device-models/$MODEL/firmware" >&2
    for _ in $(seq 1 "$DEVICES"); do
        device=$(api POST /api/devices "{\"device_model_id\": $MODEL, \"config\": \"{}\"}")
        credentials+=("$(json_field key <<<"$device").$(json_field device_secret <<<"$device")")
    done
    CREDS=$(IFS=,; echo "${credentials[*]}")
}

# load_average: the 1-minute load average of the machine.
load_average() { cut -d' ' -f1 /proc/loadavg; }

# metric TEXT NAME LABEL: the value of the series NAME{…LABEL…} in a Prometheus text (0 if absent).
metric() {
    awk -v name="$2{" -v label="$3" 'index($0, name) == 1 && index($0, label) { print $2; found = 1; exit }
        END { if (!found) print 0 }' <<<"$1"
}

# step_ms TEXT STEP: mean milliseconds of a parse-job step (coredump_parse_step_duration_seconds).
step_ms() {
    local sum count
    sum=$(metric "$1" coredump_parse_step_duration_seconds_sum "step=\"$2\"")
    count=$(metric "$1" coredump_parse_step_duration_seconds_count "step=\"$2\"")
    awk -v s="$sum" -v n="$count" 'BEGIN { if (n > 0) printf "%.2f", 1000 * s / n; else print "-" }'
}
