#!/usr/bin/env bash
# The write path's cost before and after commit b2d6df9 (one transaction with the audit row and
# the pending-invalidation record, then the invalidation with its own retry, then the record's
# deletion), measured in one run: `make writecost`.
#
#   1. builds `flagctl` of the version before (WRITECOST_BEFORE_COMMIT, default 5a51ee7) in a git
#      worktree under target/writecost-before/ with its own CARGO_TARGET_DIR (several minutes the
#      first time; nothing of it is committed: target/ is ignored), and the current `flagctl` and
#      `writecost`;
#   2. gives each version a fresh PostgreSQL schema (writecost_before, writecost_after in the
#      database `test`), migrated by that version's own `flagctl migrate`, its own Redis database
#      (14 and 15 on the shared server, flushed: the tests use 0 and 2-13) and its own
#      FLAGS_DATA_DIR (signing keys; the admin token is minted by that version's own
#      `flagctl token`);
#   3. starts both `flagctl serve` on spare ports, waits for /health, runs `writecost`
#      (N=2000 of each kind after 200 warm-up requests, interleaved between the servers) and
#      writes target/bench/writecost.md;
#   4. stops both servers on exit, whatever happens.
#
# Environment: WRITECOST_BEFORE_COMMIT (5a51ee7), WRITECOST_REQUESTS (2000), WRITECOST_WARMUP
# (200), WRITECOST_PG_URL (postgres://postgres@127.0.0.1:5432/test), WRITECOST_REDIS_URL
# (redis://127.0.0.1:6379), WRITECOST_RUST_LOG (warn: as scripts/load-artillery.sh, so that
# log volume is not what is compared), WRITECOST_PG_OPTIONS (more PostgreSQL session settings for
# both servers, e.g. '-c synchronous_commit=off' to see what the commits' flushes cost),
# WRITECOST_OUT (target/bench/writecost.md).
set -euo pipefail

cd "$(dirname "$0")/../../.."
ROOT=$(pwd)

