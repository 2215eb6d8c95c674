#!/usr/bin/env bash
# Reads `cargo test` (and pytest) logs and prints how many tests ran against each real backend,
# ending with the plain "Total: N passed, N failed" line. Ignored or skipped tests count as
# failures: nothing that needs a real server may be skipped.
#
# The log of scripts/test-clients.sh frames each client suite with "==> [suite] NAME" and
# "==> [suite-exit] NAME: CODE": pytest's summary there is the Python provider's, node --test's
# TAP summary ("# pass N", "# fail N", ...) the Node providers', and schemathesis counts as one
# test per run (passed when it exited 0). A suite that exited non-zero without a failed test
# counted (a crash, a collection error, no test run) counts as one failure, and so does the
# script's own "==> [clients-exit] CODE" when it failed before any suite did.
set -euo pipefail
awk '
  function row(name, p, f, i, what) {
    printf "  %-40s %4d passed %3d failed %3d ignored  [%s]\n", name, p, f, i, what
  }
  /^==> \[suite\] / {
    suite = substr($0, 13); sp = 0; sf = 0; ss = 0; counted = 0; operations = ""
    next
  }
  /^==> \[suite-exit\] / {
    code = $NF + 0
    against_client = "flagctl serve process + SQLite, in-memory cache"
    if (suite == "node providers") {
      row("node --test tests/openfeature", sp, sf, ss, "OpenFeature Node server + web SDKs, " against_client)
      total += sp; totalfailed += sf; totalignored += ss; against[against_client] += sp
      counted = (sp + sf + ss > 0)
    } else if (suite == "schemathesis") {
      label = "schemathesis /openapi.json" (operations != "" ? " (" operations " operations)" : "")
      row(label, code == 0, code != 0, 0, against_client)
      total += (code == 0); totalfailed += (code != 0); against[against_client] += (code == 0)
      counted = 1
    }
    if (code != 0) clientfailures += 1
    if (code != 0 && (!counted || (sf == 0 && suite != "schemathesis"))) {
      printf "  %-40s exited %d without a failed test counted: 1 failure\n", suite, code
      totalfailed += 1
    }
    suite = ""
    next
  }
  /^==> \[clients-exit\] / {
    if ($NF + 0 != 0 && clientfailures == 0) {
      printf "  %-40s exited %d before its suites finished: 1 failure\n", "scripts/test-clients.sh", $NF
      totalfailed += 1
    }
    next
  }
  suite == "node providers" && /^# (pass|fail|cancelled|skipped|todo) [0-9]+$/ {
    if ($2 == "pass") sp += $3
    else if ($2 == "fail" || $2 == "cancelled") sf += $3
    else ss += $3
  }
  suite == "schemathesis" && /^ +Tested: [0-9]+/ { operations = $2 }
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
    else if (bin == "unit tests flags_bench") what = "faults under load: owned Redis + PostgreSQL behind proxies"
    if (passed + failed + ignored > 0) printf "  %-40s %4d passed %3d failed %3d ignored  [%s]\n", bin, passed, failed, ignored, what
    total += passed; totalfailed += failed; totalignored += ignored
    if (what != "no external server") against[what] += passed
  }
  suite != "schemathesis" && /^=+ .*(passed|failed|skipped|error).* in [0-9.]+s/ {
    p = 0; f = 0; s = 0
    if (match($0, /[0-9]+ passed/)) p = substr($0, RSTART, RLENGTH) + 0
    if (match($0, /[0-9]+ failed/)) f = substr($0, RSTART, RLENGTH) + 0
    if (match($0, /[0-9]+ errors?/)) f += substr($0, RSTART, RLENGTH) + 0
    if (match($0, /[0-9]+ skipped/)) s = substr($0, RSTART, RLENGTH) + 0
    if (suite == "python provider") {
      row("pytest tests/openfeature", p, f, s, "OpenFeature Python SDK, flagctl serve process + SQLite, in-memory cache")
      against["flagctl serve process + SQLite, in-memory cache"] += p
      sp = p; sf = f; ss = s; counted = 1
    } else {
      row("pytest tests/template", p, f, s, "template.yaml, offline")
    }
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
