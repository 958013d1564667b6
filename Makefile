# bnstudy: `make run` trains the quickstart study, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MIRROR_DEFAULT := $(abspath ../shared/datasets)
export BNSTUDY_DATA_MIRROR ?= $(if $(wildcard $(MIRROR_DEFAULT)/README.md),$(MIRROR_DEFAULT),)

.PHONY: venv run test test-fast bench studies clean

STUDIES := ioffe_mnist lr_sensitivity depth fashion_cnn maxpool_shift cifar_vgg
JOBS ?= 2

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,tensorboard]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/bnstudy-train -m experiment=quickstart
	$(BIN)/bnstudy-report results/quickstart
	@echo "report: results/quickstart/report.md"

# every study in experiments/, JOBS at a time; resumable: run it again to continue
studies: $(STAMP)
	for s in $(STUDIES); do \
	  $(BIN)/bnstudy-train -m experiment=$$s hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) || exit 1; \
	  $(BIN)/bnstudy-report results/$$s; \
	done

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/bnstudy-bench

clean:
	rm -rf $(VENV) .pytest_cache
