# Two commands on a fresh machine: `make up` runs the system, `make test` proves it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PG_VERSION := $(shell ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)

.PHONY: install netns-tools services up test bench lint format clean

install: $(STAMP) /usr/bin/bwrap netns-tools /usr/bin/chromium

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

# The gateway's browser test loads a Next.js preview in a real headless Chromium (Debian package).
/usr/bin/chromium:
	@command -v chromium >/dev/null || { \
	  echo "installing chromium (Debian package) for the gateway's browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Each local sandbox gets its own network namespace: pasta (passt) for user-mode networking,
# nftables for its egress rules, dnsmasq for its resolver, ip (iproute2) to list the host's
# addresses the rules keep out.
NETNS_PACKAGES := pasta:passt nft:nftables dnsmasq:dnsmasq-base ip:iproute2
netns-tools:
	@missing=""; for pair in $(NETNS_PACKAGES); do \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	[ -z "$$missing" ] || { \
	  echo "installing$$missing (Debian packages) for the local provider's sandbox networks"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; }

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
