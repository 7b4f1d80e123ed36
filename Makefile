# Everything a fresh machine needs: `make demo` and `make test` create the venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
KEDRO := $(BIN)/kedro
DEMO_REC := data/01_raw/demo-webface/train.rec
# Debian's Chromium, which tests/test_viz.py drives with Playwright (Playwright's own browsers are never downloaded).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

# No network at run time, so no telemetry either.
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: venv demo test lint browser benchmark clean-data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

$(DEMO_REC): $(VENV)/.installed conf/base/parameters_synthetic.yml $(wildcard src/face_pipeline/pipelines/synthetic/*.py)
	$(KEDRO) run --env demo --pipeline=synthetic

demo: $(DEMO_REC)
	$(KEDRO) run --env demo

lint: venv
	$(BIN)/ruff check src tests benchmarks

# Installs Chromium only where it is missing; `apt-get update` only if the install fails without it.
browser:
	@test -x $(CHROMIUM) || $(APT_INSTALL) || { $(SUDO) apt-get update && $(APT_INSTALL); }
	@test -x $(CHROMIUM) || { echo "$(CHROMIUM) still missing after installing chromium" >&2; exit 1; }

# Two workers: much of a test's time is TensorFlow tracing models on one core. tests/conftest.py
# keeps the tests that share an expensive fixture on the same worker and orders the groups,
# which --no-loadscope-reorder keeps (xdist would otherwise start the groups with most tests).
test: lint browser
	$(BIN)/pytest -n 2 --dist loadgroup --no-loadscope-reorder

benchmark: venv
	$(BIN)/python benchmarks/extraction.py

clean-data:
	find data -mindepth 2 ! -name .gitkeep -delete
