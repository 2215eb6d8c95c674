# The project's lifecycle: run locally, test, benchmark, build and deploy.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export DATABASE_URL_TEST ?= postgres://postgres@127.0.0.1:5432/test
export REDIS_URL_TEST ?= redis://127.0.0.1:6379

TEST_TOOLS := .tools/test

.PHONY: help run test lint fmt services tools-test

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

# One release build serves the tests and the Lambda binaries the emulator tests run.
test: services tools-test ## Run the whole test suite against real PostgreSQL and Redis
	@mkdir -p target
	DATABASE_URL=$(DATABASE_URL_TEST) REDIS_URL=$(REDIS_URL_TEST) \
	  cargo test --release --workspace --locked --lib --test '*' 2>&1 | tee target/test.log
	@if [ -d tests/template ]; then $(MAKE) --no-print-directory test-template 2>&1 | tee target/test-template.log; fi
	@echo; echo "Tests by backend:"; scripts/test-summary.sh target/test.log target/test-template.log

# --release: clippy then shares build scripts and proc-macros (aws-lc, SQLite C builds) with `make test`.
lint: ## rustfmt check and clippy with warnings denied
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets --locked -- -D warnings

fmt: ## Format the code
	cargo fmt --all

-include mk/infra.mk
