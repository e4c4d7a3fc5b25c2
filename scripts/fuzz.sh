#!/usr/bin/env bash
# Fuzzes the gateway's webhook parser with cargo-fuzz (libFuzzer): `github::intent` over
# any event and body, and `github::signature_valid` over any header and body. The seed
# corpus is GitHub's own payloads (gateway/tests/fixtures/github); what the fuzzer finds
# stays in gateway/fuzz/corpus (not committed), crashes in gateway/fuzz/artifacts.
#
#   scripts/fuzz.sh                 # 30 s per target: a smoke run
#   FUZZ_SANITIZER=none scripts/fuzz.sh 20   # as CI runs it
#   scripts/fuzz.sh 3600            # an hour per target
#   scripts/fuzz.sh 600 webhook_intent
#
# Needs `cargo install cargo-fuzz`. cargo-fuzz passes nightly-only flags (-Zsanitizer); on a
# stable toolchain RUSTC_BOOTSTRAP=1 lets them through, which this script sets. The fuzz
# crate is a workspace of its own, so `cargo test --workspace` never builds it; the same
# properties run in `cargo test` as proptests (gateway/src/github.rs). Exits non-zero if a
# target crashes.
set -euo pipefail
cd "$(dirname "$0")/../gateway"

seconds="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(webhook_intent webhook_signature)
case "$seconds" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac
command -v cargo-fuzz >/dev/null || {
  echo "fuzz: cargo-fuzz is not installed: run cargo install cargo-fuzz --locked" >&2
  exit 2
}
export RUSTC_BOOTSTRAP=1
# AddressSanitizer by default; CI's smoke run sets FUZZ_SANITIZER=none, which builds in a
# fraction of the time (the gateway has no unsafe code of its own).
sanitizer="${FUZZ_SANITIZER:-address}"

# Seeds for webhook_intent: one byte picking the event (push 0, pull_request 1, ping 2),
# then a real payload of that event.
seed_intent() {
  local dir=fuzz/corpus/webhook_intent f name
  mkdir -p "$dir"
  for f in tests/fixtures/github/*.json; do
    name=$(basename "$f")
    case "$name" in
      push__*) printf '\000' ;;
      pull_request__*) printf '\001' ;;
      ping__*) printf '\002' ;;
      *) continue ;;
    esac >"$dir/seed-$name"
    cat "$f" >>"$dir/seed-$name"
  done
}

for target in "${targets[@]}"; do
  [ "$target" = webhook_intent ] && seed_intent
  mkdir -p "fuzz/corpus/$target"
  echo "fuzz: $target for ${seconds}s"
  cargo fuzz run --sanitizer "$sanitizer" "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -print_final_stats=1
done
