# Shared by bench/ingest.sh and bench/ota.sh (sourced, not run): builds the release binary and
# the load generator, starts PostgreSQL, the s3s-fs S3 server and `iotsupport serve` on free
# 127.0.0.1 ports in a temporary directory, and stops everything on exit.
#
# After `bench_start_stack`: $SERVICE_URL, $SERVICE_PID, $ADMIN_TOKEN, $S3_ENDPOINT, $S3_BUCKET,
# $S3_ACCESS_KEY, $S3_SECRET_KEY, $LOADGEN, $WORK. Honours CARGO_TARGET_DIR.
set -euo pipefail

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_TARGET=${CARGO_TARGET_DIR:-$BENCH_ROOT/target}
BENCH_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/iotsupport-bench
WORK=$(mktemp -d /tmp/iotsupport-bench.XXXXXX)
BENCH_PIDS=()
SERVICE_PID=""
PGBIN=""
ADMIN_TOKEN="bench-admin-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
S3_ACCESS_KEY=AKBENCH
S3_SECRET_KEY=SKBENCH
S3_BUCKET=iotsupport-bench

blog() { echo "[bench] $*" >&2; }

# initdb refuses to run as root, so as root the cluster belongs to the postgres user.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_http URL SECONDS: until anything answers on URL (any status).
wait_http() {
    local deadline=$((SECONDS + $2))
    while [ "$SECONDS" -lt "$deadline" ]; do
        [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true)" != 000 ] && return 0
        sleep 0.1
    done
    return 1
}

bench_stop_service() {
    [ -n "$SERVICE_PID" ] || return 0
    kill -TERM "$SERVICE_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SERVICE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVICE_PID" 2>/dev/null || true
    wait "$SERVICE_PID" 2>/dev/null || true
    SERVICE_PID=""
}

