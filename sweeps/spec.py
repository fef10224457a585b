"""The sweep spec: one YAML file that defines a sweep, validated before Ray starts.

Every error names the file, the field, the bad value and what is allowed. The YAML is read with
``yaml.safe_load``: a spec cannot make the platform import or evaluate code.

Why one module of nearly 500 lines: it is the whole spec language (its dataclasses, the parser and each section's
rules) and reads top to bottom as its reference; split, a field and the rule that checks it would live apart. The
generic checks (types, ranges, choices) are already in :mod:`sweeps._checks`.

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

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from l2d.losses import METHODS
from l2d.run import RunConfig
from l2d.storage import Location, StorageError
from sweeps._checks import Checker, SpecError, dataclass_fields, show

__all__ = ["SpecError", "SweepSpec", "load_spec", "parse_spec"]

#: Hyperparameters a search space may name: the learning rate and every method's weights.
SEARCHABLE = ("lr", *sorted({name for method in METHODS.values() for name in method.defaults}))
METRICS = ("val_mAP", "val_CF1", "val_OF1", "val_loss")
#: What an objective may name: a val metric (per epoch; the first objective must be one, ASHA stops on it) or a
#: property of the student (latency, size).
OBJECTIVE_METRICS = (*METRICS, "latency_ms", "student_params")
SEARCHERS = ("tpe", "random", "nsga2")
#: What a trial keeps of its checkpoints when it ends (see sweeps.checkpoints.prune).
KEEP = ("best+last", "best", "all")
#: SQLAlchemy dialects a study_storage URL may use.
STUDY_DIALECTS = ("sqlite", "postgresql", "postgresql+psycopg2", "postgresql+psycopg", "mysql", "mysql+pymysql")
SCHEDULERS = ("asha", "none")
TRAINERS = ("auto", "torch-trainer", "in-process")


@dataclass(frozen=True)
class Range:
    """A searched hyperparameter: uniform on [low, high], or log-uniform when ``log``."""

    low: float
    high: float
    log: bool = True


@dataclass(frozen=True)
class DatasetSpec:
    name: str = "mosaic-digits"
    root: str | None = None
    image_size: int | None = None
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Pairing:
    teacher: str
    students: tuple[str, ...]


@dataclass(frozen=True)
class Budget:
    num_samples: int = 8
    max_epochs: int = 3
    grace_period: int = 1
    reduction_factor: float = 2.0
    teacher_epochs: int | None = None
    teacher_schedule_epochs: int | None = None  # the teachers' OneCycle length when they stop early (official: 80/30)
    searcher: str = "tpe"           # tpe (Optuna TPE) or random (Optuna's random sampler)
    scheduler: str = "asha"         # asha (early stopping) or none (every trial runs max_epochs)


@dataclass(frozen=True)
class Resources:
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_concurrent_trials: int = 1
    max_failures: int = 0
    # Where a trial trains: torch-trainer (a Ray Train TorchTrainer, DDP over workers_per_trial workers),
    # in-process (in the Tune trial's own reused process: no worker group to start, single worker only), or
    # auto (in-process for a single worker, torch-trainer for several).
    trainer: str = "auto"


@dataclass(frozen=True)
class RecipeSpec:
    batch_size: int = 64
    weight_decay: float = 1e-4
    pct_start: float = 0.2
    embed_dim: int | None = None
    num_workers: int = 0
    channels_last: bool | None = None   # None: the dataset's default (on CUDA, and for mosaic-scenes on CPU)
    grad_share_every: int | None = None  # gradient-share diagnostics every N steps (None: the engine's 50; 0: off)


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
    objectives: tuple = ()          # ((metric, mode), ...) when several; empty: (metric, mode) alone
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
        """``<storage>/<name>``, a local folder or a URI."""
        return self.storage_location / self.name

    @property
    def teacher_store(self) -> Location:
        """``<storage>/teachers``: shared by every sweep of this storage."""
        return self.storage_location / "teachers"

    def base_run(self) -> RunConfig:
        """The run every trial of this sweep starts from (a trial sets the pairing, the method, its weights and
        the learning rate): the dataset, the recipe, the teachers' budget, the seed."""
        return RunConfig(dataset=self.dataset.name, data_root=self.dataset.root,
                         dataset_options=dict(self.dataset.options), image_size=self.dataset.image_size,
                         embed_dim=self.recipe.embed_dim, epochs=self.budget.max_epochs,
                         teacher_epochs=self.budget.teacher_epochs,
                         teacher_schedule_epochs=self.budget.teacher_schedule_epochs, batch_size=self.recipe.batch_size,
                         weight_decay=self.recipe.weight_decay, pct_start=self.recipe.pct_start,
                         num_workers=self.recipe.num_workers, seed=self.seed,
                         channels_last=self.recipe.channels_last, grad_share_every=self.recipe.grad_share_every)

    def run_for(self, teacher: str, student: str | None = None) -> RunConfig:
        """:meth:`base_run` for one pairing, with each backbone's initial weights from ``weights``."""
        return self.base_run().replace(teacher=teacher, student=student, teacher_weights=self.weights.get(teacher),
                                       student_weights=self.weights.get(student) if student else None)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["pairings"] = [{"teacher": p.teacher, "students": list(p.students)} for p in self.pairings]
        data["methods"] = list(self.methods)
        data["search_space"] = {k: asdict(v) if isinstance(v, Range) else v for k, v in self.search_space.items()}
        data["objectives"] = [{"metric": m, "mode": mode} for m, mode in self.objectives]
        if self.objectives:  # the first objective is the metric: the stored spec names it once
            del data["metric"], data["mode"]
        else:
            del data["objectives"]
        for key in ("study_storage", "warm_start"):
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


