# Parley: `make run` serves the app on the embedded default, `make test` runs the whole suite.
# Both work on a fresh clone: they make the virtualenv and install what is missing.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
BENCH_VENV ?= .venv-bench
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
# Links in emails and SMS lead to the address served; on every interface, this machine's loopback.
LINK_HOST := $(if $(filter 0.0.0.0,$(HOST)),127.0.0.1,$(if $(filter ::,$(HOST)),[::1],$(HOST)))

# Django 6.1 needs Python >= 3.12. PYTHON=/path/to/python overrides the search.
PY_OK := import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)
PYTHON ?= $(shell for p in python3.13 python3.12 python3 \
	$${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.1[3-9]*/bin/python3 \
	$${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python3 \
	/usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do \
	  if command -v $$p >/dev/null 2>&1 && $$p -c '$(PY_OK)' >/dev/null 2>&1; then command -v $$p; break; fi; \
	done)

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help run test bench soak system-deps python-check clean

help:
	@echo "make run    - serve Parley on the embedded default (SQLite, in-memory layer, worker in-process)"
	@echo "make test   - install what the suite needs, then run it (real Redis, PostgreSQL, daphne, chromium)"
	@echo "make bench  - run the benchmarks against their peers"
	@echo "make soak   - 10 minutes of chat and tasks with a worker killed and Redis restarted"

python-check:
	@if [ -z "$(PYTHON)" ] || ! "$(PYTHON)" -c '$(PY_OK)' >/dev/null 2>&1; then \
	  echo "Parley needs Python 3.12 or later (Django 6.1), and none was found." >&2; \
	  echo "Install one (e.g. 'pyenv install 3.13'), or name it: make $(MAKECMDGOALS) PYTHON=/path/to/python3.12" >&2; \
	  exit 1; \
	fi

$(VENV)/.installed: requirements.txt | python-check
	@test -x $(PY) || { echo "Creating $(VENV) with $(PYTHON)"; "$(PYTHON)" -m venv $(VENV); }
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

# redis-server, PostgreSQL and Chromium come from Debian; installed only when absent.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "Installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

run: $(VENV)/.installed
	$(PY) manage.py migrate --noinput
	@echo
	@echo "  Parley is starting. Open http://$(HOST):$(PORT)/ and sign up."
	@echo
	PARLEY_BASE_URL="$${PARLEY_BASE_URL:-http://$(LINK_HOST):$(PORT)}" $(PY) manage.py runserver $(HOST):$(PORT)

# The suite runs twice: everything on PostgreSQL + channels-redis, then the
# in-process tests again on SQLite + the in-memory layer. Each run is spread over
# TEST_WORKERS pytest-xdist processes (each with its own servers); idle workers
# take tests queued on busy ones (--dist worksteal), as e2e tests' lengths vary.
TEST_WORKERS ?= 4
test: $(VENV)/.installed-dev system-deps
	$(PY) -m pytest --stack=postgres -n $(TEST_WORKERS) --dist worksteal
	$(PY) -m pytest --stack=embedded -m "not e2e" -n $(TEST_WORKERS) --dist worksteal

$(BENCH_VENV)/.installed: bench/requirements.txt | python-check
	@test -x $(BENCH_VENV)/bin/python || "$(PYTHON)" -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	@touch $@

bench: $(VENV)/.installed-dev $(BENCH_VENV)/.installed system-deps
	@for script in bench/tasks.py bench/thumbnails.py bench/export.py bench/fanout.py bench/search.py bench/sidebar.py bench/sockets.py; do \
	  if [ -f $$script ]; then echo "== $$script"; $(PY) $$script || exit 1; fi; \
	done

soak: $(VENV)/.installed-dev system-deps
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) staticfiles
