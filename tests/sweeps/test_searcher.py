"""Tune's searcher over the sweep's Optuna study, driven directly (as Tune's controller drives it): the first point,
intermediate values, the outcome told, its state saved after every ask and tell, deterministic trial ids."""

import pickle

import optuna

from sweeps.folder.marker import trial_id
from sweeps.search.study import StudyStore
from sweeps.specs import parse_spec
from sweeps.tune.searcher import StudySearcher
from tests.sweeps.conftest import TINY_SPEC, plant_payload


def _searcher(tmp_path, **changes):
    spec = parse_spec({**TINY_SPEC, "storage": str(tmp_path / "sweeps"), **changes})
    spec.sweep_dir.makedirs()
    return StudySearcher(spec, "sweep0", StudyStore(spec.sweep_dir)), spec


def test_the_first_point_then_the_outcomes_in_the_study(tmp_path):
    searcher, spec = _searcher(tmp_path)
    first = searcher.suggest("a1")
    # L2D on the first pairing first; its default lambda_mld (0.163 on mosaic-digits) is outside the searched range
    # [1, 100], so that one is sampled; the weights it does not search are the dataset's defaults, as constants.
    assert first["method"] == "l2d" and first["student@test_resnet"] == "test_efficientnet"
    assert 1 <= first["lambda_mld"] <= 100 and first["lambda_cd"] == 0.14 and first["lambda_id"] == 23.3
    for epoch, value in ((1, 30.0), (2, 35.0), (3, 33.0)):
        searcher.on_trial_result("a1", {"epoch": epoch, "val_mAP": value})
    searcher.on_trial_complete("a1", {"epoch": 3, "val_mAP": 33.0})
    second = searcher.suggest("a2")
    searcher.on_trial_result("a2", {"epoch": 1, "val_mAP": 20.0})
    searcher.on_trial_complete("a2", {"epoch": 1, "val_mAP": 20.0})  # stopped by ASHA after one epoch
    study = searcher.study
    done = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert done["a1"].state == optuna.trial.TrialState.COMPLETE and done["a1"].value == 35.0  # its best epoch
    assert done["a1"].user_attrs["best_epoch"] == 2 and done["a1"].intermediate_values == {1: 30.0, 2: 35.0, 3: 33.0}
    assert done["a2"].state == optuna.trial.TrialState.PRUNED and done["a2"].user_attrs["status"] == "stopped"
    assert second["method"] in spec.methods
    # The state file holds the trial map and the sampler: a resumed searcher goes on where this one stopped.
    state = pickle.loads((spec.sweep_dir / "searcher.pkl").read_bytes())
    assert state["numbers"] == {"a1": 0, "a2": 1} and state["best"]["a1"]["epoch"] == 2


def test_a_recreated_trial_gets_its_own_parameters_back(tmp_path):
    searcher, _ = _searcher(tmp_path)
    searcher.suggest("a1")
    searcher.suggest("a2")
    again = StudySearcher(searcher.spec, "sweep0", StudyStore(searcher.spec.sweep_dir))
    assert again.suggest("a2") == searcher.suggest("a2")  # a resume re-creating a2 gets a2's config, not a new draw
    assert len(again.study.trials) == 2


def test_trial_ids_are_deterministic():
    # The value a resumed driver re-creates must be the one the first driver wrote (pinned: a change of the
    # derivation would give every old sweep's trials new ids), and each input changes it.
    assert trial_id("s", 0, 1) == "96d0e74c"
    assert len({trial_id("s", 0, 1), trial_id("s", 0, 2), trial_id("s", 1, 1), trial_id("t", 0, 1)}) == 4
    assert len(trial_id("s", 0, 1)) == 8


def test_a_trusted_folder_is_loaded_and_an_untrusted_one_is_not(tmp_path, monkeypatch):
    """`--trust` is what loads a pickle this user's key did not sign (the payload runs: that is what trusting
    means); without it the searcher's and Tune's copies are never unpickled."""
    monkeypatch.setenv("L2D_SWEEP_KEY_FILE", str(tmp_path / "key"))
    spec = parse_spec({**TINY_SPEC, "storage": str(tmp_path / "storage")})
    spec.sweep_dir.makedirs()
    ran = tmp_path / "ran"
    searcher = StudySearcher(spec, "abc", StudyStore(spec.sweep_dir))
    searcher.numbers = {"t1": 0}
    checkpoint = tmp_path / "tune-copy.pkl"
    searcher.save(str(checkpoint))
    plant_payload(spec.sweep_dir / "searcher.pkl", ran)
    searcher.restore(str(checkpoint))
    assert not ran.exists() and searcher.numbers == {"t1": 0}  # Tune's signed copy was used
    # Trust is an argument of this searcher (given by resume --trust), never the process's environment.
    monkeypatch.setenv("L2D_SWEEP_TRUST", "1")
    searcher.restore(str(checkpoint))
    assert not ran.exists()
    searcher.relocate(spec, trusted=True)
    searcher.restore(str(checkpoint))  # trusted: the planted pickle is loaded (and, being no state, falls back)
    assert ran.exists() and searcher.numbers == {"t1": 0}


def test_a_relocated_searcher_writes_into_its_new_folder_only(tmp_path):
    """Tune unpickles the searcher with the paths of the folder its experiment began in; a resumed copy of the
    sweep relocates it, and from then on the study and the state file it writes are the copy's."""
    import shutil

    searcher, _ = _searcher(tmp_path)
    searcher.suggest("a1")
    original = searcher.spec.sweep_dir
    copy = tmp_path / "copy"
    shutil.copytree(original.path, copy)
    before = (original / "study.db").read_bytes()
    restored = pickle.loads(pickle.dumps(searcher))
    restored.relocate(searcher.spec.in_folder(str(copy)))
    restored.suggest("a2")
    assert (original / "study.db").read_bytes() == before
    assert (
        len(optuna.load_study(study_name=restored.study.study_name, storage=f"sqlite:///{copy / 'study.db'}").trials)
        == 2
    )


def test_every_searcher_s_sampler_survives_the_state_file(tmp_path):
    # The state file pickles the sampler. Optuna 5.1's NSGA-II holds a threading.Lock, which does not pickle: the
    # sweep's sampler leaves it out and makes a new one on load, and the loaded sampler still proposes points.
    from sweeps.search.study import build_sampler

    for searcher in ("tpe", "random", "nsga2"):
        spec = parse_spec(
            {**TINY_SPEC, "storage": str(tmp_path / "sweeps"), "budget": {**TINY_SPEC["budget"], "searcher": searcher}}
        )
        sampler = pickle.loads(pickle.dumps(build_sampler(spec)))
        study = optuna.create_study(sampler=sampler, directions=["maximize"] * (2 if searcher == "nsga2" else 1))
        objectives = len(study.directions)
        study.optimize(lambda t, n=objectives: [t.suggest_float("x", 0, 1)] * n, n_trials=3)
        assert len(study.trials) == 3, searcher
        pickle.loads(pickle.dumps(sampler))
