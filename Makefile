# Airies: the two commands a fresh machine needs are `make run` and `make test`.
# Sections: variables | environments | run | test & lint | bench | build (SAM) | clean.
# Capabilities add their own targets in their own section at the end (small edits).

SHELL := /bin/bash
.DEFAULT_GOAL := help

# ---------------------------------------------------------------------------------------------------------------------
# Variables
# ---------------------------------------------------------------------------------------------------------------------
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.airies-installed
# cfn-lint 1.53.3 is the last release that runs the SAM transform; its aws-sam-translator pins a pydantic that
# conflicts with ours, so it lives in its own virtual environment.
TOOLS_VENV ?= .venv-tools
CFN_LINT_VERSION := 1.53.3
CFN_LINT := $(TOOLS_VENV)/bin/cfn-lint
TOOLS_STAMP := $(TOOLS_VENV)/.cfn-lint-$(CFN_LINT_VERSION)
# checkov (static analysis of template.yaml, part of `make lint`): its dependencies conflict with ours too.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_VERSION := 3.3.30
CHECKOV := $(CHECKOV_VENV)/bin/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.checkov-$(CHECKOV_VERSION)
# aws-sam-cli (+318 MB) only for `make build` and `make deploy`.
SAM_VENV ?= .venv-sam
SAM := $(SAM_VENV)/bin/sam
# make deploy / changeset / migrate: one samconfig.toml environment per stage.
STAGE ?=
# sam build needs python3.12 for the layer; pyenv provides it on these machines.
SAM_ENV := SAM_CLI_TELEMETRY=0 $(if $(shell command -v pyenv),PYENV_VERSION=$(shell pyenv versions --bare | grep -E '^3\.11' | tail -1):$(shell pyenv versions --bare | grep -E '^3\.12' | tail -1))
PIP_QUIET := --quiet --disable-pip-version-check
LINT_PATHS := layers functions tests benchmarks examples
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: help install tools checkov run serve test lint format typecheck-template pytest bench build build-check clean \
	distclean deploy changeset migrate stage-check

help:
	@echo "make run     create .venv, install, build the web app, migrate, serve http://127.0.0.1:$(PORT) (prints a dev API key)"
	@echo "              BRIDGE=1 also runs the media bridge (Twilio Media Streams) on ws://127.0.0.1:$(BRIDGE_PORT)/twilio"
	@echo "make web     build the web app (web/ -> layers/common/airies/webapp/dist) when its sources changed"
	@echo "make test    install, lint, then every test (SQLite, PostgreSQL, PostgreSQL 16 + pgvector) with coverage per capability"
	@echo "make bench   benchmarks (cold init per function, warm API latency) -> benchmarks/results/"
	@echo "make bench-pipecat   Airies against Pipecat side by side (TURNS, ROUNDS, MAX_LOAD; docs/benchmarks.md)"
	@echo "make lint    ruff + import-linter (layers, no cycles) + mypy + cfn-lint + checkov"
	@echo "make format  ruff format + ruff check --fix"
	@echo "make build   sam validate + sam build (arm64 layers); each function's unzipped size against the 250 MB limit"
	@echo "make deploy STAGE=dev|staging|prod      build and deploy the stage's stack, no prompt (docs/deployment.md)"
	@echo "make changeset STAGE=...                create the stage's change set for review, execute nothing"
	@echo "make migrate STAGE=...                  invoke the stage's MigrateFunction (alembic upgrade head)"
	@echo "make clean   remove caches and build output (keeps virtual environments and .data)"

