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

# The main job on the embedded default dataset: for now one distillation (teacher trained on the first run).
sweep: $(STAMP)
	$(BIN)/l2d-sweep train $(SWEEP_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
