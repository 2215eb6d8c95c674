# The project's lifecycle: run locally, test, benchmark, build and deploy.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export DATABASE_URL_TEST ?= postgres://postgres@127.0.0.1:5432/test
export REDIS_URL_TEST ?= redis://127.0.0.1:6379

.PHONY: help test test-rust lint fmt services

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

services: ## Make sure local PostgreSQL and Redis are up (starts them if installed)
	@DATABASE_URL=$(DATABASE_URL_TEST) REDIS_URL=$(REDIS_URL_TEST) scripts/ensure-services.sh

test: services ## Run the whole test suite against real PostgreSQL and Redis
	@mkdir -p target
	DATABASE_URL=$(DATABASE_URL_TEST) REDIS_URL=$(REDIS_URL_TEST) \
	  cargo test --workspace --locked 2>&1 | tee target/test.log
	@echo; echo "Tests by backend:"; scripts/test-summary.sh target/test.log

lint: ## rustfmt check and clippy with warnings denied
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

fmt: ## Format the code
	cargo fmt --all

-include mk/infra.mk
