"""The sweep spec: one YAML file that defines a sweep, as typed models, validated before Ray starts.

(About 500 lines for one reason: this is the whole spec language, its typed models and each section's rules, read top
to bottom as its reference; the generic checks and the error formatting are in :mod:`sweeps.core.checks`.)

The models are frozen dataclasses whose field types carry their rules (pydantic validates them and writes the JSON
Schema, ``l2d-sweep spec --schema``); the rules between fields and against the registries (methods, datasets, timm's
models) follow. Every error of a file is reported at once, one line each: the file, the field, the bad value and what
is allowed. The YAML is read with a safe loader (no Python objects), ``1e-4`` is a number (YAML 1.1 would read a
string), and a key given twice is an error.

Example (``search_spaces/quickstart.yaml``)::

    name: quickstart
    dataset: {name: mosaic-digits, options: {size: 600}}
    pairings:
      - teacher: resnet14t
        students: [resnet10t, test_resnet]
    methods: [l2d, mld, kd]
    search_space:
      lambda_mld: {low: 1, high: 100}          # log-uniform unless log: false
      lambda_cd: {low: 10, high: 1000}
      lr: 2e-3                                 # a number is a fixed value
    budget: {num_samples: 8, max_epochs: 3, grace_period: 1, reduction_factor: 2}
    resources: {workers_per_trial: 1, cpus_per_worker: 1, gpus_per_worker: 0, max_concurrent_trials: 1}
    storage: ./runs
    seed: 0
"""

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from pydantic import TypeAdapter

from l2d.backbones import check_backbone_name
from l2d.data import DATASETS, FORMATS
from l2d.losses import HYPERPARAMETERS, METHODS, is_temperature
from l2d.run import RunConfig
from l2d.settings import MAX_SEED, settings, spec_values
from l2d.storage import Location, StorageError, credentials_in_uri, redact
from l2d.weights import REMOTE_SCHEMES, class_order, resolve
from sweeps.core.checks import (
    Errors,
    SpecError,
    choice,
    flag,
    integer,
    number,
    read_yaml,
    section_class,
    section_schema,
    setting_rule,
    show,
    shown,
    text,
    validate_section,
)
from sweeps.core.vocab import default_mode
from sweeps.folder.marker import RESERVED

# Loaded late, inside the functions that use them: l2d.models, torch (not needed when the command line starts).

__all__ = ["SpecError", "SweepSpec", "load_spec", "parse_spec", "json_schema", "with_overrides"]

#: Hyperparameters a search space may name: the learning rate and every method's weights.
SEARCHABLE = ("lr", *HYPERPARAMETERS)
METRICS = ("val_mAP", "val_CF1", "val_OF1", "val_loss")
#: What an objective may name: a val metric (per epoch; the first objective must be one, ASHA stops on it) or a
#: property of the student (latency, size).
OBJECTIVE_METRICS = (*METRICS, "latency_ms", "student_params")
SEARCHERS = ("tpe", "random", "nsga2")
#: What a trial keeps of its checkpoints when it ends (see sweeps.folder.checkpoints.prune).
KEEP = ("best+last", "best", "all")
#: SQLAlchemy dialects a study_storage URL may use.
STUDY_DIALECTS = ("sqlite", "postgresql", "postgresql+psycopg2", "postgresql+psycopg", "mysql", "mysql+pymysql")
SCHEDULERS = ("asha", "none")
TRAINERS = ("auto", "torch-trainer", "in-process")
#: The longest sweep name (it names a folder; file systems allow 255 bytes, and the folder holds longer names).
MAX_NAME = 100


@dataclass(frozen=True)
class Range:
    """A searched hyperparameter: uniform on [low, high], or log-uniform when ``log``."""

    low: float
    high: float
    log: bool = True


#: The ``dataset`` section: the dataset's own keys, then each run setting whose spec path is ``dataset.*``
#: (:mod:`l2d.settings`: ``image_size``).
DatasetSpec = section_class(
    "DatasetSpec",
    "dataset",
    [
        ("name", text("a dataset of l2d.data (l2d-sweep dataset --help lists them)"), "mosaic-digits"),
        ("root", text("the dataset's folder (required for voc2007, coco2014, nuswide)", optional=True), None),
        ("options", dict, field(default_factory=dict)),
    ],
    __name__,
)


@dataclass(frozen=True)
class Pairing:
    teacher: str
    students: tuple[str, ...]


@dataclass(frozen=True)
class Confirm:
    """The confirmation stage (``budget.confirm``): after the search, its best configurations and a baseline rerun on
    fresh seeds, paired by seed (:mod:`sweeps.results.confirm`)."""

    top: integer(1, 1000, help="configurations confirmed: the best by the metric (per_method: the best methods)") = 2
    seeds: integer(2, 1000, help="fresh seeds each is rerun on (the search's seed + 1, + 2, ...)") = 3
    baseline: text("a method rerun beside them on the same seeds (null: none)", optional=True) = "bce"
    per_method: flag("the best configuration of each method, instead of the best overall") = False


