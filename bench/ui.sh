#!/usr/bin/env bash
# The web UI's first page on the embedded default (SQLite file, local object directory): GET /
# with 1,000 devices and 10,000 core dumps: the first request of a fresh process, then p50/p99 of
# many requests timed with `loadgen get`, plus the other pages for context. Rerunnable; leaves nothing behind. See bench/README.md ("ui.sh").
#
#   bench/ui.sh                  (BENCH_COUNT=500 requests per page and concurrency,
#                                 BENCH_DEVICES=1000, BENCH_DUMPS_PER_DEVICE=10)
#
# Seeding: five models with three firmware versions each and the devices go through the admin
# API (so their rows are what the service writes); the dumps, crash groups and what devices
# report running are written with SQL while the service is stopped (10,000 uploads and parses
# would time the ingest, not the page). The dump rows have no objects: no page reads them.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

COUNT=${BENCH_COUNT:-500}
DEVICES=${BENCH_DEVICES:-1000}
DUMPS_PER_DEVICE=${BENCH_DUMPS_PER_DEVICE:-10}
MODELS="thermostat door_sensor hall_light weather_station smart_plug"

bench_build
DATA=$WORK/embedded
mkdir -p "$DATA"
SERVICE_PORT=$(free_port)
SERVICE_URL="http://127.0.0.1:$SERVICE_PORT"

# The embedded default, as `iotsupport serve` with no configuration runs it (in $DATA).
start_embedded() {
    (cd "$DATA" && PORT=$SERVICE_PORT LOG_FORMAT=text RUST_LOG=warn exec "$SERVICE_BIN" serve \
        >> "$WORK/service.log" 2>&1) &
    SERVICE_PID=$!
    bench_wait_ready
}

start_embedded
blog "iotsupport serve on the embedded default (pid $SERVICE_PID, $DATA); seeding $DEVICES devices"
for code in $MODELS; do
    model=$(api POST /api/device-models "{\"code\": \"$code\", \"name\": \"$code\"}" | json_field id)
    for version in 1.0.0 1.1.0 1.2.0; do
        "$LOADGEN" make-bundle --code "$code" --version "$version" --image-size 65536 \
            --out "$WORK/$code-$version.zip" 2>/dev/null
        curl -sS --fail-with-body -o /dev/null -X POST -H 'Content-Type: application/zip' \
            --data-binary "@$WORK/$code-$version.zip" "$SERVICE_URL/api/device-models/$model/firmware"
    done
done
python3 - "$SERVICE_URL" "$DEVICES" <<'PY'
import json, sys, urllib.request
url, devices = sys.argv[1], int(sys.argv[2])
def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)
models = [m["id"] for m in call("GET", "/api/device-models")["device_models"]]
for i in range(devices):
    config = json.dumps({"deviceName": f"Device {i}", "deviceEntityId": f"sensor.device_{i}"})
    call("POST", "/api/devices", {"device_model_id": models[i % len(models)], "config": config})
PY
bench_stop_service

blog "writing $((DEVICES * DUMPS_PER_DEVICE)) core dumps, crash groups and presence with SQL"
python3 - "$DATA/data/iotsupport.db" "$DUMPS_PER_DEVICE" <<'PY'
import datetime, hashlib, random, sqlite3, sys
db, per_device = sqlite3.connect(sys.argv[1]), int(sys.argv[2])
random.seed(16)
now = datetime.datetime.now(datetime.timezone.utc)
def ts(t): return t.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
versions = ["1.0.0", "1.1.0", "1.2.0"]
devices = db.execute("SELECT id, device_model_id FROM devices ORDER BY id").fetchall()
# What devices report running: mostly the current build, some behind, a tenth never reported.
for device_id, _ in devices:
    running = random.choices([None, "1.0.0", "1.1.0", "1.2.0"], [10, 5, 15, 70])[0]
    state = random.choices(["OK", "TIMEOUT"], [97, 3])[0]
    completed = ts(now - datetime.timedelta(days=random.randint(0, 20)))
    db.execute("UPDATE devices SET running_firmware_version = ?, last_seen_at = ?, "
               "rotation_state = ?, last_rotation_completed_at = ?, active = ? WHERE id = ?",
               (running, ts(now), state, completed, random.random() > 0.02, device_id))
# Twelve crash groups per model, most open.
groups = {}
for (model_id,) in db.execute("SELECT id FROM device_models").fetchall():
    for g in range(12):
        signature = f"v1 | abort() | crash_{g} > caller > app_main"
        cur = db.execute(
            "INSERT INTO crash_groups (device_model_id, signature_hash, signature, title, status, "
            "first_seen_at, last_seen_at, coredump_count, device_count) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0)",
            (model_id, hashlib.sha256(signature.encode()).hexdigest(), signature,
             f"abort() in crash_{g}", random.choices(["open", "resolved", "ignored"], [6, 3, 1])[0],
             ts(now), ts(now)))
        groups.setdefault(model_id, []).append(cur.lastrowid)
