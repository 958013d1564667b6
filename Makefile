# bnstudy: `make run` trains the quickstart study, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MIRROR_DEFAULT := $(abspath ../shared/datasets)
export BNSTUDY_DATA_MIRROR ?= $(if $(wildcard $(MIRROR_DEFAULT)/README.md),$(MIRROR_DEFAULT),)

.PHONY: venv run test test-fast bench report clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,tensorboard]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/bnstudy-train -m experiment=quickstart
	$(BIN)/bnstudy-report results/quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/bnstudy-bench

clean:
	rm -rf $(VENV) .pytest_cache