#: The ``budget`` section: a sweep's own keys, then each run setting whose spec path is ``budget.*``
#: (:mod:`l2d.settings`: the teachers' epochs, their schedule and an adopted teacher's head epochs).
Budget = section_class(
    "Budget",
    "budget",
    [
        ("num_samples", integer(1, 1_000_000, help="trials of the sweep"), 8),
        ("max_epochs", integer(1, 100_000, help="epochs of a trial ASHA never stops"), 3),
        ("grace_period", integer(1, help="epochs before ASHA may stop a trial"), 1),
        ("reduction_factor", number(1.0, exclusive=True, help="ASHA's reduction factor (> 1)"), 2.0),
        ("searcher", choice(SEARCHERS, help="Optuna's TPE, random search, or NSGA-II (several objectives)"), "tpe"),
        (
            "scheduler",
            choice(SCHEDULERS, help="ASHA early stopping, or none (every trial runs max_epochs)"),
            "asha",
        ),
        (
            "selection_seeds",
            integer(
                1,
                100,
                help="students each search trial trains, on the seed and the next ones: ASHA and the final pick "
                "score a configuration by their mean val metric (N times the search's compute)",
            ),
            1,
        ),
        ("confirm", Optional[Confirm], None),  # validated as its own section (budget.confirm), see parse_spec
    ],
    __name__,
)


@dataclass(frozen=True)
class Resources:
    workers_per_trial: integer(1, 4096, help="DDP workers of one trial") = 1
    cpus_per_worker: number(0.0, exclusive=True, maximum=1024, help="CPUs each worker holds") = 1.0
    gpus_per_worker: number(0.0, maximum=64, help="GPUs each worker holds") = 0.0
    max_concurrent_trials: integer(1, 100_000, help="trials at once") = 1
    max_failures: integer(0, 1000, help="retries of a trial whose worker or node died") = 0
    # Where a trial trains: torch-trainer (a Ray Train TorchTrainer, DDP over workers_per_trial workers),
    # in-process (in the Tune trial's own reused process: no worker group to start, single worker only), or
    # auto (in-process for a single worker, torch-trainer for several).
    trainer: choice(TRAINERS, help="auto: in-process for one worker, torch-trainer (DDP) for several") = "auto"


