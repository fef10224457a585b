"""The spec: what validates, and at least eight kinds of bad spec, each a clear error before Ray starts."""

import copy

import pytest
import yaml

from sweeps.cli import main
from sweeps.specs import Range, SpecError, load_spec, parse_spec
from tests.sweeps.conftest import TINY_SPEC


def _spec(**changes):
    data = copy.deepcopy(TINY_SPEC)
    data["storage"] = "/tmp/unused-storage"
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".", 1)
            data[outer] = {**data[outer], inner: value}
        else:
            data[key] = value
    return data


def test_valid_spec_parses():
    spec = parse_spec(_spec())
    assert spec.name == "tiny" and spec.methods == ("l2d", "kd")
    assert spec.search_space["lambda_mld"] == Range(1.0, 100.0, True)
    assert spec.budget.max_epochs == 3 and spec.resources.max_concurrent_trials == 1
    assert str(spec.sweep_dir) == "/tmp/unused-storage/tiny"
    assert parse_spec(spec.to_dict()) == spec  # the saved copy round-trips
    assert (spec.budget.searcher, spec.budget.scheduler, spec.resources.trainer) == ("tpe", "asha", "auto")


@pytest.mark.parametrize(
    "workers,trainer,resolved",
    [
        (1, "auto", "in-process"),
        (2, "auto", "torch-trainer"),
        (1, "torch-trainer", "torch-trainer"),
        (1, "in-process", "in-process"),
    ],
)
def test_trainer_resolution(workers, trainer, resolved):
    spec = parse_spec(_spec(**{"resources.workers_per_trial": workers, "resources.trainer": trainer}))
    assert spec.trainer == resolved


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"colour": "red"}, "colour: unknown key; allowed keys: name, dataset"),
        ({"budget.num_samples": "eight"}, "budget.num_samples: expected an integer, got 'eight' (str)"),
        (
            {"search_space": {"lr": {"low": 0.01, "high": 0.001}}},
            "search_space.lr: empty range: low 0.01 >= high 0.001",
        ),
        ({"search_space": {"lambda_mld": -5}}, "search_space.lambda_mld: -5 is out of range; allowed: a number >= 0"),
        ({"methods": ["l2d", "fitnet"]}, "methods[1]: unknown method 'fitnet'; allowed: bce, kd"),
        ({"pairings": [{"teacher": "resnet_50", "students": ["resnet18"]}]}, "pairings[0].teacher: unknown backbone"),
        (
            {"max_student_params": 300000},
            "pairings[0].students[1]: test_convnext has 347,426 parameters, more than max_student_params (300,000)",
        ),
        ({"budget.grace_period": 5}, "budget.grace_period: 5 exceeds budget.max_epochs (3)"),
        ({"budget.reduction_factor": 1}, "budget.reduction_factor: 1 is out of range; allowed: a number > 1"),
        (
            {"search_space": {"lambda_cd": {"low": 1, "high": 10}}, "methods": ["kd"]},
            "search_space.lambda_cd: is not a hyperparameter of the chosen methods (kd)",
        ),
        ({"dataset": {"name": "coco2014"}}, "dataset.root: dataset 'coco2014' needs root"),
        ({"storage": "ftp://host/x"}, "storage: 'ftp://host/x': unsupported scheme"),
        ({"resources.workers_per_trial": 0}, "resources.workers_per_trial: 0 is too small; allowed: an integer >= 1"),
        ({"metric": "accuracy"}, "metric: unknown metric 'accuracy'; allowed: val_mAP"),
        ({"dataset": {"name": "mosaic-digits", "options": {"sizes": 3}}}, "dataset.options.sizes: unknown key"),
        (
            {"search_space": {"lr": {"low": 0, "high": 1}}},
            "search_space.lr.low: 0 is out of range; allowed: a number > 0",
        ),
        ({"budget.searcher": "grid"}, "budget.searcher: 'grid' (str) is not allowed; allowed: tpe, random"),
        ({"budget.scheduler": "hyperband"}, "budget.scheduler: 'hyperband' (str) is not allowed; allowed: asha, none"),
        (
            {"resources.trainer": "spark"},
            "resources.trainer: 'spark' (str) is not allowed; allowed: auto, torch-trainer",
        ),
        (
            {"resources.trainer": "in-process", "resources.workers_per_trial": 2},
            "resources.trainer: in-process runs one worker, but workers_per_trial is 2",
        ),
    ],
)
def test_bad_specs_name_field_value_and_what_is_allowed(changes, message):
    with pytest.raises(SpecError) as error:
        parse_spec(_spec(**changes), "bad.yaml")
    assert str(error.value).startswith("bad.yaml: ")
    assert message in str(error.value)


def test_bad_yaml_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="broken.yaml: not valid YAML"):
        load_spec(str(path))
    with pytest.raises(SpecError, match="nope.yaml: spec file not found"):
        load_spec(str(tmp_path / "nope.yaml"))
    path.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError, match="not valid YAML"):  # safe_load refuses to build Python objects
        load_spec(str(path))


