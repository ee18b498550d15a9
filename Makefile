# Fresh machine: `make quickstart` (local stack + the quickstart config), `make test` (lint, types, whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CDC_HOME ?= .cdc
export CDC_HOME

.PHONY: quickstart test venv accel lint typecheck pytest helm manifests dev-up dev-down dev-status bench

# The optional compiled Avro reader (accel/, Rust + PyO3) is built where cargo exists; without it every
# path runs the pure-Python reader, which gives the same results.
CARGO ?= $(shell command -v cargo 2>/dev/null)

venv: $(VENV)/.installed $(if $(CARGO),$(VENV)/.accel)

# Reinstalled when pyproject.toml changes (new dependencies); the package itself is editable.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,accel]'
	touch $@

# `make accel`: (re)builds the compiled reader into the venv, release mode (about 1.5 min with an empty cargo
# cache on 2 busy cores, under 20 s after an edit). `CDC_ACCEL=0` disables it at run time.
accel: $(VENV)/.accel

$(VENV)/.accel: $(VENV)/.installed accel/Cargo.toml accel/Cargo.lock accel/pyproject.toml $(wildcard accel/src/*.rs)
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/maturin develop --release --quiet --manifest-path accel/Cargo.toml
	touch $@

# The main job on the local stack: source and sink of configs/quickstart.yaml in one process, while a
# demo table changes; ends when the target equals the source. QUICKSTART_SECONDS=0 runs until Ctrl-C.
QUICKSTART_SECONDS ?= 20

quickstart: venv
	$(BIN)/cdc dev up
	$(BIN)/cdc dev demo configs/quickstart.yaml --seconds $(QUICKSTART_SECONDS) --env-file $(CDC_HOME)/dev.env
	$(BIN)/cdc --env-file $(CDC_HOME)/dev.env status configs/quickstart.yaml

# The suite starts its own stack on free ports when no live one answers (see tests/conftest.py).
test: venv lint typecheck pytest

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

# The whole suite with the compiled reader (required where cargo exists), then the decoding paths again in
# pure mode with `CDC_ACCEL=0`: the sink's and the schemas' unit tests, and the sink's fault tests (kill -9,
# two groups, rebalance, replay past a pruned ledger, connection loss), so every guarantee holds in both modes.
pytest: venv helm
	CDC_ACCEL_REQUIRED=$(if $(CARGO),1,0) $(BIN)/pytest
	CDC_ACCEL=0 $(BIN)/pytest -q tests/unit/schemas tests/unit/sinks tests/integration/sinks/test_sink_faults.py

# helm, built once from its Go module into a cache directory (minutes the first time; tests/deploy renders
# the chart with it). HELM=/path/to/helm uses an installed one instead.
helm:
	deploy/tools/helm version --short

# The plain Kubernetes manifests in deploy/manifests/, rendered from the Helm chart (tests fail when stale).
manifests: helm
	deploy/tools/render-manifests

dev-up: venv
	$(BIN)/cdc dev up

dev-down: venv
	$(BIN)/cdc dev down

dev-status: venv
	$(BIN)/cdc dev status

# Us and Debezium side by side on the local stack (`cdc dev up` first): snapshot, streaming burst, steady load,
# one large transaction; markdown on stdout, JSON + markdown + PNG plots under bench/results/ (docs/benchmarks.md).
# BENCH_ARGS="--quick" for the small size, "--only steady bigtx" for a subset, "--publish" to refresh
# bench/reports/latest.md, "--repeat 3" for medians of three interleaved runs. Plots need the `bench` extra.
BENCH_ARGS ?=

bench: venv
	$(BIN)/python -c "import matplotlib" 2>/dev/null || $(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/versus_debezium.py $(BENCH_ARGS)
