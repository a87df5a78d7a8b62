# The whole setup on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# `make test` runs the test files on this many pytest-xdist workers, each file on one worker
# (its module-scoped stacks are started once); 0: in this process, one file after another.
# Eight on two cores: much of a test's time is spent waiting on the processes it started
TEST_WORKERS ?= 8

.PHONY: run test bench chaos lint deps system-deps clean

# uv installs the project and its test tools in seconds where pip takes most of a minute; pip
# installs uv itself, and does the whole install when uv cannot (no PyPI, say). The bytecode
# is compiled at install, as pip does: where Python may not write it, every process started
# would compile Celery, kombu and the Kubernetes client again (three times the import cost)
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(VENV)/bin/uv || $(PY) -m pip install -q --disable-pip-version-check uv || true
	@if [ -x $(VENV)/bin/uv ] && $(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -e '.[test]'; \
	then :; else $(PY) -m pip install -q --disable-pip-version-check -e '.[test]'; fi
	@touch $(STAMP)

deps: $(STAMP)

# Debian packages the tests drive for real: redis-server, chromium (dashboard test), Go and
# govmomi's simulator source (our vCenter simulator in tests/vcsim).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v go >/dev/null || missing="$$missing golang-go"; \
	[ -d /usr/share/gocode/src/github.com/vmware/govmomi ] || missing="$$missing golang-github-vmware-govmomi-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

run: deps
	@command -v redis-server >/dev/null || $(MAKE) system-deps
	$(VENV)/bin/vcm run

test: deps system-deps
	@# the project's own bytecode, written once: every worker, vcm and API process the tests
	@# start reads it instead of compiling the sources again (also under PYTHONDONTWRITEBYTECODE)
	@$(PY) -m compileall -q -j 0 workers tasks api_shim bench tests celeryconfig.py >/dev/null
	@# pytest's assertion-rewritten copies of the test modules and of its plugins' packages
	@# (hypothesis, schemathesis, ...), written once: where bytecode may not be written, every
	@# xdist worker would otherwise rewrite them all again (about 8 CPU-s each)
	@PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -q --collect-only $(PYTEST_ARGS) >$(VENV)/collected \
	  || { cat $(VENV)/collected; exit 1; }
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: deps system-deps
	$(PY) -m bench.run

# The long property-based search over the task API (VCM_CHAOS_EXAMPLES, VCM_CHAOS_STEPS,
# VCM_CHAOS_TIMEOUT) and thousands of fresh schema-generated HTTP requests (VCM_CHAOS_REQUESTS),
# then the soak (VCM_SOAK_SECONDS, default 600): all run, the target fails if any does.
chaos: deps system-deps
	@status=0; \
	VCM_CHAOS=1 $(PY) -m pytest -q tests/workers/test_stateful.py $(PYTEST_ARGS) || status=1; \
	VCM_CHAOS=1 $(PY) -m pytest -q tests/http/test_api_schema.py $(PYTEST_ARGS) || status=1; \
	$(PY) -m bench.soak || status=1; \
	exit $$status

lint: deps
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .vcm *.egg-info
