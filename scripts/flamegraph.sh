#!/usr/bin/env bash
# `make flamegraph`: where this service's CPU goes under the `make compare` load.
#
#   1. builds `compare` with the `profiling` profile (the release code, with symbols and line
#      tables) into target/profiling/, and inferno $INFERNO_VERSION (0.12.8) into .tools/inferno
#      (ignored by git) when missing;
#   2. runs `compare` at 10 clients for 5 and 1,000 flags (Unleash Edge as for `make compare`:
#      $UNLEASH_EDGE or .tools/unleash-edge/bin/unleash-edge) with this service's server under
#      `perf record --call-graph dwarf`;
#   3. writes, per flag count, target/bench/profile/flame-<n>.svg (the flame graph) and
#      top-<n>.txt (the functions with the most samples of their own, `perf report`).
# Extra arguments go to `compare`.
set -euo pipefail

cd "$(dirname "$0")/.."

INFERNO_VERSION=${INFERNO_VERSION:-0.12.8}
INFERNO=.tools/inferno
EDGE=${UNLEASH_EDGE:-.tools/unleash-edge/bin/unleash-edge}
OUT=target/bench/profile

log() { printf '==> %s\n' "$*" >&2; }

command -v perf >/dev/null || { echo "flamegraph: perf is required (Debian: linux-perf)" >&2; exit 1; }
[ -x "$EDGE" ] || { echo "flamegraph: no Unleash Edge at $EDGE (make compare installs it)" >&2; exit 1; }
if [ ! -x "$INFERNO/bin/inferno-flamegraph" ]; then
  log "installing inferno $INFERNO_VERSION into $INFERNO"
  cargo install inferno --version "$INFERNO_VERSION" --locked --root "$INFERNO"
fi

log "services"
DATABASE_URL="${DATABASE_URL_TEST:-postgres://postgres@127.0.0.1:5432/test}" \
  REDIS_URL="${REDIS_URL_TEST:-redis://127.0.0.1:6379}" scripts/ensure-services.sh

log "compare, profiling build"
cargo build --profile profiling --locked -q -p flags-bench --bin compare
rm -rf "$OUT" && mkdir -p "$OUT"
target/profiling/compare --edge "$EDGE" --clients 10 --seconds 10 \
  --profile-ours "$OUT" --out "$OUT/compare.md" "$@"

for data in "$OUT"/perf-*.data; do
  n=$(basename "$data" .data); n=${n#perf-}
  log "$n flags: $OUT/flame-$n.svg, $OUT/top-$n.txt"
  perf script -i "$data" 2>/dev/null | "$INFERNO/bin/inferno-collapse-perf" > "$OUT/folded-$n.txt"
  "$INFERNO/bin/inferno-flamegraph" --title "GET /config/flags, $n flags, 10 clients" \
    < "$OUT/folded-$n.txt" > "$OUT/flame-$n.svg"
  # Flat: the functions with the most samples of their own (awk reads to the end: no SIGPIPE).
  perf report -i "$data" --no-children --sort symbol --stdio -g none 2>/dev/null \
    | awk '!/^#/ && NF && n++ < 40' > "$OUT/top-$n.txt"
done
