"""Fault injection: a sweep killed with SIGKILL again and again, and its state files damaged, ends where an
uninterrupted sweep ends.

The kill points are drawn by a seeded generator across the sweep's life: during the teacher phase, mid-epoch,
between trials, and inside the results' writes (failpoints, ``sweeps.core.faults``, make the driver kill itself between
a segment's two files, just before the manifest is swapped, inside a merge of segments, and between the two compacted
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

from tests.commands import l2d_sweep
from tests.sweeps.conftest import TINY_SPEC, plant_payload

pytestmark = [pytest.mark.ray, pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(1800)]

SPEC = {
    **TINY_SPEC,
    "name": "faulty",
    "methods": ["l2d", "kd"],
    "budget": {"num_samples": 4, "max_epochs": 3, "grace_period": 1, "reduction_factor": 2, "teacher_epochs": 1},
}
EPOCH_LINE = re.compile(r"trial (\w+) epoch (\d+)/\d+: val mAP ([\d.]+)")


def _write_spec(tmp: Path, storage: Path) -> Path:
    path = tmp / f"{storage.name}.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "storage": str(storage)}))
    return path


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def _complete(args: list[str], env: dict | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", *args], capture_output=True, text=True, timeout=900, env=env or _env()
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _kill_when(args: list[str], pattern: str, occurrence: int, delay: float) -> str:
    """Run a command, SIGKILL its process group ``delay`` s after the ``occurrence``-th line matching ``pattern``;
    returns what it printed. If it ends first, returns its output (the kill point was never reached)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        start_new_session=True,
    )
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


