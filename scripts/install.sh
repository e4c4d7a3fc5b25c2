#!/usr/bin/env bash
# Install or upgrade the Orcastrate deploy agent on a Debian/Ubuntu host, as root:
#
#   scripts/install.sh --deb orcastrate-agent_0.1.0-1_amd64.deb \
#       --server mqtts://gw.example.com:8883 --name web-1 --repo octo-org/web --env production \
#       --gateway-key "$(orcastrate-gateway public-key ...)" --token-file web-1.token
#   orcastrate-gateway agent-config --name web-1 --repo octo-org/web --env production > web-1.toml
#   scripts/install.sh --agent-config web-1.toml --token-file web-1.token      # same, from the gateway
#   scripts/install.sh --deb orcastrate-agent_0.2.0-1_amd64.deb               # upgrade: keeps the config
#
# Without --deb it builds the package from this checkout (cargo deb -p orcastrate-agent
# --profile dist; installs cargo-deb from crates.io if missing). It writes
# /etc/orcastrate/agent.toml (or agent-NAME.toml with --instance NAME, for the
# orcastrate-agent@NAME unit) mode 0600 owned by the service user, and the token to
# /etc/orcastrate/agent.token (agent-NAME.token) mode 0600 owned by root, which systemd hands
# to the agent as a credential. An existing config is kept unless --reconfigure is given; an
# existing token is kept unless --token-file (or CONNECT_TOKEN) gives a new one. Then it
# enables and (re)starts the unit, when systemd runs.
#
# Flags (environment variable in brackets, as the agent reads them):
#   --deb FILE          the package to install [ORCASTRATE_DEB]
#   --instance NAME     one of several agents on this host: orcastrate-agent@NAME
#   --agent-config FILE config printed by `orcastrate-gateway agent-config` ('-': stdin)
#   --server URL        MQTT server, repeatable [ORCASTRATE_SERVER, comma-separated]
#   --name NAME         agent name, its [[clients]] entry [ORCASTRATE_NAME]; default: host name
#   --repo OWNER/NAME   repository to deploy [REPO_NAME]
#   --env ENV           environment to follow [ENVIRONMENT]
#   --gateway-key KEY   gateway public key, repeatable [ORCASTRATE_GATEWAY_KEYS, comma-separated]
#   --token-file FILE   file holding the agent's token [ORCASTRATE_TOKEN_FILE; or CONNECT_TOKEN]
#   --git-url URL       where to fetch the code [ORCASTRATE_GIT_URL]
#   --root DIR          releases directory [ORCASTRATE_ROOT]; default /var/lib/orcastrate-agent[/NAME]
#   --reconfigure       replace an existing config with one from these flags
#   --no-start          install and configure only
set -euo pipefail

