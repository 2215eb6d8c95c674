#!/usr/bin/env bash
# Acceptance criterion 10: the Artillery load scenario tests/load/redis-connection-pool.yml
# against the release server, backed by real PostgreSQL (database flags_load, recreated on every
# run) and real Redis (database 13, flushed on every run).
#
#   scripts/load-artillery.sh            install Artillery if needed, build, run, summarise
#   scripts/load-artillery.sh --install  only install the pinned Artillery into .tools/artillery
#
# While Artillery runs, the Redis clients on db 13 and the PostgreSQL sessions on flags_load are
# sampled every second; the run fails when either exceeds its bound (Redis 10, PostgreSQL the
# server's pool size), when Artillery's `ensure` checks fail (errors, p95 >= 50 ms,
# p99 >= 100 ms) or when the server dies. Everything it writes lands in target/load/.
#
# Environment: LOAD_PORT (3100); DATABASE_POOL_SIZE (10), REDIS_POOL_SIZE (4) and LOAD_RUST_LOG
# (warn) for the server; LOAD_USERS (500); LOAD_PG_ADMIN_URL
# (postgres://postgres@127.0.0.1:5432/postgres); LOAD_REDIS_HOST_URL (redis://127.0.0.1:6379);
# LOAD_SKIP_BUILD=1 uses the existing target/release/flagctl instead of `cargo build` (which
# waits for any other cargo holding the target/ lock).
set -euo pipefail

cd "$(dirname "$0")/.."

SCENARIO=tests/load/redis-connection-pool.yml
TOOLS_SRC=tools/artillery
TOOLS_DIR=.tools/artillery
ARTILLERY=$TOOLS_DIR/node_modules/.bin/artillery
OUT=target/load
DATA_DIR=$OUT/data
BUILT_FLAGCTL=target/release/flagctl
FLAGCTL=$OUT/bin/flagctl