#: The ``recipe`` section: each run setting whose spec path is ``recipe.*`` (:mod:`l2d.settings`).
RecipeSpec = section_class("RecipeSpec", "recipe", [], __name__)


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep. ``search_space`` maps a hyperparameter to a :class:`Range` or a fixed float."""

    name: str
    dataset: DatasetSpec
    pairings: tuple[Pairing, ...]
    methods: tuple[str, ...]
    search_space: dict[str, Range | float]
    budget: Budget
    resources: Resources
    recipe: RecipeSpec
    storage: str
    metric: str = "val_mAP"
    mode: str = "max"
    objectives: tuple = ()  # ((metric, mode), ...) when several; empty: (metric, mode) alone
    study_storage: str | None = None
    warm_start: str | None = None
    keep: str = "best+last"
    tracking: dict = field(default_factory=dict)  # {"mlflow": {"tracking_uri": ..., "experiment": ...}}
    seed: int = 0
    max_student_params: int | None = None
    weights: dict = field(default_factory=dict)  # backbone name -> initial weights (l2d.weights source)
    # Configurations the search evaluates first (instead of the default first point): each a mapping of teacher,
    # student, method and searched hyperparameters; what it leaves out is sampled.
    first_points: tuple = ()
    # The folder this spec was read from (:func:`sweeps.specs.stored.load_sweep_spec`): a sweep is its folder, so a
    # copied, renamed or moved sweep reads and writes there, whatever name and storage its spec.yaml holds. Never
    # stored.
    folder: str | None = field(default=None, compare=False, repr=False)

    @property
    def trainer(self) -> str:
        """How trials train: ``torch-trainer`` or ``in-process`` (``auto`` resolved by workers_per_trial)."""
        if self.resources.trainer != "auto":
            return self.resources.trainer
        return "in-process" if self.resources.workers_per_trial == 1 else "torch-trainer"

    @property
    def objective_list(self) -> tuple[tuple[str, str], ...]:
        """The objectives, the primary first (the one ASHA stops on and the leaderboard ranks by)."""
        return tuple(tuple(o) for o in self.objectives) or ((self.metric, self.mode),)

    @property
    def storage_location(self) -> Location:
        return Location.parse(self.storage)

    @property
    def sweep_dir(self) -> Location:
        """``<storage>/<name>``, a local folder or a URI; for a spec read from a sweep folder, that folder."""
        return Location.parse(self.folder) if self.folder else self.storage_location / self.name

    def in_folder(self, folder: "str | Location") -> "SweepSpec":
        """This spec as the sweep stored at ``folder`` (which may have been copied, renamed or moved since it was
        started): it reads and writes there, and its storage (where the shared teacher store is) is the folder's
        parent unless the folder is still ``<storage>/<name>``."""
        folder = Location.parse(folder)
        storage = self.storage if self.storage_location / self.name == folder else str(folder.parent)
        return replace(self, folder=str(folder), storage=storage)

    @property
    def teacher_store(self) -> Location:
        """``<storage>/teachers``: shared by every sweep of this storage."""
        return self.storage_location / "teachers"

    def base_run(self) -> "RunConfig":
        """The run every trial of this sweep starts from (a trial sets the pairing, the method, its weights and
        the learning rate): the dataset, the recipe, the teachers' budget, the seed."""
        return RunConfig(
            dataset=self.dataset.name,
            data_root=self.dataset.root,
            dataset_options=dict(self.dataset.options),
            epochs=self.budget.max_epochs,
            **spec_values(self, RunConfig),  # every run setting the spec holds, by its path (l2d.settings)
        )

    def run_for(self, teacher: str, student: str | None = None) -> "RunConfig":
        """:meth:`base_run` for one pairing, with each backbone's initial weights from ``weights``."""
        return self.base_run().replace(
            teacher=teacher,
            student=student,
            teacher_weights=self.weights.get(teacher),
            student_weights=self.weights.get(student) if student else None,
        )

    def selection_cost(self) -> str:
        """What ``budget.selection_seeds`` costs, said before a sweep starts (empty for one seed)."""
        n = self.budget.selection_seeds
        if n == 1:
            return ""
        return (
            f", each training {n} students (seeds {self.seed} to {self.seed + n - 1}; scored by their mean: "
            f"budget.selection_seeds, {n}x the compute of one)"
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        del data["folder"]  # where it was read from, not what it runs
        data["pairings"] = [{"teacher": p.teacher, "students": list(p.students)} for p in self.pairings]
        data["methods"] = list(self.methods)
        data["search_space"] = {k: asdict(v) if isinstance(v, Range) else v for k, v in self.search_space.items()}
        data["objectives"] = [{"metric": m, "mode": mode} for m, mode in self.objectives]
        if self.objectives:  # the first objective is the metric: the stored spec names it once
            del data["metric"], data["mode"]
        else:
            del data["objectives"]
        if data["budget"]["confirm"] is None:  # unset: left out, as in specs written before it existed
            del data["budget"]["confirm"]
        if data["budget"]["selection_seeds"] == 1:  # the default: left out, as in specs written before it existed
            del data["budget"]["selection_seeds"]
        for key in ("study_storage", "warm_start", "max_student_params"):
            if data[key] is None:
                del data[key]
        for key in ("channels_last", "grad_share_every"):  # unset: left out, as in specs written before they existed
            if data["recipe"][key] is None:
                del data["recipe"][key]
        if not data["tracking"]:
            del data["tracking"]
        if data["first_points"]:
            data["first_points"] = [dict(point) for point in self.first_points]
        else:
            del data["first_points"]
        return data

    def describe(self) -> dict:
        """:meth:`to_dict` for showing: the values of credential-looking URI parts masked."""
        data = self.to_dict()
        for key in ("storage", "study_storage", "warm_start"):
            if data.get(key):
                data[key] = redact(data[key])
        if data.get("tracking", {}).get("mlflow"):
            data["tracking"]["mlflow"]["tracking_uri"] = redact(data["tracking"]["mlflow"]["tracking_uri"])
        return data


# --- validation -------------------------------------------------------------------------------------------------

#: Top-level keys, in the order errors are reported.
TOP_LEVEL = (
    "name",
    "dataset",
    "metric",
    "mode",
    "objectives",
    "pairings",
    "methods",
    "search_space",
    "budget",
    "resources",
    "recipe",
    "storage",
    "seed",
    "max_student_params",
    "weights",
    "study_storage",
    "warm_start",
    "keep",
    "tracking",
    "first_points",
)


def parse_spec(data: Any, source: str = "spec") -> SweepSpec:
    """Validate a spec given as a parsed YAML mapping; see the module docstring for the format.

    Raises:
        SpecError: every error of the spec, one line each (``str(error)``; ``error.errors`` is the list).
    """
    errors = Errors(source)
    if not isinstance(data, dict):
        errors.add("", f"expected a mapping with keys {', '.join(TOP_LEVEL)}, got {show(data)}")
        errors.raise_if_any()
    for key in data:
        if key not in TOP_LEVEL:
            errors.add(str(key), f"unknown key; allowed keys: {', '.join(TOP_LEVEL)}" + errors.suggest(key, TOP_LEVEL))
    for key in ("name", "pairings", "methods"):
        if key not in data:
            errors.add(key, "is required")

    name = _name(errors, data.get("name")) if "name" in data else None
    dataset = _dataset(errors, data.get("dataset", {"name": "mosaic-digits"}))
    objectives = _objectives(errors, data.get("objectives"))
    metric, mode = _metric_mode(errors, data, objectives)
    study_storage = _study_storage(errors, data.get("study_storage"))
    warm_start = _location(errors, data.get("warm_start"), "warm_start")
    pairings = _pairings(errors, data["pairings"]) if "pairings" in data else ()
    methods = _methods(errors, data["methods"]) if "methods" in data else ()
    search_space = _search_space(errors, data.get("search_space") or {}, methods)
    raw_budget = data.get("budget") or {}
    raw_confirm = raw_budget.get("confirm") if isinstance(raw_budget, dict) else None
    if isinstance(raw_budget, dict):
        raw_budget = {k: v for k, v in raw_budget.items() if k != "confirm"}
    budget = validate_section(errors, Budget, raw_budget, "budget")
    confirm = validate_section(errors, Confirm, raw_confirm, "budget.confirm") if raw_confirm is not None else None
    if budget is not None:
        budget = dataclasses.replace(budget, confirm=confirm)
        _budget_rules(errors, budget)
    resources = validate_section(errors, Resources, data.get("resources") or {}, "resources")
    if resources is not None and resources.trainer == "in-process" and resources.workers_per_trial != 1:
        errors.add(
            "resources.trainer",
            f"in-process runs one worker, but workers_per_trial is "
            f"{resources.workers_per_trial}; allowed: torch-trainer or auto",
        )
    recipe = validate_section(errors, RecipeSpec, data.get("recipe") or {}, "recipe")
    storage = _location(errors, data.get("storage", "./runs"), "storage")
    seed = errors.value(setting_rule(settings(RunConfig)["seed"]), data.get("seed", 0), "seed")
    _confirm_rules(errors, confirm, seed, budget.selection_seeds if budget is not None else 1)
    max_params = data.get("max_student_params")
    if max_params is not None:
        if isinstance(max_params, float) and max_params.is_integer():
            max_params = int(max_params)
        max_params = errors.value(integer(1), max_params, "max_student_params")
    weights = _weights(errors, data.get("weights") or {}, pairings)
    if budget is not None and budget.teacher_epochs == 0:
        _adopted_teachers(errors, pairings, weights)
    keep = errors.value(choice(KEEP), data.get("keep", "best+last"), "keep")
    tracking = _tracking(errors, data.get("tracking"))
    first = _first_points(errors, data.get("first_points"), pairings, methods, search_space)
    errors.raise_if_any()
    if max_params is not None:  # counts parameters: needs torch; only once everything else is right
        _student_sizes(errors, pairings, max_params, dataset, recipe)
        errors.raise_if_any()
    return SweepSpec(
        name=name,
        dataset=dataset,
        pairings=tuple(pairings),
        methods=methods,
        search_space=search_space,
        budget=budget,
        resources=resources,
        recipe=recipe,
        storage=storage,
        metric=metric,
        mode=mode,
        seed=seed,
        max_student_params=max_params,
        weights=weights,
        objectives=objectives if len(objectives) > 1 else (),
        study_storage=study_storage,
        warm_start=warm_start,
        keep=keep,
        tracking=tracking,
        first_points=first,
    )


def _name(errors: Errors, raw: Any) -> str | None:
    name = errors.value(text(), raw, "name")
    if name is None:
        return None
    if len(name) > MAX_NAME:
        errors.add("name", f"{len(name):,} characters is too long; at most {MAX_NAME} (it names the sweep's folder)")
    elif not name or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name) or name.startswith("."):
        errors.add("name", f"{shown(name)} is not allowed; use letters, digits, '-', '_' and '.' (ASCII)")
    elif name in RESERVED:
        errors.add(
            "name", f"{name!r} is reserved (the storage's shared folders: {', '.join(RESERVED)}); choose another name"
        )
    return name


