"""The define-by-run search space, the first points, and ASHA rungs that survive a restore."""

import pickle
from types import SimpleNamespace

import optuna

from sweeps.search import DefineByRunSpace, decode, first_points
from sweeps.scheduler import PersistentASHA
from sweeps.spec import parse_spec

from tests.sweeps.test_spec import _spec


def test_space_is_conditional_and_fixed_values_are_constants():
    spec = parse_spec(_spec(methods=["l2d", "kd", "bce"], search_space={"lambda_mld": {"low": 1, "high": 100},
                                                                         "lambda_kd": 3.0}))
    space = DefineByRunSpace(spec)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0), direction="maximize")
    seen_methods = set()
    for _ in range(30):
        trial = study.ask()
        constants = space(trial)
        method = trial.params["method"]
        seen_methods.add(method)
        assert trial.params["pairing"] == "test_resnet"
        assert trial.params["student@test_resnet"] in ("test_efficientnet", "test_convnext")
        if method == "l2d":
            assert 1 <= trial.params["lambda_mld"] <= 100  # searched
            assert constants == {"lambda_cd": 100.0, "lambda_id": 1000.0}  # not in the space: the defaults
        elif method == "kd":
            assert "lambda_mld" not in trial.params
            assert constants == {"lambda_kd": 3.0, "kd_temperature": 4.0}
        else:
            assert constants == {} and set(trial.params) == {"pairing", "student@test_resnet", "method"}
        study.tell(trial, 0.0)
    assert seen_methods == {"l2d", "kd", "bce"}
    flat = decode({**trial.params, **constants})
    assert flat["teacher"] == "test_resnet" and "student@test_resnet" not in flat
    pickle.dumps(space)  # Tune saves the searcher, space included


def test_first_point_is_the_official_weights_within_the_ranges():
    spec = parse_spec(_spec(search_space={"lambda_mld": {"low": 1, "high": 100}, "lambda_cd": {"low": 1, "high": 50}}))
    point = first_points(spec)[0]
    assert point == {"pairing": "test_resnet", "student@test_resnet": "test_efficientnet", "method": "l2d",
                     "lambda_mld": 10.0}  # lambda_cd 100 lies outside its range: sampled instead


def _scheduler(path):
    return PersistentASHA(str(path), time_attr="epoch", metric="val_mAP", mode="max", max_t=4, grace_period=1,
                          reduction_factor=2)


def test_asha_rungs_survive_a_restore(tmp_path):
    path = tmp_path / "asha.json"
    scheduler = _scheduler(path)
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(3)]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    scheduler.on_trial_result(None, trials[0], {"epoch": 1, "val_mAP": 50.0})
    scheduler.on_trial_result(None, trials[1], {"epoch": 1, "val_mAP": 60.0})
    assert path.is_file()
    # Tune restores the scheduler from the pickle it took at the start: stale, so it reloads the JSON.
    restored = pickle.loads(pickle.dumps(_scheduler(path)))
    restored.on_trial_add(None, trials[2])
    assert restored.num_records() == 2
    # With the rungs back, a weak trial is stopped at once, as it would have been without the crash.
    assert restored.on_trial_result(None, trials[2], {"epoch": 1, "val_mAP": 10.0}) == "STOP"
    fresh = _scheduler(tmp_path / "other.json")
    fresh.on_trial_add(None, trials[2])
    assert fresh.on_trial_result(None, trials[2], {"epoch": 1, "val_mAP": 10.0}) == "CONTINUE"
