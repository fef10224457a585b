"""The fences around Ray's private APIs (sweeps/tune/_fences.py), each checked against the installed Ray: an upgrade
that moves what one relies on fails here, naming it, instead of breaking a sweep later."""

import re

import pytest

from sweeps.tune import _fences


def _fence(name: str) -> str:
    import ray

    return f"sweeps.tune._fences.{name} (written for Ray {_fences.WRITTEN_FOR_RAY}, Ray {ray.__version__} installed)"


def test_restored_callbacks_reach_the_run_config():
    from ray import tune

    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(callbacks=[]))
    marker = tune.Callback()
    try:
        _fences.set_restored_callbacks(tuner, [marker])
        run_config = tuner._local_tuner.get_run_config()
    except AttributeError as error:
        pytest.fail(f"{_fence('set_restored_callbacks')}: {error}")
    assert run_config.callbacks == [marker], _fence("set_restored_callbacks")


def test_trial_ids_can_be_chosen():
    from ray.tune.experiment.trial import Trial
    from ray.tune.search import Searcher, SearchGenerator

    generator = SearchGenerator(Searcher())
    assert _fences.trials_created(generator) == 0, _fence("trials_created")
    with _fences.trial_id_source("abcd1234"):
        assert Trial.generate_id() == "abcd1234", _fence("trial_id_source")
    assert re.fullmatch(r"[0-9a-f]{8}", Trial.generate_id()) and Trial.generate_id() != "abcd1234", _fence(
        "trial_id_source"
    )


def test_asha_rungs_round_trip():
    from ray.tune.schedulers import ASHAScheduler

    scheduler = ASHAScheduler(
        time_attr="epoch", metric="val_mAP", mode="max", max_t=9, grace_period=1, reduction_factor=3
    )
    try:
        rungs = _fences.asha_rungs(scheduler)
        assert [m for m, _ in rungs[0]] == [9.0, 3.0, 1.0], _fence("asha_rungs")
        _fences.asha_record(scheduler, "t1", 1, 0.5)
        _fences.asha_record(scheduler, "t2", 1, 0.7)
        recorded = _fences.asha_rungs(scheduler)
        assert recorded[0][2][1] == {"t1": 0.5, "t2": 0.7}, _fence("asha_record")
        fresh = ASHAScheduler(
            time_attr="epoch", metric="val_mAP", mode="max", max_t=9, grace_period=1, reduction_factor=3
        )
        _fences.set_asha_rungs(fresh, recorded)
        assert _fences.asha_rungs(fresh) == recorded, _fence("set_asha_rungs")
        _fences.set_asha_stopped(fresh, 3)
        assert _fences.asha_stopped(fresh) == 3, _fence("asha_stopped")
        assert _fences.asha_settings(fresh) == {"metric": "val_mAP", "sign": 1.0, "time_attr": "epoch", "max_t": 9}, (
            _fence("asha_settings")
        )
        assert _fences.asha_bracket_of(fresh, "new") is not None, _fence("asha_bracket_of")
        _fences.forget_asha_trial(fresh, "new")
        assert _fences.asha_bracket_of(fresh, "new", default_first=False) is None, _fence("forget_asha_trial")
    except (AttributeError, KeyError, TypeError) as error:
        pytest.fail(f"an ASHA fence broke on this Ray: {error} ({_fence('asha_*')})")


def test_no_private_api_outside_the_fences():
    """Private attributes of Ray and Optuna objects are reached only in sweeps/tune/_fences.py."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "sweeps"
    private = re.compile(
        r"\.(_local_tuner|_counter|_brackets|_rungs|_trial_info|_num_stopped|_metric_op|_time_attr|"
        r"_max_t|_storage|_study_id|_trial_id)\b|Trial\.generate_id\s*="
    )
    offenders = [
        f"{path.relative_to(root.parent)}:{n}"
        for path in root.rglob("*.py")
        if path.name != "_fences.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line) and not line.strip().startswith("#")
    ]
    assert not offenders, offenders