for device_id, model_id in devices:
    for _ in range(per_device):
        uploaded = now - datetime.timedelta(seconds=random.randint(0, 72 * 3600))
        version = random.choice(versions)
        cur = db.execute(
            "INSERT INTO coredumps (device_id, chip, firmware_version, size, parse_status, "
            "parsed_output, uploaded_at, parsed_at, created_at, updated_at) "
            "VALUES (?, 'esp32', ?, 9400, 'PARSED', 'abort() was called', ?, ?, ?, ?)",
            (device_id, version, ts(uploaded), ts(uploaded), ts(uploaded), ts(uploaded)))
        db.execute("INSERT INTO crash_group_members VALUES (?, ?, ?, ?, ?, ?)",
                   (cur.lastrowid, random.choice(groups[model_id]), device_id, version,
                    ts(uploaded), ts(uploaded)))
# Counters from the ledger, as grouping keeps them.
db.execute("""INSERT INTO crash_group_versions
    SELECT crash_group_id, firmware_version, COUNT(*), COUNT(DISTINCT device_id),
           MIN(uploaded_at), MAX(uploaded_at)
    FROM crash_group_members GROUP BY crash_group_id, firmware_version""")
db.execute("""UPDATE crash_groups SET
    coredump_count = (SELECT COUNT(*) FROM crash_group_members m WHERE m.crash_group_id = crash_groups.id),
    device_count = (SELECT COUNT(DISTINCT device_id) FROM crash_group_members m WHERE m.crash_group_id = crash_groups.id),
    first_seen_at = COALESCE((SELECT MIN(uploaded_at) FROM crash_group_members m WHERE m.crash_group_id = crash_groups.id), first_seen_at),
    last_seen_at = COALESCE((SELECT MAX(uploaded_at) FROM crash_group_members m WHERE m.crash_group_id = crash_groups.id), last_seen_at)""")
db.commit()
db.execute("ANALYZE")
print(db.execute("SELECT (SELECT COUNT(*) FROM devices), (SELECT COUNT(*) FROM coredumps), "
                 "(SELECT COUNT(*) FROM crash_groups)").fetchone(), file=sys.stderr)
PY

start_embedded
blog "serving again (pid $SERVICE_PID)"
# The very first request of the fresh process (nothing of the database in SQLite's page cache
# yet; the file itself is in the OS's), then the page's two assets as a browser fetches them once.
first=$(curl -sS -o /dev/null -w '%{time_total}' "$SERVICE_URL/")
assets=$(curl -sS "$SERVICE_URL/" | grep -o '/assets/[^"]*' | sort -u)
asset_bytes=0
for asset in $assets; do
    asset_bytes=$((asset_bytes + $(curl -sS -o /dev/null -w '%{size_download}' "$SERVICE_URL$asset")))
done
blog "first GET / after start: $(awk -v s="$first" 'BEGIN { printf "%.1f", s * 1000 }') ms; assets: $(wc -w <<<"$assets") files, $asset_bytes bytes (cached for a year after that)"
MODEL=$(api GET /api/device-models | python3 -c 'import json,sys; print(json.load(sys.stdin)["device_models"][0]["id"])')
DEVICE=$(api GET "/api/devices?model_id=$MODEL" | python3 -c 'import json,sys; print(json.load(sys.stdin)["devices"][0]["id"])')
GROUP=$(api GET "/api/device-models/$MODEL/crash-groups?status=open" | python3 -c 'import json,sys; print(json.load(sys.stdin)["crash_groups"][0]["id"])')
bytes_of() { curl -sS -o /dev/null -w '%{size_download}' "$SERVICE_URL$1"; }

printf '%-30s %11s %6s %9s %9s %9s\n' page concurrency bytes p50_ms p99_ms req_per_s
for page in / "/models/$MODEL" "/devices/$DEVICE" "/models/$MODEL/crash-groups" "/crash-groups/$GROUP" /rotation; do
    for concurrency in 1 8; do
        # Open mode: the token is sent and ignored, as a bearer token is in front of any page.
        line=$("$LOADGEN" get --url "$SERVICE_URL$page" --token unused --concurrency "$concurrency" \
            --count "$COUNT" --max-seconds 120 2>&1 | grep '^get ')
        [ "$(kv "$line" ok)" = "$COUNT" ] || { echo "$line" >&2; blog "requests failed"; exit 1; }
        printf '%-30s %11s %6s %9s %9s %9s\n' "$page" "$concurrency" "$(bytes_of "$page")" \
            "$(kv "$line" p50_ms)" "$(kv "$line" p99_ms)" "$(kv "$line" req_per_s)"
    done
done
blog "peak RSS of the service: $(service_peak_rss_kib) KiB"