@pytest.mark.parametrize(
    "changes",
    [
        {"methods": ["nope"]},
        {"budget.max_epochs": 0},
        {"search_space": {"lr": {"low": 1, "high": 1}}},
        {"pairings": []},
        {"unknown": 1},
        {"resources.cpus_per_worker": -1},
        {"recipe.pct_start": 2},
        {"dataset": {"name": "imagenet"}},
    ],
)
def test_run_with_a_bad_spec_exits_2_and_writes_nothing(changes, tmp_path, capsys):
    data = _spec(**changes)
    data["storage"] = str(tmp_path / "storage")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "spec.yaml: " in err[0]
    assert not (tmp_path / "storage").exists()


@pytest.mark.parametrize("name", ["quickstart", "fashion", "voc2007", "coco2014", "nuswide", "pairings", "scenes"])
def test_shipped_specs_are_valid(name):
    from pathlib import Path

    from sweeps.search.space import first_points

    spec = load_spec(str(Path(__file__).resolve().parents[2] / "search_spaces" / f"{name}.yaml"))
    assert spec.budget.num_samples >= 8
    if name in ("voc2007", "coco2014", "nuswide"):
        assert spec.dataset.image_size == 224 and spec.resources.gpus_per_worker >= 1
        assert [(p.teacher, p.students) for p in spec.pairings] == [
            ("resnet101", ("resnet34",)),
            ("resnet50", ("resnet18",)),
            ("wide_resnet101_2", ("wide_resnet50_2",)),
            ("repvgg_a2", ("repvgg_a0",)),
            ("swin_tiny_patch4_window7_224", ("mobilenetv2_100",)),
        ]
        # The official weights are the first point evaluated.
        assert first_points(spec)[0] == {
            "pairing": "resnet101",
            "student@resnet101": "resnet34",
            "method": "l2d",
            "lambda_mld": 10.0,
            "lambda_cd": 100.0,
            "lambda_id": 1000.0,
        }
        # ImageNet weights for every backbone (each with weights on timm's hub), the official teacher schedule,
        # and every baseline.
        from l2d.weights import _hub_repo

        backbones = {p.teacher for p in spec.pairings} | {s for p in spec.pairings for s in p.students}
        assert spec.weights == {b: "timm" for b in backbones}
        assert all(_hub_repo("timm", b).startswith("timm/") for b in backbones)
        assert (spec.budget.teacher_epochs, spec.budget.teacher_schedule_epochs) == (30, 80)
        assert {"reviewkd", "rkd", "pkt", "ps", "mse", "kd", "bce"} <= set(spec.methods)
    if name == "scenes":  # the paper's regime: pretrained EfficientNet-Lite pairings, every weight down to ~off
        from l2d.losses import METHODS

        assert spec.dataset.name == "mosaic-scenes" and set(spec.weights.values()) == {"offline"}
        assert all(b.startswith("tf_efficientnet_lite") for p in spec.pairings for b in (p.teacher, *p.students))
        for name_, value in spec.search_space.items():
            defaults = [m.defaults[name_] for m in METHODS.values() if name_ in m.defaults]
            if defaults:
                assert value.low <= 1e-3 * defaults[0] * 1.0001 and value.high >= defaults[0], name_
    if name == "quickstart":
        assert spec.dataset.name == "mosaic-digits" and spec.resources.gpus_per_worker == 0


def test_every_error_of_a_file_at_once(tmp_path, capsys):
    data = _spec(**{"methods": ["l2d", "fitnet"], "budget.num_samples": 0, "recipe.pct_start": 2})
    with pytest.raises(SpecError) as error:
        parse_spec(data, "bad.yaml")
    assert len(error.value.errors) == 3, error.value.errors
    assert all(line.startswith("bad.yaml: ") for line in error.value.errors)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    for command in (["validate", str(path)], ["run", str(path)]):
        assert main(command) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 3 and all(": error: " in line for line in err), err
    assert not (tmp_path / "storage").exists()


def test_every_error_of_one_section_at_once():
    # Two mistakes in each of budget, recipe and resources: six lines, none hidden behind its section's first.
    data = _spec(
        **{
            "budget.num_samples": 0,
            "budget.reduction_factor": 1,
            "recipe.pct_start": 2,
            "recipe.batch_size": 0,
            "resources.cpus_per_worker": 0,
            "resources.max_concurrent_trials": 0,
        }
    )
    with pytest.raises(SpecError) as error:
        parse_spec(data, "bad.yaml")
    fields = sorted(line.split(": ")[1] for line in error.value.errors)
    assert fields == [
        "budget.num_samples",
        "budget.reduction_factor",
        "recipe.batch_size",
        "recipe.pct_start",
        "resources.cpus_per_worker",
        "resources.max_concurrent_trials",
    ], error.value.errors


