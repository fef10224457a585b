# `make test` and `make sweep` share one set-up: a .venv made from pyproject.toml with every version pinned by the
# lock file (requirements/lock.txt), rebuilt when either changes. `make lock` re-resolves the lock (docs/development.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
MLFLOW_LOCK := requirements/mlflow-server.txt

.PHONY: test test-quick sweep install docs notebook lock lint mutants clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# An MLflow tracking server for the MLflow test, in a venv of its own: the full `mlflow` package pins an older
# pyarrow than this project's. Its versions are locked too (requirements/mlflow-server.txt).
MLFLOW_VENV := .venv-mlflow
$(MLFLOW_VENV)/.installed: $(MLFLOW_LOCK)
	test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/python -m pip install --quiet -c $(MLFLOW_LOCK) mlflow
	touch $@

# Re-resolve both locks: the newest releases pyproject.toml allows (every extra the image or the tests use), in
# scratch venvs; then `make test`, and commit the lock files with what the suite ran.
lock:
	rm -rf .venv-lock .venv-lock-mlflow
	$(PYTHON) -m venv .venv-lock && .venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[dev,gcs]'
	{ echo "# Every package the dev, CI and image installs use, at the versions the suite ran with (make lock writes it;"; \
	  echo "# make install, .ci/run and cluster/Dockerfile install with -c requirements/lock.txt). Python 3.11, Linux x86_64."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^l2d-sweep'; } > $(LOCK).new
	$(PYTHON) -m venv .venv-lock-mlflow && .venv-lock-mlflow/bin/python -m pip install --quiet mlflow
	{ echo "# The MLflow tracking server's venv for tests/sweeps/test_mlflow.py (make lock writes it)."; \
	  .venv-lock-mlflow/bin/python -m pip freeze; } > $(MLFLOW_LOCK).new
	mv $(LOCK).new $(LOCK) && mv $(MLFLOW_LOCK).new $(MLFLOW_LOCK)
	rm -rf .venv-lock .venv-lock-mlflow

test: $(STAMP) $(MLFLOW_VENV)/.installed
	$(BIN)/python -m pytest --durations=10 $(PYTEST_ARGS)

# The linter and the formatter's check (ruff, configured in pyproject.toml); `ruff format .` applies the format.
LINTED := l2d sweeps tests benchmarks docs/*.py notebooks
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

# Mutation testing of the safety modules against the fast tests (mutmut, [tool.mutmut] in pyproject.toml): slow
# (an hour or more on 2 cores), not part of CI; benchmarks/mutants.py writes the report docs/development.md shows.
mutants: $(STAMP)
	$(BIN)/python benchmarks/mutants.py

# The edit loop: the tests that start no Ray cluster and train nothing slow (a few minutes on 2 cores).
test-quick: $(STAMP)
	$(BIN)/python -m pytest -m "not ray and not slow and not faults and not multinode" $(PYTEST_ARGS)

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