def _fail_at(args: list[str], point: str, count: int, also: str = "") -> str:
    """Run a command whose driver kills itself the ``count``-th time it passes failpoint ``point`` (``also``: more
    failpoints, ``name=action,...``)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=_env(L2D_SWEEP_FAILPOINTS=",".join(p for p in (f"{point}={count}", also) if p)),
    )
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
    return sorted(
        tuple(round(t[k], 9) if isinstance(t[k], float) else t[k] for k in keys)
        + (round(t["best_val_mAP"] or -1, 4), t["best_epoch"])
        for t in trials
    )


def _rungs(sweep: Path, trials: list[dict]) -> list:
    config = {t["trial_id"]: (t["student"], t["method"], round(t["lr"] or 0, 9)) for t in trials}
    state = json.loads((sweep / "asha.json").read_text())
    return [
        sorted(
            (milestone, config[tid], round(value, 4))
            for milestone, recorded in bracket
            for tid, value in recorded.items()
        )
        for bracket in state["brackets"]
    ]


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
    plan = [
        ("teacher phase", r"teacher phase: ", 1, rng.uniform(0.5, 3.0)),
        ("mid-epoch", r" started: ", rng.randint(1, 2), rng.uniform(0.3, 1.5)),
        ("mid-epoch", r" epoch 1/3: ", rng.randint(1, 2), rng.uniform(0.0, 0.3)),
        ("between trials", r"trial \w+ (completed|stopped)\s*$", rng.randint(1, 2), 0.0),
        ("inside a segment write", "segment-write", rng.randint(2, 6), 0.0),
        ("at the manifest swap", "manifest-swap", rng.randint(2, 6), 0.0),
        ("inside a merge of segments", "compaction", 1, 0.0),
        ("between the compacted tables", "publish", 1, 0.0),
    ]
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
    tagged = [t for t in study.trials if "tune_trial_id" in t.user_attrs]
    assert sorted(t.user_attrs["tune_trial_id"] for t in tagged) == sorted(t["trial_id"] for t in trials), story
    assert all(t.state.is_finished() for t in study.trials)
    # a trial asked by a driver killed before it tagged it is failed as orphaned (sweeps.search.study.reconcile)
    assert all(t.user_attrs.get("status") == "orphaned" for t in study.trials if t not in tagged), story
    # The search, ASHA and the training carried on as if nothing happened.
    assert _board(trials) == _board(ref_trials)
    assert _rungs(sweep, trials) == _rungs(ref_sweep, ref_trials)
    assert len(epochs) == len(ref_epochs)
    reached = [k for k in kills if not k["ran_to_the_end"]]
    print(
        f"\nfaults: {len(reached)} kills survived ({', '.join(k['where'] for k in reached)}), "
        f"{len(epochs)} epoch rows, 0 lost, leaderboard equal to the uninterrupted run's; plan {kills}"
    )
    assert len(reached) >= 6, kills
    # The compacted pair, rewritten at the end, holds the same as the generation every reader sees.
    assert sorted(
        pq.read_table(sweep / "results" / "trials.parquet").to_pylist(), key=lambda t: t["trial_id"]
    ) == sorted(trials, key=lambda t: t["trial_id"])


def test_damaged_state_files_heal_or_are_named(tmp_path):
    storage = tmp_path / "storage"
    spec = _write_spec(tmp_path, storage)
    sweep = storage / "faulty"
    # A sweep killed the first time a trial reports its epoch 2 (the first trial: ASHA cannot stop the first at its
    # first rung; the driver kills itself right after recording it, while the trial is held 5 s after reporting, so
    # that the driver dies first whatever the machine's load): the trial is unfinished, with two checkpoints.
    first = _fail_at(["run", str(spec)], "epoch-2", 1, also="reported-2=sleep:5")
    interrupted = [m[1] for m in EPOCH_LINE.finditer(first) if m[2] == "2"][-1]
    run_dir = sweep / "train" / f"trial-{interrupted}"
    newest = sorted(run_dir.glob("epoch-*"))[-1]
    assert newest.name == "epoch-0002" and (run_dir / "epoch-0001" / "state.pt").is_file(), first[-2000:]
    rows_before = {(e["trial_id"], e["epoch"]): e["val_mAP"] for e in _rows(sweep)[1]}
    import shutil

    planted = tmp_path / "planted" / "storage"  # the killed sweep, copied before any damage: the trusted-resume case
    shutil.copytree(storage, planted, symlinks=True)

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

    # A results segment: readers name it in one line; the next resume rebuilds the results from every source.
    manifest = json.loads((sweep / "results" / "manifest.json").read_text())
    segment = sweep / "results" / manifest["segments"][0]["trials"]
    truncate(segment)
    truncate(sweep / "results" / "trials.parquet")
    named = subprocess.run([sys.executable, "-m", "sweeps.cli", "results", str(sweep)], capture_output=True, text=True)
    assert named.returncode == 1 and named.stderr.count("\n") == 1
    assert f"{segment.name}: unreadable Parquet file" in named.stderr
    rebuilt = _complete(["--verbose", "resume", str(sweep)])
    recovered["results segment"] = "rebuilt the results" in rebuilt and _board(_rows(sweep)[0]) == _board(trials)

    # Tune's state lost altogether, on the finished sweep: nothing runs again, nothing is lost.
    shutil.rmtree(sweep / "tune")
    again = _complete(["resume", str(sweep)])
    recovered["tune/ deleted"] = (
        "every trial has finished" in again and " started: " not in again and _board(_rows(sweep)[0]) == _board(trials)
    )

    # A planted pickle (issue 22: `resume` unpickled tune/tuner.pkl and ran a shell command, exit 0). Now it is not
    # loaded, since this user's key did not sign it: the sweep continues from its results and checkpoints, and
    # says so in one line; every recorded row stays.
    copy = planted / "faulty"
    ran = tmp_path / "payload-ran"
    plant_payload(copy / "tune" / "tuner.pkl", ran)
    plant_payload(copy / "searcher.pkl", ran)
    # And the card of its teacher: this resume has trials to run, so it needs the teacher and trains it again.
    truncate(next(p for p in (planted / "teachers").iterdir() if p.is_dir()) / "card.json")
    resumed = _complete(["--verbose", "resume", str(copy)])
    recovered["teacher card"] = "card.json: unreadable teacher card" in resumed
    after_plant = {(e["trial_id"], e["epoch"]): e["val_mAP"] for e in _rows(copy)[1]}
    recovered["planted pickle not loaded"] = (
        not ran.exists()
        and "not signed by this user's key" in resumed
        and "pass --trust" in resumed
        and all(k in after_plant for k in rows_before)
        and all(t["status"] in ("completed", "stopped", "failed", "interrupted") for t in _rows(copy)[0])
    )
    print(f"\nfaults: damaged state recovered: {recovered}")
    assert all(recovered.values()), (recovered, resumed[-3000:])


# --- every file a user owns, damaged in turn on a copy of the finished reference sweep ------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
DAMAGE_START, DAMAGE_END = "<!-- damage:start -->", "<!-- damage:end -->"


def _values(sweep: Path) -> dict:
    """Every trial's recorded outcome, by trial id: what a damaged file must never change."""
    trials, epochs = _rows(sweep)
    per_trial = {}
    for e in epochs:
        per_trial.setdefault(e["trial_id"], []).append((int(e["epoch"]), round(e["val_mAP"], 6)))
    return {
        t["trial_id"]: (
            t["status"],
            t["best_epoch"],
            t["epochs_run"],
            round(t["best_val_mAP"] or -1, 6),
            sorted(per_trial.get(t["trial_id"], [])),
        )
        for t in trials
    }


