#!/usr/bin/env bash
# The README's "Quickstart (5 minutes, one machine)", run non-interactively: the lines between
# the BEGIN and END markers below are the README's commands, literally (a test checks that
# every command line of that README section appears here). Everything happens in a temp dir,
# on free loopback ports; every wait is bounded; background processes are stopped on exit.
#
#   scripts/quickstart.sh              # binaries from $ORCASTRATE_BIN, default target/release,
#                                      # else target/debug
#   ORCASTRATE_BIN=/path/to/bin scripts/quickstart.sh
#   KEEP_WORK=1 scripts/quickstart.sh  # keep the temp dir (logs, releases) for a look
#
# Exits 0 only if the first push deploys version 1 (healthy, serving), the second push
# deploys version 2, and `orcastrate-gateway rollback` brings version 1 back.
set -euo pipefail
cd "$(dirname "$0")/.."

SUB_PID="" AGENT_PID="" GATEWAY_PID="" WORK=""
stop_pid() { # pid, seconds: SIGTERM, then SIGKILL if it has not exited in time
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 0
  kill "$1" 2>/dev/null || true
  for _ in $(seq $(($2 * 10))); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}
cleanup() {
  local status=$?
  set +e
  if [ "$status" -ne 0 ] && [ -n "$WORK" ]; then
    for f in "$WORK"/gateway.log "$WORK"/agent.log "$WORK"/agent/logs/app/*.log "$WORK"/bus.log; do
      [ -f "$f" ] && { echo "----- ${f#"$WORK"/} (last 40 lines)"; tail -n 40 "$f"; }
    done >&2
    echo "quickstart: FAILED (exit $status)" >&2
  fi
  stop_pid "$SUB_PID" 5
  stop_pid "$AGENT_PID" 20 # on_shutdown = "stop": the agent stops the app first
  # If the agent could not stop the app, stop its process group (recorded in state.json),
  # but only if that process still runs in one of our releases.
  if [ -n "$WORK" ] && [ -f "$WORK/agent/state.json" ]; then
    pgid=$(python3 -c 'import json,sys; a=json.load(open(sys.argv[1])).get("app") or {}; print((a.get("proc") or {}).get("pgid") or "")' "$WORK/agent/state.json" 2>/dev/null)
    if [ -n "$pgid" ] && readlink "/proc/$pgid/cwd" 2>/dev/null | grep -q "^$WORK/"; then
      kill -TERM -- "-$pgid" 2>/dev/null; sleep 1; kill -KILL -- "-$pgid" 2>/dev/null
    fi
  fi
  stop_pid "$GATEWAY_PID" 20
  if [ -n "$WORK" ]; then
    if [ -n "${KEEP_WORK:-}" ]; then echo "quickstart: kept $WORK" >&2; else rm -rf "$WORK"; fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${ORCASTRATE_BIN:-}" ]; then
  ORCASTRATE_BIN=$PWD/target/release
  [ -x "$ORCASTRATE_BIN/orcastrate-gateway" ] || ORCASTRATE_BIN=$PWD/target/debug
fi
for b in orcastrate-gateway orcastrate-agent orcastrate-crypt; do
  [ -x "$ORCASTRATE_BIN/$b" ] || { echo "quickstart: $ORCASTRATE_BIN/$b is missing: run cargo build --release (or set ORCASTRATE_BIN)" >&2; exit 2; }
done
START=$(date +%s)

# ---- BEGIN README steps ----
export PATH="$ORCASTRATE_BIN:$PATH"
WORK=$(mktemp -d)
read -r HTTP_PORT MQTT_PORT APP_PORT < <(python3 -c 'import socket; s = [socket.socket() for _ in range(3)]; [x.bind(("127.0.0.1", 0)) for x in s]; print(*[x.getsockname()[1] for x in s])')
wait_for() { for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "timed out: $*" >&2; return 1; }
app_says() { curl -fsS "http://127.0.0.1:$APP_PORT/" | grep -q "$1"; }
healthy_at() { grep '/status/web-1 ' "$WORK/bus.log" | tail -n 1 | grep -q "\"state\":\"healthy\".*\"sha\":\"$1\""; }

printf '[[clients]]\nname = "watcher"\ntoken = "token-of-watcher-0123"\nrole = "watcher"\n' >"$WORK/gateway.toml"
GITHUB_SECRET=change-me TOKENS=token-of-web-1-0123 TRUSTED_NAMES=web-1 \
ORCASTRATE_REPOS=demo/hello-service@main=production ORCASTRATE_ADMIN_TOKEN=admin-token-0123456789 \
ORCASTRATE_DATA_DIR="$WORK/gateway" ORCASTRATE_HTTP_LISTEN="127.0.0.1:$HTTP_PORT" ORCASTRATE_MQTT_LISTEN="127.0.0.1:$MQTT_PORT" \
orcastrate-gateway serve --config "$WORK/gateway.toml" >"$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
wait_for curl -fsS "http://127.0.0.1:$HTTP_PORT/healthz"
export ORCASTRATE_GATEWAY="http://127.0.0.1:$HTTP_PORT" ORCASTRATE_ADMIN_TOKEN=admin-token-0123456789

mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -u watcher -P token-of-watcher-0123 -v -t 'orcastrate/#' >"$WORK/bus.log" &
SUB_PID=$!

git init -q --bare "$WORK/hello-service.git"
git clone -q "$WORK/hello-service.git" "$WORK/hello-service" 2>/dev/null
git -C "$WORK/hello-service" checkout -q -b main
git -C "$WORK/hello-service" config user.name "Quickstart"
git -C "$WORK/hello-service" config user.email quickstart@example.invalid
cp -R examples/hello-service/. "$WORK/hello-service/"
mkdir -p "$WORK/hello-service/config"
echo '{ "greeting": "Hello from the encrypted config!" }' >"$WORK/hello-service/config/decrypted_production.json"
orcastrate-crypt keygen --out "$WORK/production.key"
orcastrate-crypt encrypt --env production --key-file "$WORK/production.key" --config-dir "$WORK/hello-service/config"
git -C "$WORK/hello-service" add .
git -C "$WORK/hello-service" commit -qm "hello-service version 1"
git -C "$WORK/hello-service" push -q origin main
SHA1=$(git -C "$WORK/hello-service" rev-parse HEAD)

cat >"$WORK/agent.toml" <<TOML
name = "web-1"
server = "mqtt://127.0.0.1:$MQTT_PORT"
token = "token-of-web-1-0123"
repo = "demo/hello-service"
env = "production"
git_url = "$WORK/hello-service.git"
root = "$WORK/agent"
gateway_public_keys = ["$(orcastrate-gateway public-key --data-dir "$WORK/gateway")"]
config_key = "$(cat "$WORK/production.key")"
on_shutdown = "stop"

[steps]
install = "npm install --no-audit --no-fund"
start = "PORT=$APP_PORT npm run start"

[health]
http = "http://127.0.0.1:$APP_PORT/healthz"
TOML
orcastrate-agent --config "$WORK/agent.toml" >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!

scripts/send-webhook.sh "http://127.0.0.1:$HTTP_PORT" change-me demo/hello-service main "$SHA1"
wait_for healthy_at "$SHA1"
wait_for app_says "version 1"
curl -sS "http://127.0.0.1:$APP_PORT/"

sed -i 's/const VERSION = 1;/const VERSION = 2;/' "$WORK/hello-service/server.js"
git -C "$WORK/hello-service" commit -qam "hello-service version 2"
git -C "$WORK/hello-service" push -q origin main
SHA2=$(git -C "$WORK/hello-service" rev-parse HEAD)
scripts/send-webhook.sh "http://127.0.0.1:$HTTP_PORT" change-me demo/hello-service main "$SHA2"
wait_for healthy_at "$SHA2"
wait_for app_says "version 2"
curl -sS "http://127.0.0.1:$APP_PORT/"

orcastrate-gateway rollback --repo demo/hello-service --env production
wait_for healthy_at "$SHA1"
wait_for app_says "version 1"
curl -sS "http://127.0.0.1:$APP_PORT/"
orcastrate-gateway history --repo demo/hello-service --env production
grep '/status/web-1 ' "$WORK/bus.log" | tail -n 1
# ---- END README steps ----

echo "quickstart: OK in $(($(date +%s) - START)) s: version 1 deployed, version 2 deployed, rolled back to version 1"
