# bnstudy: `make run` trains the quickstart study, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MIRROR_DEFAULT := $(abspath ../shared/datasets)
export BNSTUDY_DATA_MIRROR ?= $(if $(wildcard $(MIRROR_DEFAULT)/README.md),$(MIRROR_DEFAULT),)

.PHONY: venv run test test-fast test-cluster docs test-docs answer bench studies device-kit clean

STUDIES := ioffe_mnist lr_sensitivity mnist_tuned depth fashion_cnn maxpool_shift pool_control cifar_vgg effective_lr landscape bn_frozen norm_family fashion_tuned vgg_tuned skipinit decompose optimizer
JOBS ?= 2

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,tensorboard,search,mlflow]'
	touch $(STAMP)

# the quickstart, trained into an untracked folder and compared with the committed runs;
# a second `make run` trains nothing (finished runs are skipped)
QUICKSTART := runs/quickstart

# the committed quickstart was trained with AVX2 kernels: asking torch (ATen) and oneDNN for the same
# ones makes the comparison bit-exact on an AVX-512 CPU too (other CPUs ignore the request)
QUICKSTART_KERNELS := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2

run: $(STAMP)
	$(QUICKSTART_KERNELS) $(BIN)/bnstudy-train -m experiment=quickstart out_dir=$(QUICKSTART)
	$(BIN)/bnstudy-report $(QUICKSTART)
	@echo "report: $(QUICKSTART)/report.md"
	$(BIN)/bnstudy-runs $(QUICKSTART) --compare results/quickstart

# every study in experiments/, JOBS at a time; resumable: run it again to continue
studies: $(STAMP)
	for s in $(STUDIES); do \
	  $(BIN)/bnstudy-train -m experiment=$$s hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) || exit 1; \
	  $(BIN)/bnstudy-report results/$$s; \
	done

# tests run in TEST_JOBS processes (pytest-xdist), a test file in one process (its module-wide fixtures run once);
# TEST_JOBS=0 runs them in this one
TEST_JOBS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile -m "not slow"

# sweeps on a real SLURM: start a single-node cluster on loopback (root, Debian, apt), run the
# cluster tests, stop the cluster again (by its pid files) whatever the tests' outcome
test-cluster: $(STAMP)
	bash scripts/slurm_local.sh start
	$(BIN)/python -m pytest -q -m cluster tests/test_cluster.py; rc=$$?; bash scripts/slurm_local.sh stop; exit $$rc

# the docs site (MkDocs, Material theme) in site/: the README, docs/ and results/ with their figures;
# --strict: a broken link, image, anchor or menu entry fails the build
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	@echo "site: site/index.html"

# the built site in a real headless browser (Debian's chromium and chromium-driver): the home page, the
# answer and a claim render with every image and no console error
test-docs: docs
	$(BIN)/python -m pytest -q -m browser tests/test_site_browser.py

# the one-screen answer: the headline gaps measured from the packed studies, the table in results/README.md
# and results/answer/gaps.png (+ .svg, .csv); tests/test_answer.py checks the committed table against it
answer: $(STAMP)
	$(BIN)/bnstudy-report results --answer

bench: $(STAMP)
	$(BIN)/bnstudy-bench

# what scripts/device_study.sh needs on a GPU machine without hydra or internet (git-ignored):
# pure-Python wheels of hydra-core, omegaconf, antlr4, the joblib launcher and joblib, and the compact
# CIFAR-10-JPEG built from the mirror (about 19 MiB in all)
DEVICE_KIT ?= device-kit

device-kit: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/device_kit.sh $(DEVICE_KIT)

clean:
	rm -rf $(VENV) .pytest_cache