def _study_values(sweep: Path) -> dict:
    import optuna

    storage = f"sqlite:///{sweep / 'study.db'}"
    names = optuna.get_all_study_names(storage)
    assert len(names) == 1, names  # never a second study
    study = optuna.load_study(study_name=names[0], storage=storage)
    return {
        t.user_attrs["tune_trial_id"]: (t.state.name, round(t.value, 6) if t.value is not None else None)
        for t in study.trials
    }


def _drop_column(path: Path, column: str) -> None:
    table = pq.read_table(path)
    pq.write_table(table.drop_columns([column]), path)


def _best_trial_folder(sweep: Path) -> Path:
    trials, _ = _rows(sweep)
    best = max((t for t in trials if t["best_val_mAP"] is not None), key=lambda t: t["best_val_mAP"])
    return sweep / "train" / f"trial-{best['trial_id']}" / "best"


def _best_file(sweep: Path, kind: str) -> Path:
    folder = _best_trial_folder(sweep)
    return folder / json.loads((folder / "best.json").read_text())["files"][kind]


def _lease(host: str, heartbeat_offset: float, **fields) -> str:
    now = time.time()
    lease = {
        "owner": "f" * 32,
        "user": "alice",
        "host": host,
        "pid": 4242,
        "command": "l2d-sweep resume x",
        "acquired": now - 60,
        "heartbeat": now + heartbeat_offset,
    }
    return json.dumps({**lease, **fields})


def _damage_cases():
    """(file, damage, how to do it, the command, what must hold): each run on its own copy of the reference sweep."""

    def truncate(path):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])

    def stamp(revision):
        def do(sweep):
            import sqlite3

            connection = sqlite3.connect(sweep / "study.db")
            connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))
            connection.commit()
            connection.close()

        return do

    def older(sweep):
        import optuna

        stamp(optuna.storages.RDBStorage(f"sqlite:///{sweep / 'study.db'}").get_all_versions()[1])(sweep)

    def flip_mode(sweep):
        spec = yaml.safe_load((sweep / "spec.yaml").read_text())
        spec["mode"] = "min"
        (sweep / "spec.yaml").write_text(yaml.safe_dump(spec))

    results = [
        ("results/trials.parquet", "deleted", lambda s: (s / "results" / "trials.parquet").unlink()),
        ("results/trials.parquet", "truncated", lambda s: truncate(s / "results" / "trials.parquet")),
        (
            "results/trials.parquet",
            "column `best_epoch` dropped",
            lambda s: _drop_column(s / "results" / "trials.parquet", "best_epoch"),
        ),
        ("results/epochs.parquet", "deleted", lambda s: (s / "results" / "epochs.parquet").unlink()),
        ("results/epochs.parquet", "truncated", lambda s: truncate(s / "results" / "epochs.parquet")),
        (
            "results/epochs.parquet",
            "column `val_mAP` dropped",
            lambda s: _drop_column(s / "results" / "epochs.parquet", "val_mAP"),
        ),
        ("results/manifest.json", "deleted", lambda s: (s / "results" / "manifest.json").unlink()),
        ("results/manifest.json", "truncated", lambda s: truncate(s / "results" / "manifest.json")),
    ]
    cases = [(f, d, do, "resume", "values") for f, d, do in results]
    cases += [
        ("study.db", "not a database", lambda s: (s / "study.db").write_text("not a database"), "resume", "set aside"),
        ("study.db", "schema of an older Optuna", older, "resume", "upgraded"),
        ("study.db", "schema of a newer Optuna", stamp("v99.0.0.z"), "resume", "refused, unchanged"),
        (".l2d-sweep (marker)", "deleted", lambda s: (s / ".l2d-sweep").unlink(), "status, then resume", "recovered"),
        (
            ".l2d-sweep (marker)",
            "not JSON",
            lambda s: (s / ".l2d-sweep").write_text("{garbage"),
            "results --pareto, then resume",
            "recovered",
        ),
        (
            "lease.json",
            "values of the wrong type",
            lambda s: (s / "lease.json").write_text(_lease("elsewhere", 0, pid="x", heartbeat="soon")),
            "status, then resume",
            "taken over",
        ),
        (
            "lease.json",
            "heartbeat 1 h in the future",
            lambda s: (s / "lease.json").write_text(_lease("elsewhere", 3600)),
            "resume",
            "taken over",
        ),
        (
            "lease.json",
            "held by a live driver elsewhere",
            lambda s: (s / "lease.json").write_text(_lease("elsewhere", 0)),
            "resume",
            "refused, unchanged",
        ),
        (
            "best/best.json",
            "truncated",
            lambda s: truncate(_best_trial_folder(s) / "best.json"),
            "export",
            "named, nothing written",
        ),
        (
            "best/model-*.pt",
            "truncated",
            lambda s: truncate(_best_file(s, "model")),
            "export",
            "named, nothing written",
        ),
        (
            "best/history-*.json",
            "deleted",
            lambda s: _best_file(s, "history").unlink(),
            "export",
            "named, nothing written",
        ),
        ("spec.yaml", "`mode` flipped by hand", flip_mode, "results, then resume", "reported, refused"),
        ("spec.yaml", "not YAML", lambda s: (s / "spec.yaml").write_text("name: [unclosed"), "results", "named"),
    ]
    return cases


