# samex front door. `make run` runs the local stack; `make test` runs the whole suite.
SHELL := /bin/bash
# The first candidate that really runs and is 3.11+ (pyenv shims exist for versions that are not active).
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { command -v $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
KAFKA_STAMP := .kafka/.resolved-$(shell sed -n 's/^KAFKA_VERSION = "\(.*\)"/\1/p' router/localkafka.py)

.PHONY: help venv kafka-jars kafka run test test-fast schemas-check lint bench clean

help:
	@echo "make run            broker + router worker + simulators, live summary (Ctrl-C stops)"
	@echo "make test           virtualenv, deps, Kafka jars, Prometheus, the whole suite"
	@echo "make kafka          a bare local Kafka broker (prints its bootstrap address)"
	@echo "make schemas-check  Avro compatibility of schemas/ against schemas/registry/"
	@echo "make test-fast      the tests that need no broker"
	@echo "make lint           ruff and mypy"
	@echo "make bench          the benchmarks under bench/ (each writes its figures to stdout)"
	@echo "make clean          remove .venv and local state"

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON)" ]; then echo "samex needs Python 3.11+: none of python3.13, python3.12, python3.11, python3 is; set PYTHON=/path/to/python3.11" >&2; exit 1; fi
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "samex needs Python 3.11+")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

$(KAFKA_STAMP): $(STAMP)
	$(BIN)/python -m router.localkafka --resolve-only
	@touch $(KAFKA_STAMP)

kafka-jars: $(KAFKA_STAMP)

kafka: kafka-jars
	PYTHON=$(BIN)/python scripts/kafka

run: kafka-jars
	$(BIN)/samex run

test: kafka-jars
	scripts/ensure-prometheus
	scripts/ensure-postgres
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -m "not kafka and not slow" $(PYTEST_ARGS)

SCHEMAS_DIR ?= schemas
schemas-check: venv
	$(BIN)/samex schemas check --dir $(SCHEMAS_DIR)

lint: venv
	$(BIN)/ruff check router connectors tests bench
	$(BIN)/mypy router

bench: kafka-jars
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/worker_cpu.py
	$(BIN)/python bench/replay.py
	$(BIN)/python bench/mllp.py
	$(BIN)/python bench/fhir_validate.py

clean:
	rm -rf $(VENV) .samex .pytest_cache
