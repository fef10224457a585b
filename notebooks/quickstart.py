# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A sweep from a notebook
#
# The notebook API (`sweeps.api.Sweep`) runs, reads, draws and exports a sweep with the same code as the
# `l2d-sweep` command line. This notebook runs a small sweep on the embedded dataset (a few minutes on a laptop
# CPU), then reads it. `tests/test_notebook.py` executes it in CI; set `L2D_NOTEBOOK_STORAGE` to choose where the
# sweep goes (default: a temporary folder).

# %%
import os
import tempfile

from sweeps import Sweep

storage = os.environ.get("L2D_NOTEBOOK_STORAGE") or tempfile.mkdtemp(prefix="l2d-notebook-")
spec = {
    "name": "notebook",
    "dataset": {"name": "mosaic-digits", "image_size": 32, "options": {"scale": 0.05}},
    "pairings": [{"teacher": "test_resnet", "students": ["test_efficientnet"]}],
    "methods": ["l2d", "kd"],
    "search_space": {"lr": {"low": 5e-4, "high": 5e-3}},
    "budget": {"num_samples": 3, "max_epochs": 2, "grace_period": 1, "reduction_factor": 2, "teacher_epochs": 1},
    "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1},
    "recipe": {"batch_size": 16, "embed_dim": 32},
    "storage": storage,
    "seed": 0,
}
sweep = Sweep.run(spec, new=True)
sweep

# %% [markdown]
# The leaderboard is a pandas DataFrame, best first, ranked by the spec's metric (val mAP here).

# %%
board = sweep.leaderboard()
assert list(board["trial_id"]) and board["best_val_mAP"].is_monotonic_decreasing  # the trials table's own names
board[["trial_id", "method", "best_val_mAP", "test_mAP_at_best", "lr"]]

# %% [markdown]
# SQL over the `trials` and `epochs` views (DuckDB, read-only), and one trial's epochs.

# %%
per_method = sweep.sql(
    "SELECT method, count(*) AS trials, max(best_val_mAP) AS best FROM trials GROUP BY method ORDER BY best DESC"
)
best = sweep.best()
history = sweep.history(best["trial_id"])
assert list(history["epoch"]) == list(range(1, best["epochs_run"] + 1))
per_method

# %% [markdown]
# The Optuna study behind the search, read-only: one study trial per sweep trial; and the best trial by another
# metric than the spec's.

# %%
study = sweep.study()
assert len(study.trials) == len(sweep.trials)
lowest_loss = sweep.best("val_loss")
(len(study.trials), lowest_loss["trial_id"], round(lowest_loss["best_val_loss"], 3))

# %% [markdown]
# A plot is a matplotlib Figure (`out=` also writes it as a PNG): the optimisation history, then each trial's
# configuration against its score (parallel coordinates).

# %%
figure = sweep.plot("history")
assert figure.axes
figure

# %%
sweep.plot("parallel")

# %% [markdown]
# The best student, exported with its model card.

# %%
card = sweep.export(os.path.join(storage, "exported"))
assert card["backbone"] == best["student"]
sorted(os.listdir(os.path.join(storage, "exported")))
