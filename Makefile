# One command per chore; CI (.ci/run) calls `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -n 2

.PHONY: demo test lint typecheck check-system matrix docs bench bench-pytest clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed  ## a real worker runs the seeds: live progress, status pages, span trees
	$(VENV)/bin/otel-progress demo

check-system:  ## the real servers the tests start: fail with the install command, never skip
	@command -v redis-server >/dev/null || { echo "redis-server missing: apt-get update && apt-get install -y redis-server"; exit 1; }
	@command -v promtool >/dev/null || { echo "promtool missing: apt-get update && apt-get install -y prometheus"; exit 1; }
	@command -v chromium >/dev/null || { echo "chromium missing: apt-get update && apt-get install -y chromium"; exit 1; }
	@test -x /usr/lib/rabbitmq/bin/rabbitmq-server || { echo "rabbitmq-server missing: apt-get update && apt-get install -y rabbitmq-server"; exit 1; }

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

test: $(VENV)/.installed check-system lint typecheck  ## lint, mypy --strict and the test suite
	$(PY) -m pytest $(PYTEST_ARGS)

matrix: $(VENV)/.installed  ## the supported-versions matrix (.ci/matrix): oldest and newest rows
	bash .ci/matrix

docs: $(VENV)/.installed  ## the API reference and guides into site/ (warnings are errors)
	$(VENV)/bin/mkdocs build --strict

$(VENV)/.bench-installed: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-installed  ## benchmarks/RESULTS.md: every target of issue 10, side by side
	@command -v redis-server >/dev/null || { echo "redis-server missing: apt-get update && apt-get install -y redis-server"; exit 1; }
	$(PY) benchmarks/run.py --readme $(BENCH_ARGS)

bench-pytest: $(VENV)/.bench-installed  ## the pytest-benchmark hot-path file (no RESULTS.md)
	$(PY) -m pytest benchmarks --benchmark-only -p no:xdist

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
