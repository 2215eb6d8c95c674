# Infrastructure targets (AWS SAM). Included by the root Makefile; also usable alone from the
# repository root:  make -f mk/infra.mk validate
#
#   make tools-infra                 pinned aws-sam-cli, cfn-lint, checkov, cargo-lambda, zig, pytest
#   make validate                    sam validate --lint, cfn-lint, checkov, template tests
#   make expand-template             target/infra/template.expanded.json: template.yaml with its
#                                    Fn::ForEach loops expanded (what the linters and checkov read)
#   make build ENV=dev               sam build: 19 arm64 binaries (17 routes + not-found on $default + the scheduled applier) via cargo-lambda + zig
#   make deploy ENV=dev|staging|prod sam deploy --config-env ENV, then the database migrations
#   make logs ENV=dev [FUNCTION=GetFlagsFunction]
#   make start-api                   sam local start-api (Docker + `docker compose up -d --wait`)
#
# Tools live in ignored venvs under .tools/ (see tools/requirements-infra.txt for why three).

INFRA_MK := $(lastword $(MAKEFILE_LIST))
SHELL := /bin/bash

ENV ?= dev
INFRA_PYTHON ?= python3
INFRA_TOOLS ?= .tools
INFRA_TEMPLATES := template.yaml infra/billing-us-east-1.yaml
# template.yaml uses AWS::LanguageExtensions (its route functions are one Fn::ForEach loop):
# checkov skips what is inside a loop and cfn-lint merges the SAM Globals before it expands the
# loops, so both read this expanded copy (scripts/expand_template.py, SAM CLI's own Fn::ForEach
# processor). docs/infrastructure/template.md, "The route table".
EXPANDED_TEMPLATE := target/infra/template.expanded.json
INFRA_CHECKED_TEMPLATES := $(EXPANDED_TEMPLATE) infra/billing-us-east-1.yaml
# sam validate --lint runs offline but wants a region; billing metrics make us-east-1 the natural one.
INFRA_LINT_REGION ?= us-east-1
API_PORT ?= 3000
LOGS_SINCE ?= 10min ago
# Compose project "feature-flags" (docker-compose.yml) -> its default network.
COMPOSE_NETWORK ?= feature-flags_default

SAM_VENV := $(INFRA_TOOLS)/sam
CHECKOV_VENV := $(INFRA_TOOLS)/checkov
LAMBDA_VENV := $(INFRA_TOOLS)/lambda
SAM := SAM_CLI_TELEMETRY=0 $(SAM_VENV)/bin/sam
PIP_INSTALL := -m pip install --quiet --disable-pip-version-check --no-input

.PHONY: tools-infra validate lint-template checkov-template test-template expand-template build \
        deploy publish-jwks logs start-api infra-lock infra-env-check

# --- tools ------------------------------------------------------------------------------------

tools-infra: $(SAM_VENV)/.installed $(CHECKOV_VENV)/.installed $(LAMBDA_VENV)/.installed ## Install the pinned infra tools into .tools/ (quick when done)
	@echo "infra tools: $$($(SAM_VENV)/bin/sam --version), cfn-lint $$($(SAM_VENV)/bin/cfn-lint --version | cut -d' ' -f2), checkov $$($(CHECKOV_VENV)/bin/checkov --version), $$($(LAMBDA_VENV)/bin/cargo-lambda lambda --version), zig $$($(LAMBDA_VENV)/bin/python -m ziglang version)"

# A venv is rebuilt from scratch whenever its requirements or lock file changes.
$(SAM_VENV)/.installed: tools/requirements-infra.txt tools/lock/sam.txt
	@echo "==> $(SAM_VENV): aws-sam-cli, cfn-lint, pytest"
	@rm -rf $(SAM_VENV) && $(INFRA_PYTHON) -m venv $(SAM_VENV)
	@$(SAM_VENV)/bin/python $(PIP_INSTALL) -r tools/requirements-infra.txt -c tools/lock/sam.txt
	@touch $@