die() { echo "install.sh: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

CHECKOUT="$(cd "$(dirname "$0")/.." && pwd)"
DEB="${ORCASTRATE_DEB:-}" INSTANCE="" FROM="" NAME="${ORCASTRATE_NAME:-}" REPO="${REPO_NAME:-}"
ENV_NAME="${ENVIRONMENT:-}" TOKEN_FILE="${ORCASTRATE_TOKEN_FILE:-}" GIT_URL="${ORCASTRATE_GIT_URL:-}"
ROOT_DIR="${ORCASTRATE_ROOT:-}" RECONFIGURE=0 START=1
SERVERS=() KEYS=()
IFS=',' read -r -a SERVERS <<<"${ORCASTRATE_SERVER:-}"
IFS=',' read -r -a KEYS <<<"${ORCASTRATE_GATEWAY_KEYS:-}"
flag_servers=() flag_keys=() key_flags=()
need() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --deb) need "$@"; DEB="$2"; shift 2 ;;
    --instance) need "$@"; INSTANCE="$2"; shift 2 ;;
    --agent-config) need "$@"; FROM="$2"; shift 2 ;;
    --server) need "$@"; key_flags+=("$1"); flag_servers+=("$2"); shift 2 ;;
    --name) need "$@"; key_flags+=("$1"); NAME="$2"; shift 2 ;;
    --repo) need "$@"; key_flags+=("$1"); REPO="$2"; shift 2 ;;
    --env) need "$@"; key_flags+=("$1"); ENV_NAME="$2"; shift 2 ;;
    --gateway-key) need "$@"; key_flags+=("$1"); flag_keys+=("$2"); shift 2 ;;
    --token-file) need "$@"; TOKEN_FILE="$2"; shift 2 ;;
    --git-url) need "$@"; key_flags+=("$1"); GIT_URL="$2"; shift 2 ;;
    --root) need "$@"; key_flags+=("$1"); ROOT_DIR="$2"; shift 2 ;;
    --reconfigure) RECONFIGURE=1; shift ;;
    --no-start) START=0; shift ;;
    -h | --help) usage 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ ${#flag_servers[@]} -gt 0 ] && SERVERS=("${flag_servers[@]}")
[ ${#flag_keys[@]} -gt 0 ] && KEYS=("${flag_keys[@]}")

[ "$(id -u)" -eq 0 ] || die "run me as root (sudo $0 ...): I install a package and write /etc/orcastrate"
command -v dpkg >/dev/null || die "no dpkg: this script is for Debian and Ubuntu hosts; elsewhere use the container image or cargo install --path agent"
[ -z "$INSTANCE" ] || [[ "$INSTANCE" =~ ^[a-z0-9][a-z0-9_-]*$ ]] \
  || die "--instance '$INSTANCE': use lowercase letters, digits, '-' and '_' (e.g. web-production)"

ETC=/etc/orcastrate USER_NAME=orcastrate-agent
if [ -n "$INSTANCE" ]; then
  CONFIG="$ETC/agent-$INSTANCE.toml" TOKEN="$ETC/agent-$INSTANCE.token" UNIT="orcastrate-agent@$INSTANCE.service"
else
  CONFIG="$ETC/agent.toml" TOKEN="$ETC/agent.token" UNIT="orcastrate-agent.service"
fi

# 1. The package: given, or built from this checkout.
if [ -z "$DEB" ]; then
  [ -f "$CHECKOUT/agent/Cargo.toml" ] || die "no --deb given and $CHECKOUT is not an Orcastrate checkout"
  command -v cargo >/dev/null || die "no --deb given and no cargo to build one: pass --deb FILE (see README \"Install\")"
  cargo deb --version >/dev/null 2>&1 || cargo install cargo-deb --locked
  echo "install.sh: building the package (cargo deb -p orcastrate-agent --profile dist)"
  # orcastrate-crypt is its own crate: cargo deb builds only the agent's binary.
  (cd "$CHECKOUT" && cargo build --locked --profile dist -p orcastrate-crypt --bin orcastrate-crypt)
  DEB="$(cd "$CHECKOUT" && cargo deb --locked -p orcastrate-agent --profile dist | tail -n 1)"
fi
[ -f "$DEB" ] || die "--deb $DEB: no such file"
echo "install.sh: installing $DEB"
# --force-confold: keep an edited /etc/orcastrate/agent.example.toml without asking.
# A missing dependency (git) is fetched by apt, which then finishes the install.
if ! dpkg --force-confold -i "$DEB"; then
  apt-get install -f -y -o Dpkg::Options::=--force-confold \
    || die "dpkg -i $DEB failed and apt-get could not fix its dependencies: see the messages above"
fi
echo "install.sh: installed $(orcastrate-agent --version)"

# 2. The token (root-only; the unit's LoadCredential hands it to the agent).
if [ -n "$TOKEN_FILE" ]; then
  [ -r "$TOKEN_FILE" ] || die "--token-file $TOKEN_FILE: cannot read it"
  [ -s "$TOKEN_FILE" ] || die "--token-file $TOKEN_FILE is empty: put the agent's token (its [[clients]] entry) in it"
  install -m 0600 -o root -g root "$TOKEN_FILE" "$TOKEN"
elif [ -n "${CONNECT_TOKEN:-}" ]; then
  (umask 077 && printf '%s\n' "$CONNECT_TOKEN" >"$TOKEN.new" && mv "$TOKEN.new" "$TOKEN")
fi

# 3. The config: kept when present, else written from --agent-config or the flags.
toml_str() { # a TOML basic string; refuses control characters
  [[ "$1" != *[[:cntrl:]]* ]] || die "$2: control characters are not allowed"
  local s="${1//\\/\\\\}"
  printf '"%s"' "${s//\"/\\\"}"
}
toml_list() { # flag name, values...
  local flag="$1" out="" v
  shift
  for v in "$@"; do [ -n "$v" ] && out+="${out:+, }$(toml_str "$v" "$flag")"; done
  printf '[%s]' "$out"
}
if [ -f "$CONFIG" ] && [ "$RECONFIGURE" -eq 0 ]; then
  echo "install.sh: keeping $CONFIG (--reconfigure replaces it)"
else
  new="$(mktemp)"
  trap 'rm -f "$new"' EXIT
  if [ -n "$FROM" ]; then
    [ ${#key_flags[@]} -eq 0 ] \
      || die "--agent-config comes with its own name, server, repo, env, keys and root: drop ${key_flags[*]}, or edit the file"
    if [ "$FROM" = - ]; then cat >"$new"; else cat -- "$FROM" >"$new" || die "--agent-config $FROM: cannot read it"; fi
    grep -q '^repo = ' "$new" || die "--agent-config $FROM has no 'repo = ' line: is it the output of orcastrate-gateway agent-config?"
  else
    missing=()
    [ ${#SERVERS[@]} -gt 0 ] && [ -n "${SERVERS[0]}" ] || missing+=(--server)
    [ -n "$REPO" ] || missing+=(--repo)
    [ -n "$ENV_NAME" ] || missing+=(--env)
    [ ${#KEYS[@]} -gt 0 ] && [ -n "${KEYS[0]}" ] || missing+=(--gateway-key)
    [ ${#missing[@]} -eq 0 ] || die "no config at $CONFIG yet: give ${missing[*]} (or --agent-config FILE from orcastrate-gateway agent-config)"
    {
      echo "# Written by scripts/install.sh; every key: /etc/orcastrate/agent.example.toml."
      echo "# The token is in $TOKEN (systemd credential \`token\`)."
      [ -z "$NAME" ] || echo "name = $(toml_str "$NAME" --name)"
      echo "server = $(toml_list --server "${SERVERS[@]}")"
      echo "repo = $(toml_str "$REPO" --repo)"
      echo "env = $(toml_str "$ENV_NAME" --env)"
      echo "gateway_public_keys = $(toml_list --gateway-key "${KEYS[@]}")"
      [ -z "$GIT_URL" ] || echo "git_url = $(toml_str "$GIT_URL" --git-url)"
      [ -z "$ROOT_DIR" ] || echo "root = $(toml_str "$ROOT_DIR" --root)"
    } >"$new"
  fi
  install -m 0600 -o "$USER_NAME" -g "$USER_NAME" "$new" "$CONFIG"
  echo "install.sh: wrote $CONFIG"
fi
[ -s "$TOKEN" ] || echo "install.sh: warning: no token in $TOKEN yet: the unit will not start; give --token-file FILE" >&2

# The releases directory named in the config must be the service user's.
root_line="$(sed -n 's/^root *= *"\(.*\)" *$/\1/p' "$CONFIG" | tail -n 1)"
if [ -n "$root_line" ] && [ ! -d "$root_line" ]; then
  install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$root_line"
fi

# 4. The service.
if [ "$START" -eq 0 ]; then
  echo "install.sh: not started (--no-start): systemctl enable --now $UNIT"
elif [ ! -d /run/systemd/system ]; then
  echo "install.sh: systemd is not running here: start the agent yourself:" \
    "orcastrate-agent --config $CONFIG --token-file $TOKEN"
else
  systemctl daemon-reload
  systemctl enable "$UNIT"
  systemctl restart "$UNIT"
  echo "install.sh: started $UNIT (journalctl -u $UNIT -f)"
fi