def test_every_damaged_file_keeps_the_recorded_values(reference, tmp_path):
    """Issue 22/21: each file of a finished sweep (stopped trials, `keep: best+last`) damaged in turn; the command
    after it keeps every trial's values (best val mAP, best epoch, epochs run, every epoch row), or refuses in one line
    that names the file with exit status 1 and changes nothing. README's reliability table is generated from here."""
    import shutil

    ref_sweep, ref_trials, _ = reference
    assert any(t["status"] == "stopped" for t in ref_trials), ref_trials  # pruned trials are part of the case
    expected = _values(ref_sweep)
    expected_study = _study_values(ref_sweep)
    rows, failures = [], []
    for index, (file, damage, do, command, outcome) in enumerate(_damage_cases()):
        storage = tmp_path / f"case{index}"
        shutil.copytree(ref_sweep.parent, storage, symlinks=True)
        sweep = storage / ref_sweep.name
        do(sweep)
        before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
        seen, ok = [], True

        def run(args, want, storage=storage, seen=seen):  # this case's, bound now
            done = l2d_sweep(*args, timeout=900)
            text = (done.stdout + done.stderr).replace(str(storage), "<storage>")
            seen.append((" ".join(a.replace(str(storage), "<storage>") for a in args[:1]), done.returncode, text))
            return done.returncode == want, done, text

        if command == "resume" and outcome == "values":
            good, done, text = run(["resume", str(sweep)], 0)
            ok = good and ("rebuilt" in text or "rewrote" in text)
            ok = ok and _values(sweep) == expected and _study_values(sweep) == expected_study
        elif outcome == "set aside":
            good, done, text = run(["resume", str(sweep)], 0)
            asides = list(sweep.glob("study.db.corrupt-*"))
            ok = (
                good
                and len(asides) == 1
                and asides[0].read_text() == "not a database"
                and _values(sweep) == expected
                and _study_values(sweep) == expected_study
            )
        elif outcome == "upgraded":
            good, done, text = run(["resume", str(sweep)], 0)
            ok = (
                good
                and len(list(sweep.glob("study.db.backup-*"))) == 1
                and "upgraded" in text
                and _study_values(sweep) == expected_study
                and _values(sweep) == expected
            )
        elif outcome == "refused, unchanged":
            good, done, text = run(["resume", str(sweep)], 1)
            changed = [p for p, data in before.items() if not p.exists() or p.read_bytes() != data]
            ok = (
                good
                and done.stderr.count("\n") == 1
                and not changed
                and ("study.db" in done.stderr or "being driven by alice@elsewhere" in done.stderr)
            )
        elif outcome == "recovered":
            marker_before = (sweep / ".l2d-sweep").read_bytes() if (sweep / ".l2d-sweep").exists() else None
            first = ["status", str(sweep)] if command.startswith("status") else ["results", str(sweep), "--pareto"]
            good, done, text = run(first, 0)
            read_ok = (
                good
                and ((sweep / ".l2d-sweep").read_bytes() if (sweep / ".l2d-sweep").exists() else None) == marker_before
            )  # a read command writes no marker
            if first[0] == "results":
                front = [
                    line.split()[0]
                    for line in done.stdout.splitlines()[1:]
                    if line.strip() and not line.startswith("(")
                ]  # the header, then rows, then "(N rows)"
                read_ok = read_ok and front and all(t in expected for t in front)
            good, done, text2 = run(["resume", str(sweep)], 0)
            ref_id = json.loads((ref_sweep / ".l2d-sweep").read_text())["sweep_id"]
            marker = json.loads((sweep / ".l2d-sweep").read_text())
            ok = (
                read_ok
                and good
                and marker["sweep_id"] == ref_id
                and "recovered" in text2
                and _study_values(sweep) == expected_study
                and _values(sweep) == expected
            )
        elif outcome == "taken over":
            if command.startswith("status"):
                good, done, text = run(["status", str(sweep)], 0)
                ok = good
            good, done, text = run(["resume", str(sweep)], 0)
            ok = (
                ok
                and good
                and ("unreadable lease" in text or "in the future" in text)
                and _values(sweep) == expected
                and not (sweep / "lease.json").exists()
            )
        elif outcome == "named, nothing written":
            out = storage / "exported"
            good, done, text = run(["export", str(sweep), "--out", str(out)], 1)
            ok = (
                good
                and done.stderr.count("\n") == 1
                and file.split("/")[-1].split("*")[0] in done.stderr
                and str(storage) in done.stderr
                and not out.exists()
            )
        elif outcome == "reported, refused":
            good, done, text = run(["results", str(sweep)], 0)
            ok = good and "spec.yaml: differs from the spec this sweep was started with" in done.stderr
            good, done, text = run(["resume", str(sweep)], 1)
            changed = [p for p, data in before.items() if not p.exists() or p.read_bytes() != data]
            ok = ok and good and "edited by hand" in done.stderr and not changed
        elif outcome == "named":
            good, done, text = run(["results", str(sweep)], 1)
            ok = good and done.stderr.count("\n") == 1 and "spec.yaml: not valid YAML" in done.stderr
        last = seen[-1]
        line = next(
            (
                x
                for x in reversed(last[2].splitlines())
                if x.strip()
                and not x.startswith(("next: ", "teachers of "))  # the summaries after the leaderboard
                and (
                    "<storage>" in x
                    or "error" in x
                    or "failed" in x
                    or "rebuilt" in x
                    or "recovered" in x
                    or "upgraded" in x
                    or "set it aside" in x
                    or "taking over" in x
                )
            ),
            last[2].strip().splitlines()[-1] if last[2].strip() else "",
        )
        rows.append((file, damage, command, " / ".join(str(s[1]) for s in seen), outcome, ok, line))
        if not ok:
            failures.append((file, damage, [s[2][-3000:] for s in seen]))
    table = _damage_table(rows)
    print("\n" + table)
    assert not failures, failures
    _check_docs_table(table)