# --- validation -------------------------------------------------------------------------------------------------

MAX_IMAGE_SIZE = 4096

TOP_LEVEL = ("name", "dataset", "metric", "mode", "objectives", "pairings", "methods", "search_space", "budget",
             "resources", "recipe", "storage", "seed", "max_student_params", "weights", "study_storage", "warm_start",
             "keep", "tracking", "first_points")


def parse_spec(data: Any, source: str = "spec") -> SweepSpec:
    """Validate a spec given as a parsed YAML mapping; see the module docstring for the format."""
    from l2d.data import DATASETS, MAX_SEED, dataset_options
    from l2d.models import check_backbone_name

    check = Checker(source)
    data = check.mapping(data, "", TOP_LEVEL, required=("name", "pairings", "methods"))

    name = check.string(data["name"], "name")
    if not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise check.fail("name", f"{name!r} is not allowed; use letters, digits, '-', '_' and '.'")
    from sweeps.folder import RESERVED

    if name in RESERVED:
        raise check.fail("name", f"{name!r} is reserved (the storage's shared folders: {', '.join(RESERVED)}); "
                                 f"choose another name")

    raw_dataset = data.get("dataset", {"name": "mosaic-digits"})
    if isinstance(raw_dataset, str):
        raw_dataset = {"name": raw_dataset}
    raw_dataset = check.mapping(raw_dataset, "dataset", dataclass_fields(DatasetSpec), required=("name",))
    dataset_name = check.string(raw_dataset["name"], "dataset.name")
    if dataset_name not in DATASETS:
        raise check.fail("dataset.name", f"unknown dataset {dataset_name!r}; allowed: {', '.join(DATASETS)}")
    if DATASETS[dataset_name].needs_root and not raw_dataset.get("root"):
        raise check.fail("dataset.root", f"dataset {dataset_name!r} needs root (the folder of its files)")
    options = raw_dataset.get("options") or {}
    check.mapping(options, "dataset.options", tuple(dataset_options(dataset_name)))
    for key, value in options.items():
        try:
            DATASETS[dataset_name].options[key].check(value)
        except ValueError as error:
            raise check.fail(f"dataset.options.{key}", str(error)) from None
    image_size = raw_dataset.get("image_size")
    dataset = DatasetSpec(
        name=dataset_name,
        root=check.string(raw_dataset["root"], "dataset.root") if raw_dataset.get("root") else None,
        image_size=check.integer(image_size, "dataset.image_size", 8, MAX_IMAGE_SIZE) if image_size is not None
        else None,
        options=dict(options),
    )

    objectives = _check_objectives(check, data.get("objectives"))
    if objectives and ("metric" in data or "mode" in data):
        raise check.fail("objectives", "give either objectives or metric/mode, not both (the first objective is "
                                       "the metric)")
    metric = objectives[0][0] if objectives else check.string(data.get("metric", "val_mAP"), "metric")
    if metric not in METRICS:
        raise check.fail("metric", f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    mode = objectives[0][1] if objectives else data.get("mode", "min" if metric == "val_loss" else "max")
    if mode not in ("min", "max"):
        raise check.fail("mode", f"{mode!r} is not allowed; allowed: min, max")
    study_storage = _check_study_storage(check, data.get("study_storage"))
    warm_start = data.get("warm_start")
    if warm_start is not None:
        try:
            warm_start = str(Location.parse(check.string(warm_start, "warm_start"), "warm_start"))
        except StorageError as error:
            raise check.fail("warm_start", str(error).removeprefix("warm_start: ")) from None

    raw_pairings = data["pairings"]
    if not isinstance(raw_pairings, list) or not raw_pairings:
        raise check.fail("pairings", f"expected a non-empty list of {{teacher, students}}, got {show(raw_pairings)}")
    pairings = []
    for i, raw in enumerate(raw_pairings):
        raw = check.mapping(raw, f"pairings[{i}]", ("teacher", "students"), required=("teacher", "students"))
        teacher = check.string(raw["teacher"], f"pairings[{i}].teacher")
        students = check.string_list(raw["students"], f"pairings[{i}].students")
        for where, model in [(f"pairings[{i}].teacher", teacher)] + [
                (f"pairings[{i}].students[{j}]", s) for j, s in enumerate(students)]:
            try:
                check_backbone_name(model)
            except ValueError as error:
                raise check.fail(where, str(error)) from None
        if len(set(students)) != len(students):
            raise check.fail(f"pairings[{i}].students", f"lists a student twice: {list(students)}")
        pairings.append(Pairing(teacher, students))
    teachers = [p.teacher for p in pairings]
    if len(set(teachers)) != len(teachers):
        raise check.fail("pairings", f"names a teacher twice ({teachers}); merge its students into one entry")

    methods = check.string_list(data["methods"], "methods")
    for i, method in enumerate(methods):
        if method not in METHODS:
            raise check.fail(f"methods[{i}]", f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise check.fail("methods", f"lists a method twice: {list(methods)}")

    search_space: dict[str, Range | float] = {}
    raw_space = check.mapping(data.get("search_space") or {}, "search_space", SEARCHABLE)
    used = {"lr"} | {name for m in methods for name in METHODS[m].defaults}
    for key, value in raw_space.items():
        where = f"search_space.{key}"
        if key not in used:
            raise check.fail(where, f"is not a hyperparameter of the chosen methods ({', '.join(methods)}); "
                                    f"allowed here: {', '.join(sorted(used))}")
        positive = key in ("lr", "kd_temperature")
        if isinstance(value, dict):
            value = check.mapping(value, where, ("low", "high", "log"), required=("low", "high"))
            low = check.number(value["low"], f"{where}.low", 0.0, exclusive=positive)
            high = check.number(value["high"], f"{where}.high", 0.0, exclusive=positive)
            log = value.get("log", True)
            if not isinstance(log, bool):
                raise check.fail(f"{where}.log", f"expected true or false, got {show(log)}")
            if low >= high:
                raise check.fail(where, f"empty range: low {low:g} >= high {high:g}; allowed: low < high")
            if log and low <= 0:
                raise check.fail(f"{where}.low", f"{low:g} is not allowed on a log scale; allowed: low > 0")
            search_space[key] = Range(low, high, log)
        else:
            search_space[key] = check.number(value, where, 0.0, exclusive=positive)

    raw_budget = check.mapping(data.get("budget") or {}, "budget", dataclass_fields(Budget))
    budget = Budget(**{**asdict(Budget()), **raw_budget})
    check.integer(budget.num_samples, "budget.num_samples", 1, 1_000_000)
    check.integer(budget.max_epochs, "budget.max_epochs", 1, 100_000)
    check.integer(budget.grace_period, "budget.grace_period", 1)
    if budget.grace_period > budget.max_epochs:
        raise check.fail("budget.grace_period", f"{budget.grace_period} exceeds budget.max_epochs "
                                                f"({budget.max_epochs}); allowed: 1 to max_epochs")
    if check.number(budget.reduction_factor, "budget.reduction_factor") <= 1:
        raise check.fail("budget.reduction_factor", f"{budget.reduction_factor} is not allowed; allowed: > 1")
    if budget.teacher_epochs is not None:
        check.integer(budget.teacher_epochs, "budget.teacher_epochs", 1, 100_000)
    if budget.teacher_schedule_epochs is not None:
        check.integer(budget.teacher_schedule_epochs, "budget.teacher_schedule_epochs", 1, 100_000)
        if budget.teacher_epochs is None or budget.teacher_schedule_epochs < budget.teacher_epochs:
            raise check.fail("budget.teacher_schedule_epochs", f"{budget.teacher_schedule_epochs} needs "
                                                               f"budget.teacher_epochs, at most as many (the teachers "
                                                               f"stop at teacher_epochs of a schedule this long)")
    check.choice(budget.searcher, "budget.searcher", SEARCHERS)
    check.choice(budget.scheduler, "budget.scheduler", SCHEDULERS)

    raw_resources = check.mapping(data.get("resources") or {}, "resources", dataclass_fields(Resources))
    resources = Resources(**{**asdict(Resources()), **raw_resources})
    check.integer(resources.workers_per_trial, "resources.workers_per_trial", 1, 4096)
    check.number(resources.cpus_per_worker, "resources.cpus_per_worker", 0.0, exclusive=True, maximum=1024)
    check.number(resources.gpus_per_worker, "resources.gpus_per_worker", 0.0, maximum=64)
    check.integer(resources.max_concurrent_trials, "resources.max_concurrent_trials", 1, 100_000)
    check.integer(resources.max_failures, "resources.max_failures", 0, 1000)
    check.choice(resources.trainer, "resources.trainer", TRAINERS)
    if resources.trainer == "in-process" and resources.workers_per_trial != 1:
        raise check.fail("resources.trainer", f"in-process runs one worker, but workers_per_trial is "
                                              f"{resources.workers_per_trial}; allowed: torch-trainer or auto")

    raw_recipe = check.mapping(data.get("recipe") or {}, "recipe", dataclass_fields(RecipeSpec))
    recipe = RecipeSpec(**{**asdict(RecipeSpec()), **raw_recipe})
    check.integer(recipe.batch_size, "recipe.batch_size", 1, 65_536)
    check.number(recipe.weight_decay, "recipe.weight_decay", 0.0)
    if not 0 < check.number(recipe.pct_start, "recipe.pct_start") < 1:
        raise check.fail("recipe.pct_start", f"{recipe.pct_start} is out of range; allowed: 0 < pct_start < 1")
    if recipe.embed_dim is not None:
        check.integer(recipe.embed_dim, "recipe.embed_dim", 8, 8192)
        if recipe.embed_dim % 8:
            raise check.fail("recipe.embed_dim", f"{recipe.embed_dim} is not allowed; allowed: a multiple of 8 (the "
                                                 f"decoder's 8 attention heads)")
    check.integer(recipe.num_workers, "recipe.num_workers", 0, 256)
    if recipe.channels_last is not None and not isinstance(recipe.channels_last, bool):
        raise check.fail("recipe.channels_last", f"{show(recipe.channels_last)} is not allowed; allowed: true, false")
    if recipe.grad_share_every is not None:
        check.integer(recipe.grad_share_every, "recipe.grad_share_every", 0, 1_000_000)

    storage = check.string(data.get("storage", "./runs"), "storage")
    try:
        storage = str(Location.parse(storage, "storage"))
    except StorageError as error:
        raise check.fail("storage", str(error).removeprefix("storage: ")) from None

    seed = check.integer(data.get("seed", 0), "seed", 0, MAX_SEED)
    max_params = data.get("max_student_params")
    if max_params is not None:
        max_params = check.integer(int(max_params) if isinstance(max_params, float) and max_params.is_integer()
                                   else max_params, "max_student_params", 1)
        _check_student_sizes(check, pairings, max_params, dataset, recipe)

    weights = _check_weights(check, data.get("weights") or {}, pairings)
    keep = check.choice(data.get("keep", "best+last"), "keep", KEEP)
    tracking = _check_tracking(check, data.get("tracking"))
    first = _check_first_points(check, data.get("first_points"), pairings, methods, search_space)
    return SweepSpec(first_points=first, name=name, dataset=dataset, pairings=tuple(pairings), methods=methods,
                     search_space=search_space, budget=budget, resources=resources, recipe=recipe, storage=storage,
                     metric=metric, mode=mode, seed=seed, max_student_params=max_params, weights=weights,
                     objectives=objectives if len(objectives) > 1 else (), study_storage=study_storage,
                     warm_start=warm_start, keep=keep, tracking=tracking)


def _check_first_points(check: Checker, raw: Any, pairings, methods, search_space) -> tuple:
    """``first_points``: configurations to evaluate first; each names a method of the spec (and optionally a pairing
    of it) and values inside the searched ranges of that method's hyperparameters."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise check.fail("first_points", f"expected a non-empty list of mappings, got {show(raw)}")
    points = []
    for i, point in enumerate(raw):
        where = f"first_points[{i}]"
        point = check.mapping(point, where, ("teacher", "student", "method", *SEARCHABLE), required=("method",))
        method = check.choice(point["method"], f"{where}.method", tuple(methods))
        teacher = check.choice(point.get("teacher", pairings[0].teacher), f"{where}.teacher",
                               tuple(p.teacher for p in pairings))
        students = next(p.students for p in pairings if p.teacher == teacher)
        student = check.choice(point.get("student", students[0]), f"{where}.student", tuple(students))
        values = {}
        for name, value in point.items():
            if name in ("teacher", "student", "method"):
                continue
            searched = search_space.get(name)
            if name != "lr" and name not in METHODS[method].defaults:
                raise check.fail(f"{where}.{name}", f"is not a hyperparameter of {method}; allowed: lr, "
                                                    f"{', '.join(METHODS[method].defaults)}")
            if not isinstance(searched, Range):
                raise check.fail(f"{where}.{name}", "is not searched (a first point sets searched values only)")
            value = check.number(value, f"{where}.{name}")
            if not searched.low <= value <= searched.high:
                raise check.fail(f"{where}.{name}", f"{value:g} is outside its range; allowed: {searched.low:g} to "
                                                    f"{searched.high:g}")
            values[name] = value
        points.append({"teacher": teacher, "student": student, "method": method, **values})
    return tuple(points)


def _check_tracking(check: Checker, raw: Any) -> dict:
    """``tracking``: ``{mlflow: {tracking_uri, experiment}}``; no password in the URI (MLFLOW_TRACKING_PASSWORD)."""
    if not raw:
        return {}
    raw = check.mapping(raw, "tracking", ("mlflow",))
    mlflow = check.mapping(raw["mlflow"], "tracking.mlflow", ("tracking_uri", "experiment"),
                           required=("tracking_uri",))
    uri = check.string(mlflow["tracking_uri"], "tracking.mlflow.tracking_uri")
    if re.match(r"^[^:]+://[^/@]*:[^/@]*@", uri):
        raise check.fail("tracking.mlflow.tracking_uri", "the URI carries a password; give it through "
                                                         "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")
    experiment = check.string(mlflow.get("experiment", "l2d-sweep"), "tracking.mlflow.experiment")
    return {"mlflow": {"tracking_uri": uri, "experiment": experiment}}


def _check_objectives(check: Checker, raw: Any) -> tuple:
    """``objectives``: a list of ``{metric, mode}``; the first a val metric (ASHA stops on it), no metric twice."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise check.fail("objectives", f"expected a non-empty list of {{metric, mode}}, got {show(raw)}")
    objectives = []
    for i, item in enumerate(raw):
        item = check.mapping(item, f"objectives[{i}]", ("metric", "mode"), required=("metric",))
        metric = check.choice(item["metric"], f"objectives[{i}].metric", OBJECTIVE_METRICS)
        default = "min" if metric in ("val_loss", "latency_ms", "student_params") else "max"
        mode = check.choice(item.get("mode", default), f"objectives[{i}].mode", ("min", "max"))
        objectives.append((metric, mode))
    if objectives[0][0] not in METRICS:
        raise check.fail("objectives[0].metric", f"{objectives[0][0]!r} is not allowed first; the first objective is "
                                                 f"what ASHA stops on, a per-epoch metric: {', '.join(METRICS)}")
    metrics = [m for m, _ in objectives]
    if len(set(metrics)) != len(metrics):
        raise check.fail("objectives", f"names a metric twice: {metrics}")
    return tuple(objectives)


def _check_study_storage(check: Checker, raw: Any) -> str | None:
    """``study_storage``: a SQLAlchemy URL; the password never in it (PGPASSWORD / ~/.pgpass instead)."""
    if raw is None:
        return None
    url = check.string(raw, "study_storage")
    dialect = url.split("://", 1)[0] if "://" in url else ""
    if dialect not in STUDY_DIALECTS:
        raise check.fail("study_storage", f"{url.split('@')[-1]!r}: unsupported database; allowed: a SQLAlchemy URL "
                                          f"of {', '.join(STUDY_DIALECTS)}")
    if re.match(r"^[^:]+://[^/@]*:[^/@]*@", url):
        raise check.fail("study_storage", "the URL carries a password; give it through the database's own means "
                                          "(PGPASSWORD or ~/.pgpass for PostgreSQL), never in the spec")
    return url


def _check_weights(check: Checker, raw: Any, pairings) -> dict:
    """``weights``: backbone name -> source; each backbone one of the pairings names, each source well formed (its
    file is looked for before Ray starts, see sweeps.runner.check_local_resources)."""
    named = {p.teacher for p in pairings} | {s for p in pairings for s in p.students}
    raw = check.mapping(raw, "weights", tuple(sorted(named)))
    weights = {}
    for backbone, source in raw.items():
        where = f"weights.{backbone}"
        source = check.string(source, where)
        if source.startswith("hf-hub:") and source.removeprefix("hf-hub:").strip("/").count("/") != 1:
            raise check.fail(where, f"{source!r} is not allowed; allowed: hf-hub:<org>/<repo>")
        if source.startswith("timm:") and not source.removeprefix("timm:"):
            raise check.fail(where, f"{source!r} is not allowed; allowed: timm, timm:<tag>, hf-hub:<org>/<repo> or a "
                                    f"local file")
        weights[backbone] = source
    return weights


def _check_student_sizes(check: Checker, pairings, max_params: int, dataset: DatasetSpec, recipe: RecipeSpec):
    """Count each student's parameters on the meta device (no memory, no weights) against the plan's limit."""
    import torch

    from l2d.data import DATASETS
    from l2d.models import build_model, count_parameters

    embed_dim = recipe.embed_dim or DATASETS[dataset.name].embed_dim
    for i, pairing in enumerate(pairings):
        for j, student in enumerate(pairing.students):
            with torch.device("meta"):
                size = count_parameters(build_model(student, 10, embed_dim))
            if size > max_params:
                raise check.fail(f"pairings[{i}].students[{j}]", f"{student} has {size:,} parameters, more than "
                                                                 f"max_student_params ({max_params:,})")


def load_spec(path: str) -> SweepSpec:
    """Read and validate a spec file (``yaml.safe_load``)."""
    try:
        with open(path) as stream:
            data = yaml.safe_load(stream)
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a folder; expected a sweep spec (a YAML file, see search_spaces/)") from None
    except (PermissionError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: cannot be read as a YAML file ({type(error).__name__})") from None
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    return parse_spec(data, path)