BEFORE_COMMIT=${WRITECOST_BEFORE_COMMIT:-5a51ee7}
REQUESTS=${WRITECOST_REQUESTS:-2000}
WARMUP=${WRITECOST_WARMUP:-200}
PG_URL=${WRITECOST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
REDIS_HOST_URL=${WRITECOST_REDIS_URL:-redis://127.0.0.1:6379}
SERVER_LOG=${WRITECOST_RUST_LOG:-warn}

BEFORE_DIR=$ROOT/target/writecost-before
WORKTREE=$BEFORE_DIR/worktree
BEFORE_TARGET=$BEFORE_DIR/target
AFTER_DIR=$ROOT/target/writecost-after
OUT=${WRITECOST_OUT:-$ROOT/target/bench/writecost.md}
PG_OPTIONS=${WRITECOST_PG_OPTIONS:-}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'writecost: %s\n' "$*" >&2; exit 1; }

for tool in git cargo psql redis-cli curl python3; do
  command -v "$tool" >/dev/null || die "$tool is required"
done

log "services"
DATABASE_URL="$PG_URL" REDIS_URL="$REDIS_HOST_URL" scripts/ensure-services.sh

# --- the two builds -------------------------------------------------------------------------------

before_sha=$(git rev-parse --verify "$BEFORE_COMMIT^{commit}")
before_short=$(git rev-parse --short "$before_sha")
after_short=$(git rev-parse --short HEAD)
# The current build is the working tree: say so when the service's code differs from HEAD.
if [ -n "$(git status --porcelain -- crates/flags-core crates/flags-api/src crates/flags-local/src Cargo.lock)" ]; then
  after_label="\`$after_short\` + uncommitted changes (after)"
else
  after_label="\`$after_short\` (after)"
fi
before_label="\`$before_short\` (before)"

git worktree prune
if [ -e "$WORKTREE/.git" ]; then
  git -C "$WORKTREE" checkout --quiet --detach "$before_sha"
else
  rm -rf "$WORKTREE"
  mkdir -p "$BEFORE_DIR"
  git worktree add --quiet --detach "$WORKTREE" "$before_sha"
fi
log "release build of flagctl at $before_short in $WORKTREE (CARGO_TARGET_DIR=$BEFORE_TARGET)"
(cd "$WORKTREE" && CARGO_TARGET_DIR="$BEFORE_TARGET" cargo build --release --locked -p flags-local --bin flagctl)

log "release build of the current flagctl and writecost"
# With flags-bench selected too, the features (so the artifacts) match the other benchmarks' build.
cargo build --release --locked -p flags-local -p flags-bench --bin flagctl --bin writecost

# Private copies: a concurrent cargo build may replace target/release/* during the run.
rm -rf "$BEFORE_DIR/data" "$BEFORE_DIR/bin" "$AFTER_DIR"
mkdir -p "$BEFORE_DIR/data" "$BEFORE_DIR/bin" "$AFTER_DIR/data" "$AFTER_DIR/bin"
cp "$BEFORE_TARGET/release/flagctl" "$BEFORE_DIR/bin/flagctl"
cp target/release/flagctl "$AFTER_DIR/bin/flagctl"
cp target/release/writecost "$AFTER_DIR/bin/writecost"

# --- databases, caches, tokens --------------------------------------------------------------------

psql_admin() { PGOPTIONS=--client-min-messages=warning psql "$PG_URL" -v ON_ERROR_STOP=1 -qAt "$@"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# name dir redis_db → prepares one version: schema, Redis db, data dir, migration, admin token.
prepare() {
  local name=$1 dir=$2 redis_db=$3
  local schema="writecost_$name"
  psql_admin -c "DROP SCHEMA IF EXISTS $schema CASCADE" -c "CREATE SCHEMA $schema"
  [ "$(redis-cli -u "$REDIS_HOST_URL/$redis_db" FLUSHDB)" = OK ] || die "FLUSHDB on Redis db $redis_db failed"
  local options
  options=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(" ".join(sys.argv[1:]).strip(), safe=""))' \
    "-c search_path=$schema" "$PG_OPTIONS")
  local database_url="$PG_URL?options=$options&application_name=writecost-$name"
  # Each version runs in its own data folder: no .env.local of the repository is read.
  (cd "$dir/data" && env DATABASE_URL="$database_url" FLAGS_DATA_DIR="$dir/data" \
    "$dir/bin/flagctl" migrate >/dev/null)
  (cd "$dir/data" && env FLAGS_DATA_DIR="$dir/data" \
    "$dir/bin/flagctl" token --sub bench --group admin > "$dir/admin.token")
  echo "$database_url" > "$dir/database.url"
}

BEFORE_PID=''
AFTER_PID=''
stop() {
  local pid=$1
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  stop "$BEFORE_PID"
  stop "$AFTER_PID"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# name dir redis_db port → starts one version's server in the background (its pid is then $!).
start() {
  local name=$1 dir=$2 redis_db=$3 port=$4
  (cd "$dir/data" && exec env DATABASE_URL="$(cat "$dir/database.url")" \
    REDIS_URL="$REDIS_HOST_URL/$redis_db" FLAGS_DATA_DIR="$dir/data" PORT="$port" \
    OVERRIDE_RATE_LIMIT_PER_HOUR=1000000 RUST_LOG="$SERVER_LOG" \
    "$dir/bin/flagctl" serve > "$dir/server.log" 2>&1) &
}

wait_healthy() {
  local name=$1 pid=$2 port=$3 log_file=$4 health=''
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log_file" >&2; die "the $name server exited"; }
    health=$(curl -sf --max-time 1 "http://127.0.0.1:$port/health" || true)
    case "$health" in *'"redis":"up"'*'"database":"up"'* | *'"database":"up"'*'"redis":"up"'*) break ;; esac
    sleep 0.1
  done
  case "$health" in *'"redis":"up"'*) ;; *) die "$name: no healthy /health with Redis up within 30 s: $health" ;; esac
  log "$name on http://127.0.0.1:$port: $health"
}

log "before ($before_short): schema writecost_before, Redis db 14, $BEFORE_DIR/data"
prepare before "$BEFORE_DIR" 14
log "after ($after_short): schema writecost_after, Redis db 15, $AFTER_DIR/data"
prepare after "$AFTER_DIR" 15

BEFORE_PORT=$(free_port)
start before "$BEFORE_DIR" 14 "$BEFORE_PORT"
BEFORE_PID=$!
AFTER_PORT=$(free_port)
start after "$AFTER_DIR" 15 "$AFTER_PORT"
AFTER_PID=$!
wait_healthy before "$BEFORE_PID" "$BEFORE_PORT" "$BEFORE_DIR/server.log"
wait_healthy after "$AFTER_PID" "$AFTER_PORT" "$AFTER_DIR/server.log"

# --- the run --------------------------------------------------------------------------------------

[ -z "$PG_OPTIONS" ] || log "PostgreSQL session options for both servers: $PG_OPTIONS"
log "writecost: $REQUESTS updates and $REQUESTS override upserts per server after $WARMUP warm-up requests (rustc processes running now: $(pgrep -c rustc || true))"
WRITECOST_BEFORE_TOKEN=$(cat "$BEFORE_DIR/admin.token") \
WRITECOST_AFTER_TOKEN=$(cat "$AFTER_DIR/admin.token") \
  "$AFTER_DIR/bin/writecost" \
  --before-url "http://127.0.0.1:$BEFORE_PORT" --before-label "$before_label" \
  --after-url "http://127.0.0.1:$AFTER_PORT" --after-label "$after_label" \
  --requests "$REQUESTS" --warmup "$WARMUP" --out "$OUT"
log "report: $OUT"
