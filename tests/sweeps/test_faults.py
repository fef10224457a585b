"""Fault injection: a sweep killed with SIGKILL again and again, and its state files damaged, ends where an
uninterrupted sweep ends.

The kill points are drawn by a seeded generator across the sweep's life: during the teacher phase, mid-epoch,
between trials, and inside the results' writes (failpoints, ``sweeps._faults``, make the driver kill itself between a
segment's two files, just before the manifest is swapped, inside a merge of segments, and between the two compacted
tables). Each kill takes the whole process group (driver and local Ray cluster, as a lost machine would); the next
command resumes. The damage test truncates each kind of state file (the newest checkpoint, a teacher's model and
card, ``asha.json``, a results segment and the compacted ``trials.parquet``) and deletes Tune's state.

Figures are printed at the end of each test (``pytest -m faults -s``) and quoted in README's Reliability section.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.sweeps.conftest import TINY_SPEC

pytestmark = [pytest.mark.ray, pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(1800)]

SPEC = {**TINY_SPEC, "name": "faulty", "methods": ["l2d", "kd"],
        "budget": {"num_samples": 4, "max_epochs": 3, "grace_period": 1, "reduction_factor": 2, "teacher_epochs": 1}}
EPOCH_LINE = re.compile(r"trial (\w+) epoch (\d+)/\d+: val mAP ([\d.]+)")


def _write_spec(tmp: Path, storage: Path) -> Path:
    path = tmp / f"{storage.name}.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "storage": str(storage)}))
    return path


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def _complete(args: list[str], env: dict | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "sweeps.cli", *args], capture_output=True, text=True, timeout=900,
                          env=env or _env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _kill_when(args: list[str], pattern: str, occurrence: int, delay: float) -> str:
    """Run a command, SIGKILL its process group ``delay`` s after the ``occurrence``-th line matching ``pattern``;
    returns what it printed. If it ends first, returns its output (the kill point was never reached)."""
    process = subprocess.Popen([sys.executable, "-m", "sweeps.cli", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=_env(), start_new_session=True)
    output, seen = [], 0
    for line in process.stdout:
        output.append(line)
        if re.search(pattern, line):
            seen += 1
            if seen == occurrence:
                time.sleep(delay)
                break
    _kill_group(process)
    return "".join(output)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    time.sleep(1)


def _fail_at(args: list[str], point: str, count: int) -> str:
    """Run a command whose driver kills itself the ``count``-th time it passes failpoint ``point``."""
    process = subprocess.Popen([sys.executable, "-m", "sweeps.cli", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env=_env(L2D_SWEEP_FAILPOINTS=f"{point}={count}"))
    output, _ = process.communicate(timeout=900)
    _kill_group(process)
    return output


def _rows(sweep: Path) -> tuple[list[dict], list[dict]]:
    """Both tables of the sweep's current generation (what every reader sees)."""
    from sweeps.results import SweepResults

    results = SweepResults(str(sweep))
    return results.trials.to_pylist(), results.epochs.to_pylist()


def _board(trials: list[dict]) -> list[tuple]:
    """The leaderboard without trial ids (they derive from each sweep's own random id)."""
    keys = ("status", "teacher", "student", "method", "lr", "lambda_mld", "lambda_kd", "kd_temperature", "epochs_run")
    return sorted(tuple(round(t[k], 9) if isinstance(t[k], float) else t[k] for k in keys)
                  + (round(t["best_val_mAP"] or -1, 4), t["best_epoch"]) for t in trials)


