"""Sweeps that grow and trade off: the study in a database, extend, warm start, two objectives, optuna-dashboard in a
real browser."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import yaml

from tests.commands import l2d_sweep_ok
from tests.conftest import free_port
from tests.sweeps.conftest import TINY_SPEC

pytestmark = [pytest.mark.ray, pytest.mark.timeout(1200)]
ARTIFACTS = Path(os.environ.get("L2D_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "runs" / "test-artifacts"))


def _spec_file(tmp: Path, **changes) -> Path:
    data = {**TINY_SPEC, "storage": str(tmp / "sweeps"), **changes}
    path = tmp / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _study(sweep: Path) -> optuna.Study:
    storage = f"sqlite:///{sweep / 'study.db'}"
    summaries = optuna.get_all_study_summaries(storage)
    assert len(summaries) == 1
    return optuna.load_study(study_name=summaries[0].study_name, storage=storage)


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """A finished 3-trial sweep, then extended by 2."""
    tmp = tmp_path_factory.mktemp("grown")
    path = _spec_file(tmp, name="grow", budget={**TINY_SPEC["budget"], "num_samples": 3})
    first = l2d_sweep_ok("run", str(path))
    sweep = tmp / "sweeps" / "grow"
    before = pq.read_table(sweep / "results" / "trials.parquet").to_pylist()
    extended = l2d_sweep_ok("extend", str(sweep), "--num-samples", "2")
    return tmp, sweep, before, first + extended


def test_extend_grows_the_same_study_and_tables(grown):
    _, sweep, before, output = grown
    trials = pq.read_table(sweep / "results" / "trials.parquet").to_pylist()
    study = _study(sweep)
    assert len(before) == 3 and len(trials) == 5 and len({t["trial_id"] for t in trials}) == 5
    assert {t["trial_id"] for t in before} <= {t["trial_id"] for t in trials}  # the earlier rows are kept
    tune_ids = [t.user_attrs["tune_trial_id"] for t in study.trials]
    assert len(study.trials) == 5 and sorted(tune_ids) == sorted(t["trial_id"] for t in trials)  # none twice
    assert all(t.state.is_finished() for t in study.trials)
    for trial, row in (
        (t, next(r for r in trials if r["trial_id"] == t.user_attrs["tune_trial_id"])) for t in study.trials
    ):
        assert trial.user_attrs["status"] == row["status"] and trial.user_attrs["method"] == row["method"]
        if row["status"] == "completed":
            assert trial.value == pytest.approx(row["best_val_mAP"])  # its best epoch's value
        else:  # stopped by ASHA: pruned, with its last value
            assert trial.state == optuna.trial.TrialState.PRUNED
            assert trial.value == pytest.approx(row["last_val_mAP"])
    assert (sweep / "tune").is_dir() and (sweep / "tune-1").is_dir()
    spec = yaml.safe_load((sweep / "spec.yaml").read_text())
    assert spec["budget"]["num_samples"] == 5
    assert "extending sweep grow: 2 more trial(s)" in output
    # Extending again before... a finished sweep extends again; an unfinished one is refused (tested in bad inputs).
    assert json.loads((sweep / ".l2d-sweep").read_text())["experiment"] == 1


def test_extend_of_a_copy_grows_the_copy_and_never_the_original(grown, tmp_path):
    import hashlib

    _, sweep, _, _ = grown

    def digests(folder):
        return {
            p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
        }

    copy = Path(shutil.copytree(sweep, tmp_path / "grow-copy", symlinks=True))
    before = digests(sweep)
    output = l2d_sweep_ok("extend", str(copy), "--num-samples", "1")
    assert "extending sweep grow-copy: 1 more trial(s)" in output and str(copy) in output
    assert len(pq.read_table(copy / "results" / "trials.parquet")) == 6 and len(_study(copy).trials) == 6
    assert digests(sweep) == before  # the original: 5 trials, not one byte changed
    assert len(_study(sweep).trials) == 5


def test_warm_start_seeds_a_new_study_and_tpe_uses_it(grown):
    tmp, sweep, _, _ = grown
    path = _spec_file(tmp, name="warm", warm_start=str(sweep), budget={**TINY_SPEC["budget"], "num_samples": 1})
    output = l2d_sweep_ok("run", str(path))
    finished = [
        t
        for t in pq.read_table(sweep / "results" / "trials.parquet").to_pylist()
        if t["status"] in ("completed", "stopped")
    ]
    assert f"warm start: {len(finished)} finished trial(s) of {sweep} in the study" in output
    study = _study(tmp / "sweeps" / "warm")
    warm = [t for t in study.trials if t.user_attrs.get("warm_start_from") == str(sweep)]
    own = [t for t in study.trials if "warm_start_from" not in t.user_attrs]
    assert len(warm) == len(finished) and len(own) == 1
    # The first proposal of the new sweep is TPE's, informed by the earlier trials: not the point a cold study with the
    # same sampler and seed would draw at random at startup.
    from sweeps.search.space import DefineByRunSpace
    from sweeps.search.study import build_sampler
    from sweeps.specs import load_spec

    spec = load_spec(str(path))
    assert len(warm) >= build_sampler(spec)._n_startup_trials
    cold = optuna.create_study(sampler=build_sampler(spec), direction="maximize")
    first_cold = cold.ask()
    DefineByRunSpace(spec)(first_cold)
    assert own[0].params != first_cold.params


def test_two_objectives_pareto_front_of_the_search_is_the_tables(tmp_path):
    path = _spec_file(
        tmp_path,
        name="tradeoff",
        objectives=[{"metric": "val_mAP", "mode": "max"}, {"metric": "student_params", "mode": "min"}],
        methods=["mld"],
        search_space={"lambda_mld": {"low": 1, "high": 100}, "lr": 2e-3},
        budget={**TINY_SPEC["budget"], "num_samples": 4, "searcher": "nsga2"},
    )
    l2d_sweep_ok("run", str(path))
    sweep = tmp_path / "sweeps" / "tradeoff"
    from sweeps.results import SweepResults
    from sweeps.search.study import search_front

    study = _study(sweep)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["val_mAP", "student_params"]
    table_front = sorted(SweepResults(sweep).pareto().column("trial_id").to_pylist())
    assert search_front(study) == table_front and table_front
    printed = l2d_sweep_ok("results", str(sweep), "--pareto")
    assert (
        f"Pareto front of val_mAP (max) vs student_params (min): {len(table_front)} trial(s) found by the search"
        in printed
    )


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _page_text(url: str, profile: Path, screenshot: Path | None = None) -> str:
    flags = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=20000",
        "--window-size=1400,1000",
    ]
    if screenshot is not None:
        subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    dom = re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_dashboard_shows_the_study_in_a_real_browser(grown):
    pytest.importorskip("optuna_dashboard")
    tmp, sweep, _, _ = grown
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", "dashboard", str(sweep), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first = server.stdout.readline()
        assert f"http://127.0.0.1:{port}/dashboard/" in first and "(5 trials" in first, first
        study = _study(sweep)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        listing = _page_text(f"http://127.0.0.1:{port}/dashboard/", tmp / "chrome-a")
        assert study.study_name in listing
        trials = _page_text(
            f"http://127.0.0.1:{port}/dashboard/studies/{study._study_id}/trials",
            tmp / "chrome-b",
            screenshot=ARTIFACTS / "dashboard-trials.png",
        )
        assert "5 Trials" in trials and all(f"Trial {n}" in trials for n in range(5))
        overview = _page_text(
            f"http://127.0.0.1:{port}/dashboard/studies/{study._study_id}",
            tmp / "chrome-c",
            screenshot=ARTIFACTS / "dashboard.png",
        )
        assert "History" in overview and "val_mAP" in overview
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    finally:
        server.terminate()
        server.wait(timeout=30)
