# The project's lifecycle: run locally, test, benchmark, build and deploy.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export DATABASE_URL_TEST ?= postgres://postgres@127.0.0.1:5432/test
export REDIS_URL_TEST ?= redis://127.0.0.1:6379

TEST_TOOLS := .tools/test

.PHONY: help run check test test-clients openapi lint fmt services tools-test load loadbench ofrepbench faults coldstart bench

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

services: ## Make sure local PostgreSQL and Redis are up (starts them if installed)
	@DATABASE_URL=$(DATABASE_URL_TEST) REDIS_URL=$(REDIS_URL_TEST) scripts/ensure-services.sh

run: ## Start the service on http://127.0.0.1:3000 (SQLite + in-memory cache unless .env.local says otherwise)
	cargo run --locked -p flags-local --bin flagctl -- serve

tools-test: $(TEST_TOOLS)/.installed ## Install the pinned test tools (cargo-lambda, moto) into .tools/test

$(TEST_TOOLS)/.installed: tools/requirements-test.txt
	@echo "==> $(TEST_TOOLS): cargo-lambda (Lambda runtime emulator), moto (SSM emulator)"
	@rm -rf $(TEST_TOOLS) && python3 -m venv $(TEST_TOOLS)
	@$(TEST_TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check --no-input -r tools/requirements-test.txt
	@touch $@

# The quick tier, in debug: every handler through `handle()` and every `events/*.json` through
# lambda_http's parser, over SQLite and the in-memory cache, plus the unit tests. It needs no
# server (the test kit's own tests, which start `redis-server`, and flags-bench's, which judge
# the faults under load, run in `make test`); `make test` runs the same tests again in release,
# next to the ones against PostgreSQL and Redis.
check: ## Quick tier, no servers: rustfmt, unit tests, every handler and event in process over SQLite
	cargo fmt --all -- --check
	cargo test --locked --workspace --exclude flags-testkit --exclude flags-bench --lib --test in_process

# One release build serves the tests and the Lambda binaries the emulator tests run.
test: services tools-test ## Run the whole test suite against real PostgreSQL and Redis
	@mkdir -p target
	DATABASE_URL=$(DATABASE_URL_TEST) REDIS_URL=$(REDIS_URL_TEST) \
	  cargo test --release --workspace --locked --lib --test '*' 2>&1 | tee target/test.log
	@if [ -d tests/template ]; then $(MAKE) --no-print-directory test-template 2>&1 | tee target/test-template.log; fi
	$(MAKE) --no-print-directory test-clients 2>&1 | tee target/test-clients.log
	@echo; echo "Tests by backend:"; scripts/test-summary.sh target/test.log target/test-template.log target/test-clients.log

# The release flagctl that `make test` built (built here only when missing; FLAGCTL=path for another).
test-clients: ## Run the OpenFeature providers (Python, Node) and schemathesis against a local flagctl serve
	@if [ -z "$${FLAGCTL:-}" ] && [ ! -x target/release/flagctl ]; then cargo build --release --locked --workspace --bin flagctl; fi
	scripts/test-clients.sh

# --workspace: the features (and so the artifacts) of `make test`'s build.
openapi: ## Write docs/openapi.json: the OpenAPI 3.1 document GET /openapi.json serves
	cargo build --release --locked --workspace --bin flagctl
	target/release/flagctl openapi > docs/openapi.json

# --release: clippy then shares build scripts and proc-macros (aws-lc, SQLite C builds) with `make test`.
lint: ## rustfmt check and clippy with warnings denied
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets --locked -- -D warnings

fmt: ## Format the code
	cargo fmt --all

# --- evidence: load, faults, cold start, micro-benchmarks (docs/performance.md) ---------------
# Everything runs in release against the real local PostgreSQL and Redis; the reports land in
# target/bench/ and target/load/.
BENCH := cargo run --release --locked -q -p flags-bench --bin

load: services ## AC10: the Artillery scenario (ensure thresholds) and the Rust load benchmark
	$(MAKE) --no-print-directory load-artillery
	$(MAKE) --no-print-directory loadbench

loadbench: services ## Rust load benchmark: 1/10/50 clients per cache and database, connection counts
	$(BENCH) loadbench

ofrepbench: ## OFREP single and bulk (200 and 304) over HTTP next to GET /config/flags, 1/10/50 clients, local server defaults
	$(BENCH) ofrepbench

# Measures only: `make test` judges the same faults (crates/flags-bench/src/faults/promises.rs).
faults: services ## Fault-injection benchmark under load (Redis killed, frozen, READONLY, slow, garbage; PostgreSQL cut)
	$(BENCH) faults

# Built together with flags-bench so the features (and so the artifacts) match `make test`'s build.
coldstart: services tools-test ## Cold start, size and peak memory of a release Lambda binary under the emulator
	cargo build --release --locked -q -p flags-bench -p flags-api --bin get-flags --bin coldstart
	$(BENCH) coldstart -- --emulator $(TEST_TOOLS)/bin/cargo-lambda

bench: ## Criterion micro-benchmarks: evaluating 10/100/1000 flags, decoding/encoding the snapshot
	cargo bench --locked -p flags-bench --bench evaluation

.PHONY: propagation writecost lambdawarm

propagation: services ## Write propagation (contract 3.1): a write's 2xx to the first fresh read on another instance, healthy and under Redis faults
	$(BENCH) propagation

# Builds the version before the one-transaction write path (5a51ee7) in target/writecost-before/
# (its own worktree and target dir; several minutes the first time), then runs both servers.
writecost: services ## Write path cost before (5a51ee7) and after, in one run: admin updates and override upserts over HTTP
	crates/flags-bench/scripts/writecost.sh

# Builds get-flags before the per-request cost work (522a3ed^) in target/lambdawarm-before/.
lambdawarm: services tools-test ## Warm Lambda invocations under the emulator, before and after: handler p50/p99 at 5 and 1,000 flags
	CARGO_LAMBDA=$(TEST_TOOLS)/bin/cargo-lambda crates/flags-bench/scripts/lambdawarm.sh

# Two cold debug builds in clones under a temporary folder: about 15 minutes on two cores.
buildtime: ## Cold build of make run's flagctl, this commit beside 1549ebb (Lambda runtime and AWS SDK still built): seconds, crates
	crates/flags-bench/scripts/buildtime.sh

.PHONY: compare flamegraph buildtime

# Installs Unleash Edge 20.1.0 into .tools/unleash-edge when missing (cargo install: 20+ minutes
# the first time; UNLEASH_EDGE=path to use a binary already built), then runs both servers.
compare: services ## This service beside Unleash Edge 20.1.0 (offline), one run: 5 and 1,000 flags, 1/10/50 clients, req/s, p50, p99, ratio
	scripts/compare.sh

# Builds compare with the profiling profile (symbols) and installs inferno into .tools/inferno.
flamegraph: services ## Flame graphs of this service under make compare's load (perf, inferno): target/bench/profile/
	scripts/flamegraph.sh

-include mk/infra.mk
-include mk/load.mk
