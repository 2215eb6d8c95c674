#!/usr/bin/env bash
# Real OpenFeature clients against one local `flagctl serve` (SQLite in a fresh temporary data
# folder, in-memory cache): the Python SDK with its OFREP provider (pytest), the Node server and
# web SDKs with theirs (node --test), then schemathesis against the served /openapi.json.
#
#   scripts/test-clients.sh            install the pinned tools if needed, start the server, run
#   scripts/test-clients.sh --install  only install the pinned tools
#   scripts/test-clients.sh --lock     re-resolve tools/openfeature/requirements.txt into
#                                      tools/lock/openfeature.txt (then commit it)
#
# Tools (ignored by git): .tools/openfeature (Python venv: tools/openfeature/requirements.txt
# constrained by tools/lock/openfeature.txt) and .tools/openfeature-node (`npm ci` of
# tools/openfeature/package-lock.json). Each is reinstalled from scratch when its pins change.
#
# Environment: FLAGCTL (target/release/flagctl), CLIENTS_RUST_LOG (info),
# SCHEMATHESIS_MAX_EXAMPLES (25), SCHEMATHESIS_SEED (20261207).
#
# Every suite runs even when an earlier one failed; each is framed by `==> [suite] NAME` and
# `==> [suite-exit] NAME: CODE` lines, which scripts/test-summary.sh reads. The exit status is
# non-zero when any suite failed; the server's log is printed then.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

PY_SRC=tools/openfeature/requirements.txt
PY_LOCK=tools/lock/openfeature.txt
PY_VENV=.tools/openfeature
NODE_SRC=tools/openfeature
NODE_DIR=.tools/openfeature-node
TESTS=tests/openfeature
PYTHON=${PYTHON:-python3}
PIP_INSTALL=(-m pip install --quiet --disable-pip-version-check --no-input)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'test-clients: %s\n' "$*" >&2; exit 1; }

# --- tools ---------------------------------------------------------------------------------------

# A stamp holds the hash of the files that pin the tools and of the interpreter's version (the
# first argument): the venv or node_modules is rebuilt only when that changes.
stamp_of() { { "$1" --version 2>&1; shift; cat "$@"; } | sha256sum | cut -d' ' -f1; }

install_python() {
  command -v "$PYTHON" >/dev/null || die "$PYTHON is required"
  local want have=''
  want=$(stamp_of "$PYTHON" "$PY_SRC" "$PY_LOCK")
  [ -f "$PY_VENV/.installed" ] && have=$(cat "$PY_VENV/.installed")
  if [ "$want" = "$have" ] && [ -x "$PY_VENV/bin/pytest" ] && [ -x "$PY_VENV/bin/schemathesis" ]; then
    return 0
  fi
  log "$PY_VENV: openfeature-sdk, openfeature-provider-ofrep, pytest, schemathesis"
  rm -rf "$PY_VENV"
  "$PYTHON" -m venv "$PY_VENV"
  "$PY_VENV/bin/python" "${PIP_INSTALL[@]}" -r "$PY_SRC" -c "$PY_LOCK"
  echo "$want" > "$PY_VENV/.installed"
}

# `npm ci` into .tools/openfeature-node; tests/openfeature/node_modules (ignored) links to its
# node_modules so that the tests import the packages by their plain names.
install_node() {
  command -v node >/dev/null && command -v npm >/dev/null || die "Node.js and npm are required"
  local want have=''
  want=$(stamp_of node "$NODE_SRC/package.json" "$NODE_SRC/package-lock.json")
  [ -f "$NODE_DIR/.installed" ] && have=$(cat "$NODE_DIR/.installed")
  if [ "$want" != "$have" ] || [ ! -d "$NODE_DIR/node_modules/@openfeature/web-sdk" ]; then
    log "$NODE_DIR: npm ci (@openfeature server and web SDKs, OFREP providers)"
    rm -rf "$NODE_DIR"
    mkdir -p "$NODE_DIR"
    cp "$NODE_SRC/package.json" "$NODE_SRC/package-lock.json" "$NODE_DIR/"
    npm ci --prefix "$NODE_DIR" --ignore-scripts --no-audit --no-fund --loglevel=error
    echo "$want" > "$NODE_DIR/.installed"
  fi
  if [ "$(readlink "$TESTS/node_modules" 2>/dev/null)" != "../../$NODE_DIR/node_modules" ]; then
    rm -rf "$TESTS/node_modules"
    ln -s "../../$NODE_DIR/node_modules" "$TESTS/node_modules"
  fi
}

lock_python() {
  local dir
  dir=$(mktemp -d)
  "$PYTHON" -m venv "$dir"
  "$dir/bin/python" "${PIP_INSTALL[@]}" -r "$PY_SRC"
  { echo "# Generated with \`pip freeze\` from a fresh venv after installing tools/openfeature/requirements.txt;"
    echo "# used as pip constraints by scripts/test-clients.sh. Regenerate with \`scripts/test-clients.sh --lock\`."
    "$dir/bin/python" -m pip freeze; } > "$PY_LOCK"
  rm -rf "$dir"
  echo "$PY_LOCK"
}

case "${1:-}" in
  --install)
    install_python
    install_node
    echo "openfeature tools: $("$PY_VENV/bin/python" -m pip freeze | grep -iE '^(openfeature|pytest|schemathesis)' | tr '\n' ' ')"
    echo "  node $(node --version): $(cd "$NODE_DIR" && node -p "Object.entries(require('./package.json').dependencies).map(([n, v]) => n + '@' + v).join(' ')")"
    exit 0 ;;
  --lock) lock_python; exit 0 ;;
  '') ;;
  *) die "usage: $0 [--install|--lock]" ;;
