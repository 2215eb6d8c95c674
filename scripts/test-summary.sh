#!/usr/bin/env bash
# Reads a `cargo test` log and prints how many tests ran against each real backend,
# ending with the plain "Total: N passed, N failed" line.
set -euo pipefail
awk '
  /^ *Running / { split($2, parts, "/"); bin = parts[length(parts)]; sub(/\.rs$/, "", bin) }
  /^ *Doc-tests / { bin = "doc-tests" }
  /^test result:/ {
    passed = $4; failed = $6; ignored = $8
    what = "no external server"
    if (bin ~ /^postgres_/) what = "PostgreSQL"
    else if (bin ~ /postgres_redis/) what = "PostgreSQL + Redis"
    else if (bin ~ /^redis_/) what = "Redis (+ PostgreSQL for the service)"
    else if (bin ~ /^sqlite_/) what = "SQLite (embedded)"
    else if (bin ~ /^lambda_/) what = "Lambda emulator + PostgreSQL + Redis"
    else if (bin ~ /^http_/) what = "local HTTP server + PostgreSQL + Redis"
    else if (bin ~ /^ssm_/) what = "SSM emulator (moto)"
    if (passed + failed + ignored > 0) printf "  %-32s %4d passed %3d failed %3d ignored  [%s]\n", bin, passed, failed, ignored, what
    total += passed; totalfailed += failed; totalignored += ignored
    by[what] += passed
  }
  END {
    print ""
    for (w in by) if (w != "no external server") printf "  against %-40s %4d tests\n", w ":", by[w]
    if (totalignored > 0) { printf "  %d tests were IGNORED: not allowed\n", totalignored; totalfailed += totalignored }
    printf "Total: %d passed, %d failed\n", total, totalfailed
    exit (totalfailed > 0)
  }
' "$1"