def _dataset(errors: Errors, raw: Any) -> DatasetSpec | None:
    if isinstance(raw, str):
        raw = {"name": raw}
    if isinstance(raw, dict) and "format" in raw:
        raw = _declared_dataset(errors, raw)
        if raw is None:
            return None
    spec = validate_section(errors, DatasetSpec, raw, "dataset", required=("name",))
    if spec is None:
        return None
    if spec.name not in DATASETS:
        errors.add(
            "dataset.name",
            f"unknown dataset {spec.name!r}; allowed: {', '.join(DATASETS)}" + errors.suggest(spec.name, DATASETS),
        )
        return None
    info = DATASETS[spec.name]
    if info.needs_root and not spec.root:
        errors.add("dataset.root", f"dataset {spec.name!r} needs root (the folder of its files)")
    if not isinstance(spec.options, dict):
        errors.add("dataset.options", f"expected a mapping of options, got {show(spec.options)}")
        return None
    for key, value in spec.options.items():
        if key not in info.options:
            errors.add(
                f"dataset.options.{key}",
                f"unknown key; allowed keys: {', '.join(sorted(info.options))}" + errors.suggest(key, info.options),
            )
            continue
        try:
            info.options[key].check(value)  # the dataset's own rule (l2d.data), the one build_dataset applies
        except ValueError as error:
            errors.add(f"dataset.options.{key}", str(error))
            continue
        if info.options[key].path:
            error = _credentials(value)
            if error:
                errors.add(f"dataset.options.{key}", error)
    return _absolute_paths(spec, info)


def _credentials(value: str) -> str | None:
    try:
        Location.parse(value, "a dataset file")
    except StorageError as error:
        return str(error)
    return None


def _absolute_paths(spec: DatasetSpec, info) -> DatasetSpec:
    """``spec`` with its root and, without a root, its file options made absolute (against the current folder, as
    ``storage`` is): a trial runs in a folder of Ray's, and a resumed sweep may be started from anywhere."""

    def absolute(text):
        return text if not isinstance(text, str) or "://" in text else os.path.abspath(os.path.expanduser(text))

    options = {
        key: absolute(value) if key in info.options and info.options[key].path and not spec.root else value
        for key, value in spec.options.items()
    }
    return dataclasses.replace(spec, root=absolute(spec.root), options=options)


def _declared_dataset(errors: Errors, raw: dict) -> dict | None:
    """``{format: manifest, train: ..., root: ...}`` as ``{name: manifest, root: ..., options: {train: ...}}``: a
    declared format's options may stand beside ``format`` (the short form) or under ``options``."""
    kind = raw["format"]
    if kind not in FORMATS:
        errors.add("dataset.format", f"{show(kind)} is not allowed; allowed: {', '.join(FORMATS)}")
        return None
    if "name" in raw:
        errors.add("dataset.name", "give either name (a shipped dataset) or format (your own data), not both")
        return None
    section = {"name": kind, "options": dict(raw.get("options") or {})}
    kept = ("root", *_dataset_settings())  # the section's own keys; the rest are the format's options
    for key, value in raw.items():
        if key in kept:
            section[key] = value
        elif key not in ("format", "options"):
            if key in section["options"]:
                errors.add(f"dataset.{key}", "given twice (beside format and under options)")
            section["options"][key] = value
    return section


def _dataset_settings() -> list[str]:
    """The keys of the run settings the ``dataset`` section holds (``image_size``...: :mod:`l2d.settings`)."""
    return [d.spec_key for d in settings(RunConfig).values() if d.spec_section == "dataset"]


