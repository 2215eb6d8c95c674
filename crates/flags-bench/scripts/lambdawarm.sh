#!/usr/bin/env bash
# Warm Lambda invocations of `get-flags` before and after the per-request cost work, in one run:
# `make lambdawarm`.
#
#   1. builds `get-flags` of the version before (LAMBDAWARM_BEFORE_COMMIT, default 522a3ed^: before
#      the verified-token cache, the held snapshot and the tree-free answer) in a git worktree
#      under target/lambdawarm-before/, with commit f20ab0e (the handler logs its own duration)
#      applied on top so that both versions time the same code path; its own CARGO_TARGET_DIR,
#      seeded with a copy of target/release the first time so that only the changed crates build;
#   2. builds the current `get-flags` and `lambdawarm`;
#   3. runs `lambdawarm` on both (5 and 1,000 flags, 100 warm-up and 1,000 measured invocations
#      each) and writes target/bench/lambdawarm.md. Extra arguments go to it.
#
# Needs cargo-lambda (`make tools-test`), PostgreSQL and redis-server.
set -euo pipefail

cd "$(dirname "$0")/../../.."
ROOT=$(pwd)

BEFORE_COMMIT=${LAMBDAWARM_BEFORE_COMMIT:-522a3ed^}
TIMING_COMMIT=f20ab0e
BEFORE_DIR=$ROOT/target/lambdawarm-before
WORKTREE=$BEFORE_DIR/worktree
BEFORE_TARGET=$BEFORE_DIR/target
BIN=$ROOT/target/lambdawarm-bin

log() { printf '==> %s\n' "$*" >&2; }

log "services"
DATABASE_URL="${DATABASE_URL_TEST:-postgres://postgres@127.0.0.1:5432/test}" \
  REDIS_URL="${REDIS_URL_TEST:-redis://127.0.0.1:6379}" scripts/ensure-services.sh

before_sha=$(git rev-parse --verify "$BEFORE_COMMIT^{commit}")
before_short=$(git rev-parse --short "$before_sha")
git worktree prune
if [ ! -e "$WORKTREE/.git" ]; then
  rm -rf "$WORKTREE"
  mkdir -p "$BEFORE_DIR"
  git worktree add --quiet --detach "$WORKTREE" "$before_sha"
fi
git -C "$WORKTREE" reset --quiet --hard
git -C "$WORKTREE" checkout --quiet --detach "$before_sha"
git -C "$WORKTREE" cherry-pick --no-commit "$TIMING_COMMIT" >/dev/null
if [ ! -d "$BEFORE_TARGET/release" ] && [ -d target/release ]; then
  log "seeding $BEFORE_TARGET with a copy of target/release (dependencies already built)"
  mkdir -p "$BEFORE_TARGET"
  cp -a target/release "$BEFORE_TARGET/"
fi
log "release build of get-flags at $before_short + $TIMING_COMMIT in $WORKTREE"
# flags-bench selected too: the same features, so the same dependency artifacts, as make test's.
(cd "$WORKTREE" && CARGO_TARGET_DIR="$BEFORE_TARGET" \
  cargo build --release --locked -q -p flags-api -p flags-bench --bin get-flags)

log "release build of the current get-flags and lambdawarm"
cargo build --release --locked -q -p flags-api -p flags-bench --bin get-flags --bin lambdawarm

# Private copies: a concurrent cargo build may replace target/release/* during the run.
rm -rf "$BIN" && mkdir -p "$BIN"
cp "$BEFORE_TARGET/release/get-flags" "$BIN/get-flags-before"
cp target/release/get-flags "$BIN/get-flags-after"
after_label="$(git rev-parse --short HEAD)"
[ -z "$(git status --porcelain -- crates Cargo.lock)" ] || after_label="$after_label+changes"

target/release/lambdawarm \
  --binary "before ($before_short)=$BIN/get-flags-before" \
  --binary "after ($after_label)=$BIN/get-flags-after" "$@"
