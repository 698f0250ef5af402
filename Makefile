# Two commands on a fresh machine: `make up` runs the system, `make test` proves it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PG_VERSION := $(shell ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)

.PHONY: install services up test bench lint format clean

install: $(STAMP) /usr/bin/bwrap /usr/bin/chromium

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# The local provider isolates workspaces with bubblewrap (Debian package `bubblewrap`).
/usr/bin/bwrap:
	@command -v bwrap >/dev/null || { \
	  echo "installing bubblewrap (Debian package) for the local provider"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq bubblewrap >/dev/null; }

# The operator page's test drives Debian's headless Chromium (no browser download).
/usr/bin/chromium:
	@command -v chromium >/dev/null || { \
	  echo "installing chromium (Debian package) for the operator page's browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Start Postgres and Redis when they are installed but stopped; fail loudly when absent.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || { \
	  echo "starting PostgreSQL $(PG_VERSION)"; \
	  pg_ctlcluster --skip-systemctl-redirect $(PG_VERSION) main start; \
	  for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; }
	@pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL does not answer on 127.0.0.1:5432" >&2; exit 1; }
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { \
	  echo "starting Redis"; \
	  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no; \
	  for i in $$(seq 1 30); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.5; done; }
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { echo "Redis does not answer on 127.0.0.1:6379" >&2; exit 1; }

up: install services
	$(BIN)/qai-jobs up

test: install services lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install services
	$(BIN)/qai-jobs bench

lint: install
	$(BIN)/ruff check qai_jobs tests alembic celeryconfig.py
	$(BIN)/ruff format --check qai_jobs tests alembic celeryconfig.py
	$(BIN)/mypy

format: install
	$(BIN)/ruff format qai_jobs tests alembic celeryconfig.py
	$(BIN)/ruff check --fix qai_jobs tests alembic celeryconfig.py

clean:
	rm -rf $(VENV) .qai .pytest_cache .mypy_cache .ruff_cache