def _declared_dataset_schemas() -> list[dict]:
    """The JSON Schema of each declared format's short form (``{format: manifest, train: ..., ...}``), from the
    registry's options: their types, choices and help."""
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string"}
    settings_schema = section_schema(DatasetSpec)["properties"]  # image_size and the other run settings, once
    schemas = []
    for kind in FORMATS:
        properties: dict[str, dict] = {
            "format": {"const": kind},
            "root": {"type": "string", "description": "what relative file options are relative to"},
            **{key: settings_schema[key] for key in _dataset_settings()},
            "options": {"type": "object"},
        }
        for key, option in DATASETS[kind].options.items():
            properties[key] = {"type": kinds[option.kind], "description": option.help}
            if option.choices:
                properties[key]["enum"] = list(option.choices)
        schemas.append(
            {"type": "object", "additionalProperties": False, "required": ["format"], "properties": properties}
        )
    return schemas


def _objectives(errors: Errors, raw: Any) -> tuple:
    """``objectives``: a list of ``{metric, mode}``; the first a val metric (ASHA stops on it), no metric twice."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        errors.add("objectives", f"expected a non-empty list of {{metric, mode}}, got {show(raw)}")
        return ()
    objectives = []
    for i, item in enumerate(raw):
        where = f"objectives[{i}]"
        if not errors.mapping(item, where, ("metric", "mode"), required=("metric",)):
            continue
        metric = errors.value(choice(OBJECTIVE_METRICS), item["metric"], f"{where}.metric")
        if metric is None:
            continue
        mode = errors.value(choice(("min", "max")), item.get("mode", default_mode(metric)), f"{where}.mode")
        objectives.append((metric, mode))
    if objectives and objectives[0][0] not in METRICS:
        errors.add(
            "objectives[0].metric",
            f"{objectives[0][0]!r} is not allowed first; the first objective is what "
            f"ASHA stops on, a per-epoch metric: {', '.join(METRICS)}",
        )
    metrics = [m for m, _ in objectives]
    if len(set(metrics)) != len(metrics):
        errors.add("objectives", f"names a metric twice: {metrics}")
    return tuple(objectives)


def _metric_mode(errors: Errors, data: dict, objectives: tuple) -> tuple[str, str]:
    if objectives and ("metric" in data or "mode" in data):
        errors.add("objectives", "give either objectives or metric/mode, not both (the first objective is the metric)")
    if objectives:
        return objectives[0]
    metric = errors.value(text(), data.get("metric", "val_mAP"), "metric") or "val_mAP"
    if metric not in METRICS:
        errors.add(
            "metric", f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}" + errors.suggest(metric, METRICS)
        )
    mode = data.get("mode", default_mode(metric))
    if mode not in ("min", "max"):
        errors.add("mode", f"{mode!r} is not allowed; allowed: min, max")
    return metric, mode


def _location(errors: Errors, raw: Any, where: str) -> str | None:
    if raw is None:
        return None
    value = errors.value(text(), raw, where)
    if value is None:
        return None
    try:
        return str(Location.parse(value, where))
    except StorageError as error:
        errors.add(where, str(error).removeprefix(f"{where}: "))
        return None


def _study_storage(errors: Errors, raw: Any) -> str | None:
    """``study_storage``: a SQLAlchemy URL; no credential in it (PGPASSWORD / ~/.pgpass instead)."""
    if raw is None:
        return None
    url = errors.value(text(), raw, "study_storage")
    if url is None:
        return None
    dialect = url.split("://", 1)[0] if "://" in url else ""
    if dialect not in STUDY_DIALECTS:
        errors.add(
            "study_storage",
            f"{url.split('@')[-1]!r}: unsupported database; allowed: a SQLAlchemy URL of {', '.join(STUDY_DIALECTS)}",
        )
        return None
    secret = credentials_in_uri(url)
    if secret:
        where = "a password" if secret[0] == "password" else f"a credential ({secret[0]})"
        remedy = (
            "PGPASSWORD, PGSSLKEY or ~/.pgpass for PostgreSQL"
            if dialect.startswith("postgresql")
            else "MYSQL_PWD or ~/.my.cnf for MySQL"
            if dialect.startswith("mysql")
            else "the database's own means"
        )
        errors.add(
            "study_storage",
            f"the URL carries {where}; give it through the database's own means ({remedy}), never in the spec",
        )
        return None
    return url


def _pairings(errors: Errors, raw: Any) -> list[Pairing]:
    if not isinstance(raw, list) or not raw:
        errors.add("pairings", f"expected a non-empty list of {{teacher, students}}, got {show(raw)}")
        return []
    pairings = []
    for i, item in enumerate(raw):
        where = f"pairings[{i}]"
        if not errors.mapping(item, where, ("teacher", "students"), required=("teacher", "students")):
            continue
        teacher = errors.value(text(), item["teacher"], f"{where}.teacher")
        students = errors.string_list(item["students"], f"{where}.students")
        if teacher is None or students is None:
            continue
        for at, model in [(f"{where}.teacher", teacher)] + [
            (f"{where}.students[{j}]", s) for j, s in enumerate(students)
        ]:
            try:
                check_backbone_name(model)
            except ValueError as error:
                errors.add(at, str(error))
        if len(set(students)) != len(students):
            errors.add(f"{where}.students", f"lists a student twice: {list(students)}")
        pairings.append(Pairing(teacher, students))
    teachers = [p.teacher for p in pairings]
    if len(set(teachers)) != len(teachers):
        errors.add("pairings", f"names a teacher twice ({teachers}); merge its students into one entry")
    return pairings


def _methods(errors: Errors, raw: Any) -> tuple[str, ...]:
    methods = errors.string_list(raw, "methods") or ()
    for i, method in enumerate(methods):
        if method not in METHODS:
            errors.add(
                f"methods[{i}]",
                f"unknown method {shown(method)}; allowed: {', '.join(METHODS)}" + errors.suggest(method, METHODS),
            )
    if len(set(methods)) != len(methods):
        errors.add("methods", f"lists a method twice: {list(methods)}")
    return tuple(m for m in methods if m in METHODS)


def _search_space(errors: Errors, raw: Any, methods: tuple[str, ...]) -> dict[str, Range | float]:
    if not errors.mapping(raw, "search_space", SEARCHABLE):
        return {}
    used = {"lr"} | {name for m in methods for name in METHODS[m].defaults}
    space: dict[str, Range | float] = {}
    for key, value in raw.items():
        where = f"search_space.{key}"
        if key not in SEARCHABLE:
            continue  # reported by errors.mapping
        if methods and key not in used:
            errors.add(
                where,
                f"is not a hyperparameter of the chosen methods ({', '.join(methods)}); allowed here: "
                f"{', '.join(sorted(used))}",
            )
            continue
        positive = key == "lr" or is_temperature(key)
        bound = number(0.0, exclusive=positive)
        if isinstance(value, dict):
            if not errors.mapping(value, where, ("low", "high", "log"), required=("low", "high")):
                continue
            low = errors.value(bound, value["low"], f"{where}.low")
            high = errors.value(bound, value["high"], f"{where}.high")
            log = errors.value(flag(), value.get("log", True), f"{where}.log")
            if low is None or high is None or log is None:
                continue
            if low >= high:
                errors.add(where, f"empty range: low {low:g} >= high {high:g}; allowed: low < high")
            elif log and low <= 0:
                errors.add(f"{where}.low", f"{low:g} is not allowed on a log scale; allowed: low > 0")
            else:
                space[key] = Range(low, high, log)
        else:
            fixed = errors.value(bound, value, where)
            if fixed is not None:
                space[key] = fixed
    return space


def _budget_rules(errors: Errors, budget: Budget) -> None:
    if budget.grace_period > budget.max_epochs:
        errors.add(
            "budget.grace_period",
            f"{budget.grace_period} exceeds budget.max_epochs ({budget.max_epochs}); allowed: 1 to max_epochs",
        )
    if budget.teacher_schedule_epochs is not None and (
        budget.teacher_epochs is None or budget.teacher_schedule_epochs < budget.teacher_epochs
    ):
        errors.add(
            "budget.teacher_schedule_epochs",
            f"{budget.teacher_schedule_epochs} needs budget.teacher_epochs, "
            f"at most as many (the teachers stop at teacher_epochs of a "
            f"schedule this long)",
        )


def _confirm_rules(errors: Errors, confirm: "Confirm | None", seed: int | None, selection_seeds: int = 1) -> None:
    """``budget.confirm``: a baseline that is a method; fresh seeds (after the search's ``selection_seeds``) that fit
    under the largest seed; without a confirmation stage, the search's own seeds fit."""
    if confirm is None and seed is not None and seed + selection_seeds - 1 > MAX_SEED:
        errors.add(
            "budget.selection_seeds",
            f"seeds {seed} to {seed + selection_seeds - 1} exceed the largest seed ({MAX_SEED}); lower seed or "
            f"selection_seeds",
        )
    if confirm is None:
        return
    if confirm.baseline is not None and confirm.baseline not in METHODS:
        errors.add(
            "budget.confirm.baseline",
            f"unknown method {shown(confirm.baseline)}; allowed: {', '.join(METHODS)} or null"
            + errors.suggest(confirm.baseline, METHODS),
        )
    first = None if seed is None else seed + selection_seeds  # after the search's seeds
    if first is not None and first + confirm.seeds - 1 > MAX_SEED:
        errors.add(
            "budget.confirm.seeds",
            f"seeds {first} to {first + confirm.seeds - 1} exceed the largest seed ({MAX_SEED}); lower seed or seeds",
        )


def _adopted_teachers(errors: Errors, pairings, weights: dict) -> None:
    """``budget.teacher_epochs: 0`` uses every teacher as it is: each needs its checkpoint file in ``weights``."""
    for teacher in dict.fromkeys(p.teacher for p in pairings):
        source = weights.get(teacher)
        if source is None or source in ("offline", "timm", "random") or source.startswith(("timm:", "hf-hub:")):
            errors.add(
                "budget.teacher_epochs",
                f"0 uses each teacher as it is: weights.{teacher} must name its checkpoint file (a plain timm "
                f"classifier over the dataset's classes, or a model this tool exported; a path or an s3:// / gs:// "
                f"URI); got {source or 'none'}",
            )


def check_adopted_teachers(spec: SweepSpec, class_names: list[str]) -> None:
    """With ``teacher_epochs`` 0, each teacher's local checkpoint's class names (where it carries them) against the
    dataset's ``class_names`` (:func:`l2d.weights.class_order`; nothing is fetched: a checkpoint in object storage is
    checked by the teacher phase, which fetches it).

    Raises:
        WeightsError: a checkpoint names classes that are not the dataset's.
    """
    if spec.budget.teacher_epochs != 0:
        return
    for teacher in dict.fromkeys(p.teacher for p in spec.pairings):
        source = spec.weights[teacher]
        if not source.startswith(REMOTE_SCHEMES):  # a remote one: checked where the teacher phase fetches it
            class_order(resolve(source, teacher), class_names)


def _weights(errors: Errors, raw: Any, pairings) -> dict:
    """``weights``: backbone name -> source; each backbone one of the pairings names, each source well formed (its
    file is looked for before Ray starts, see sweeps.tune.experiment.check_local_resources)."""
    named = tuple(sorted({p.teacher for p in pairings} | {s for p in pairings for s in p.students}))
    if not errors.mapping(raw, "weights", named if pairings else None):
        return {}
    weights = {}
    for backbone, source in raw.items():
        where = f"weights.{backbone}"
        source = errors.value(text(), source, where)
        if source is None:
            continue
        secret = credentials_in_uri(source)
        if secret:  # never echoed
            where_secret = "a password" if secret[0] == "password" else f"a credential ({secret[0]})"
            errors.add(
                where,
                f"the URI carries {where_secret}; give the object store's credentials through its environment "
                f"(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS)",
            )
        elif source.startswith("hf-hub:") and source.removeprefix("hf-hub:").strip("/").count("/") != 1:
            errors.add(where, f"{source!r} is not allowed; allowed: hf-hub:<org>/<repo>")
        elif source.startswith("timm:") and not source.removeprefix("timm:"):
            errors.add(
                where,
                f"{source!r} is not allowed; allowed: timm, timm:<tag>, hf-hub:<org>/<repo>, offline, "
                f"random or a local file",
            )
        else:
            weights[backbone] = source
    return weights


def _tracking(errors: Errors, raw: Any) -> dict:
    """``tracking``: ``{mlflow: {tracking_uri, experiment}}``; no credential in the URI (MLflow's environment)."""
    if not raw:
        return {}
    if (
        not errors.mapping(raw, "tracking", ("mlflow",))
        or "mlflow" not in raw
        or not errors.mapping(
            raw["mlflow"], "tracking.mlflow", ("tracking_uri", "experiment"), required=("tracking_uri",)
        )
    ):
        return {}
    mlflow = raw["mlflow"]
    uri = errors.value(text(), mlflow["tracking_uri"], "tracking.mlflow.tracking_uri")
    experiment = errors.value(text(), mlflow.get("experiment", "l2d-sweep"), "tracking.mlflow.experiment")
    if uri is None or experiment is None:
        return {}
    secret = credentials_in_uri(uri)
    if secret:
        where = "a password" if secret[0] == "password" else f"a credential ({secret[0]})"
        errors.add(
            "tracking.mlflow.tracking_uri",
            f"the URI carries {where}; give it through MLFLOW_TRACKING_TOKEN, or "
            f"MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD",
        )
        return {}
    return {"mlflow": {"tracking_uri": uri, "experiment": experiment}}


def _first_points(errors: Errors, raw: Any, pairings, methods, search_space) -> tuple:
    """``first_points``: configurations to evaluate first; each names a method of the spec (and optionally a pairing
    of it) and values inside the searched ranges of that method's hyperparameters."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        errors.add("first_points", f"expected a non-empty list of mappings, got {show(raw)}")
        return ()
    points = []
    for i, point in enumerate(raw):
        where = f"first_points[{i}]"
        if not errors.mapping(point, where, ("teacher", "student", "method", *SEARCHABLE), required=("method",)):
            continue
        method = errors.value(choice(tuple(methods)), point["method"], f"{where}.method")
        teacher = errors.value(
            choice(tuple(p.teacher for p in pairings)),
            point.get("teacher", pairings[0].teacher if pairings else None),
            f"{where}.teacher",
        )
        if method is None or teacher is None:
            continue
        students = next(p.students for p in pairings if p.teacher == teacher)
        student = errors.value(choice(tuple(students)), point.get("student", students[0]), f"{where}.student")
        values = {}
        for name, value in point.items():
            if name in ("teacher", "student", "method"):
                continue
            searched = search_space.get(name)
            if name != "lr" and name not in METHODS[method].defaults:
                errors.add(
                    f"{where}.{name}",
                    f"is not a hyperparameter of {method}; allowed: lr, {', '.join(METHODS[method].defaults)}",
                )
            elif not isinstance(searched, Range):
                errors.add(f"{where}.{name}", "is not searched (a first point sets searched values only)")
            else:
                value = errors.value(number(), value, f"{where}.{name}")
                if value is not None and not searched.low <= value <= searched.high:
                    errors.add(
                        f"{where}.{name}",
                        f"{value:g} is outside its range; allowed: {searched.low:g} to {searched.high:g}",
                    )
                elif value is not None:
                    values[name] = value
        points.append({"teacher": teacher, "student": student, "method": method, **values})
    return tuple(points)


def _student_sizes(errors: Errors, pairings, max_params: int, dataset: "DatasetSpec", recipe: "RecipeSpec"):
    """Count each student's parameters on the meta device (no memory, no weights) against the plan's limit."""
    import torch

    from l2d.models import build_model, count_parameters

    embed_dim = recipe.embed_dim or DATASETS[dataset.name].embed_dim
    for i, pairing in enumerate(pairings):
        for j, student in enumerate(pairing.students):
            with torch.device("meta"):
                size = count_parameters(build_model(student, 10, embed_dim))
            if size > max_params:
                errors.add(
                    f"pairings[{i}].students[{j}]",
                    f"{student} has {size:,} parameters, more than max_student_params ({max_params:,})",
                )


# --- files, overrides, schema ------------------------------------------------------------------------------------


def load_spec(path: str) -> SweepSpec:
    """Read and validate a spec file (a safe YAML loader: no Python objects, duplicate keys refused)."""
    return parse_spec(read_yaml(path, "spec file"), path)


def with_overrides(spec: SweepSpec, source: str, **changes: Any) -> SweepSpec:
    """``spec`` with ``changes`` applied (``budget.num_samples=50``, ``name="other"``; dotted keys reach into a
    section), validated again as a whole: the one way a command line, ``extend`` or a benchmark changes a spec.
    ``budget.max_epochs`` also lowers the grace period to fit it."""
    data = spec.to_dict()
    for key, value in changes.items():
        if value is None:
            continue
        section, _, inner = key.partition(".")
        if inner:
            data[section] = {**(data.get(section) or {}), inner: value}
        else:
            data[key] = value
    if changes.get("budget.max_epochs") is not None:
        data["budget"]["grace_period"] = min(data["budget"]["grace_period"], data["budget"]["max_epochs"])
    changed = parse_spec(data, source)
    moved = any(changes.get(key) is not None for key in ("name", "storage"))
    return changed if moved or not spec.folder else replace(changed, folder=spec.folder)


def _setting_schema(name: str) -> dict:
    """The JSON Schema of a top-level run setting (``seed``), from its one definition."""
    schema = TypeAdapter(setting_rule(settings(RunConfig)[name])).json_schema()
    schema.pop("title", None)
    return schema


def json_schema() -> dict:
    """The JSON Schema of a spec file (draft 2020-12), for editors with a YAML language server."""
    range_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["low", "high"],
        "properties": {
            "low": {"type": "number"},
            "high": {"type": "number"},
            "log": {"type": "boolean", "default": True},
        },
        "description": "searched: uniform on [low, high], log-uniform unless log: false",
    }
    string_list = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}
    objective = {
        "type": "object",
        "additionalProperties": False,
        "required": ["metric"],
        "properties": {"metric": {"enum": list(OBJECTIVE_METRICS)}, "mode": {"enum": ["min", "max"]}},
    }
    properties = {
        "name": {
            "type": "string",
            "pattern": r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$",
            "description": "the sweep folder is <storage>/<name>",
        },
        "dataset": {
            "anyOf": [{"type": "string"}, section_schema(DatasetSpec), *_declared_dataset_schemas()],
            "description": "a dataset of l2d.data (name, root, image_size, options), or your own data declared "
            "(format: manifest or coco, and its options beside it)",
        },
        "metric": {"enum": list(METRICS), "description": "what trials are ranked by (on the val split)"},
        "mode": {"enum": ["min", "max"]},
        "objectives": {
            "type": "array",
            "items": objective,
            "minItems": 1,
            "description": "several objectives: a Pareto search (the first is what ASHA stops on)",
        },
        "pairings": {
            "type": "array",
            "minItems": 1,
            "description": "teacher -> allowed students (timm names)",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["teacher", "students"],
                "properties": {"teacher": {"type": "string"}, "students": string_list},
            },
        },
        "methods": {"type": "array", "items": {"enum": list(METHODS)}, "minItems": 1, "uniqueItems": True},
        "search_space": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                name: {
                    "anyOf": [range_schema, {"type": "number", "minimum": 0}],
                    "description": "a number is fixed; {low, high} is searched",
                }
                for name in SEARCHABLE
            },
        },
        "budget": _budget_schema(),
        "resources": section_schema(Resources),
        "recipe": section_schema(RecipeSpec),
        "storage": {"type": "string", "description": "a folder, or s3:// / gs:// (no credentials in the URI)"},
        "seed": _setting_schema("seed"),
        "max_student_params": {"type": "integer", "minimum": 1},
        "weights": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "backbone -> initial weights: offline, timm, timm:<tag>, hf-hub:<org>/<repo>, "
            "random, or a local file",
        },
        "study_storage": {"type": "string", "description": "a SQLAlchemy URL (no password: PGPASSWORD / ~/.pgpass)"},
        "warm_start": {"type": "string", "description": "another sweep whose finished trials seed the study"},
        "keep": {"enum": list(KEEP)},
        "tracking": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "mlflow": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["tracking_uri"],
                    "properties": {"tracking_uri": {"type": "string"}, "experiment": {"type": "string"}},
                }
            },
        },
        "first_points": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["method"],
                "additionalProperties": False,
                "properties": {
                    "teacher": {"type": "string"},
                    "student": {"type": "string"},
                    "method": {"enum": list(METHODS)},
                    **{n: {"type": "number"} for n in SEARCHABLE},
                },
            },
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "l2d-sweep sweep spec",
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "pairings", "methods"],
        "properties": properties,
    }


def _budget_schema() -> dict:
    schema = section_schema(Budget)
    schema["properties"]["confirm"] = {
        "anyOf": [section_schema(Confirm), {"type": "null"}],
        "description": "the confirmation stage: the best configurations and a baseline rerun on fresh seeds",
    }
    schema.pop("$defs", None)
    return schema


def replace(spec: SweepSpec, **changes) -> SweepSpec:
    """``dataclasses.replace`` for a spec (no validation: for values already validated)."""
    return dataclasses.replace(spec, **changes)


def _sections() -> dict:  # for tests: the typed sections and their field names
    return {
        cls.__name__: [f.name for f in dataclasses.fields(cls)]
        for cls in (DatasetSpec, Budget, Confirm, Resources, RecipeSpec)
    }


__all__ += ["Range", "DatasetSpec", "Pairing", "Budget", "Confirm", "Resources", "RecipeSpec"]