PORT=${LOAD_PORT:-3100}
USERS=${LOAD_USERS:-500}
DB_NAME=flags_load
PG_ADMIN_URL=${LOAD_PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_HOSTPART=${PG_ADMIN_URL%/*}
DATABASE_URL_LOAD="$PG_HOSTPART/$DB_NAME"
REDIS_DB=13
REDIS_HOST_URL=${LOAD_REDIS_HOST_URL:-redis://127.0.0.1:6379}
REDIS_URL_LOAD="$REDIS_HOST_URL/$REDIS_DB"
DB_POOL=${DATABASE_POOL_SIZE:-10}
REDIS_POOL=${REDIS_POOL_SIZE:-4}
MAX_REDIS_CONNECTIONS=10
MAX_PG_CONNECTIONS=$DB_POOL

export ARTILLERY_DISABLE_TELEMETRY=true

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'load-artillery: %s\n' "$*" >&2; exit 1; }

# --- Artillery ------------------------------------------------------------------------------------

# `npm ci` into .tools/artillery (ignored by git), again only when package.json or the lock file
# changed. --ignore-scripts: the only install scripts in the tree download a Chromium for
# Artillery's Playwright engine (not used here, and there is no internet beyond the registry),
# build an optional native statsd socket module, or print notices.
install_artillery() {
  command -v node >/dev/null && command -v npm >/dev/null || die "Node.js and npm are required"
  local want have=''
  want=$(cat "$TOOLS_SRC/package.json" "$TOOLS_SRC/package-lock.json" | sha256sum | cut -d' ' -f1)
  [ -f "$TOOLS_DIR/.installed" ] && have=$(cat "$TOOLS_DIR/.installed")
  if [ "$want" = "$have" ] && [ -x "$ARTILLERY" ]; then
    return 0
  fi
  log "$TOOLS_DIR: npm ci (Artillery $(node -p "require('./$TOOLS_SRC/package.json').dependencies.artillery"))"
  rm -rf "$TOOLS_DIR"
  mkdir -p "$TOOLS_DIR"
  cp "$TOOLS_SRC/package.json" "$TOOLS_SRC/package-lock.json" "$TOOLS_DIR/"
  npm ci --prefix "$TOOLS_DIR" --ignore-scripts --no-audit --no-fund --loglevel=error
  "$ARTILLERY" version >/dev/null
  echo "$want" > "$TOOLS_DIR/.installed"
}

if [ "${1:-}" = "--install" ]; then
  install_artillery
  echo "artillery $(node -p "require('./$TOOLS_DIR/node_modules/artillery/package.json').version") in $TOOLS_DIR (node $(node --version))"
  exit 0
fi
[ $# -eq 0 ] || die "usage: $0 [--install]"

install_artillery

# --- services, database, cache --------------------------------------------------------------------

log "services"
DATABASE_URL="$PG_HOSTPART/postgres" REDIS_URL="$REDIS_HOST_URL" scripts/ensure-services.sh

psql_admin() { PGOPTIONS=--client-min-messages=warning psql "$PG_ADMIN_URL" -v ON_ERROR_STOP=1 -qAt "$@"; }
redis_load() { redis-cli -u "$REDIS_URL_LOAD" "$@"; }

if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/health"; then
  die "something already answers on port $PORT (set LOAD_PORT to another port)"
fi

log "PostgreSQL database $DB_NAME (recreated) and Redis db $REDIS_DB (flushed)"
psql_admin -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)"
psql_admin -c "CREATE DATABASE $DB_NAME"
[ "$(redis_load FLUSHDB)" = OK ] || die "FLUSHDB on Redis db $REDIS_DB failed"

# --- server ---------------------------------------------------------------------------------------

if [ "${LOAD_SKIP_BUILD:-0}" = 1 ]; then
  log "LOAD_SKIP_BUILD=1: using the existing $BUILT_FLAGCTL"
else
  log "release build of flagctl"
  # With flags-bench selected too, the features (so the artifacts) match `make test`'s build.
  cargo build --release --locked -p flags-local -p flags-bench --bin flagctl
fi
[ -x "$BUILT_FLAGCTL" ] || die "no $BUILT_FLAGCTL"

# Only this script's files: a clean key pair and token set every run.
rm -rf "$DATA_DIR" "$OUT/bin" "$OUT/users.csv" "$OUT/report.json" "$OUT/artillery.log" \
  "$OUT/server.log" "$OUT/connections.log" "$OUT/connections.txt"
mkdir -p "$OUT/bin"
# A private copy: a concurrent cargo build may replace target/release/flagctl during the run.
cp "$BUILT_FLAGCTL" "$FLAGCTL"
export FLAGS_DATA_DIR=$DATA_DIR

log "minting 1 admin and $USERS user tokens into $OUT/users.csv"
# The first call creates the local key pair in $DATA_DIR/auth; the server verifies with it.
LOAD_ADMIN_TOKEN=$("$FLAGCTL" token --sub load-admin --group admin)
export LOAD_ADMIN_TOKEN
# ~50 ms a token, so one process per core; each writes its `user-N,token` line in one go.
seq 1 "$USERS" | xargs -P "$(nproc)" -I{} sh -c \
  'line="user-{},$("$0" token --sub user-{})" && printf "%s\n" "$line"' "$FLAGCTL" > "$OUT/users.csv"
[ "$(grep -c '^user-[0-9]*,ey' "$OUT/users.csv")" -eq "$USERS" ] || die "minting the user tokens failed"

SERVER_PID=''
SAMPLER_PID=''
cleanup() {
  local rc=$?
  if [ -n "$SAMPLER_PID" ]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting the server on http://127.0.0.1:$PORT (log: $OUT/server.log)"
DATABASE_URL="$DATABASE_URL_LOAD" REDIS_URL="$REDIS_URL_LOAD" PORT="$PORT" \
  DATABASE_POOL_SIZE="$DB_POOL" REDIS_POOL_SIZE="$REDIS_POOL" RUST_LOG="${LOAD_RUST_LOG:-warn}" \
  "$FLAGCTL" serve > "$OUT/server.log" 2>&1 &
SERVER_PID=$!

health=''
for _ in $(seq 300); do
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$OUT/server.log" >&2; die "the server exited"; }
  health=$(curl -sf --max-time 1 "http://127.0.0.1:$PORT/health" || true)
  [ -n "$health" ] && break
  sleep 0.1
done
[ -n "$health" ] || die "no 200 from /health within 30 s"
for want in '"cache":"redis"' '"redis":"up"' '"database":"up"'; do
  case "$health" in *"$want"*) ;; *) die "the server is not on Redis and PostgreSQL: $health" ;; esac
done
log "health: $health"

# --- connection sampler ---------------------------------------------------------------------------

# One line per second: epoch, Redis clients on db 13 (redis-cli itself excluded), PostgreSQL
# sessions on flags_load (the sampler's psql is connected to another database).
sample_connections() {
  while :; do
    local redis pg
    redis=$(redis_load CLIENT LIST 2>/dev/null | awk -v db="db=$REDIS_DB" \
      '{ ok = 0; for (i = 1; i <= NF; i++) { if ($i == db) ok = 1; if ($i ~ /^cmd=client/) ok = 0 } n += ok } END { print n + 0 }')
    pg=$(psql_admin -c "SELECT count(*) FROM pg_stat_activity WHERE datname = '$DB_NAME'" 2>/dev/null || echo -1)
    echo "$(date +%s) $redis $pg"
    sleep 1
  done
}
sample_connections > "$OUT/connections.log" &
SAMPLER_PID=$!

# --- load -----------------------------------------------------------------------------------------

log "artillery run $SCENARIO (rustc processes running now: $(pgrep -c rustc || true))"
set +e
"$ARTILLERY" run --output "$OUT/report.json" --target "http://127.0.0.1:$PORT" "$SCENARIO" \
  2>&1 | tee "$OUT/artillery.log"
artillery_rc=${PIPESTATUS[0]}
set -e
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=''

server_alive=yes
kill -0 "$SERVER_PID" 2>/dev/null || server_alive=no

# --- verdict --------------------------------------------------------------------------------------

read -r max_redis max_pg < <(awk '$2 > r { r = $2 } $3 > p { p = $3 } END { print r + 0, p + 0 }' "$OUT/connections.log")
samples=$(wc -l < "$OUT/connections.log")
{
  echo "samples=$samples"
  echo "max_redis_connections=$max_redis (bound $MAX_REDIS_CONNECTIONS; REDIS_POOL_SIZE=$REDIS_POOL)"
  echo "max_postgres_connections=$max_pg (bound $MAX_PG_CONNECTIONS = DATABASE_POOL_SIZE)"
} > "$OUT/connections.txt"

echo
echo "Summary ($OUT/report.json, $OUT/connections.txt)"
if [ -f "$OUT/report.json" ]; then
  node - "$OUT/report.json" <<'EOF'
const report = require(require('path').resolve(process.argv[2]));
const a = report.aggregate;
const c = a.counters || {};
const rt = (a.summaries || {})['http.response_time'] || {};
const seconds = (Number(a.lastMetricAt) - Number(a.firstMetricAt)) / 1000;
const requests = c['http.requests'] || 0;
const codes = Object.keys(c).filter((k) => k.startsWith('http.codes.'))
  .map((k) => `${k.slice(11)}: ${c[k]}`).join(', ');
const errors = Object.keys(c).filter((k) => k.startsWith('errors.'))
  .reduce((n, k) => n + c[k], 0);
const session = (a.summaries || {})['vusers.session_length'] || {};
// Little's law: sessions in flight = sessions started per second x mean session length.
const inFlight = seconds > 0 ? ((c['vusers.created'] || 0) * (session.mean || 0) / 1000 / seconds) : 0;
const f = (x) => (x === undefined ? '-' : Number(x).toFixed(1));
console.log(`  requests        ${requests} in ${seconds.toFixed(0)} s = ${(requests / seconds).toFixed(0)} req/s on average (warm-up included)`);
console.log(`  status codes    ${codes || 'none'}`);
console.log(`  errors          ${errors} (failed VUs: ${c['vusers.failed'] || 0}, failed expectations: ${c['plugins.expect.failed'] || 0})`);
console.log(`  response time   p50 ${f(rt.median ?? rt.p50)} ms, p95 ${f(rt.p95)} ms, p99 ${f(rt.p99)} ms, max ${f(rt.max)} ms`);
console.log(`  virtual users   ${c['vusers.created'] || 0} sessions, mean ${f(session.mean)} ms each, ~${inFlight.toFixed(0)} in flight on average over the whole run (${c['vusers.skipped'] || 0} arrivals skipped at the 50-VU cap)`);
EOF
fi
echo "  connections     Redis max $max_redis (bound $MAX_REDIS_CONNECTIONS), PostgreSQL max $max_pg (bound $MAX_PG_CONNECTIONS), $samples samples"

status=0
if [ "$artillery_rc" -ne 0 ]; then
  echo "FAIL: artillery exited with $artillery_rc (ensure checks or errors, see above)"; status=$artillery_rc
fi
if [ "$samples" -lt 5 ]; then
  echo "FAIL: only $samples connection samples"; status=1
fi
if [ "$max_redis" -gt "$MAX_REDIS_CONNECTIONS" ] || [ "$max_redis" -lt 1 ]; then
  echo "FAIL: Redis connections $max_redis not in 1..$MAX_REDIS_CONNECTIONS"; status=1
fi
if [ "$max_pg" -gt "$MAX_PG_CONNECTIONS" ] || [ "$max_pg" -lt 1 ]; then
  echo "FAIL: PostgreSQL connections $max_pg not in 1..$MAX_PG_CONNECTIONS"; status=1
fi
if [ "$server_alive" != yes ]; then
  echo "FAIL: the server died during the run (see $OUT/server.log)"; status=1
fi
if [ "$status" -eq 0 ]; then echo "PASS: load-artillery"; fi
exit "$status"
