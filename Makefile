# Two commands a newcomer needs (README): `make demo` runs the main job, `make test` the test suite
# (`make test-fast`: the fast tier, without the tests marked slow in tests/conftest.py).
# Each sets up .venv first: torch pinned before the project (2.13.0 is a CPU build on these
# machines; an unpinned torch would pull a multi-GB CUDA build), then the project with its extras.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
# the main job: CMA-ES on real libx264 with the defaults; a private local server is started and stopped
DEMO_ARGS ?= --dataset real --epsilon 2/255 --max-minutes 9 --out runs/demo

.PHONY: setup demo test test-fast
setup: $(VENV)/.installed

# pip shows what it downloads and installs (a first setup takes minutes); it warns once per missing
# local index folder: keep its real errors, drop that noise
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install $(TORCH) 2> >(grep -v '^WARNING: Location' >&2)
	$(BIN)/pip install -e '.[server,dev,optimize,torch]' 2> >(grep -v '^WARNING: Location' >&2)
	touch $@

demo: setup
	$(BIN)/codecloop optimize $(DEMO_ARGS)

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"
