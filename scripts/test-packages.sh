#!/usr/bin/env bash
# The install path, on this Debian machine, as root: builds both .deb files (cargo deb,
# profile dist unless told otherwise), runs lintian on them, installs them with dpkg, checks
# what a host gets, removes and reinstalls them (a changed config survives), runs
# scripts/install.sh twice (fresh install, then upgrade to a newer package revision), and
# purges them at the end.
#
#   scripts/test-packages.sh          # needs root, dpkg, cargo-deb, lintian, systemd-analyze
#   scripts/test-packages.sh --profile ci-package   # CI: same packages, a build in minutes
#   SKIP_BUILD=1 scripts/test-packages.sh   # reuse target/debian/*.deb
#
# It changes the real system (/usr/bin, /etc/orcastrate, the users orcastrate and
# orcastrate-agent), so it refuses to run where either package is already installed.
# Exits 0 only if every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "test-packages: FAIL: $*" >&2; exit 1; }
ok() { echo "test-packages: ok: $*"; }
# The cargo profile the binaries are built with: dist is what users get (fat LTO, so 10-25
# minutes on 2 cores); CI's ci-package (Cargo.toml) tests the same packaging in a fraction.
PROFILE=dist
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) [ $# -ge 2 ] || fail "--profile needs a cargo profile name (dist, ci-package)"; PROFILE="$2"; shift 2 ;;
    *) fail "unknown argument '$1' (usage: scripts/test-packages.sh [--profile NAME])" ;;
  esac
done
[ "$(id -u)" -eq 0 ] || fail "run as root (it installs packages)"
for p in orcastrate-agent orcastrate-gateway; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'installed\|config-files'; then
    fail "$p is already on this machine: purge it first (dpkg --purge $p)"
  fi
