# Entry points. Every target sets up .venv first (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch installs from local wheels here; elsewhere pip fetches the same release.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

DEPTH ?= 8
VARIANT ?= cnds
DATASET ?= imagenet
BRANCHES ?=
ALPHA ?=
WIDTH ?=
INIT ?=
DATA ?=

.PHONY: setup net demo test

setup: $(STAMP)

# Graphviz's dot draws nets (caffe.draw, draw_net); installed when run as root.
GRAPHVIZ_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz
$(STAMP): pyproject.toml
	@command -v dot >/dev/null || { [ "$$(id -u)" = 0 ] && { $(GRAPHVIZ_INSTALL) || \
	  { apt-get update -qq && $(GRAPHVIZ_INSTALL); }; }; } || \
	  echo "note: Graphviz's dot is missing (caffe.draw needs it): apt-get install graphviz" >&2
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

# DATA=<folder with train_lmdb, val_lmdb> renders the nets for your own data (DATASET's
# default then does not apply).
NET_DATASET = $(if $(and $(DATA),$(filter file,$(origin DATASET))),,$(DATASET))
net: $(STAMP)
	$(PY) -m generator DEPTH=$(DEPTH) VARIANT=$(VARIANT) DATASET=$(NET_DATASET) \
		BRANCHES=$(BRANCHES) ALPHA=$(ALPHA) WIDTH=$(WIDTH) INIT=$(INIT) DATA=$(DATA)

# Train the Fashion-MNIST CNDS-8 for a few minutes on the CPU (the LMDBs are built on
# first use), then score the final snapshot on the 10000 test images (caffe test).
# DEMO_ITERS overrides the solver's max_iter.
DEMO_MODEL := models/fashion-mnist-cnds8
DEMO_ITERS ?= 300
DEMO_SNAPSHOT = $(DEMO_MODEL)/snapshots/$(notdir $(DEMO_MODEL))_iter_$(DEMO_ITERS).caffemodel
demo: data
	$(PY) runner/solve.py $(DEMO_MODEL)/solver.prototxt --iterations $(DEMO_ITERS)
	@echo "Test accuracy of $(DEMO_MODEL) after $(DEMO_ITERS) iterations (10000 test images):"
	@$(PY) runner/solve.py test --model $(DEMO_MODEL)/train_val.prototxt \
		--weights $(DEMO_SNAPSHOT) --iterations 100 2>&1 | grep -E '\] (accuracy|loss)' | sed 's/.*\] //'

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# The fuzz suite at full budget: FUZZ_INPUTS mutants of every file format through the
# entry points, each in a worker under memory and time limits (tests/fuzz_harness.py).
FUZZ_INPUTS ?= 10000
FUZZ_SEED ?= 0
FUZZ_WORKERS ?= 2
.PHONY: fuzz
fuzz: $(STAMP)
	$(PY) tests/fuzz_harness.py --inputs $(FUZZ_INPUTS) --seed $(FUZZ_SEED) \
		--workers $(FUZZ_WORKERS) --save fuzz-failures

# Fashion-MNIST as Caffe data (train/test LMDBs, mean, labels), built once from Debian's
# dataset-fashion-mnist; the mean is written last, so it stands for the whole set.
FASHION_MNIST_SRC ?= /usr/share/datasets/fashion-mnist
FASHION_OUT ?= data/fashion-mnist
.PHONY: data

data: $(FASHION_OUT)/mean.binaryproto

$(FASHION_OUT)/mean.binaryproto: | $(STAMP)
	@if [ ! -d $(FASHION_MNIST_SRC) ]; then \
	  echo "Fashion-MNIST is missing ($(FASHION_MNIST_SRC)): apt-get install dataset-fashion-mnist" >&2; \
	  [ "$$(id -u)" = 0 ] || exit 1; \
	  apt-get install -y dataset-fashion-mnist || \
	    { apt-get update && apt-get install -y dataset-fashion-mnist; } || exit 1; \
	fi
	$(PY) -m runner.tools.fashion_mnist --out $(FASHION_OUT) \
		--source-dir $(FASHION_MNIST_SRC) --overwrite

# Model Zoo folder <ZOO>/<name>/ from a model folder and a trained train_val snapshot;
# the deploy caffemodel drops the auxiliary branches. LICENSE defaults to CC-BY-4.0. The readme
# states the weights' accuracy on the TEST net (TEST_ITERS batches, default the solver's test_iter).
MODEL ?=
WEIGHTS ?=
ZOO ?= zoo
LICENSE ?=
TEST_ITERS ?=
.PHONY: publish

publish: $(STAMP)
	@[ -n "$(MODEL)" ] && [ -n "$(WEIGHTS)" ] || \
	  { echo "usage: make publish MODEL=models/<net> WEIGHTS=<snapshot>.caffemodel ZOO=<dir> [LICENSE=...]" >&2; exit 2; }
	$(PY) -m runner.zoo publish "$(MODEL)" "$(WEIGHTS)" "$(ZOO)" $(if $(LICENSE),--license "$(LICENSE)") \
		$(if $(TEST_ITERS),--test-iterations $(TEST_ITERS))

# The paper's claims on real data (reproduce/config.yaml holds the protocol; docs/reproduce.md).
# DATASET defaults to fashion-mnist here (its LMDBs are built first); PRESET picks a preset of
# the dataset (fashion-mnist: full, quick, wide); GPU=<id> trains on that GPU; JOBS=<k> trains
# k runs at once.
PRESET ?=
GPU ?=
JOBS ?=
REPRODUCE_DATASET := $(if $(filter file,$(origin DATASET)),fashion-mnist,$(DATASET))
.PHONY: reproduce bench

reproduce: $(STAMP) $(if $(filter fashion-mnist,$(REPRODUCE_DATASET)),$(FASHION_OUT)/mean.binaryproto)
	$(PY) -m reproduce.run --dataset $(REPRODUCE_DATASET) $(if $(PRESET),--preset $(PRESET)) \
		$(if $(GPU),--gpu $(GPU)) $(if $(JOBS),--jobs $(JOBS))

# Every benchmark in bench/, one table in reports/bench.md.
bench: $(STAMP) $(FASHION_OUT)/mean.binaryproto
	$(PY) bench/run_all.py --out reports/bench.md

# The gradient probe (docs/probe.md): train the plain CNN of DATASET/DEPTH for ITERS
# iterations with the plain init (gaussian 0.01, zero biases), plot each layer's mean
# gradient into its model folder and print the BRANCHES to use. DATASET defaults to
# fashion-mnist here (its LMDBs are built first); a dataset whose LMDB is missing is probed
# with synthetic input. BATCH defaults to the data layer's (4 when synthetic).
ITERS ?= 50
THRESHOLD ?= 1e-7
BATCH ?=
PROBE_DATASET := $(if $(filter file,$(origin DATASET)),fashion-mnist,$(DATASET))
.PHONY: probe
probe: $(STAMP) $(if $(filter fashion-mnist,$(PROBE_DATASET)),$(FASHION_OUT)/mean.binaryproto)
	$(PY) -m generator DEPTH=$(DEPTH) VARIANT=cnn DATASET=$(PROBE_DATASET) WIDTH=$(WIDTH) > /dev/null
	$(PY) -m generator.probe models/$(PROBE_DATASET)-cnn$(DEPTH)/train_val.prototxt \
		--iters $(ITERS) --threshold $(THRESHOLD) $(if $(BATCH),--batch $(BATCH))
