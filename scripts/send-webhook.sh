#!/usr/bin/env bash
# Send a signed GitHub push webhook, signed exactly as GitHub signs it:
# X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the exact body bytes, keyed by the secret>.
#
#   scripts/send-webhook.sh GATEWAY_URL SECRET OWNER/REPO BRANCH SHA
#   scripts/send-webhook.sh http://127.0.0.1:8080 change-me demo/hello-service main "$(git rev-parse HEAD)"
#
# GATEWAY_URL is the gateway's base URL (the payload goes to GATEWAY_URL/webhook) or the full
# webhook URL (ending in /webhook or /pullrequest). The body is a real GitHub push payload
# (examples/github-push.payload.json, or $PAYLOAD_TEMPLATE) with ref, after, head_commit and
# repository.full_name replaced. Needs curl, openssl and python3. Prints the gateway's answer;
# exits 0 on a 2xx answer, 1 otherwise.
set -euo pipefail

if [ $# -ne 5 ]; then
  echo "usage: $0 GATEWAY_URL SECRET OWNER/REPO BRANCH SHA" >&2
  exit 2
fi
url=$1 secret=$2 repo=$3 branch=$4 sha=$5
case "$url" in
  */webhook | */pullrequest) ;;
  *) url="${url%/}/webhook" ;;
esac
template=${PAYLOAD_TEMPLATE:-"$(cd "$(dirname "$0")/.." && pwd)/examples/github-push.payload.json"}

body=$(mktemp)
trap 'rm -f "$body"' EXIT

python3 - "$template" "$repo" "$branch" "$sha" >"$body" <<'PY'
import json, sys, time

template, repo, branch, sha = sys.argv[1:]
with open(template) as f:
    p = json.load(f)
owner, name = repo.split("/", 1)
p["ref"] = "refs/heads/" + branch
p["after"] = sha
p["repository"]["full_name"] = repo
p["repository"]["name"] = name
p["repository"]["owner"]["login"] = owner
p["repository"]["owner"]["name"] = owner
p["compare"] = "https://github.com/%s/commit/%s" % (repo, sha)
# A new body for every push, as GitHub's are: the gateway answers a body it has seen as a
# duplicate, whatever its delivery id.
p["repository"]["pushed_at"] = int(time.time())
if p.get("head_commit"):
    p["head_commit"]["id"] = sha
for c in p.get("commits") or []:
    c["id"] = sha
sys.stdout.write(json.dumps(p, indent=2))
PY

signature=$(openssl dgst -sha256 -hmac "$secret" -r <"$body" | cut -d' ' -f1)
delivery=$(python3 -c 'import uuid; print(uuid.uuid4())')

answer=$(mktemp)
trap 'rm -f "$body" "$answer"' EXIT
code=$(curl -sS -o "$answer" -w '%{http_code}' -X POST "$url" \
  -H 'Content-Type: application/json' \
  -H 'X-GitHub-Event: push' \
  -H "X-GitHub-Delivery: $delivery" \
  -H "X-Hub-Signature-256: sha256=$signature" \
  --data-binary @"$body") || { echo "send-webhook: $url unreachable" >&2; exit 1; }
echo "HTTP $code $(cat "$answer")"
case "$code" in
  2??) exit 0 ;;
  *) exit 1 ;;
esac
