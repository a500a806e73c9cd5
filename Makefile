# The two commands of the README: `make run` and `make test`. Both start from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install lint typecheck docs bench perf-docs browser-deps oidc-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test,redis,nh3,zxcvbn,async,docs]"
	touch $(STAMP)

install: $(STAMP)

## Start the example API on http://127.0.0.1:5000 (in-memory counters, SQLite key store).
run: $(STAMP)
	APIGUARD_FORCE_HTTPS=false $(BIN)/flask --app example_app run --host 127.0.0.1 --port 5000

## Run the whole suite: lint, types, tests (Redis, browser and OpenID Provider tests are
## required when CI=true).
test: $(STAMP) browser-deps oidc-deps
	$(BIN)/ruff check flask_apiguard tests example_app benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest
	$(MAKE) docs

lint: $(STAMP)
	$(BIN)/ruff check flask_apiguard tests example_app benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/fields.py

## Re-measure and rewrite the tables docs/performance.rst includes (docs/performance/*.rst).
## BENCH_REDIS_URL=redis://... adds the Redis tables; load.py needs wrk (apt-get install wrk),
## its command counts and redis_restart.py the redis-server binary (servers of their own).
perf-docs: $(STAMP)
	$(BIN)/python benchmarks/run.py --iterations 500 --repeats 15 $${BENCH_REDIS_URL:+--redis $$BENCH_REDIS_URL} --rst docs/performance/requests.rst
	$(BIN)/python benchmarks/layers.py --rst docs/performance/layers.rst
	$(BIN)/python benchmarks/steps.py --rst docs/performance/steps.rst
	$(BIN)/python benchmarks/fields.py --rst docs/performance/fields.rst
	$(BIN)/python benchmarks/memory_storage.py --rst docs/performance/memory.rst
	@if [ -n "$$BENCH_REDIS_URL" ]; then $(BIN)/python benchmarks/redis_gate.py --redis $$BENCH_REDIS_URL --rst docs/performance/redis.rst; fi
	@if [ -n "$$BENCH_REDIS_URL" ]; then $(BIN)/python benchmarks/invalidation.py --redis $$BENCH_REDIS_URL --rst docs/performance/invalidation.rst; fi
	@if [ -n "$$BENCH_REDIS_URL" ]; then $(BIN)/python benchmarks/exactness.py --redis $$BENCH_REDIS_URL --rst docs/performance/exactness.rst; fi
	@if [ -n "$$BENCH_REDIS_URL" ] && command -v wrk >/dev/null; then $(BIN)/python benchmarks/load.py --redis $$BENCH_REDIS_URL --duration 8 --rounds 3 --delay-ms 1 --rst docs/performance/load.rst; fi
	@if [ -n "$$BENCH_REDIS_URL" ] && command -v redis-server >/dev/null; then $(BIN)/python benchmarks/redis_restart.py --rst docs/performance/restart.rst; fi

## Debian's Chromium and ChromeDriver for the browser test; installed in CI, optional locally.
browser-deps:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$CI" = "true" ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver (CI)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| (echo "could not install chromium; the browser test will fail under CI=true" >&2; exit 1); \
	else echo "note: no /usr/bin/chromium; the browser test will be skipped (apt-get install chromium chromium-driver)"; fi

## npm's oidc-provider for the identity-provider tests, from tests/oidc/package-lock.json
## (into tests/oidc/node_modules, not in git). Needs Node.js; required when CI=true.
oidc-deps:
	@if command -v node >/dev/null && command -v npm >/dev/null; then \
		npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error; \
	elif [ "$$CI" = "true" ]; then \
		echo "Node.js and npm are required under CI=true (the OpenID Provider tests)" >&2; exit 1; \
	else echo "note: no Node.js; the OpenID Provider tests will be skipped"; fi

clean:
	rm -rf $(VENV) docs/_build .pytest_cache .mypy_cache .ruff_cache build *.egg-info
