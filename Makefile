# Stadjerspas Ledger: set-up, run, test.
#
#   make setup         idempotent: .venv, node_modules, solc shim link, .venv-brownie, Debian
#                      packages (as root only), the browser bundle (api/static/build/); stamp
#                      files in .make/ keep a second run fast
#   make run           set up, then start the service (`stadjerspas up`)
#   make test          set up, then lint + types + the main pytest suite + the brownie tests
#   make lint          ruff check, ruff format --check, mypy --strict
#   make pytest        the main suite only (PYTEST_ARGS="..." to pass options)
#   make test-brownie  `brownie test tests/brownie` in .venv-brownie
#   make brownie ARGS="compile"   any brownie command with anvil and the shim in place
#   make bench         gas and throughput benchmarks (bench/)
#   make web           rebuild the browser bundle (api/static/build/) after editing web/src
#   make clean         remove build outputs (keeps var/ data and the environments)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

ROOT       := $(CURDIR)
PYTHON     ?= python3
VENV       := $(ROOT)/.venv
BVENV      := $(ROOT)/.venv-brownie
PY         := $(VENV)/bin/python
BPY        := $(BVENV)/bin/python
STAMPS     := $(ROOT)/.make
SOLC_VERSION := 0.8.30
SOLCX_DIR  := $(HOME)/.solcx
SOLC_LINK  := $(SOLCX_DIR)/solc-v$(SOLC_VERSION)
SHIM       := $(ROOT)/tools/solc-shim
ANVIL_NATIVE = $(firstword $(wildcard $(ROOT)/node_modules/@foundry-rs/anvil-*/bin/anvil))
DEV_MNEMONIC := test test test test test test test test test test test junk
APT_PACKAGES := zbar-tools chromium
PYTEST_ARGS ?=
ARGS ?=

# Package roots that exist now: a new one (e.g. api/) must re-run the editable install, because
# setuptools' editable finder maps only the packages it saw at install time.
PKG_INITS  := $(wildcard ledger/__init__.py wallet/__init__.py api/__init__.py)
LINT_PATHS := $(wildcard ledger wallet api scripts bench) tests
TYPE_PATHS := $(wildcard ledger wallet api bench)

BROWNIE    := env PATH="$(BVENV)/bin:$$PATH" $(BVENV)/bin/brownie

# Browser code (web/src) bundled by esbuild into api/static/build/ (gitignored), and Swagger UI
# (npm swagger-ui-dist) copied to api/static/build/docs/ for the API docs page.
WEB_SRC    := $(shell find web/src -type f 2>/dev/null | sort) web/build.mjs web/docs-assets.mjs
WEB_BUNDLE := api/static/build/scanner.js
DOCS_BUNDLE := api/static/build/docs/swagger-ui-bundle.js

.PHONY: help setup solc-link web run test lint fmt pytest test-brownie brownie bench clean distclean

help:
	@sed -n '3,15p' Makefile | sed 's/^# \{0,1\}//'

# ---------------------------------------------------------------------------------- set-up --

setup: $(STAMPS)/venv $(STAMPS)/npm solc-link $(STAMPS)/brownie $(STAMPS)/apt $(STAMPS)/web

$(STAMPS):
	@mkdir -p $@

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip

$(STAMPS)/venv: pyproject.toml $(PKG_INITS) | $(STAMPS) $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[api,dev]'
	@touch $@

$(STAMPS)/npm: package.json $(wildcard package-lock.json) | $(STAMPS)
	@if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; \
	 else npm install --no-audit --no-fund; fi
	@test -x "$$(ls node_modules/@foundry-rs/anvil-*/bin/anvil | head -1)" \
	  || { echo "anvil native binary missing after npm install" >&2; exit 1; }
	@touch $@

# The scanner bundle (jsQR + web/src/scanner.js as one IIFE, window.StadjerspasScanner) and the
# test harness glue. Rebuilt when a source, the build script or the npm install changes, or when
# the bundle or the docs assets are missing (e.g. after `make clean`).
$(STAMPS)/web: $(WEB_SRC) $(STAMPS)/npm $(if $(and $(wildcard $(WEB_BUNDLE)),$(wildcard $(DOCS_BUNDLE))),,web-force) | $(STAMPS)
	npm run --silent build:web
	@touch $@