bench_cleanup() {
    bench_stop_service
    for pid in "${BENCH_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${BENCH_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "$PGBIN" ] && [ -d "$WORK/pg/data" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap bench_cleanup EXIT

# BENCH_SERVICE_BIN / BENCH_LOADGEN: use these prebuilt binaries instead of building (e.g. an
# `iotsupport` built from an older commit, to measure "before" with the same script). With both
# set nothing is built.
bench_build() {
    SERVICE_BIN=${BENCH_SERVICE_BIN:-$BENCH_TARGET/release/iotsupport}
    LOADGEN=${BENCH_LOADGEN:-$BENCH_TARGET/release/examples/loadgen}
    if [ -z "${BENCH_SERVICE_BIN:-}" ] || [ -z "${BENCH_LOADGEN:-}" ]; then
        blog "building the release binary and examples/loadgen (CARGO_TARGET_DIR=$BENCH_TARGET)"
        (cd "$BENCH_ROOT" && CARGO_TARGET_DIR=$BENCH_TARGET cargo build --release --quiet \
            --bin iotsupport --example loadgen)
    fi
    blog "service binary $SERVICE_BIN, load generator $LOADGEN"
}

bench_start_postgres() {
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
        blog "PostgreSQL not found: install it (apt-get install postgresql) or run scripts/test.sh once"
        exit 1
    fi
    PGPORT=$(free_port)
    mkdir -p "$WORK/pg"
    echo -n 'benchpass' > "$WORK/pg/pw"
    if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$WORK/pg"; chmod 755 "$WORK"; fi
    as_pg "$PGBIN/initdb" -D "$WORK/pg/data" -U app --pwfile="$WORK/pg/pw" \
        --auth-host=scram-sha-256 --auth-local=trust --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
    local extra=""
    # BENCH_PG_STATEMENTS=1: load pg_stat_statements, for bench_pg_statements.
    [ "${BENCH_PG_STATEMENTS:-0}" = 1 ] && extra="-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all -c pg_stat_statements.track_planning=on"
    # BENCH_PG_SLOW_PLANS=MS: log the plan (EXPLAIN ANALYZE) of every statement slower than MS ms
    # to BENCH_PG_LOG (auto_explain); with BENCH_PG_STATEMENTS=1 both libraries are loaded.
    if [ -n "${BENCH_PG_SLOW_PLANS:-}" ]; then
        local libs=auto_explain
        [ "${BENCH_PG_STATEMENTS:-0}" = 1 ] && libs=pg_stat_statements,auto_explain
        extra="$extra -c shared_preload_libraries=$libs -c auto_explain.log_min_duration=$BENCH_PG_SLOW_PLANS -c auto_explain.log_analyze=on -c auto_explain.log_buffers=on -c auto_explain.log_nested_statements=on"
    fi
    local log=${BENCH_PG_LOG:-$WORK/pg/log}
    [ "$log" = "$WORK/pg/log" ] || { touch "$log"; [ "$(id -u)" != 0 ] || chown postgres "$log"; }
    as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$log" -w -t 30 -o \
        "-c listen_addresses=127.0.0.1 -p $PGPORT -k $WORK/pg -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 $extra" \
        start >/dev/null
    DATABASE_URL="postgres://app:benchpass@127.0.0.1:$PGPORT/postgres"
    blog "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGPORT (fsync off)"
}

# bench_pg_statements_reset DB / bench_pg_statements DB N: with BENCH_PG_STATEMENTS=1, forget the
# statement statistics of DB, and print its N (BENCH_PG_STATEMENTS_TOP, if set) statements that took
# the most execution time since (calls, total and mean ms, rows, statement text shortened), then the
# totals: statements the clients sent (nested ones, such as triggers' and foreign-key checks', are
# in the list but not in this count), their execution time, and the transactions committed: where
# PostgreSQL's CPU goes, and how much of it is per statement rather than in one. Both do nothing
# otherwise.
bench_pg_statements_reset() {
    [ "${BENCH_PG_STATEMENTS:-0}" = 1 ] || return 0
    PGPASSWORD=benchpass "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U app -d "$1" -XAtq \
        -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" -c "SELECT pg_stat_statements_reset()" \
        -c "SELECT pg_stat_reset()" >/dev/null
}
bench_pg_statements() {
    [ "${BENCH_PG_STATEMENTS:-0}" = 1 ] || return 0
    echo "-- top ${BENCH_PG_STATEMENTS_TOP:-$2} statements on $1 by total execution time (pg_stat_statements) --"
    PGPASSWORD=benchpass "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U app -d "$1" -XAq -F $'\t' -c \
        "SELECT calls, round(total_exec_time::numeric, 0) AS total_ms,
                round(mean_exec_time::numeric, 3) AS mean_ms, rows,
                round(total_plan_time::numeric, 0) AS plan_ms, plans,
                left(regexp_replace(query, '\\s+', ' ', 'g'), 110) AS query
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
         WHERE d.datname = '$1' ORDER BY total_exec_time DESC LIMIT ${BENCH_PG_STATEMENTS_TOP:-$2}"
    PGPASSWORD=benchpass "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U app -d "$1" -XAtq -c \
        "SELECT 'statements sent ' || sum(calls) || ', executing ' || round(sum(total_exec_time)::numeric)
                || ' ms, planning ' || round(sum(total_plan_time)::numeric) || ' ms; transactions committed ' || (SELECT xact_commit FROM pg_stat_database WHERE datname = '$1')
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
         WHERE d.datname = '$1' AND s.toplevel"
}

# psql_query SQL: prints the result unaligned, tab-separated, without headers.
psql_query() {
    PGPASSWORD=benchpass "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U app -d postgres -XAtq -F $'\t' -c "$1"
}

bench_find_s3s_fs() {
    S3S_FS=$(command -v s3s-fs || true)
    [ -n "$S3S_FS" ] || { [ -x /work/tools/bin/s3s-fs ] && S3S_FS=/work/tools/bin/s3s-fs; } || true
    [ -n "$S3S_FS" ] || { [ -x "$BENCH_CACHE/bin/s3s-fs" ] && S3S_FS=$BENCH_CACHE/bin/s3s-fs; } || true
    if [ -z "$S3S_FS" ]; then
        blog "installing s3s-fs 0.14.1 into $BENCH_CACHE (about 5 minutes)"
        cargo install s3s-fs --version 0.14.1 --features binary --locked --root "$BENCH_CACHE" >&2
        S3S_FS=$BENCH_CACHE/bin/s3s-fs
    fi
}

bench_start_s3() {
    bench_find_s3s_fs
    S3_PORT=$(free_port)
    mkdir -p "$WORK/s3"
    RUST_LOG=warn "$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_ACCESS_KEY" \
        --secret-key "$S3_SECRET_KEY" "$WORK/s3" > "$WORK/s3s-fs.log" 2>&1 &
    BENCH_PIDS+=($!)
    S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
    wait_http "$S3_ENDPOINT/" 30 || { cat "$WORK/s3s-fs.log" >&2; blog "s3s-fs did not start"; exit 1; }
    blog "s3s-fs ($S3S_FS) on 127.0.0.1:$S3_PORT"
}

# bench_start_mosquitto: a Mosquitto of the benchmark's own on a free 127.0.0.1 port; sets MQTT_URL.
bench_start_mosquitto() {
    local mosquitto
    mosquitto=$(command -v mosquitto || ls /usr/sbin/mosquitto 2>/dev/null || true)
    [ -n "$mosquitto" ] || { blog "Mosquitto not found: apt-get install mosquitto (or run scripts/test.sh once)"; exit 1; }
    MQTT_PORT=$(free_port)
    mkdir -p "$WORK/mosquitto"
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n' \
        "$MQTT_PORT" > "$WORK/mosquitto/mosquitto.conf"
    chmod 755 "$WORK" "$WORK/mosquitto"; chmod 644 "$WORK/mosquitto/mosquitto.conf"
    "$mosquitto" -c "$WORK/mosquitto/mosquitto.conf" > "$WORK/mosquitto/log" 2>&1 &
    BENCH_PIDS+=($!)
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null && break; sleep 0.1; done
    MQTT_URL="mqtt://127.0.0.1:$MQTT_PORT"
    blog "Mosquitto $("$mosquitto" -h 2>/dev/null | awk 'NR==1 {print $3}') on 127.0.0.1:$MQTT_PORT"
}

# bench_logging_devices CODE COUNT PREFIX: a model CODE with COUNT devices whose entity ids are
# sensor.PREFIX_1 … sensor.PREFIX_COUNT (in ENTITIES, the first device's id in FIRST_DEVICE); then
# waits until the service's log intake stores a line of the second (or only) device: until its
# subscription is granted, lines go nowhere.
bench_logging_devices() {
    local model i probe
    model=$(api POST /api/device-models "{\"code\": \"$1\", \"name\": \"Benchmark $1\"}" | json_field id)
    ENTITIES=()
    for i in $(seq 1 "$2"); do
        api POST /api/devices "{\"device_model_id\": $model, \"config\": \"{\\\"deviceEntityId\\\": \\\"sensor.$3_$i\\\"}\"}" >/dev/null
        ENTITIES+=("sensor.$3_$i")
    done
    FIRST_DEVICE=$(psql_query "SELECT MIN(id) FROM devices WHERE device_model_id = $model")
    probe=${ENTITIES[1]:-${ENTITIES[0]}}
    for _ in $(seq 1 100); do
        "$LOADGEN" publish-logs --mqtt-url "$MQTT_URL" --entities "$probe" --messages 1 \
            --lines-per-message 1 >/dev/null
        sleep 0.2
        [ "$(psql_query 'SELECT COUNT(*) FROM device_logs')" -gt 0 ] && break
    done
}

# bench_start_mqtt_stack: PostgreSQL, s3s-fs and Mosquitto (MQTT_URL exported for the service),
# the service not yet.
bench_start_mqtt_stack() {
    ulimit -n 65536 2>/dev/null || true
    bench_build
    bench_start_postgres
    bench_start_s3
    bench_start_mosquitto
    export MQTT_URL
}

# bench_wait_ready: waits up to 60 s for $SERVICE_PID to answer /health/readyz at $SERVICE_URL;
# shows its log and exits if it dies or does not become ready.
bench_wait_ready() {
    local deadline=$((SECONDS + 60))
    until curl -sf -o /dev/null --max-time 1 "$SERVICE_URL/health/readyz"; do
        if ! kill -0 "$SERVICE_PID" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            cat "$WORK/service.log" >&2; blog "the service did not become ready"; exit 1
        fi
        sleep 0.1
    done
}

bench_start_service() {
    SERVICE_PORT=$(free_port)
    SERVICE_URL="http://127.0.0.1:$SERVICE_PORT"
    # The load generator downloads with one device's credential, hundreds at once.
    MAX_DOWNLOADS_PER_DEVICE=${MAX_DOWNLOADS_PER_DEVICE:-100000} \
    DATABASE_URL=$DATABASE_URL MIGRATE_ON_START=true ADMIN_TOKEN=$ADMIN_TOKEN \
        HOST=127.0.0.1 PORT=$SERVICE_PORT LOG_FORMAT=text RUST_LOG=${BENCH_RUST_LOG:-warn} \
        S3_ENDPOINT_URL=$S3_ENDPOINT S3_ACCESS_KEY_ID=$S3_ACCESS_KEY \
        S3_SECRET_ACCESS_KEY=$S3_SECRET_KEY S3_BUCKET_NAME=$S3_BUCKET S3_REGION=us-east-1 \
        "$SERVICE_BIN" serve > "$WORK/service.log" 2>&1 &
    SERVICE_PID=$!
    bench_wait_ready
    blog "iotsupport serve (pid $SERVICE_PID) on $SERVICE_URL"
}

# CPU time (utime + stime, in clock ticks) of a process; of PostgreSQL: the postmaster, the
# backends it reaped and the ones still running.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
postgres_ticks() {
    local postmaster total child
    postmaster=$(head -n 1 "$WORK/pg/data/postmaster.pid")
    total=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$postmaster/stat")
    for child in $(ps -o pid= --ppid "$postmaster"); do
        total=$((total + $(cpu_ticks "$child")))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# cpu_mark: remembers the CPU counters and the time; cpu_since: prints
# `service_cpu_s= postgres_cpu_s= s3_cpu_s= wall_s= cores=` since the mark.
cpu_mark() {
    MARK_SERVICE=$(cpu_ticks "$SERVICE_PID")
    MARK_PG=$(postgres_ticks)
    MARK_S3=$(cpu_ticks "${BENCH_PIDS[0]}")
    MARK_T=$(date +%s.%N)
}
cpu_since() {
    local service pg s3 now
    service=$(cpu_ticks "$SERVICE_PID")
    pg=$(postgres_ticks)
    s3=$(cpu_ticks "${BENCH_PIDS[0]}")
    now=$(date +%s.%N)
    awk -v a="$MARK_SERVICE" -v b="$service" -v c="$MARK_PG" -v d="$pg" -v e="$MARK_S3" -v f="$s3" \
        -v t0="$MARK_T" -v t1="$now" -v hz="$CLK_TCK" 'BEGIN {
        s = (b - a) / hz; p = (d - c) / hz; o = (f - e) / hz; w = t1 - t0
        printf "service_cpu_s=%.2f postgres_cpu_s=%.2f s3_cpu_s=%.2f wall_s=%.2f cores=%.2f", s, p, o, w, (s + p + o) / w
    }'
}

bench_start_stack() {
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    bench_build
    bench_start_postgres
    bench_start_s3
    bench_start_service
}

# api METHOD PATH [JSON]: an admin request; prints the body, fails on a non-2xx answer.
api() {
    local args=(-sS --fail-with-body --max-time 60 -X "$1" -H "Authorization: Bearer $ADMIN_TOKEN")
    [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' --data "$3")
    curl "${args[@]}" "$SERVICE_URL$2"
}

# json_field FIELD: reads a JSON object on stdin, prints one top-level field.
json_field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# bench_model_and_device CODE: creates a model and a device; sets MODEL_ID and CREDENTIAL.
bench_model_and_device() {
    MODEL_ID=$(api POST /api/device-models "{\"code\": \"$1\", \"name\": \"Benchmark $1\"}" | json_field id)
    CREDENTIAL=$(bench_device "$MODEL_ID")
}

# bench_device MODEL_ID: creates a device of the model; prints its KEY.SECRET.
bench_device() {
    local device
    device=$(api POST /api/devices "{\"device_model_id\": $1, \"config\": \"{}\"}")
    echo "$(json_field key <<<"$device").$(json_field device_secret <<<"$device")"
}

# kv LINE KEY: the value of KEY=value in a loadgen result line.
kv() { grep -o "\b$2=[^ ]*" <<<"$1" | head -n 1 | cut -d= -f2; }

# ratio A B: A/B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# Peak resident memory of the service so far, in KiB (VmHWM).
service_peak_rss_kib() { awk '/^VmHWM/ {print $2}' "/proc/$SERVICE_PID/status"; }

# metrics_snapshot FILE: the service's /metrics text.
metrics_snapshot() { curl -sS --max-time 10 "$SERVICE_URL/metrics" > "$1"; }

# step_means BEFORE AFTER METRIC STEP...: for a histogram with a `step` label, the mean of each
# step between two snapshots, in ms ("step=1.23 ms" pairs, and the number of observations).
step_means() {
    python3 - "$@" <<'PY'
import re, sys
before, after, metric, steps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
def read(path):
    values = {}
    for line in open(path):
        m = re.match(r'(\w+)\{(.*)\} ([0-9.e+-]+)$', line.strip())
        if not m or not m.group(1).startswith(metric + "_"):
            continue
        step = re.search(r'step="([^"]*)"', m.group(2))
        if step:
            values[(m.group(1)[len(metric) + 1:], step.group(1))] = float(m.group(3))
    return values
b, a = read(before), read(after)
out = []
for step in steps:
    n = a.get(("count", step), 0) - b.get(("count", step), 0)
    s = a.get(("sum", step), 0) - b.get(("sum", step), 0)
    out.append(f"{step} {s / n * 1000:.2f} ms" if n else f"{step} n/a")
print(", ".join(out))
PY
}
