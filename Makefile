# Chronicle: `make run` serves on SQLite, `make test` runs the whole suite.
# Both create .venv and install pinned dependencies (constraints.txt) first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

PROTO_SOURCES := $(shell find protos domain_plugins -name '*.proto')

.PHONY: run test test-node soak lint lint-api format protos bench bench-scale scale profile clean lock browser console-screenshots

run: protos
	$(BIN)/chronicle serve $(ARGS)

# Three pytest workers (pytest-xdist), a test file to a worker: the suite
# mostly waits (servers starting, databases made, events awaited), so three
# overlap well on two cores (4 min against 6 with two, back to back on
# this machine). Each worker has its own PostgreSQL cluster.
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3
test: protos node_modules/.installed browser
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-node

# The console's tests drive a real headless browser: Debian's chromium and
# its chromedriver; and one runs docs/console.md's nginx example in front of
# the console (system packages, so apt-get, as root; CI runs this).
browser:
	command -v chromedriver >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }
	test -x /usr/sbin/nginx || command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light; }

# docs/images/console-*.png for docs/console.md: three replicas on a
# throwaway PostgreSQL under a little load, photographed by headless chromium.
console-screenshots: protos
	$(BIN)/python tools/console_screenshots.py

# Minutes of load at 64 clients with a fault every few seconds, then the
# invariant checker (docs/reliability.md). SOAK_SECONDS: the fault phase.
SOAK_SECONDS ?= 180
soak: protos
	CHRONICLE_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/pytest -m soak -s -p no:cacheprovider tests/soak

# The Node.js client example (clients/node) against a real server process
# that its test starts with this repository's Python.
test-node: protos clients/node/node_modules/.installed
	cd clients/node && CHRONICLE_PYTHON=$(CURDIR)/$(BIN)/python npm test --silent

clients/node/node_modules/.installed: clients/node/package.json clients/node/package-lock.json
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: protos lint-api
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The public Protobuf API: buf lint (style, every element documented) and
# buf breaking (tools/check_api_breaking.sh says against what). buf comes
# from npm, pinned in package-lock.json.
lint-api: node_modules/.installed
	node_modules/.bin/buf lint
	tools/check_api_breaking.sh

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

protos: $(STAMP) chronicle/.generated

chronicle/.generated: $(PROTO_SOURCES) tools/gen_protos.py
	$(BIN)/python tools/gen_protos.py
	touch $@

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Re-pin every dependency to what resolves today (run, test, then commit).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	PIP_CONSTRAINT= .lock-venv/bin/pip install --quiet '.[dev]' hatchling==1.33.0 grpcio-tools==1.85.1
	.lock-venv/bin/pip freeze --exclude chronicle > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) chronicle build dist .pytest_cache .mypy_cache .ruff_cache node_modules clients/node/node_modules
	find domain_plugins -path '*/protos/*' \( -name '*.py' -o -name '*.pyi' \) -delete

# The benchmark: starts its own PostgreSQL and servers; writes docs/benchmarks.md.
bench: protos
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

# Stores that grow (docs/benchmarks.md, "Stores that grow"): appends, aggregate
# loads and catch-up with the log at 0, 1 M and 10 M events, on PostgreSQL and
# SQLite (about 20 minutes, most of it filling 10 M rows); for a quick try:
# make bench-scale GROWTH_ARGS=--sizes=0,1000000
bench-scale: protos
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.growth $(GROWTH_ARGS)

# The scale-out figures (docs/scaling.md): routing against round-robin
# clients on three replicas, a replica killed under load, a projection in
# three replicas, sixteen replicas sharing the partitions. Starts its own
# PostgreSQL and servers; writes docs/scaling.md's figures and docs/scaling.json.
scale: protos
	$(BIN)/python -m bench.scale $(SCALE_ARGS)

# Where the server's event loop spends its CPU under the benchmark's load
# (cProfile over the measured window; see docs/performance.md).
profile: protos
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.profile_server $(PROFILE_ARGS)
