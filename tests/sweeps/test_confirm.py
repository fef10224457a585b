"""The confirmation stage (sweeps.results.confirm): which configurations it reruns, on which seeds, under which ids;
what it concludes from their runs (paired by seed, t-intervals at the Bonferroni level, the best mean wins); and, with
Ray, a 4-trial sweep with ``confirm: {top: 2, seeds: 3}`` end to end, killed inside its confirmation and resumed."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest
import yaml
from scipy import stats

from sweeps.results.confirm import STAGE, config_of, pending, plan, run_id, seeds_of, summarize
from sweeps.results.reader import with_stages
from sweeps.specs import SpecError, parse_spec
from tests.commands import l2d_sweep
from tests.sweeps.conftest import TINY_SPEC

SPEC = {
    **TINY_SPEC,
    "storage": "/nonexistent",
    "seed": 7,
    "budget": {**TINY_SPEC["budget"], "confirm": {"top": 2, "seeds": 3}},
}


def _spec(**confirm):
    return parse_spec({**SPEC, "budget": {**SPEC["budget"], "confirm": {"top": 2, "seeds": 3, **confirm}}})


def _row(trial_id, method, value, lr=1e-3, status="completed", **extra):
    row = {
        "trial_id": trial_id,
        "status": status,
        "teacher": "test_resnet",
        "student": "test_efficientnet",
        "method": method,
        "lr": lr,
        "lambda_mld": 10.0 if method == "l2d" else None,
        "lambda_cd": 100.0 if method == "l2d" else None,
        "lambda_id": 1000.0 if method == "l2d" else None,
        "lambda_kd": 1.0 if method == "kd" else None,
        "kd_temperature": 4.0 if method == "kd" else None,
        "best_val_mAP": value,
        "test_mAP_at_best": None if value is None else value - 1,
        "stage": "search",
        "seed": None,
        "confirms": None,
    }
    return {**row, **extra}


SEARCH = [
    _row("a1", "l2d", 60.0, lr=2e-3),
    _row("a2", "l2d", 58.0),
    _row("a3", "kd", 59.0, lr=3e-3),
    _row("a4", "kd", 70.0, status="failed"),  # not scored: never a finalist
    _row("a5", "l2d", None, status="running"),
]


def test_the_finalists_are_the_best_scored_search_trials_and_the_baseline_runs_at_the_best_ones_lr():
    found = plan(_spec(), SEARCH)
    assert [c.key for c in found.candidates] == ["a1", "a3", "baseline@test_resnet>test_efficientnet"]
    baseline = found.candidates[-1]
    assert baseline.baseline and baseline.config == {
        "teacher": "test_resnet",
        "student": "test_efficientnet",
        "method": "bce",
        "lr": 2e-3,  # the best finalist's of the pairing
    }
    assert found.candidates[0].config == config_of(SEARCH[0])
    assert found.seeds == (8, 9, 10)  # disjoint from the search's seed 7


def test_per_method_takes_the_best_of_each_method_and_baseline_none_adds_none():
    found = plan(_spec(per_method=True, top=5, baseline=None), SEARCH)
    assert [c.key for c in found.candidates] == ["a1", "a3"]


def test_a_finalist_that_is_the_baseline_is_not_run_twice():
    rows = [_row("b1", "bce", 61.0), _row("b2", "l2d", 60.0)]
    found = plan(_spec(), rows)
    assert [c.key for c in found.candidates] == ["b1", "b2"]


def test_runs_are_seed_major_with_ids_of_the_configuration_and_the_seed():
    found = plan(_spec(), SEARCH)
    runs = found.runs("sweep-1")
    assert [config["seed"] for _, config in runs] == [8, 8, 8, 9, 9, 9, 10, 10, 10]
    assert all(config["stage"] == STAGE for _, config in runs)
    assert [config.get("confirms") for _, config in runs[:3]] == ["a1", "a3", None]
    ids = [trial_id for trial_id, _ in runs]
    assert len(set(ids)) == 9
    assert ids == [trial_id for trial_id, _ in plan(_spec(), SEARCH).runs("sweep-1")]  # the same on every resume
    assert ids[0] != plan(_spec(), SEARCH).runs("sweep-2")[0][0]  # another sweep's
    assert run_id("sweep-1", found.candidates[0], 8) == ids[0]
    # Finished runs are not run again; interrupted and running ones are.
    done = [{"trial_id": ids[0], "status": "completed"}, {"trial_id": ids[1], "status": "interrupted"}]
    assert [trial_id for trial_id, _ in pending(found, "sweep-1", SEARCH + done)] == ids[1:]


def _confirm_rows(values: dict[str, list[float]], seeds=(8, 9, 10)) -> list[dict]:
    found = plan(_spec(), SEARCH)
    rows = []
    for candidate in found.candidates:
        for seed, value in zip(seeds, values[candidate.key]):
            rows.append(
                {
                    **_row(run_id("s", candidate, seed), candidate.config["method"], value),
                    **{k: v for k, v in candidate.config.items()},
                    "stage": STAGE,
                    "seed": seed,
                    "confirms": None if candidate.baseline else candidate.key,
                }
            )
    return rows


def test_the_winner_is_the_best_mean_not_the_best_single_run():
    base = "baseline@test_resnet>test_efficientnet"
    # a1 has the best single run (70) but the lower mean; a3 wins on the mean.
    rows = _confirm_rows({"a1": [70.0, 50.0, 51.0], "a3": [60.0, 61.0, 62.0], base: [55.0, 56.0, 57.0]})
    confirmation = summarize(_spec(), SEARCH + rows)
    assert confirmation.winner.candidate.key == "a3"
    assert confirmation.complete and confirmation.missing == 0
    assert confirmation.best_run() == run_id("s", confirmation.winner.candidate, 10)  # its best seed's run
    # The baseline wins nothing here, a3 beats it by exactly 5 under every seed.
    by_key = {e.candidate.key: e for e in confirmation.rows}
    assert by_key["a3"].vs_baseline.mean == pytest.approx(5.0)
    assert by_key["a3"].mean == pytest.approx(61.0) and by_key["a3"].sd == pytest.approx(1.0)


def test_each_interval_is_the_paired_t_interval_at_the_bonferroni_level_of_the_table():
    base = "baseline@test_resnet>test_efficientnet"
    values = {"a1": [60.0, 58.5, 61.0], "a3": [59.0, 60.5, 62.5], base: [57.0, 57.5, 58.0]}
    confirmation = summarize(_spec(), SEARCH + _confirm_rows(values))
    # a1 and a3 vs the baseline, and the loser vs the winner: three comparisons
    assert confirmation.comparisons == 3
    assert confirmation.level == pytest.approx(1 - 0.05 / 3)
    entry = next(e for e in confirmation.rows if e.candidate.key == "a1")
    diffs = [a - b for a, b in zip(values["a1"], values[base])]
    interval = stats.ttest_rel(values["a1"], values[base]).confidence_interval(confirmation.level)
    assert entry.vs_baseline.low == pytest.approx(interval.low)
    assert entry.vs_baseline.high == pytest.approx(interval.high)
    assert entry.vs_baseline.mean == pytest.approx(sum(diffs) / 3)
    # Holm-adjusted p-values are at least the raw ones
    assert entry.p_baseline >= entry.vs_baseline.p
    table = confirmation.table()
    assert [row["winner"] for row in table].count(True) == 1
    assert all(row["vs_baseline_verdict"] in ("better", "worse", "not established", None) for row in table)
    words = "\n".join(confirmation.describe())
    assert "not established" not in words or "detects differences of" in words


def test_missing_runs_are_counted_and_a_config_with_one_seed_cannot_win():
    base = "baseline@test_resnet>test_efficientnet"
    rows = _confirm_rows({"a1": [90.0], "a3": [60.0, 61.0], base: [55.0, 56.0]}, seeds=(8, 9))
    confirmation = summarize(_spec(), SEARCH + rows)
    assert confirmation.missing == 2 + 1 + 1
    assert confirmation.winner.candidate.key == "a3"
    assert any("not finished" in line for line in confirmation.describe())


def test_a_failed_run_is_not_missing_and_is_said():
    base = "baseline@test_resnet>test_efficientnet"
    rows = _confirm_rows({"a1": [60.0, 61.0, None], "a3": [59.0, 60.0, 61.0], base: [55.0, 56.0, 57.0]})
    for row in rows:
        if row["best_val_mAP"] is None:
            row["status"] = "failed"
    confirmation = summarize(_spec(), SEARCH + rows)
    assert confirmation.missing == 0 and confirmation.complete  # resume would not make it again
    assert sorted(next(e for e in confirmation.rows if e.candidate.key == "a1").values) == [8, 9]
    assert any("1 confirmation run(s) failed" in line for line in confirmation.describe())


def test_a_winning_baseline_is_said():
    base = "baseline@test_resnet>test_efficientnet"
    rows = _confirm_rows({"a1": [50.0, 51.0, 52.0], "a3": [49.0, 50.0, 51.0], base: [60.0, 61.0, 62.0]})
    confirmation = summarize(_spec(), SEARCH + rows)
    assert confirmation.winner.candidate.baseline
    assert any("no distillation recipe was confirmed better" in line for line in confirmation.describe())


def test_a_table_from_before_the_stage_reads_as_the_search():
    old = pa.table({"trial_id": ["x"], "status": ["completed"]})
    read = with_stages(old)
    assert read.column("stage").to_pylist() == ["search"]
    assert read.column("seed").to_pylist() == [None] and read.column("confirms").to_pylist() == [None]
    mixed = pa.table({"trial_id": ["x", "y"], "stage": [None, "confirm"]})
    assert with_stages(mixed).column("stage").to_pylist() == ["search", "confirm"]


def test_the_spec_checks_budget_confirm():
    with pytest.raises(SpecError, match=r"budget.confirm.baseline: unknown method 'bxe'; allowed: bce, "):
        _spec(baseline="bxe")
    with pytest.raises(SpecError, match=r"budget.confirm.seeds: seeds .* exceed the largest seed"):
        parse_spec({**SPEC, "seed": 2**32 - 2, "budget": {**SPEC["budget"], "confirm": {"seeds": 3}}})
    with pytest.raises(SpecError, match=r"budget.confirm.seeds: 1 is too small"):
        _spec(seeds=1)
    with pytest.raises(SpecError, match=r"budget.confirm.top2: unknown key"):
        _spec(top2=1)
    # a spec without the stage is stored as before (its digest unchanged: older sweeps stay resumable)
    plain = parse_spec({**SPEC, "budget": TINY_SPEC["budget"]})
    assert "confirm" not in plain.to_dict()["budget"]
    assert seeds_of(_spec()) == (8, 9, 10)


def test_selection_seeds_come_before_the_confirmation_seeds_and_the_default_is_stored_as_before():
    spec = parse_spec({**SPEC, "budget": {**SPEC["budget"], "selection_seeds": 3, "confirm": {"seeds": 2}}})
    assert spec.budget.selection_seeds == 3 and spec.to_dict()["budget"]["selection_seeds"] == 3
    assert seeds_of(spec) == (10, 11)  # the search's students have seeds 7, 8, 9
    assert "each training 3 students (seeds 7 to 9;" in spec.selection_cost()
    plain = parse_spec({**SPEC, "budget": TINY_SPEC["budget"]})
    assert "selection_seeds" not in plain.to_dict()["budget"] and plain.selection_cost() == ""  # digest unchanged
    with pytest.raises(SpecError, match=r"budget.confirm.seeds: seeds 4294967295 to 4294967296 exceed"):
        parse_spec(
            {**SPEC, "seed": 2**32 - 3, "budget": {**SPEC["budget"], "selection_seeds": 2, "confirm": {"seeds": 2}}}
        )
    with pytest.raises(SpecError, match=r"budget.selection_seeds: seeds 4294967294 to 4294967296 exceed"):
        parse_spec({**SPEC, "seed": 2**32 - 2, "budget": {**TINY_SPEC["budget"], "selection_seeds": 3}})
    with pytest.raises(SpecError, match=r"budget.selection_seeds: 0 is too small"):
        parse_spec({**SPEC, "budget": {**TINY_SPEC["budget"], "selection_seeds": 0}})


def test_a_confirmation_run_retrains_the_student_on_its_seed_and_keeps_the_teacher():
    from l2d.run import resolve, teacher_key
    from sweeps.search.space import trial_run

    spec = _spec()
    base = resolve(spec.base_run())
    config = {**config_of(SEARCH[0]), "stage": STAGE, "seed": 9, "confirms": "a1"}
    run = trial_run(base, config)
    searched = trial_run(base, config_of(SEARCH[0]))
    assert run.student_seed == 9 and searched.student_seed is None
    assert run.seed == searched.seed == 7
    assert teacher_key(run, "d") == teacher_key(searched, "d")  # the same teacher from the store


# --- end to end, with Ray -----------------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_sweep_with_a_confirmation_stage_end_to_end_killed_and_resumed(tmp_path):
    from sweeps.api import Sweep
    from sweeps.results import SweepResults

    spec = {
        **TINY_SPEC,
        "name": "confirmed",
        "storage": str(tmp_path / "sweeps"),
        "budget": {
            "num_samples": 4,
            "max_epochs": 1,
            "grace_period": 1,
            "reduction_factor": 2,
            "teacher_epochs": 1,
            "confirm": {"top": 2, "seeds": 3},
        },
    }
    path = tmp_path / "confirmed.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = tmp_path / "sweeps" / "confirmed"
    # The driver kills itself after the 6th epoch it records: the 4 search trials, then 2 confirmation runs in.
    killed = l2d_sweep("run", str(path), env={"L2D_SWEEP_FAILPOINTS": "epoch-1=6"}, timeout=900)
    assert killed.returncode != 0, killed.stdout[-2000:]
    assert "confirmation: 3 configuration(s)" in killed.stdout, killed.stdout[-3000:]
    before = SweepResults(str(sweep)).trials.to_pylist()
    finished_before = {r["trial_id"] for r in before if r["stage"] == STAGE and r["status"] == "completed"}
    assert len([r for r in before if r["stage"] == "search"]) == 4
    status = json.loads(l2d_sweep("status", str(sweep), "--format", "json").stdout)
    assert status["state"] == "incomplete" and status["counts"] == {"completed": 4}, status
    assert status["confirmation"]["missing"] == 9 - len(finished_before), status
    assert "confirmation run(s) not finished" in status["detail"]

    resumed = l2d_sweep("resume", str(sweep), timeout=900)
    if os.environ.get("L2D_SHOW"):
        print(killed.stdout, killed.stderr, resumed.stdout, resumed.stderr)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "already finished" in resumed.stdout or not finished_before
    for trial_id in finished_before:  # a finished run is not run again
        assert f"trial {trial_id} started" not in resumed.stdout

    results = SweepResults(str(sweep))
    rows = results.trials.to_pylist()
    search = [r for r in rows if r["stage"] == "search"]
    runs = [r for r in rows if r["stage"] == STAGE]
    assert len(search) == 4 and len(runs) == 9
    assert all(r["status"] == "completed" and r["epochs_run"] == 1 for r in runs)
    finalists = sorted(
        (r for r in search if r["best_val_mAP"] is not None), key=lambda r: (-r["best_val_mAP"], r["trial_id"])
    )[:2]
    # Each finalist, and the baseline, once under every fresh seed: paired by seed.
    for finalist in finalists:
        mine = [r for r in runs if r["confirms"] == finalist["trial_id"]]
        assert sorted(r["seed"] for r in mine) == [1, 2, 3]
        assert all(config_of(r) == config_of(finalist) for r in mine)
    baseline = [r for r in runs if r["confirms"] is None]
    assert sorted(r["seed"] for r in baseline) == [1, 2, 3] and {r["method"] for r in baseline} == {"bce"}
    # The seed is the student's: one configuration's runs under different seeds differ.
    assert len({r["best_val_mAP"] for r in baseline}) > 1

    confirmation = results.confirmation()
    assert confirmation.complete
    means = {e.candidate.key: e.mean for e in confirmation.rows}
    assert confirmation.winner.mean == max(means.values())
    winner_run = confirmation.best_run()

    shown = l2d_sweep("results", str(sweep))
    assert shown.returncode == 0, shown.stderr
    assert "confirmed winner:" in shown.stdout and "vs the baseline" in shown.stdout
    data = l2d_sweep("results", str(sweep), "--confirmation", "--format", "json")
    table = json.loads(data.stdout)
    assert sum(row["winner"] for row in table) == 1 and len(table) == 3

    exported = l2d_sweep("export", str(sweep), "--best", "--out", str(tmp_path / "best"))
    assert exported.returncode == 0, exported.stderr
    assert "the confirmed winner" in exported.stdout and f"trial {winner_run}" in exported.stdout
    best = Sweep.open(str(sweep)).best()
    assert best["trial_id"] == winner_run and best["chosen_as"].startswith("the confirmed winner")

    # Nothing to run twice: a resume of the finished sweep starts no Ray.
    again = l2d_sweep("resume", str(sweep), timeout=900)
    assert again.returncode == 0 and "nothing to run" in again.stdout


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_sweep_that_selects_by_the_mean_of_two_seeds_confirms_on_the_seeds_after_them(tmp_path):
    """``budget.selection_seeds: 2``: the cost said before the start, every search trial's value the mean of its two
    students (seeds 0 and 1, kept in best.json), the leaderboard saying so, and the confirmation on seeds 2 and 3."""
    from sweeps.results import SweepResults

    spec = {
        **TINY_SPEC,
        "name": "selected",
        "storage": str(tmp_path / "sweeps"),
        "budget": {
            "num_samples": 2,
            "max_epochs": 1,
            "grace_period": 1,
            "teacher_epochs": 1,
            "selection_seeds": 2,
            "confirm": {"top": 1, "seeds": 2, "baseline": None},
        },
    }
    path = tmp_path / "selected.yaml"
    path.write_text(yaml.safe_dump(spec))
    ran = l2d_sweep("run", str(path), timeout=850)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "each training 2 students (seeds 0 to 1; scored by their mean" in ran.stdout
    assert "each the mean of its 2 students' (seeds 0 to 1)" in ran.stdout
    sweep = tmp_path / "sweeps" / "selected"
    rows = SweepResults(str(sweep)).trials.to_pylist()
    search = [r for r in rows if r["stage"] == "search"]
    runs = [r for r in rows if r["stage"] == STAGE]
    assert len(search) == 2 and sorted(r["seed"] for r in runs) == [2, 3]
    for row in search:
        best = json.loads((sweep / "train" / f"trial-{row['trial_id']}" / "best" / "best.json").read_text())
        assert best["selection"]["seeds"] == [0, 1]
        assert row["best_val_mAP"] == pytest.approx(sum(best["selection"]["values"]) / 2, abs=1e-9)
    # the exported student is the first seed's: its card says the metrics are the mean, and its own value
    trial = search[0]["trial_id"]
    exported = l2d_sweep("export", str(sweep), "--trial", trial, "--out", str(tmp_path / "student"))
    assert exported.returncode == 0, exported.stderr[-2000:]
    card = json.loads((tmp_path / "student" / "card.json").read_text())
    assert card["selection"]["seeds"] == [0, 1] and "the mean of 2 students (seeds 0 to 1" in card["selected_by"]
    assert "this one (seed 0) val_mAP" in exported.stdout + exported.stderr


def test_the_search_s_readers_leave_the_confirmation_runs_out(tmp_path):
    """The leaderboard's neighbours (search_rows: the Pareto front, the best trial `export` takes when there is no
    confirmation, the plots' and the study's rows) read the search only: a confirmation rerun that scored higher than
    every search trial is not a sample of the search. Fails when search_rows stops leaving the reruns out."""
    import yaml

    from sweeps.folder.marker import write_marker
    from sweeps.results import ResultsWriter, SweepResults
    from sweeps.results.export import choose_trial

    spec = parse_spec({**TINY_SPEC, "storage": str(tmp_path)})  # no confirmation stage asked for
    write_marker(spec.sweep_dir)
    (spec.sweep_dir / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict()))
    writer = ResultsWriter(spec.sweep_dir, 3)
    base = {"teacher": "test_resnet", "student": "test_efficientnet", "lr": 1e-3}
    writer.record_epoch("search-a", {**base, "method": "l2d"}, {"epoch": 1, "val_mAP": 50.0})
    writer.record_epoch("search-b", {**base, "method": "kd"}, {"epoch": 1, "val_mAP": 40.0})
    rerun = {**base, "method": "l2d", "stage": "confirm", "seed": 8, "confirms": "search-a"}
    writer.record_epoch("rerun-a8", rerun, {"epoch": 1, "val_mAP": 90.0})
    for trial_id, config in (("search-a", {**base, "method": "l2d"}), ("search-b", {**base, "method": "kd"})):
        writer.finish(trial_id, config)
    writer.finish("rerun-a8", rerun)
    writer.write()
    results = SweepResults(spec.sweep_dir)
    assert len(results.trials) == 3  # the rerun is recorded ...
    assert sorted(r["trial_id"] for r in results.search_rows()) == ["search-a", "search-b"]  # ... and left out here
    assert "rerun-a8" not in results.pareto().column("trial_id").to_pylist()
    _, best = choose_trial(spec.sweep_dir, None)
    assert best["trial_id"] == "search-a"