done
WORK="$(mktemp -d)" GW_PID=""
cleanup() {
  local status=$?
  set +e
  [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null
  dpkg --purge orcastrate-agent orcastrate-gateway >/dev/null 2>&1
  rm -rf "$WORK" /var/lib/orcastrate-agent /srv/orcastrate-test
  [ "$status" -eq 0 ] && echo "test-packages: all checks passed"
  exit "$status"
}
trap cleanup EXIT

VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
DEBS=target/debian
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo deb --version >/dev/null 2>&1 || cargo install cargo-deb --locked
  start=$(date +%s)
  # orcastrate-crypt ships in the agent's package but is its own crate: cargo deb builds only
  # the package's own binaries.
  cargo build --profile "$PROFILE" -p orcastrate-crypt --bin orcastrate-crypt
  cargo deb -p orcastrate-agent --profile "$PROFILE"
  cargo deb -p orcastrate-gateway --profile "$PROFILE"
  echo "test-packages: built with profile $PROFILE in $(($(date +%s) - start)) s"
fi
# Copies: cargo deb removes a package's older .deb files from target/debian.
cp "$(ls -t "$DEBS"/orcastrate-agent_"$VERSION"-1_*.deb | head -n 1)" "$WORK/agent.deb"
cp "$(ls -t "$DEBS"/orcastrate-gateway_"$VERSION"-1_*.deb | head -n 1)" "$WORK/gateway.deb"
AGENT_DEB="$WORK/agent.deb" GATEWAY_DEB="$WORK/gateway.deb"
# A newer revision of the same build, for the upgrade.
cargo deb -p orcastrate-agent --profile "$PROFILE" --no-build --deb-revision 2 --output "$WORK/upgrade.deb" >/dev/null
ls -l "$AGENT_DEB" "$GATEWAY_DEB" "$WORK/upgrade.deb" target/"$PROFILE"/orcastrate-{agent,crypt,gateway}

# lintian: no errors (the kept warnings are listed in README "Install").
if command -v lintian >/dev/null; then
  lintian --fail-on error "$AGENT_DEB" "$GATEWAY_DEB" || fail "lintian reports errors"
  ok "lintian: no errors"
else
  [ -n "${ALLOW_NO_LINTIAN:-}" ] || fail "no lintian (apt-get install lintian)"
fi

# mode owner file
expect_file() {
  [ -f "$3" ] || fail "$3 is missing"
  [ "$(stat -c '%a %U' "$3")" = "$1 $2" ] || fail "$3 is $(stat -c '%a %U' "$3"), want $1 $2"
}

dpkg -i "$AGENT_DEB" "$GATEWAY_DEB"
for bin in orcastrate-agent orcastrate-gateway; do
  out="$(/usr/bin/$bin --version)"
  [ "$out" = "$bin $VERSION" ] || fail "/usr/bin/$bin --version says '$out', want '$bin $VERSION'"
done
/usr/bin/orcastrate-crypt --help >/dev/null || fail "/usr/bin/orcastrate-crypt does not run"
ok "binaries run from /usr/bin ($VERSION)"
getent passwd orcastrate-agent >/dev/null || fail "no user orcastrate-agent"
getent passwd orcastrate >/dev/null || fail "no user orcastrate"
expect_file 600 orcastrate-agent /etc/orcastrate/agent.example.toml
expect_file 600 orcastrate /etc/orcastrate/gateway.example.toml
dpkg-query -W -f='${Conffiles}\n' orcastrate-agent | grep -q /etc/orcastrate/agent.example.toml \
  || fail "agent.example.toml is not a conffile"
dpkg-query -W -f='${Conffiles}\n' orcastrate-gateway | grep -q /etc/orcastrate/gateway.example.toml \
  || fail "gateway.example.toml is not a conffile"
ok "example configs are 0600 conffiles of the service users"
for u in orcastrate-agent.service orcastrate-gateway.service; do
  [ -L /etc/systemd/system/multi-user.target.wants/$u ] || fail "$u is not enabled"
done
[ -f /lib/systemd/system/orcastrate-agent@.service ] || [ -f /usr/lib/systemd/system/orcastrate-agent@.service ] \
  || fail "no orcastrate-agent@.service template"
if [ -d /run/systemd/system ]; then
  ! systemctl is-active --quiet orcastrate-agent || fail "the agent started before it was configured"
  ! systemctl is-active --quiet orcastrate-gateway || fail "the gateway started before it was configured"
fi
systemd-analyze verify orcastrate-agent.service orcastrate-agent@web-staging.service orcastrate-gateway.service \
  || fail "systemd-analyze verify rejects the installed units"
ok "units installed, enabled, not started, accepted by systemd-analyze verify"

# A changed config survives dpkg -r and a reinstall.
echo "# changed by the operator" >>/etc/orcastrate/agent.example.toml
dpkg -r orcastrate-agent
[ ! -e /usr/bin/orcastrate-agent ] || fail "dpkg -r left /usr/bin/orcastrate-agent"
grep -q "changed by the operator" /etc/orcastrate/agent.example.toml || fail "dpkg -r dropped the changed config"
dpkg --force-confold -i "$AGENT_DEB"
grep -q "changed by the operator" /etc/orcastrate/agent.example.toml || fail "reinstalling replaced the changed config"
expect_file 600 orcastrate-agent /etc/orcastrate/agent.example.toml
ok "dpkg -r, then dpkg -i keeps a changed config"

# A gateway to check the written config against: its key, and an MQTT port to reach.
MQTT_PORT=$((20000 + RANDOM % 10000)) HTTP_PORT=$((30000 + RANDOM % 10000))
printf 'token-of-web-1-0123\n' >"$WORK/web-1.token"
GITHUB_SECRET=test-secret-0123 TOKENS=token-of-web-1-0123 TRUSTED_NAMES=web-1 \
  ORCASTRATE_REPOS=octo-org/web@main=production ORCASTRATE_DATA_DIR="$WORK/gw" \
  ORCASTRATE_HTTP_LISTEN="127.0.0.1:$HTTP_PORT" ORCASTRATE_MQTT_LISTEN="127.0.0.1:$MQTT_PORT" \
  orcastrate-gateway serve >"$WORK/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 300); do
  curl -fsS "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null 2>&1 && break
  kill -0 "$GW_PID" 2>/dev/null || { cat "$WORK/gateway.log" >&2; fail "the installed gateway exited"; }
  sleep 0.1
done
KEY="$(orcastrate-gateway public-key --data-dir "$WORK/gw")" || fail "no gateway public key"

# scripts/install.sh twice: a fresh install, then an upgrade that keeps the config.
dpkg --purge orcastrate-agent >/dev/null
[ ! -e /etc/orcastrate/agent.example.toml ] || fail "purge left agent.example.toml"
scripts/install.sh --deb "$AGENT_DEB" --server "mqtt://127.0.0.1:$MQTT_PORT" --name web-1 \
  --repo octo-org/web --env production --gateway-key "$KEY" --token-file "$WORK/web-1.token" \
  --root /srv/orcastrate-test/web
expect_file 600 orcastrate-agent /etc/orcastrate/agent.toml
expect_file 600 root /etc/orcastrate/agent.token
[ "$(stat -c %U /srv/orcastrate-test/web)" = orcastrate-agent ] || fail "the root is not the service user's"
first="$(sha256sum </etc/orcastrate/agent.toml)"
scripts/install.sh --deb "$WORK/upgrade.deb" --server mqtt://elsewhere:1883
[ "$(sha256sum </etc/orcastrate/agent.toml)" = "$first" ] || fail "the upgrade changed agent.toml"
[ "$(dpkg-query -W -f='${Version}' orcastrate-agent)" = "$VERSION-2" ] || fail "the upgrade did not install $VERSION-2"
[ "$(orcastrate-agent --version)" = "orcastrate-agent $VERSION" ] || fail "wrong agent version after the upgrade"
configs="$(ls /etc/orcastrate/ | grep '^agent' | tr '\n' ' ')"
[ "$configs" = "agent.example.toml agent.token agent.toml " ] || fail "agent files in /etc/orcastrate after two runs: $configs"
# The config works: the agent (as its user, with the token as systemd would hand it) logs in
# to the gateway and follows the desired state once (none published yet: up to date).
install -d -m 0700 -o orcastrate-agent "$WORK/creds"
install -m 0600 -o orcastrate-agent /etc/orcastrate/agent.token "$WORK/creds/token"
chmod 0755 "$WORK"
code=0
(cd /tmp && CREDENTIALS_DIRECTORY="$WORK/creds" timeout 60 runuser -u orcastrate-agent -- \
  orcastrate-agent --config /etc/orcastrate/agent.toml --once --connect-timeout-s 20 \
  >"$WORK/agent.log" 2>&1) || code=$?
[ "$code" -eq 0 ] || { cat "$WORK/agent.log" >&2; fail "the agent with the installed config exited with $code"; }
ok "install.sh twice: one config (unchanged by the upgrade), version $VERSION-2, the agent runs with it"

# A second agent on the same host: the template unit.
scripts/install.sh --instance web-staging --deb "$WORK/upgrade.deb" --server "mqtt://127.0.0.1:$MQTT_PORT" \
  --name web-1-staging --repo octo-org/web --env staging --gateway-key "$KEY" --token-file "$WORK/web-1.token"
expect_file 600 orcastrate-agent /etc/orcastrate/agent-web-staging.toml
expect_file 600 root /etc/orcastrate/agent-web-staging.token
systemd-analyze verify orcastrate-agent@web-staging.service || fail "systemd-analyze verify rejects the instance"
ok "install.sh --instance writes agent-web-staging.toml for orcastrate-agent@web-staging"

# Purge removes the configs (and the packages' files).
dpkg --purge orcastrate-agent orcastrate-gateway
for f in /etc/orcastrate /usr/bin/orcastrate-agent /usr/bin/orcastrate-crypt /usr/bin/orcastrate-gateway; do
  [ ! -e "$f" ] || fail "purge left $f"
done
ok "purge removes binaries and configs"