def _rungs(sweep: Path, trials: list[dict]) -> list:
    config = {t["trial_id"]: (t["student"], t["method"], round(t["lr"] or 0, 9)) for t in trials}
    state = json.loads((sweep / "asha.json").read_text())
    return [sorted((milestone, config[tid], round(value, 4)) for milestone, recorded in bracket
                   for tid, value in recorded.items()) for bracket in state["brackets"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same sweep, never interrupted."""
    tmp = tmp_path_factory.mktemp("reference")
    storage = tmp / "storage"
    _complete(["run", str(_write_spec(tmp, storage))])
    sweep = storage / "faulty"
    trials, epochs = _rows(sweep)
    return sweep, trials, epochs


def test_killed_at_random_points_it_ends_where_an_uninterrupted_sweep_ends(reference, tmp_path):
    ref_sweep, ref_trials, ref_epochs = reference
    storage = tmp_path / "storage"
    spec = _write_spec(tmp_path, storage)
    sweep = storage / "faulty"
    rng = random.Random(20261127)
    # Where each kill happens: drawn, in an order drawn, with drawn occurrences and delays.
    plan = [("teacher phase", r"teacher phase: ", 1, rng.uniform(0.5, 3.0)),
            ("mid-epoch", r" started: ", rng.randint(1, 2), rng.uniform(0.3, 1.5)),
            ("mid-epoch", r" epoch 1/3: ", rng.randint(1, 2), rng.uniform(0.0, 0.3)),
            ("between trials", r"trial \w+ (completed|stopped) \|", rng.randint(1, 2), 0.0),
            ("inside a segment write", "segment-write", rng.randint(2, 6), 0.0),
            ("at the manifest swap", "manifest-swap", rng.randint(2, 6), 0.0),
            ("inside a merge of segments", "compaction", 1, 0.0),
            ("between the compacted tables", "publish", 1, 0.0)]
    rng.shuffle(plan)
    plan.insert(0, plan.pop(next(i for i, p in enumerate(plan) if p[0] == "teacher phase")))  # it comes first
    printed, kills = [], []
    for where, pattern, occurrence, delay in plan:
        args = ["run", str(spec)] if not sweep.exists() else ["resume", str(sweep)]
        if where.startswith(("inside", "at the", "between the")):
            output = _fail_at(args, pattern, occurrence)
        else:
            output = _kill_when(args, pattern, occurrence, delay)
        printed.append(output)
        finished = "sweep finished:" in output
        kills.append({"where": where, "occurrence": occurrence, "delay_s": round(delay, 2), "ran_to_the_end": finished})
    printed.append(_complete(["resume", str(sweep)]))

    trials, epochs = _rows(sweep)
    story = "\n".join(f"--- {k}\n{out[-2500:]}" for k, out in zip(kills + ["final resume"], printed))
    # Every trial appears exactly once, and every one ended.
    assert len(trials) == SPEC["budget"]["num_samples"] == len({t["trial_id"] for t in trials}), story
    assert all(t["status"] in ("completed", "stopped", "failed") for t in trials), trials
    # No reported epoch row is lost: every epoch line any driver printed is in the table, with its value.
    table = {(e["trial_id"], int(e["epoch"])): e["val_mAP"] for e in epochs}
    announced = {(m[1], int(m[2])): float(m[3]) for out in printed for m in EPOCH_LINE.finditer(out)}
    missing = {k: v for k, v in announced.items() if k not in table}
    assert not missing, missing
    assert all(abs(table[k] - v) < 0.006 for k, v in announced.items())
    epoch_numbers = {}
    for e in epochs:
        epoch_numbers.setdefault(e["trial_id"], []).append(int(e["epoch"]))
    assert all(sorted(v) == list(range(1, len(v) + 1)) for v in epoch_numbers.values())  # no gaps, no duplicates
    # The study carried on: each trial once, finished, as in the tables.
    import optuna

    storage = f"sqlite:///{sweep / 'study.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_summaries(storage)[0].study_name, storage=storage)
    assert sorted(t.user_attrs["tune_trial_id"] for t in study.trials) == sorted(t["trial_id"] for t in trials), story
    assert all(t.state.is_finished() for t in study.trials)
    # The search, ASHA and the training carried on as if nothing happened.
    assert _board(trials) == _board(ref_trials)
    assert _rungs(sweep, trials) == _rungs(ref_sweep, ref_trials)
    assert len(epochs) == len(ref_epochs)
    reached = [k for k in kills if not k["ran_to_the_end"]]
    print(f"\nfaults: {len(reached)} kills survived ({', '.join(k['where'] for k in reached)}), "
          f"{len(epochs)} epoch rows, 0 lost, leaderboard equal to the uninterrupted run's; plan {kills}")
    assert len(reached) >= 6, kills
    # The compacted pair, rewritten at the end, holds the same as the generation every reader sees.
    assert sorted(pq.read_table(sweep / "results" / "trials.parquet").to_pylist(), key=lambda t: t["trial_id"]) == \
        sorted(trials, key=lambda t: t["trial_id"])


def test_damaged_state_files_heal_or_are_named(tmp_path):
    storage = tmp_path / "storage"
    spec = _write_spec(tmp_path, storage)
    sweep = storage / "faulty"
    # A sweep killed the second time a trial reports its epoch 2 (the driver kills itself right after recording it,
    # while that trial waits): the trial is unfinished and has two checkpoints on disk.
    first = _fail_at(["run", str(spec)], "epoch-2", 2)
    interrupted = [m[1] for m in EPOCH_LINE.finditer(first) if m[2] == "2"][-1]
    run_dir = sweep / "train" / f"trial-{interrupted}"
    newest = sorted(run_dir.glob("epoch-*"))[-1]
    assert newest.name == "epoch-0002" and (run_dir / "epoch-0001" / "state.pt").is_file(), first[-2000:]
    rows_before = {(e["trial_id"], e["epoch"]): e["val_mAP"] for e in _rows(sweep)[1]}

    def truncate(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])

    teacher_dir = next(p for p in (storage / "teachers").iterdir() if p.is_dir())
    truncate(newest / "state.pt")
    truncate(teacher_dir / "model.pt")
    truncate(sweep / "asha.json")
    healed = _complete(["--verbose", "resume", str(sweep)])
    recovered = {
        "newest checkpoint": "epoch-0002: unreadable checkpoint" in healed and "falling back" in healed,
        "teacher model": "model.pt: unreadable teacher weights" in healed and "training the teacher again" in healed,
        "asha.json": "asha.json: unreadable ASHA state" in healed and "rebuilt" in healed,
    }
    trials, epochs = _rows(sweep)
    after = {(e["trial_id"], e["epoch"]): e["val_mAP"] for e in epochs}
    assert all(k in after for k in rows_before)  # no row lost
    assert all(t["status"] in ("completed", "stopped", "failed") for t in trials) and len(trials) == 4

    # The card of a teacher, on a finished sweep: the next command that needs the teacher trains it again.
    truncate(next(p for p in (storage / "teachers").iterdir() if p.is_dir() and ".corrupt" not in p.name)
             / "card.json")
    # A results segment: readers name it in one line; the next resume rebuilds the results from every source.
    manifest = json.loads((sweep / "results" / "manifest.json").read_text())
    segment = sweep / "results" / manifest["segments"][0]["trials"]
    truncate(segment)
    truncate(sweep / "results" / "trials.parquet")
    named = subprocess.run([sys.executable, "-m", "sweeps.cli", "results", str(sweep)], capture_output=True, text=True)
    assert named.returncode == 1 and named.stderr.count("\n") == 1
    assert f"{segment.name}: unreadable Parquet file" in named.stderr
    rebuilt = _complete(["--verbose", "resume", str(sweep)])
    recovered["teacher card"] = "card.json: unreadable teacher card" in rebuilt
    recovered["results segment"] = "rebuilt the results" in rebuilt and _board(_rows(sweep)[0]) == _board(trials)

    # Tune's state lost altogether: the sweep continues from its results, losing nothing, running nothing again.
    import shutil

    shutil.rmtree(sweep / "tune")
    again = _complete(["resume", str(sweep)])
    recovered["tune/ deleted"] = "cannot be restored" in again and " started: " not in again and \
        _board(_rows(sweep)[0]) == _board(trials)
    print(f"\nfaults: damaged state recovered: {recovered}")
    assert all(recovered.values()), recovered
