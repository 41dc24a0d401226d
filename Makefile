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

.PHONY: setup net demo test

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

net: $(STAMP)
	$(PY) -m generator DEPTH=$(DEPTH) VARIANT=$(VARIANT) DATASET=$(DATASET) \
		BRANCHES=$(BRANCHES) ALPHA=$(ALPHA) WIDTH=$(WIDTH)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests
