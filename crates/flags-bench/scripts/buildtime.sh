#!/usr/bin/env bash
# Cold build of what `make run` compiles (the debug `flagctl`), this commit beside an earlier one,
# each in a clone and target directory of its own, one after the other. Prints the wall time and
# the number of crates compiled. Crates already downloaded are reused (downloads are not timed).
#
#   crates/flags-bench/scripts/buildtime.sh [BEFORE_REV]   (default 1549ebb: before the
#   Lambda runtime and the AWS SDK became the `lambda` feature of flags-api)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
before=${1:-1549ebb}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

measure() { # <rev> <label>
  git clone -q "$root" "$work/$2"
  git -C "$work/$2" checkout -q "$1"
  local started log
  started=$(date +%s)
  log=$(cd "$work/$2" && CARGO_TARGET_DIR="$work/$2-target" cargo build --locked -p flags-local --bin flagctl 2>&1)
  echo "$2 ($(git -C "$work/$2" rev-parse --short HEAD)): $(( $(date +%s) - started )) s," \
    "$(grep -c '^ *Compiling ' <<<"$log") crates compiled"
}

measure "$before" before
measure "$(git -C "$root" rev-parse HEAD)" after