$(CHECKOV_VENV)/.installed: tools/requirements-checkov.txt tools/lock/checkov.txt
	@echo "==> $(CHECKOV_VENV): checkov"
	@rm -rf $(CHECKOV_VENV) && $(INFRA_PYTHON) -m venv $(CHECKOV_VENV)
	@$(CHECKOV_VENV)/bin/python $(PIP_INSTALL) -r tools/requirements-checkov.txt -c tools/lock/checkov.txt
	@touch $@

$(LAMBDA_VENV)/.installed: tools/requirements-lambda.txt tools/lock/lambda.txt
	@echo "==> $(LAMBDA_VENV): cargo-lambda, zig"
	@rm -rf $(LAMBDA_VENV) && $(INFRA_PYTHON) -m venv $(LAMBDA_VENV)
	@$(LAMBDA_VENV)/bin/python $(PIP_INSTALL) -r tools/requirements-lambda.txt -c tools/lock/lambda.txt
	@touch $@

infra-lock: ## Re-resolve the pinned infra tools and rewrite tools/lock/*.txt
	@set -e; for pair in sam:infra checkov:checkov lambda:lambda; do \
	  venv=$${pair%%:*}; req=$${pair##*:}; dir=$$(mktemp -d); \
	  $(INFRA_PYTHON) -m venv $$dir; \
	  $$dir/bin/python $(PIP_INSTALL) -r tools/requirements-$$req.txt; \
	  { echo "# Generated with \`pip freeze\` from .tools/$$venv after installing its requirements file; used as"; \
	    echo "# pip constraints by \`make tools-infra\`. Regenerate with \`make infra-lock\` after changing a pin."; \
	    $$dir/bin/python -m pip freeze; } > tools/lock/$$venv.txt; \
	  rm -rf $$dir; echo "tools/lock/$$venv.txt"; \
	done

# --- checks -----------------------------------------------------------------------------------

validate: lint-template checkov-template test-template ## sam validate --lint, cfn-lint, checkov and the template tests
	@echo "validate: all infrastructure checks passed"

expand-template: $(EXPANDED_TEMPLATE) ## Write target/infra/template.expanded.json (template.yaml, loops expanded)

$(EXPANDED_TEMPLATE): template.yaml scripts/expand_template.py $(SAM_VENV)/.installed
	@$(SAM_VENV)/bin/python scripts/expand_template.py template.yaml $@

# Every rule runs on the expanded copy. template.yaml itself is linted too, for what only the
# loops show (Fn::ForEach and Fn::FindInMap usage, the route table), without W2533 alone:
# cfn-lint 1.58 merges Globals (Runtime, Handler) into the functions before expanding the
# loops, so it would report them missing on every looped function.
lint-template: $(SAM_VENV)/.installed $(EXPANDED_TEMPLATE) ## sam validate --lint and cfn-lint on the templates
	@for t in $(INFRA_CHECKED_TEMPLATES); do \
	  AWS_DEFAULT_REGION=$(INFRA_LINT_REGION) $(SAM) validate --lint --template $$t || exit 1; \
	done
	$(SAM_VENV)/bin/cfn-lint $(INFRA_CHECKED_TEMPLATES)
	$(SAM_VENV)/bin/cfn-lint --ignore-checks W2533 -- template.yaml
	@echo "cfn-lint: no findings in $(INFRA_CHECKED_TEMPLATES) template.yaml"

checkov-template: $(CHECKOV_VENV)/.installed $(EXPANDED_TEMPLATE) ## checkov policy scan of the templates (offline)
	$(CHECKOV_VENV)/bin/checkov $(addprefix -f ,$(INFRA_CHECKED_TEMPLATES)) --framework cloudformation \
	  --skip-download --quiet --compact

test-template: $(SAM_VENV)/.installed ## pytest tests/template (template, hook, samconfig, compose)
	$(SAM_VENV)/bin/python -m pytest tests/template -p no:cacheprovider

# --- build, deploy, observe -----------------------------------------------------------------------

infra-env-check:
	@case "$(ENV)" in dev|staging|prod) ;; \
	  *) echo "ENV must be dev, staging or prod (got '$(ENV)')" >&2; exit 2;; esac

