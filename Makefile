# `make test` and `make sweep` share one set-up: a .venv made from pyproject.toml, rebuilt when it changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test sweep install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The main job: the quickstart sweep on the embedded default dataset (started over each time; SWEEP_ARGS= to
# refuse instead when its folder exists).
SWEEP_ARGS ?= --new
sweep: $(STAMP)
	$(BIN)/l2d-sweep run search_spaces/quickstart.yaml $(SWEEP_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
