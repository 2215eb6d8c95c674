#!/usr/bin/env bash
# Reads `cargo test` (and pytest) logs and prints how many tests ran against each real backend,
# ending with the plain "Total: N passed, N failed" line. Ignored or skipped tests count as
# failures: nothing that needs a real server may be skipped.
set -euo pipefail
awk '
  /^ *Running / {
    bin = $2
    if (bin == "unittests") { bin = $3 }
    n = split(bin, parts, "/"); bin = parts[n]; sub(/\.rs$/, "", bin)
    if ($2 == "unittests") { c = $4; sub(/.*\//, "", c); sub(/-[0-9a-f]+\)$/, "", c); bin = "unit tests " c }
  }
  /^test result:/ {
    passed = $4; failed = $6; ignored = $8
    what = "no external server"
    if (bin ~ /^postgres_/) what = "PostgreSQL"
    else if (bin ~ /postgres_redis/) what = "PostgreSQL + Redis"
    else if (bin ~ /^redis_/) what = "Redis (+ PostgreSQL)"
    else if (bin ~ /^sqlite_/) what = "SQLite (embedded)"
    else if (bin ~ /^lambda_/) what = "Lambda emulator + SSM emulator + PostgreSQL + Redis"
    else if (bin ~ /^http_edge/) what = "local HTTP server + PostgreSQL + SQLite"
    else if (bin ~ /^http_/) what = "local HTTP server + PostgreSQL + Redis"
    else if (bin ~ /^write_path/) what = "PostgreSQL + Redis"
    else if (bin ~ /^schedules/) what = "PostgreSQL + SQLite"
    else if (bin ~ /^write_propagation/) what = "local HTTP servers + PostgreSQL + owned Redis"
    else if (bin ~ /^memory_bound/) what = "flagctl serve process + SQLite, in-memory cache"
    if (passed + failed + ignored > 0) printf "  %-40s %4d passed %3d failed %3d ignored  [%s]\n", bin, passed, failed, ignored, what
    total += passed; totalfailed += failed; totalignored += ignored
    if (what != "no external server") against[what] += passed
  }
  /^=+ .*(passed|failed).* in [0-9.]+s/ {
    p = 0; f = 0; s = 0
    if (match($0, /[0-9]+ passed/)) p = substr($0, RSTART, RLENGTH) + 0
    if (match($0, /[0-9]+ failed/)) f = substr($0, RSTART, RLENGTH) + 0
    if (match($0, /[0-9]+ skipped/)) s = substr($0, RSTART, RLENGTH) + 0
    printf "  %-40s %4d passed %3d failed %3d ignored  [%s]\n", "pytest tests/template", p, f, s, "template.yaml, offline"
    total += p; totalfailed += f; totalignored += s
  }
  END {
    print ""
    for (w in against) printf "  against %-55s %4d tests\n", w ":", against[w]
    if (totalignored > 0) { printf "  %d tests were IGNORED or SKIPPED: not allowed here\n", totalignored; totalfailed += totalignored }
    printf "Total: %d passed, %d failed\n", total, totalfailed
    exit (totalfailed > 0)
  }
' "$@"
