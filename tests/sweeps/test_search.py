"""The define-by-run search space, the first points, and ASHA rungs that survive a restore."""

import json
import pickle
from types import SimpleNamespace

import optuna
from ray.tune.search import Searcher

from l2d.losses import METHODS
from sweeps.search.space import DefineByRunSpace, decode, first_points
from sweeps.specs import parse_spec
from sweeps.tune.scheduler import PersistentASHA
from tests.sweeps.test_spec import _spec


def test_space_is_conditional_and_fixed_values_are_constants():
    spec = parse_spec(
        _spec(methods=["l2d", "kd", "bce"], search_space={"lambda_mld": {"low": 1, "high": 100}, "lambda_kd": 3.0})
    )
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
            # not in the space: mosaic-digits' defaults
            assert constants == {"lambda_cd": 0.14, "lambda_id": 23.3}
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
    data = _spec(search_space={"lambda_mld": {"low": 1, "high": 100}, "lambda_cd": {"low": 1, "high": 50}})
    data["dataset"] = {"name": "voc2007", "root": "/tmp/unused-voc"}  # a paper dataset: the official weights
    point = first_points(parse_spec(data))[0]
    assert point == {
        "pairing": "test_resnet",
        "student@test_resnet": "test_efficientnet",
        "method": "l2d",
        "lambda_mld": 10.0,
    }  # lambda_cd 100 lies outside its range: sampled instead


def _scheduler(path):
    return PersistentASHA(
        str(path), time_attr="epoch", metric="val_mAP", mode="max", max_t=4, grace_period=1, reduction_factor=2
    )


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


def test_an_unreadable_rung_file_is_rebuilt_from_the_epochs(tmp_path, caplog):
    from sweeps.results import ResultsWriter

    writer = ResultsWriter(str(tmp_path), max_epochs=4)
    for trial, values in {"t0": [50.0, 55.0], "t1": [60.0], "t2": [10.0]}.items():
        for epoch, value in enumerate(values, start=1):
            writer.record_epoch(trial, {"method": "l2d"}, {"epoch": epoch, "val_mAP": value})
    writer.write()
    (tmp_path / "asha.json").write_text('{"brackets": [[[4.0, {"t0"')  # truncated
    scheduler = _scheduler(tmp_path / "asha.json")
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(4)]
    with caplog.at_level("WARNING"):
        scheduler.on_trial_add(None, trials[3])
    assert "asha.json: unreadable ASHA state" in caplog.text
    rungs = dict(scheduler.rungs()[0])
    assert rungs[1.0] == {"t0": 50.0, "t1": 60.0, "t2": 10.0} and rungs[2.0] == {"t0": 55.0}
    assert json.loads((tmp_path / "asha.json").read_text())["brackets"]  # rewritten, readable
    assert any(p.name.startswith("asha.json.corrupt-") for p in tmp_path.iterdir())
    # The rebuilt rungs stop a weak newcomer as the originals would have.
    assert scheduler.on_trial_result(None, trials[3], {"epoch": 1, "val_mAP": 5.0}) == "STOP"


class _FixedSearcher(Searcher):
    """A searcher that suggests the same config every time (so only the ids can differ)."""

    def suggest(self, trial_id):
        return {"x": 1}

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


def _noop(config):
    pass


def test_search_generator_gives_deterministic_trial_ids():
    from ray import tune
    from ray.tune.experiment.trial import Trial

    from sweeps.folder.marker import trial_id
    from sweeps.tune.searcher import SweepSearchGenerator

    tune.register_trainable("noop", _noop)
    spec = {"run": "noop", "config": {}}
    generator = SweepSearchGenerator(_FixedSearcher(), "sweep", 3)
    ids = [generator.create_trial_if_possible(spec).trial_id for _ in range(3)]
    assert ids == [trial_id("sweep", 3, n) for n in (1, 2, 3)]
    assert Trial.generate_id() not in ids  # Tune's own id source is back after each call
    # A resumed generator (Tune restores the counter) gives the next trial the id the lost one had.
    from ray import cloudpickle  # what Tune pickles the experiment with

    restored = cloudpickle.loads(cloudpickle.dumps(generator))
    restored.set_state({**generator.get_state(), "counter": 2})
    assert restored.create_trial_if_possible(spec).trial_id == ids[2]


def test_asha_stop_decisions_are_saved_for_a_trial_restored_after_a_crash(tmp_path):
    from l2d.storage import Location
    from sweeps.tune.scheduler import stopped_at

    path = tmp_path / "asha.json"
    scheduler = _scheduler(path)
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(3)]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    scheduler.on_trial_result(None, trials[0], {"epoch": 1, "val_mAP": 50.0})
    scheduler.on_trial_result(None, trials[1], {"epoch": 1, "val_mAP": 60.0})
    assert scheduler.on_trial_result(None, trials[2], {"epoch": 1, "val_mAP": 10.0}) == "STOP"
    assert stopped_at(Location.parse(path), "t2") == 1 and stopped_at(Location.parse(path), "t0") is None
    # A trial that reached max_t is done, not stopped.
    scheduler.on_trial_result(None, trials[0], {"epoch": 4, "val_mAP": 70.0})
    assert stopped_at(Location.parse(path), "t0") is None
    restored = pickle.loads(pickle.dumps(_scheduler(path)))
    restored.on_trial_add(None, trials[2])
    assert restored._stopped == {"t2": 1}
    assert stopped_at(Location.parse(tmp_path / "missing.json"), "t2") is None


def test_on_the_mosaics_the_first_point_and_the_constants_are_the_datasets_own_weights():
    from l2d.data import DATASETS

    tuned = DATASETS["mosaic-digits"].method_weights["l2d"]
    assert tuned != METHODS["l2d"].defaults
    spec = parse_spec(
        _spec(search_space={"lambda_mld": {"low": 0.01, "high": 100}, "lambda_id": {"low": 1, "high": 10}})
    )
    assert spec.dataset.name == "mosaic-digits"
    point = first_points(spec)[0]
    assert point["lambda_mld"] == tuned["lambda_mld"] and "lambda_id" not in point  # 23.3 is outside [1, 10]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    constants = DefineByRunSpace(spec)(trial)
    if trial.params["method"] == "l2d":
        assert constants == {"lambda_cd": tuned["lambda_cd"]}  # not searched: the dataset's default, not 100
