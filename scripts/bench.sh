#!/usr/bin/env bash
# The benchmarks of the README in one command: builds the release binaries, runs each
# benchmark (their own figures are printed as they go), then prints one table of the
# headline figures beside their targets, from the `SUMMARY|` rows the benchmarks print.
#
#   scripts/bench.sh            # about 3 minutes on 2 cores; needs /usr/bin/webhook
#                               # (apt-get install webhook) for the peer comparison
#
# Benchmarks never gate CI; a MISSED row is reported, not an error.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}/release"

cargo build --release -q -p orcastrate-gateway -p orcastrate-agent --bins --examples
export ORCASTRATE_BENCH_SUMMARY=1
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

run() {
  local name="$1"
  shift
  echo "=== $name: $*"
  "$@" 2>&1 | tee "$out/$name.txt" || echo "SUMMARY| $name | failed to run (see above) | | MISSED |" >>"$out/$name.txt"
  echo
}

gateway="$target/orcastrate-gateway"
if [ -x /usr/bin/webhook ]; then
  run peer "$target/examples/bench_peer" --gateway-bin "$gateway" --requests 20000 --connections 32
else
  echo "=== peer: skipped (apt-get install webhook for adnanh/webhook)"
  run webhooks "$target/examples/bench_webhooks" --gateway-bin "$gateway" --requests 20000 --connections 32
fi
run fanout "$target/examples/bench_fanout" --gateway-bin "$gateway" --agents 2000 --deploys 1000
run rollback "$target/examples/bench_rollback"
run proxy "$target/examples/bench_proxy"
run revert "$target/examples/bench_revert" --gateway-bin "$gateway" --agents 200
run fleetview "$target/examples/bench_fleet_view" --gateway-bin "$gateway" --agents 2000 --runs 10

echo "Summary ($(nproc) cores, $(date -u +%Y-%m-%d))"
echo
echo "| what | measured | target | |"
echo "| --- | --- | --- | --- |"
for name in peer webhooks fanout rollback proxy revert fleetview; do
  [ -f "$out/$name.txt" ] && grep -h '^SUMMARY|' "$out/$name.txt" | sed 's/^SUMMARY//'
done
