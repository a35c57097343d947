#!/usr/bin/env bash
# Runs the whole test suite against a real PostgreSQL, a real S3 server (moto), a real MQTT
# broker (Mosquitto) and, for the web UI's browser test, headless Chromium.
#
# On a fresh Debian machine with Rust it installs what is missing (PostgreSQL, Mosquitto, Chromium
# and chromedriver from Debian's packages, moto's S3 server from PyPI into a private virtualenv),
# starts them on free 127.0.0.1 ports, runs `cargo test` for the whole workspace against them, and
# stops them again.
# Extra arguments are passed to `cargo test` (e.g. `scripts/test.sh storage`).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/iotsupport-test
WORK=$(mktemp -d /tmp/iotsupport-test.XXXXXX)
PIDS=()
PGBIN=""
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ -n "$PGBIN" ] && [ -d "$WORK/pg/data" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "[test.sh] $*" >&2; }
sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# initdb refuses to run as root, so as root the cluster belongs to the postgres user.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() {  # wait_http URL SECONDS
    python3 - "$1" "$2" <<'PY'
import sys, time, urllib.request, urllib.error
url, deadline = sys.argv[1], time.time() + float(sys.argv[2])
while time.time() < deadline:
    try:
        urllib.request.urlopen(url, timeout=1); sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)          # it answers: good enough
    except Exception:
        time.sleep(0.1)
sys.exit(1)
PY
}

wait_tcp() {  # wait_tcp PORT SECONDS (on 127.0.0.1)
    python3 - "$1" "$2" <<'PY'
import socket, sys, time
deadline = time.time() + float(sys.argv[2])
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close(); sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PY
}

apt_updated=""
apt_install() {
    [ -n "$apt_updated" ] || { sudo_if_needed apt-get update -qq; apt_updated=1; }
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- PostgreSQL -------------------------------------------------------------------------------
find_pgbin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
PGBIN=$(find_pgbin)
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
    log "installing PostgreSQL from Debian's packages"
    apt_install postgresql
    PGBIN=$(find_pgbin)
fi
PGPORT=$(free_port)
mkdir -p "$WORK/pg"
echo -n 'testpass' > "$WORK/pg/pw"
if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$WORK/pg"; chmod 755 "$WORK"; fi
as_pg "$PGBIN/initdb" -D "$WORK/pg/data" -U app --pwfile="$WORK/pg/pw" --auth-host=scram-sha-256 \
    --auth-local=trust --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w -t 30 -o \
    "-c listen_addresses=127.0.0.1 -p $PGPORT -k $WORK/pg -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null
export IOTSUPPORT_TEST_DATABASE_URL="postgres://app:testpass@127.0.0.1:$PGPORT/postgres"
log "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGPORT"

# --- moto (S3) --------------------------------------------------------------------------------
MOTO=$(command -v moto_server || true)
if [ -z "$MOTO" ]; then
    if [ ! -x "$CACHE/venv/bin/moto_server" ]; then
        log "installing moto's S3 server from PyPI into $CACHE/venv"
        python3 -m venv "$CACHE/venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$CACHE/venv"; }
        "$CACHE/venv/bin/pip" install -q 'moto[server]==5.2.1'
    fi
    MOTO="$CACHE/venv/bin/moto_server"
fi
S3_PORT=$(free_port)
"$MOTO" -H 127.0.0.1 -p "$S3_PORT" > "$WORK/moto.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$S3_PORT/" 60 || { cat "$WORK/moto.log"; log "moto did not start"; exit 1; }
export IOTSUPPORT_TEST_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
export IOTSUPPORT_TEST_MOTO_SERVER="$MOTO"
log "moto S3 on 127.0.0.1:$S3_PORT"

# --- Garage (optional second S3 implementation) -----------------------------------------------
if command -v garage >/dev/null 2>&1; then
    GDIR="$WORK/garage"; mkdir -p "$GDIR"
    G_S3=$(free_port); G_RPC=$(free_port); G_ADMIN=$(free_port)
    cat > "$GDIR/garage.toml" <<TOML
metadata_dir = "$GDIR/meta"
data_dir = "$GDIR/data"
db_engine = "sqlite"
replication_factor = 1
metadata_fsync = false
data_fsync = false
rpc_bind_addr = "127.0.0.1:$G_RPC"
rpc_public_addr = "127.0.0.1:$G_RPC"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$G_S3"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$G_ADMIN"
admin_token = "$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
TOML
    export GARAGE_CONFIG_FILE="$GDIR/garage.toml"
    garage server > "$GDIR/server.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do garage status >/dev/null 2>&1 && break; sleep 0.1; done
    NODE_ID=$(garage node id -q | cut -d@ -f1)
    garage layout assign -z dc1 -c 1G "$NODE_ID" >/dev/null
    garage layout apply --version 1 >/dev/null
    garage key create test-key > "$GDIR/key.txt"
    garage key allow --create-bucket test-key >/dev/null
    export IOTSUPPORT_TEST_GARAGE_ENDPOINT="http://127.0.0.1:$G_S3"
    export IOTSUPPORT_TEST_GARAGE_KEY_ID=$(awk -F': *' '/Key ID/ {print $2}' "$GDIR/key.txt")
    export IOTSUPPORT_TEST_GARAGE_SECRET=$(awk -F': *' '/Secret key/ {print $2}' "$GDIR/key.txt")
    log "Garage S3 on 127.0.0.1:$G_S3 (storage tests also run against it)"
