#!/usr/bin/env bash
# Checks that the Python service's web UI (github.com/pvginkel/IoTSupportUI), unmodified and built
# from its own repository, works against iotsupport: it renders the device-models list, creates a
# model and a device through its forms, shows the rotation badges and dashboard, a device's logs
# (history and live lines published over a real Mosquitto), lists a device's core dumps and shows
# a parsed report (issue #8). Prints a PASS/FAIL line per check and every API call the UI made that failed or
# whose response differs from the UI's generated types. Exit 0 only if all is well.
#
# Not part of the test suite: it needs the npm registry (and GitHub, unless the UI source is
# given) and Chromium. Nothing of the UI is copied into this repository: it is fetched and built
# in a directory outside it; our own driver is scripts/ui-check/.
#
#   scripts/ui-check.sh
#
# Environment:
#   IOTSUPPORT_UI_SRC        the UI source instead of cloning: a checkout, a bare git directory, or
#                            a plain directory (copied; its node_modules/dist are ignored)
#   IOTSUPPORT_UI_REPO       what to clone otherwise (https://github.com/pvginkel/IoTSupportUI)
#   UI_CHECK_UI_DIR          build directory to keep and reuse (default: a temp dir, removed);
#                            an existing build there is reused unless UI_CHECK_REBUILD=1
#   UI_CHECK_OUT             where screenshots go (default /tmp/iotsupport-ui-check/<time>)
#   UI_CHECK_AUTH            oidc (default: the browser signs in through a local OIDC provider,
#                            examples/oidc_issuer.rs, with the authorization-code flow; the script's
#                            own setup calls use an ADMIN_TOKEN), open (no admin auth, loopback
#                            only) or token (ADMIN_TOKEN set, the proxy adds it to admin requests as
#                            an auth proxy would)
#   UI_CHECK_DATABASE_URL    default: a SQLite file in the temp dir
#   IOTSUPPORT_TESTDATA      the ESP test data (default ../shared/testdata/esp)
#   CHROMIUM                 browser binary (default /usr/bin/chromium; Debian: apt-get install chromium)
#   (Mosquitto and mosquitto_pub are needed too: apt-get install mosquitto mosquitto-clients)
#   CARGO_TARGET_DIR         honoured for the iotsupport build
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
UI_REPO=${IOTSUPPORT_UI_REPO:-https://github.com/pvginkel/IoTSupportUI}
TESTDATA=${IOTSUPPORT_TESTDATA:-$ROOT/../shared/testdata/esp}
CASE=esp32_elf_crc32_abort
CHIP=esp32
FW_VERSION=v1.0-56-g30082bf # the version in that case's ELF app descriptor
MODEL_CODE=ui_check_esp32
PNPM=(npx --yes pnpm@9.15.9)
OUT=${UI_CHECK_OUT:-/tmp/iotsupport-ui-check/$(date +%Y%m%d-%H%M%S)}
AUTH=${UI_CHECK_AUTH:-oidc}
WORK=$(mktemp -d /tmp/iotsupport-ui-check.XXXXXX)
UI_DIR=${UI_CHECK_UI_DIR:-$WORK/ui}
SERVICE_PID=""
MOSQUITTO_PID=""
ISSUER_PID=""

log() { echo "[ui-check] $*" >&2; }
die() { log "error: $*"; exit 2; }

cleanup() {
    if [ -n "$SERVICE_PID" ]; then
        kill -TERM "$SERVICE_PID" 2>/dev/null || true
        wait "$SERVICE_PID" 2>/dev/null || true
    fi
    [ -n "$MOSQUITTO_PID" ] && kill "$MOSQUITTO_PID" 2>/dev/null || true
    [ -n "$ISSUER_PID" ] && kill "$ISSUER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

inside_repo() { case "$(realpath -m "$1")/" in "$ROOT"/*) return 0 ;; *) return 1 ;; esac; }

[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || die "no Chromium at ${CHROMIUM:-/usr/bin/chromium} (Debian: apt-get install chromium)"
[ -f "$TESTDATA/coredump/$CASE/coredump.bin" ] || die "ESP test data not found at $TESTDATA (set IOTSUPPORT_TESTDATA)"
inside_repo "$UI_DIR" && die "UI_CHECK_UI_DIR must be outside the repository"
inside_repo "$OUT" && die "UI_CHECK_OUT must be outside the repository"

# --- the UI: fetch, then build with its own toolchain (pnpm, as its package.json declares) -------

fetch_ui() {
    local src=${IOTSUPPORT_UI_SRC:-}
    # Only ever delete a directory this script made (it carries a marker file).
    if [ -d "$UI_DIR" ] && [ -n "$(ls -A "$UI_DIR")" ] && [ ! -f "$UI_DIR/.iotsupport-ui-check" ]; then
        die "$UI_DIR is not empty and was not made by this script; choose another UI_CHECK_UI_DIR"
    fi
    rm -rf "$UI_DIR" && mkdir -p "$UI_DIR" && touch "$UI_DIR/.iotsupport-ui-check"
    if [ -z "$src" ]; then
        log "cloning $UI_REPO"
        git clone --quiet --depth 1 "$UI_REPO" "$WORK/ui-clone"
        src=$WORK/ui-clone
    fi
    if git --git-dir="$src" rev-parse --verify -q HEAD >/dev/null 2>&1; then
        log "UI source: bare git directory $src"
        git --git-dir="$src" archive HEAD | tar -x -C "$UI_DIR"
        git --git-dir="$src" rev-parse HEAD >"$UI_DIR/git-rev"
    elif git -C "$src" rev-parse --verify -q HEAD >/dev/null 2>&1; then
        log "UI source: git checkout $src"
        git -C "$src" archive HEAD | tar -x -C "$UI_DIR"
        git -C "$src" rev-parse HEAD >"$UI_DIR/git-rev"
    else
        log "UI source: directory $src"
        tar -C "$src" --exclude=./node_modules --exclude=./dist --exclude=./.git -c . | tar -x -C "$UI_DIR"
    fi
    log "UI commit: $(cat "$UI_DIR/git-rev" 2>/dev/null || echo unknown)"
}

build_ui() {
    # ssegateway is a devDependency fetched from a GitHub tarball, used only by the UI's own
    # Playwright suite; dropping it lets the build run where only the npm registry is reachable.
    # The application's code is untouched.
    (cd "$UI_DIR" && npm pkg delete devDependencies.ssegateway)
    log "installing the UI's dependencies (pnpm)"
    (cd "$UI_DIR" && "${PNPM[@]}" install --no-frozen-lockfile --reporter=silent) >"$WORK/ui-install.log" 2>&1 ||
        { tail -30 "$WORK/ui-install.log" >&2; die "UI dependency install failed"; }
    log "building the UI (pnpm run build: API client generation, lint, type check, vite build)"
    (cd "$UI_DIR" && "${PNPM[@]}" run build) >"$WORK/ui-build.log" 2>&1 ||
        { tail -40 "$WORK/ui-build.log" >&2; die "UI build failed"; }
}

if [ -n "${UI_CHECK_UI_DIR:-}" ] && [ -f "$UI_DIR/dist/index.html" ] && [ "${UI_CHECK_REBUILD:-0}" != 1 ]; then
    log "reusing the UI build in $UI_DIR (UI_CHECK_REBUILD=1 rebuilds)"
else
    fetch_ui
    build_ui
fi

# --- Mosquitto (the logs tab's lines are published to it; Debian's package, own config) --------

MOSQUITTO=$(command -v mosquitto || ls /usr/sbin/mosquitto 2>/dev/null || true)
MOSQUITTO_PUB=$(command -v mosquitto_pub || true)
[ -n "$MOSQUITTO" ] && [ -n "$MOSQUITTO_PUB" ] \
    || die "no Mosquitto (Debian: apt-get install mosquitto mosquitto-clients)"
MQTT_PORT=$(free_port)
mkdir -p "$WORK/mosquitto"
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$MQTT_PORT" \
    > "$WORK/mosquitto/mosquitto.conf"
chmod 755 "$WORK/mosquitto"; chmod 644 "$WORK/mosquitto/mosquitto.conf"
"$MOSQUITTO" -c "$WORK/mosquitto/mosquitto.conf" > "$WORK/mosquitto/log" 2>&1 &
MOSQUITTO_PID=$!
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null && break
    sleep 0.1
done

# --- iotsupport, a firmware bundle around the test case's real ELF, and the service ------------

log "building iotsupport and examples/loadgen (CARGO_TARGET_DIR=$TARGET)"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --quiet --bin iotsupport --example loadgen \
    --example oidc_issuer)

"$TARGET/debug/examples/loadgen" make-bundle --code "$MODEL_CODE" --version "$FW_VERSION" \
    --elf "$TESTDATA/coredump/$CASE/esp32.elf" --image-size 65536 --out "$WORK/bundle.zip" 2>/dev/null

PORT=$(free_port)
ADMIN_TOKEN=""
OIDC_ENV=()
PROXY_TOKEN=""
case "$AUTH" in
    open) ;;
    token)
        ADMIN_TOKEN="ui-check-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
        PROXY_TOKEN=$ADMIN_TOKEN ;;
    oidc)
        ADMIN_TOKEN="ui-check-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
        "$TARGET/debug/examples/oidc_issuer" --client-id iotsupport-ui > "$WORK/issuer.url" 2>"$WORK/issuer.log" &
        ISSUER_PID=$!
        for _ in $(seq 1 100); do [ -s "$WORK/issuer.url" ] && break; sleep 0.1; done
        [ -s "$WORK/issuer.url" ] || { cat "$WORK/issuer.log" >&2; die "the OIDC provider did not start"; }
        ISSUER=$(head -n 1 "$WORK/issuer.url")
        log "OIDC provider (examples/oidc_issuer.rs) at $ISSUER"
        OIDC_ENV=(OIDC_ENABLED=true "OIDC_ISSUER_URL=$ISSUER" OIDC_AUDIENCE=iotsupport
            OIDC_CLIENT_ID=iotsupport-ui) ;;
    *) die "UI_CHECK_AUTH must be oidc, open or token" ;;
esac
log "starting iotsupport on 127.0.0.1:$PORT (auth: $AUTH)"
mkdir -p "$WORK/data"
env -u ADMIN_TOKEN -u OIDC_ENABLED -u S3_ENDPOINT_URL "${OIDC_ENV[@]}" \
    DATABASE_URL="${UI_CHECK_DATABASE_URL:-sqlite://$WORK/data/iotsupport.db}" \
    MIGRATE_ON_START=true STORAGE_DIR="$WORK/data/objects" HOST=127.0.0.1 PORT="$PORT" \
    DEVICE_BASEURL="http://127.0.0.1:$PORT" MQTT_URL="mqtt://127.0.0.1:$MQTT_PORT" \
    WIFI_SSID=ui-check WIFI_PASSWORD=ui-check-password \
    LOG_FORMAT=text RUST_LOG="${RUST_LOG:-warn}" ${ADMIN_TOKEN:+ADMIN_TOKEN=$ADMIN_TOKEN} \
    "$TARGET/debug/iotsupport" serve >"$WORK/iotsupport.log" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health/readyz" || true)" = 200 ] && break
    kill -0 "$SERVICE_PID" 2>/dev/null || { cat "$WORK/iotsupport.log" >&2; die "iotsupport exited"; }
    sleep 0.1
done

# --- the driver ---------------------------------------------------------------------------------

(cd "$ROOT/scripts/ui-check" && npm ci --silent --no-audit --no-fund)
mkdir -p "$OUT"
log "screenshots: $OUT"
set +e
UI_SRC="$UI_DIR" IOTSUPPORT_URL="http://127.0.0.1:$PORT" UI_CHECK_OUT="$OUT" \
    UI_CHECK_BUNDLE="$WORK/bundle.zip" UI_CHECK_MODEL_CODE="$MODEL_CODE" \
    UI_CHECK_FIRMWARE_VERSION="$FW_VERSION" UI_CHECK_DUMP="$TESTDATA/coredump/$CASE/coredump.bin" \
    UI_CHECK_CHIP="$CHIP" UI_CHECK_ADMIN_TOKEN="$ADMIN_TOKEN" UI_CHECK_PROXY_TOKEN="$PROXY_TOKEN" \
    UI_CHECK_AUTH="$AUTH" \
    UI_CHECK_MQTT_PORT="$MQTT_PORT" MOSQUITTO_PUB="$MOSQUITTO_PUB" \
    node "$ROOT/scripts/ui-check/check.mjs"
status=$?
set -e
cp "$WORK/iotsupport.log" "$OUT/iotsupport.log" 2>/dev/null || true
exit $status