# ---------------------------------------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------------------------------------
$(PY):
	@test -n "$(PYTHON)" || { echo "python3.11 is required (pyenv install 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) --upgrade pip

# Reinstall only when the dependency pins change.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install $(PIP_QUIET) -e '.[dev]'
	@touch $@

install: $(STAMP)

$(TOOLS_STAMP):
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install $(PIP_QUIET) 'cfn-lint==$(CFN_LINT_VERSION)'
	@touch $@

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install $(PIP_QUIET) 'checkov==$(CHECKOV_VERSION)'
	@touch $@

checkov: $(CHECKOV_STAMP)

tools: $(TOOLS_STAMP) $(CHECKOV_STAMP)

# eSpeak NG is the offline TTS engine of the voice capability.
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { \
		echo "eSpeak NG (offline text-to-speech) is missing: installing it with apt-get"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq espeak-ng; }

.PHONY: espeak

# ---------------------------------------------------------------------------------------------------------------------
# Run (the local stack: uvicorn + moto server + SQLite under .data unless DATABASE_URL is set)
# ---------------------------------------------------------------------------------------------------------------------
# BRIDGE=1: the media bridge (Twilio Media Streams) beside the stack on ws://127.0.0.1:$(BRIDGE_PORT)/twilio.
BRIDGE ?=
BRIDGE_PORT ?= 8765
run: install espeak web
	$(PY) -m airies.migrations.runner
	PORT=$(PORT) $(if $(BRIDGE),AIRIES_LOCAL_MEDIA_BRIDGE_PORT=$(BRIDGE_PORT) \
	  AIRIES_MEDIA_BRIDGE_URL=$${AIRIES_MEDIA_BRIDGE_URL:-ws://127.0.0.1:$(BRIDGE_PORT)/twilio}) $(PY) -m airies.local.server

serve: run

# ---------------------------------------------------------------------------------------------------------------------
# Test & lint (CI runs `make test` through .ci/run)
# ---------------------------------------------------------------------------------------------------------------------
# pgvector (PostgreSQL 16 from pgserver) is part of every test run: its tests fail, never skip, without it.
test: install tools espeak chromium kb-pgvector web web-test lint pytest

# checkov: every suppression is a Metadata.checkov.skip with its reason next to the resource; --skip-download keeps
# it offline (no platform calls).
# import-linter: the layers and no cycles (pyproject [tool.importlinter]); mypy: the packages in [tool.mypy] files.
lint: install tools
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(CFN_LINT) template.yaml
	$(CHECKOV) -f template.yaml --framework cloudformation --skip-download --quiet --compact

format: install
	$(VENV)/bin/ruff format $(LINT_PATHS)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)

# pytest exits 5 when it collected nothing: that fails here like any other non-zero exit. Coverage (lines and
# branches) is reported per capability; the floors of the critical ones fail the run (tests/coverage_report.py).
pytest: install
	$(VENV)/bin/pytest -q --cov --cov-report= $(PYTEST_ARGS)
	$(PY) -m tests.coverage_report

# ---------------------------------------------------------------------------------------------------------------------
# Benchmarks (not tests: figures, not pass/fail; needs PostgreSQL for the warm API benchmark)
# ---------------------------------------------------------------------------------------------------------------------
# The cold-start benchmark imports each function with exactly what Lambda has: the layers' requirements + boto3 (the
# runtime's), without the development tools that some libraries import when present.
LAMBDA_VENV ?= .venv-lambda
LAMBDA_STAMP := $(LAMBDA_VENV)/.airies-lambda-deps
$(LAMBDA_STAMP): pyproject.toml layers/common/requirements.txt $(wildcard layers/deps/*.txt)
	$(PYTHON) -m venv $(LAMBDA_VENV)
	$(LAMBDA_VENV)/bin/pip install $(PIP_QUIET) "$$(grep -o '"boto3==[^"]*"' pyproject.toml | tr -d '"')" -r layers/common/requirements.txt $(addprefix -r ,$(wildcard layers/deps/*.txt))
	touch $@

bench: install $(LAMBDA_STAMP)
	AIRIES_BENCH_LAMBDA_PYTHON=$(LAMBDA_VENV)/bin/python $(PY) -m benchmarks $(BENCH_ARGS)

# ---------------------------------------------------------------------------------------------------------------------
# Build and deploy (SAM). `make build` runs offline; deploy, changeset and migrate need AWS credentials of the stage's
# account (docs/deployment.md). None of them prompts: samconfig.toml holds each stage's parameters.
# ---------------------------------------------------------------------------------------------------------------------
$(SAM):
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install $(PIP_QUIET) 'aws-sam-cli==1.170.0'

# Each function's code + its layers, unzipped, against Lambda's 250 MB limit: fails the build over it.
build: $(SAM) install web
	$(SAM_ENV) $(SAM) validate --template template.yaml --region us-east-1
	$(SAM_ENV) $(SAM) build --template template.yaml
	$(PY) -m airies.local.build_report

stage-check: install
	@test -n "$(STAGE)" || { echo "usage: make $(MAKECMDGOALS) STAGE=dev|staging|prod"; exit 2; }
	$(PY) -m airies.local.deploy check $(STAGE)

# --no-confirm-changeset: executes what it creates (review first with `make changeset`); an empty change set is fine.
deploy: stage-check $(SAM)
	$(SAM_ENV) $(SAM) build --template template.yaml --config-env $(STAGE)
	$(SAM_ENV) $(SAM) deploy --config-env $(STAGE) --no-confirm-changeset --no-fail-on-empty-changeset
	$(PY) -m airies.local.deploy prune $(STAGE)
	$(PY) -m airies.local.build_report

changeset: stage-check $(SAM)
	$(SAM_ENV) $(SAM) build --template template.yaml --config-env $(STAGE)
	$(SAM_ENV) $(SAM) deploy --config-env $(STAGE) --no-execute-changeset --no-fail-on-empty-changeset

# The stack's DatabaseMigrations custom resource migrates on every deploy that changes CommonLayer; this re-runs it.
migrate: stage-check
	$(PY) -m airies.local.deploy migrate $(STAGE)

# ---------------------------------------------------------------------------------------------------------------------
# Clean
# ---------------------------------------------------------------------------------------------------------------------
clean:
	rm -rf .aws-sam .pytest_cache .ruff_cache .hypothesis build benchmarks/results
	find . -path ./$(VENV) -prune -o -path ./$(TOOLS_VENV) -prune -o -path ./$(SAM_VENV) -prune -o -path ./$(CHECKOV_VENV) -prune -o \
		-type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(TOOLS_VENV) $(SAM_VENV) $(CHECKOV_VENV) $(PIPECAT_VENV) $(LAMBDA_VENV)

# ---------------------------------------------------------------------------------------------------------------------
# Capability targets (add yours below, one small section each)
# ---------------------------------------------------------------------------------------------------------------------

# Knowledge bases: PostgreSQL 16 + pgvector for the pgvector tests and benchmark, from the PyPI package
# pgserver in its own venv under /tmp (as root it adds a system user and opens the parent folders of its data dir
# and interpreter, so both stay out of the work tree). The server keeps running; tests/doubles/pgvector_server.py.
KB_PGSERVER_VENV ?= /tmp/airies-pgvenv
.PHONY: kb-pgvector
kb-pgvector: install
	test -x $(KB_PGSERVER_VENV)/bin/python || $(PYTHON) -m venv $(KB_PGSERVER_VENV)
	$(KB_PGSERVER_VENV)/bin/pip install $(PIP_QUIET) 'pgserver==0.1.4'
	$(PY) -c "from tests.doubles.pgvector_server import pgvector_url; url = pgvector_url(); assert url, 'pgserver is not installed'; print('pgvector at', url)"

# Web app: Vite + Preact + TypeScript in web/ (packages pinned by web/package-lock.json), built into the airies
# package so the API function serves it (docs/web-app.md). Rebuilt only when its sources or pins change.
WEB_DIST := layers/common/airies/webapp/dist
WEB_STAMP := $(WEB_DIST)/.built
WEB_DEPS := web/node_modules/.airies-installed
WEB_SOURCES := $(shell find web/src -type f 2>/dev/null) web/index.html web/vite.config.ts web/vite.widget.config.ts \
	web/tsconfig.json
.PHONY: web web-test chromium

$(WEB_DEPS): web/package.json web/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "Node.js 20.19+ and npm are needed to build the web app"; exit 1; }
	cd web && npm ci --no-audit --no-fund
	@touch $@

$(WEB_STAMP): $(WEB_DEPS) $(WEB_SOURCES)
	cd web && npm run build
	@touch $@

web: $(WEB_STAMP)

# Unit tests of the browser-side code (money, resampling, jitter buffer, waterfall): vitest, under a second.
web-test: $(WEB_DEPS)
	cd web && npm test

# Chromium (Debian's package) for the browser tests: they fail, never skip, without it.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "Chromium (browser tests) is missing: installing it with apt-get"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

# Benchmark: Airies against Pipecat, same injected latencies, interleaved in one run (docs/benchmarks.md). Pipecat is
# not a project dependency: it lives in its own virtual environment. Knobs: TURNS, ROUNDS, MAX_LOAD, BENCH_PIPECAT_ARGS.
PIPECAT_VENV ?= .venv-pipecat
PIPECAT_VERSION := 1.14.0
PIPECAT_STAMP := $(PIPECAT_VENV)/.pipecat-$(PIPECAT_VERSION)
.PHONY: bench-pipecat

$(PIPECAT_STAMP):
	$(PYTHON) -m venv $(PIPECAT_VENV)
	$(PIPECAT_VENV)/bin/pip install $(PIP_QUIET) 'pipecat-ai[openai]==$(PIPECAT_VERSION)'
	@touch $@

bench-pipecat: install espeak $(PIPECAT_STAMP)
	$(PY) -m benchmarks.vs_pipecat --pipecat-python $(PIPECAT_VENV)/bin/python --turns $(or $(TURNS),16) \
		--rounds $(or $(ROUNDS),4) --max-load $(or $(MAX_LOAD),1.0) $(BENCH_PIPECAT_ARGS)