def test_yaml_numbers_in_exponent_notation_and_keys_given_twice(tmp_path):
    path = tmp_path / "spec.yaml"
    text = yaml.safe_dump(_spec(search_space={"lr": {"low": 0.0005, "high": 0.005}}))
    path.write_text(text.replace("0.0005", "5e-4").replace("0.005", "5E-3"))
    assert load_spec(str(path)).search_space["lr"] == Range(5e-4, 5e-3, True)
    path.write_text(text + "seed: 3\n")
    with pytest.raises(SpecError, match="the key 'seed' is given twice"):
        load_spec(str(path))


def test_the_json_schema_validates_every_shipped_spec_and_refuses_mistakes(tmp_path, capsys):
    import json
    from pathlib import Path

    import jsonschema

    assert main(["spec", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    shipped = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))
    assert len(shipped) >= 7
    for path in shipped:
        errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
        assert not errors, (path.name, [e.message for e in errors])
    for bad in (
        {**_spec(), "colour": "red"},
        _spec(**{"budget.searcher": "grid"}),
        _spec(**{"budget.num_samples": 0}),
        _spec(methods=["fitnet"]),
        {k: v for k, v in _spec().items() if k != "pairings"},
    ):
        assert list(validator.iter_errors(bad)), bad
    assert main(["spec", "--schema", "--out", str(tmp_path / "schema.json")]) == 0
    assert json.loads((tmp_path / "schema.json").read_text()) == schema


@pytest.mark.parametrize(
    "field,uri,hint",
    [
        ("study_storage", "postgresql://u@h/db?password=s3cr3t", "PGPASSWORD"),
        ("study_storage", "postgresql://u@h/db?sslpassword=s3cr3t", "PGPASSWORD"),
        ("study_storage", "postgresql://u:s3cr3t@h/db", "PGPASSWORD"),
        ("tracking", {"mlflow": {"tracking_uri": "http://h:5000?token=s3cr3t"}}, "MLFLOW_TRACKING_TOKEN"),
        ("storage", "s3://bucket/runs?secret_access_key=s3cr3t", "AWS_SECRET_ACCESS_KEY"),
        ("warm_start", "gs://bucket/runs/other?access_token=s3cr3t", "GOOGLE_APPLICATION_CREDENTIALS"),
    ],
)
def test_credentials_in_uris_are_refused(field, uri, hint):
    with pytest.raises(SpecError) as error:
        parse_spec(_spec(**{field: uri}), "bad.yaml")
    assert hint in str(error.value) and "s3cr3t" not in str(error.value)


def test_your_own_data_is_declared_in_the_short_form_and_its_files_made_absolute(tmp_path, monkeypatch):
    """``dataset: {format: manifest, train: ...}`` reads as the manifest dataset with those options; relative files
    become absolute against the folder the spec is read from (a trial runs in a folder of Ray's)."""
    monkeypatch.chdir(tmp_path)
    base = {k: v for k, v in TINY_SPEC.items() if k != "dataset"}
    spec = parse_spec(
        {**base, "dataset": {"format": "manifest", "train": "data/train.csv", "test": "t.csv", "image_size": 16}}
    )
    assert spec.dataset.name == "manifest" and spec.dataset.image_size == 16
    assert spec.dataset.options == {"train": str(tmp_path / "data" / "train.csv"), "test": str(tmp_path / "t.csv")}
    rooted = parse_spec({**base, "dataset": {"format": "coco", "root": "data", "train": "a.json", "train_images": "a"}})
    assert rooted.dataset.root == str(tmp_path / "data") and rooted.dataset.options["train"] == "a.json"
    for dataset, expected in (
        ({"format": "manifest", "name": "voc2007"}, "dataset.name: give either name"),
        ({"format": "manifest", "label_format": "xml"}, "dataset.options.label_format: 'xml' (str) is not allowed"),
        (
            {"format": "manifest", "train": "s3://a:s3cr3t@b/t.csv"},
            "dataset.options.train: a dataset file: 's3://***@b",
        ),
        ({"format": "manifest", "tarin": "t.csv"}, "dataset.options.tarin: unknown key"),
    ):
        with pytest.raises(SpecError) as error:
            parse_spec({**base, "dataset": dataset})
        assert expected in str(error.value) and "s3cr3t" not in str(error.value), str(error.value)


def test_teacher_epochs_0_needs_each_teacher_s_checkpoint_in_weights(tmp_path):
    budget = {**TINY_SPEC["budget"], "teacher_epochs": 0}
    with pytest.raises(SpecError) as error:
        parse_spec({**TINY_SPEC, "budget": budget, "weights": {"test_resnet": "timm"}})
    assert "budget.teacher_epochs: 0 uses each teacher as it is: weights.test_resnet must name its checkpoint" in str(
        error.value
    )
    checkpoint = tmp_path / "ft.safetensors"
    checkpoint.write_bytes(b"")
    spec = parse_spec({**TINY_SPEC, "budget": budget, "weights": {"test_resnet": str(checkpoint)}})
    run = spec.run_for("test_resnet", "test_convnext")
    assert run.teacher_epochs == 0 and run.teacher_weights == str(checkpoint)