web: $(STAMPS)/web

.PHONY: web-force
web-force:

# py-solc-x and brownie look for compilers as ~/.solcx/solc-v<version>. Checked on every run
# (cheap): the link is per user, so another checkout may have pointed it at itself.
solc-link: $(STAMPS)/npm
	@chmod +x $(SHIM)
	@if [ "$$(readlink $(SOLC_LINK) 2>/dev/null)" != "$(SHIM)" ]; then \
	  mkdir -p $(SOLCX_DIR) && ln -sfn $(SHIM) $(SOLC_LINK) && echo "linked $(SOLC_LINK) -> $(SHIM)"; \
	  $(SOLC_LINK) --version | grep -q "Version: $(SOLC_VERSION)+"; fi

# brownie 1.22 hard-pins web3/eth-abi/pytest/hypothesis/python-dotenv, so it lives in its own
# environment; `ledger` and `wallet` are installed there too (with their core dependencies).
# brownie selects its anvil backend only for a `cmd` that starts with "anvil", so the native
# binary is linked into .venv-brownie/bin, which brownie commands get first on PATH.
# The development network's anvil flags go into ~/.brownie/network-config.yaml, because
# brownie 1.22 fails on `networks.development.cmd_settings` in brownie-config.yaml.
$(STAMPS)/brownie: pyproject.toml $(PKG_INITS) $(STAMPS)/npm | $(STAMPS) solc-link
	@[ -x $(BPY) ] || $(PYTHON) -m venv $(BVENV)
	$(BVENV)/bin/pip install --quiet --disable-pip-version-check 'eth-brownie==1.22.*'
	$(BVENV)/bin/pip install --quiet --disable-pip-version-check -e .
	$(BVENV)/bin/pip check
	ln -sfn $(ANVIL_NATIVE) $(BVENV)/bin/anvil
	$(BROWNIE) networks modify development port=8549 chain_id=31337 accounts=10 \
	  evm_version=prague base_fee=0 gas_price=0 gas_limit=30000000 \
	  "mnemonic=$(DEV_MNEMONIC)" >/dev/null
	@touch $@

# Debian packages the tests need (QR decoding, headless browser): installed only when missing,
# and only as root (CI runs as root); otherwise print what is missing.
$(STAMPS)/apt: | $(STAMPS)
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "apt-get install:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "warning: missing Debian packages:$$missing (run 'make setup' as root)" >&2; exit 0; fi; \
	fi
	@touch $@

# -------------------------------------------------------------------------------- run/test --

run: setup
	$(VENV)/bin/stadjerspas up

# -k: run every stage even when an earlier one fails, and fail at the end.
test: setup
	$(MAKE) --no-print-directory -k lint pytest test-brownie

lint: $(STAMPS)/venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy --strict $(TYPE_PATHS)

fmt: $(STAMPS)/venv
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

# Not `-n auto` yet: the session-wide anvil fixture and the var/ caches are per process, which
# xdist would multiply; enable once the suite proves independent of that.
pytest: $(STAMPS)/venv $(STAMPS)/npm $(STAMPS)/web
	$(PY) -m pytest $(PYTEST_ARGS)

test-brownie: $(STAMPS)/brownie solc-link
	$(BROWNIE) test tests/brownie

brownie: $(STAMPS)/brownie solc-link
	$(BROWNIE) $(ARGS)

bench: setup
	$(PY) -m bench.gas
	$(PY) -m bench.indexer
	$(PY) -m bench.reports
	$(PY) -m bench.rpc
	$(PY) -m bench.api

clean:
	rm -rf build/ reports/ var/build/ api/static/build/ .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -name __pycache__ -type d -not -path './.venv*' -not -path './node_modules/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(STAMPS) $(VENV) $(BVENV) node_modules
