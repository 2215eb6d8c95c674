#!/usr/bin/env bash
# `make compare`: this service beside Unleash Edge, side by side in one run.
#
#   1. Unleash Edge $UNLEASH_EDGE_VERSION (20.1.0): $UNLEASH_EDGE if set (a path to an
#      `unleash-edge` binary), else .tools/unleash-edge/bin/unleash-edge (.tools/ is ignored by
#      git), installed there when missing or of another version with
#        cargo install unleash-edge --version 20.1.0 --locked --root .tools/unleash-edge
#      That build is cold the first time: 20 minutes or more on 2 cores. Later runs reuse it.
#   2. PostgreSQL (postgres://postgres@127.0.0.1:5432/test, $DATABASE_URL_TEST) must be up
#      (scripts/ensure-services.sh); Redis is a redis-server of the benchmark's own on a spare
#      port, so redis-server must be installed.
#   3. The release `compare` binary (crates/flags-bench/src/bin/compare.rs) generates 5 and
#      1,000 flags for both, starts both servers, measures 1, 10 and 50 clients against each and
#      writes target/bench/compare.md. Extra arguments go to it (`--help` lists them), e.g.
#        scripts/compare.sh --seconds 10 --edge-path /api/frontend/all
set -euo pipefail

cd "$(dirname "$0")/.."

VERSION=${UNLEASH_EDGE_VERSION:-20.1.0}
ROOT=.tools/unleash-edge
EDGE=${UNLEASH_EDGE:-$ROOT/bin/unleash-edge}

log() { printf '==> %s\n' "$*" >&2; }

# The version cargo install recorded next to the binary (unleash-edge has no --version; the run
# also reports the version the running Edge states).
installed_version() {
  local crates
  crates="$(dirname "$1")/../.crates.toml"
  [ -f "$crates" ] && grep -oE '"unleash-edge [0-9]+\.[0-9]+\.[0-9]+' "$crates" | grep -oE '[0-9.]+$' | head -n1 || true
}

if [ -n "${UNLEASH_EDGE:-}" ]; then
  [ -x "$EDGE" ] || { echo "compare: UNLEASH_EDGE=$EDGE is not an executable" >&2; exit 1; }
elif [ ! -x "$EDGE" ] || [ "$(installed_version "$EDGE")" != "$VERSION" ]; then
  log "installing Unleash Edge $VERSION into $ROOT (cargo install; 20+ minutes the first time)"
  nice -n 10 cargo install unleash-edge --version "$VERSION" --locked --root "$ROOT"
fi
found=$(installed_version "$EDGE")
if [ -n "$found" ] && [ "$found" != "$VERSION" ]; then
  echo "compare: warning: $EDGE is Unleash Edge $found, not $VERSION" >&2
fi
log "Unleash Edge ${found:-(version recorded by no cargo install; the report states what it reports)}: $EDGE"

log "services"
DATABASE_URL="${DATABASE_URL_TEST:-postgres://postgres@127.0.0.1:5432/test}" \
  REDIS_URL="${REDIS_URL_TEST:-redis://127.0.0.1:6379}" scripts/ensure-services.sh
command -v redis-server >/dev/null || { echo "compare: redis-server is required" >&2; exit 1; }

log "compare (release build of flags-bench, then the run)"
exec cargo run --release --locked -q -p flags-bench --bin compare -- --edge "$EDGE" "$@"