def _damage_table(rows) -> str:
    lines = [
        "| file | damage | command | exit | outcome | held | what the command said (last line) |",
        "|---|---|---|---|---|---|---|",
    ]
    for file, damage, command, codes, outcome, ok, said in rows:
        said = re.sub(r"\d{8}-\d{6}-[0-9a-f]{6}", "TIME-ID", said)
        said = re.sub(r"\b[0-9a-f]{8}\b", "ID", re.sub(r"\b[0-9a-f]{16}\b", "SWEEPID", said))
        said = re.sub(r"\d{2}:\d{2}:\d{2} (WARNING|INFO) [\w.]+: ", "", said)
        said = re.sub(r"\d+ s ago|\d+ s in the future", "N s", said).replace("|", "\\|").replace("`", "'")
        said = re.sub(r"line \d+ column \d+ \(char \d+\)", "line N column N (char N)", said)
        # Which JSON error a truncated file gives depends on the byte the cut lands on (its content varies per run).
        said = re.sub(r"\((?:Unterminated|Expecting|Invalid|Extra data)[^()]*: line N", "(invalid JSON: line N", said)
        said = re.sub(r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "since TIME", said)
        # The installed Optuna's version (CI resolves the newest): the table must not change with it.
        said = re.sub(r"than this one \(\d+\.\d+[\w.]*\)", "than this one (VERSION)", said)
        lines.append(
            f"| `{file}` | {damage} | `{command}` | {codes} | {outcome} | {'yes' if ok else 'NO'} | `{said[:220]}` |"
        )
    return "\n".join(lines)


def _check_docs_table(table: str) -> None:
    text = DOCS.read_text()
    assert DAMAGE_START in text and DAMAGE_END in text, f"{DOCS} lacks the damage table markers"
    current = text.split(DAMAGE_START, 1)[1].split(DAMAGE_END, 1)[0].strip()
    if os.environ.get("L2D_UPDATE_README") == "1":
        DOCS.write_text(
            text.replace(
                f"{DAMAGE_START}{text.split(DAMAGE_START, 1)[1].split(DAMAGE_END, 1)[0]}{DAMAGE_END}",
                f"{DAMAGE_START}\n{table}\n{DAMAGE_END}",
            )
        )
        return
    assert current == table, (
        f"{DOCS}'s damage table is out of date: run L2D_UPDATE_README=1 pytest -m faults "
        f"tests/sweeps/test_faults.py::test_every_damaged_file_keeps_the_recorded_values"
    )