# cargo-lambda cross-compiles for arm64 with zig: the lambda venv's bin (cargo-lambda, and the
# python that carries the ziglang module) comes first on PATH. cargo-lambda adds the
# aarch64-unknown-linux-gnu target through rustup when it is missing.
# --language-extensions (also `language_extensions = true` in samconfig.toml): SAM CLI expands the
# route loop locally to find the 19 functions; without it `sam build` stops on the loop.
build: infra-env-check $(SAM_VENV)/.installed $(LAMBDA_VENV)/.installed ## sam build for ENV (arm64 binaries via cargo-lambda + zig)
	PATH="$(abspath $(LAMBDA_VENV))/bin:$$PATH" SAM_CLI_TELEMETRY=0 $(abspath $(SAM_VENV))/bin/sam build --config-env $(ENV) --language-extensions

# The migrations run inside the VPC (the migrate function): the pre-traffic hook applies them
# before each new version gets traffic, and the last line once more for a new stack, whose first
# versions get no hook. The JWKS copy (CognitoJwksSource=parameter only) is published before the
# new versions start, since they read it at init.
deploy: infra-env-check $(SAM_VENV)/.installed ## sam deploy --config-env ENV (builds first, migrates last; ENV=dev|staging|prod)
	@$(INFRA_PYTHON) tools/check_samconfig.py $(ENV)
	@$(MAKE) --no-print-directory -f $(INFRA_MK) build ENV=$(ENV)
	$(SAM_VENV)/bin/python tools/publish_jwks.py $(ENV)
	$(SAM) deploy --config-env $(ENV) --language-extensions
	$(SAM_VENV)/bin/python tools/invoke_migrate.py $(ENV)

# After the user pool rotates its keys: the running functions read the new copy at the first
# token signed with a new key.
publish-jwks: infra-env-check $(SAM_VENV)/.installed ## Copy the user pool's JWKS into SSM (CognitoJwksSource=parameter; ENV=dev|staging|prod)
	$(SAM_VENV)/bin/python tools/publish_jwks.py $(ENV)

logs: infra-env-check $(SAM_VENV)/.installed ## Tail ENV's function logs (FUNCTION=GetFlagsFunction for one)
	$(SAM) logs --config-env $(ENV) $(if $(FUNCTION),--name $(FUNCTION)) --start-time '$(LOGS_SINCE)' --tail

start-api: $(SAM_VENV)/.installed ## sam local start-api on API_PORT against the compose services (needs Docker)
	@if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then \
	  echo "start-api needs a running Docker engine: sam local runs every function in a container." >&2; \
	  echo "Without Docker, run the API with the local server or 'cargo lambda watch' (README, Local development)." >&2; \
	  exit 1; fi
	@docker network inspect $(COMPOSE_NETWORK) >/dev/null 2>&1 || { \
	  echo "Start Redis and PostgreSQL first: docker compose up -d --wait" >&2; exit 1; }
	@test -f .aws-sam/build/template.yaml || { echo "No build yet: run 'make build' first." >&2; exit 1; }
	@$(SAM_VENV)/bin/python scripts/expand_template.py .aws-sam/build/template.yaml .aws-sam/build/template.expanded.json
	@$(SAM_VENV)/bin/python tools/sam_local_template.py .aws-sam/build/template.expanded.json .aws-sam/build/template.local.yaml
	@echo "The functions are arm64: on an x86_64 host Docker needs arm64 emulation (binfmt/qemu)."
	$(SAM) local start-api --template .aws-sam/build/template.local.yaml \
	  --env-vars tools/sam-local-env.json --docker-network $(COMPOSE_NETWORK) --port $(API_PORT) \
	  --parameter-overrides "Environment=dev CognitoUserPoolId=local_pool CognitoClientId=local AlertEmail=local@example.com"