else
    log "no garage binary on PATH: storage tests run against moto and the local backend only"
fi

# --- Mosquitto (MQTT) -------------------------------------------------------------------------
# Debian's package; its own service is not used. Tests that stop and restart a broker start their
# own with IOTSUPPORT_TEST_MOSQUITTO; mosquitto_sub observes what a third-party client receives.
MOSQUITTO=$(command -v mosquitto || ls /usr/sbin/mosquitto 2>/dev/null || true)
if [ -z "$MOSQUITTO" ] || ! command -v mosquitto_sub >/dev/null 2>&1; then
    log "installing Mosquitto from Debian's packages"
    apt_install mosquitto mosquitto-clients
    MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
fi
MQTT_PORT=$(free_port)
mkdir -p "$WORK/mosquitto"
cat > "$WORK/mosquitto/mosquitto.conf" <<CONF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence false
log_dest stderr
log_timestamp_format %H:%M:%S
CONF
# Run as root, mosquitto drops to its own user after reading the configuration.
chmod 755 "$WORK/mosquitto"; chmod 644 "$WORK/mosquitto/mosquitto.conf"
"$MOSQUITTO" -c "$WORK/mosquitto/mosquitto.conf" > "$WORK/mosquitto/log" 2>&1 &
PIDS+=($!)
wait_tcp "$MQTT_PORT" 20 || { cat "$WORK/mosquitto/log"; log "mosquitto did not start"; exit 1; }
export IOTSUPPORT_TEST_MQTT_URL="mqtt://127.0.0.1:$MQTT_PORT"
export IOTSUPPORT_TEST_MOSQUITTO="$MOSQUITTO"
log "Mosquitto $("$MOSQUITTO" -h 2>/dev/null | awk 'NR==1 {print $3}') on 127.0.0.1:$MQTT_PORT"

# --- Chromium (the web UI's browser test, tests/browser/) -----------------------------------------
# Debian's packages: the browser and its WebDriver server; the test starts chromedriver itself.
CHROMIUM=$(command -v chromium || true)
CHROMEDRIVER=$(command -v chromedriver || ls /usr/bin/chromedriver 2>/dev/null || true)
if [ -z "$CHROMIUM" ] || [ -z "$CHROMEDRIVER" ]; then
    log "installing Chromium and chromedriver from Debian's packages"
    apt_install chromium chromium-driver
    CHROMIUM=$(command -v chromium)
    CHROMEDRIVER=$(command -v chromedriver || echo /usr/bin/chromedriver)
fi
export IOTSUPPORT_TEST_CHROMIUM="$CHROMIUM"
export IOTSUPPORT_TEST_CHROMEDRIVER="$CHROMEDRIVER"
log "Chromium for the browser test: $("$CHROMEDRIVER" --version 2>/dev/null | awk '{print $1, $2}')"

# --- Espressif's NVS partition generator (crates/esp-nvs-image compares its images with it) ----
NVS_GEN_PYTHON="$CACHE/venv/bin/python"
if ! "$NVS_GEN_PYTHON" -c 'import importlib.metadata as m, sys; sys.exit(m.version("esp-idf-nvs-partition-gen") != "0.2.0")' 2>/dev/null; then
    log "installing esp-idf-nvs-partition-gen 0.2.0 from PyPI into $CACHE/venv"
    [ -x "$NVS_GEN_PYTHON" ] || python3 -m venv "$CACHE/venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$CACHE/venv"; }
    "$CACHE/venv/bin/pip" install -q 'esp-idf-nvs-partition-gen==0.2.0'
fi
export IOTSUPPORT_NVS_GEN_PYTHON="$NVS_GEN_PYTHON"

# Tests fail (instead of skipping) when a service they need is missing.
export IOTSUPPORT_TEST_REQUIRE_SERVICES=1
status=0
cargo test --workspace --all-targets "$@" || status=$?
if [ "$status" != 0 ]; then
    # The shared broker's own account of dropped connections, which the tests' output lacks.
    log "Mosquitto's log of connections it closed (last 40):"
    grep -Ei "disconnect|exceeded|timeout|error|closing|protocol" "$WORK/mosquitto/log" | tail -n 40 >&2 || true
fi
# IOTSUPPORT_TEST_KEEP_LOGS=DIR keeps the shared services' logs there, pass or fail.
if [ -n "${IOTSUPPORT_TEST_KEEP_LOGS:-}" ]; then
    mkdir -p "$IOTSUPPORT_TEST_KEEP_LOGS" && cp "$WORK/mosquitto/log" "$IOTSUPPORT_TEST_KEEP_LOGS/mosquitto.log"
fi
exit "$status"