esac

# The last line of the output says how the whole script ended (scripts/test-summary.sh reads it).
DATA_DIR=''
SERVER_LOG=''
SERVER_PID=''
FAILED=0

cleanup() {
  local status=$?
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [ -n "$SERVER_LOG" ] && { [ "$status" -ne 0 ] || [ "$FAILED" -ne 0 ]; }; then
    echo "--- flagctl serve log ($SERVER_LOG), last 80 lines:"
    tail -n 80 "$SERVER_LOG" 2>/dev/null || true
  fi
  [ -z "$DATA_DIR" ] || rm -rf "$DATA_DIR"
  echo "==> [clients-exit] $status"
}
trap cleanup EXIT

install_python
install_node

# --- the server ----------------------------------------------------------------------------------

FLAGCTL=${FLAGCTL:-target/release/flagctl}
[ -x "$FLAGCTL" ] || die "$FLAGCTL not found: build it (make test-clients builds it) or set FLAGCTL"
FLAGCTL=$(cd "$(dirname "$FLAGCTL")" && pwd)/$(basename "$FLAGCTL")

DATA_DIR=$(mktemp -d "${TMPDIR:-/tmp}/flags-clients.XXXXXX")
SERVER_LOG=$DATA_DIR/server.log
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# Like crates/flags-local/tests/common/process.rs: a clean environment (no .env.local is read:
# the working directory is the data folder), SQLite there, no REDIS_URL (in-memory cache).
# `exec`: the background job's pid is the server's own, which the trap kills.
flagctl() {
  (cd "$DATA_DIR" && exec env -i PATH="$PATH" HOME="${HOME:-/tmp}" NO_COLOR=1 PORT="$PORT" \
    FLAGS_DATA_DIR="$DATA_DIR" RUST_LOG="${CLIENTS_RUST_LOG:-info}" "$FLAGCTL" "$@")
}

log "flagctl serve on 127.0.0.1:$PORT (SQLite in $DATA_DIR, in-memory cache)"
(cd "$DATA_DIR" && exec env -i PATH="$PATH" HOME="${HOME:-/tmp}" NO_COLOR=1 PORT="$PORT" \
  FLAGS_DATA_DIR="$DATA_DIR" RUST_LOG="${CLIENTS_RUST_LOG:-info}" "$FLAGCTL" serve) \
  > "$SERVER_LOG" 2>&1 < /dev/null &
SERVER_PID=$!

export FLAGS_URL="http://127.0.0.1:$PORT"
healthy() {
  "$PY_VENV/bin/python" -c 'import sys, urllib.request
sys.exit(urllib.request.urlopen(sys.argv[1], timeout=2).status != 200)' "$FLAGS_URL/health" 2>/dev/null
}
deadline=$((SECONDS + 30))
until healthy; do
  kill -0 "$SERVER_PID" 2>/dev/null || die "flagctl serve exited before it was ready"
  [ "$SECONDS" -lt "$deadline" ] || die "flagctl serve not ready after 30 s"
  sleep 0.1
done

# An admin token for the admin API, and user tokens ({"sub": "token"}) for the service's own
# GET /config/flags, which the tests use as the oracle of who is inside a partial rollout. At
# 50 %, two of these users are inside and two outside (the tests check that both kinds exist).
FLAGS_ADMIN_TOKEN=$(flagctl token --sub openfeature-admin --group admin)
FLAGS_USER_TOKENS='{'
for user in openfeature-ada openfeature-bob openfeature-eve openfeature-fay; do
  FLAGS_USER_TOKENS+="\"$user\": \"$(flagctl token --sub "$user")\", "
done
FLAGS_USER_TOKENS="${FLAGS_USER_TOKENS%, }}"
export FLAGS_ADMIN_TOKEN FLAGS_USER_TOKENS

# --- the suites ----------------------------------------------------------------------------------

run_suite() {
  local name=$1 code=0
  shift
  echo "==> [suite] $name"
  "$@" || code=$?
  echo "==> [suite-exit] $name: $code"
  [ "$code" -eq 0 ] || FAILED=1
}

# The schemathesis checks: no 5xx, every status code, content type and body as the document says.
SCHEMATHESIS_CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance

# Bounded for CI: the examples, coverage and fuzzing phases (no stateful phase), at most
# SCHEMATHESIS_MAX_EXAMPLES cases per operation in each, one worker, a fixed seed and no example
# database, so that a run is repeatable. It runs in the data folder, where its working files
# (.hypothesis/, .schemathesis/) go away with the rest.
run_schemathesis() {
  (cd "$DATA_DIR" && "$ROOT/$PY_VENV/bin/schemathesis" run "$FLAGS_URL/openapi.json" \
    -H "Authorization: Bearer $FLAGS_ADMIN_TOKEN" \
    --checks "$SCHEMATHESIS_CHECKS" \
    --phases examples,coverage,fuzzing \
    --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-25}" \
    --seed "${SCHEMATHESIS_SEED:-20261207}" \
    --generation-database none \
    --workers 1 \
    --request-timeout 10 \
    --no-color)
}

run_suite "python provider" env PYTHONDONTWRITEBYTECODE=1 \
  "$PY_VENV/bin/pytest" -p no:cacheprovider -rs -v "$TESTS"
run_suite "node providers" \
  node --test --test-reporter=tap "$TESTS/server_provider.test.mjs" "$TESTS/web_provider.test.mjs"
run_suite "schemathesis" run_schemathesis

if [ "$FAILED" -ne 0 ]; then
  log "client suites: FAILED"
  exit 1
fi
log "client suites: all passed"
