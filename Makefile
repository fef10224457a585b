# `make test` and `make sweep` share one set-up: a .venv made from pyproject.toml, rebuilt when it changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test sweep install docs notebook clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# An MLflow tracking server for the MLflow test, in a venv of its own: the full `mlflow` package pins an older
# pyarrow than this project's. Optional: when it cannot be installed, that test is skipped with the reason.
MLFLOW_VENV := .venv-mlflow
$(MLFLOW_VENV)/.installed:
	-test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	-$(MLFLOW_VENV)/bin/python -m pip install --quiet mlflow && touch $@

test: $(STAMP) $(MLFLOW_VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The main job: the quickstart sweep on the embedded default dataset (started over each time; SWEEP_ARGS= to
# refuse instead when its folder exists).
SWEEP_ARGS ?= --new
sweep: $(STAMP)
	$(BIN)/l2d-sweep run search_spaces/quickstart.yaml $(SWEEP_ARGS)

# The documentation site (MkDocs Material) into site/: the generated reference pages must be current, and any
# warning (a broken link, a missing page) is an error.
docs: $(STAMP)
	$(BIN)/python docs/gen_reference.py --check
	$(BIN)/python -m mkdocs build --strict --site-dir site

# The notebook page of the docs (docs/notebook.md and its figures): notebooks/quickstart.py executed in a Jupyter
# kernel on a real 3-trial sweep (a minute or two), then rendered with nbconvert. CI executes it in tests/test_notebook.py.
notebook: $(STAMP)
	$(BIN)/python docs/render_notebook.py

clean:
	rm -rf $(VENV) $(MLFLOW_VENV) .pytest_cache site
