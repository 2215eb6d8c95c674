# Load test targets (Artillery). Included by the root Makefile; also usable alone from the
# repository root:  make -f mk/load.mk load-artillery
#
#   make tools-load        pinned Artillery (tools/artillery/package-lock.json) into .tools/artillery
#   make load-artillery    acceptance criterion 10: tests/load/redis-connection-pool.yml against the
#                          release server on real PostgreSQL (flags_load) and Redis (db 13);
#                          LOAD_PORT=3100 by default. Results in target/load/.

SHELL := /bin/bash

.PHONY: tools-load load-artillery

tools-load: ## Install the pinned Artillery into .tools/artillery (quick when done)
	@scripts/load-artillery.sh --install

load-artillery: ## Load test (AC10): 50 VUs on real Redis + PostgreSQL; no errors, p95 < 50 ms, p99 < 100 ms, bounded connections
	@scripts/load-artillery.sh
