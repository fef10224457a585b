"""One student trial: a Ray Tune function trainable that trains through a Ray Train ``TorchTrainer`` or in-process.

With ``trainer: torch-trainer`` the Tune trial (``run_trial``) builds a TorchTrainer with the spec's
ScalingConfig and a deterministic ``RunConfig(name="trial-<trial id>")`` under ``<sweep>/train``; its workers
(``train_worker``) run the loop. With ``trainer: in-process`` (single worker) the Tune trial runs the loop
itself, in a process Tune reuses from trial to trial, and writes the checkpoints itself in the same layout.
The loop (``_run``) is the engine of ``l2d-sweep train``: it reports every epoch (a 1-based ``epoch``, val
metrics and loss parts, test mAP, images/s) and checkpoints every epoch from rank 0 into
``<sweep>/train/trial-<id>/epoch-NNNN`` (the last two are kept). A trial restarted after a crash finds its
latest checkpoint and continues from the next epoch.

In the driver and the Tune trial this module uses ``ray.tune``; in the workers ``ray.train``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from typing import Any

import pyarrow.fs as pafs

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"
#: Result key of the epochs before a resume (a JSON list of metric dicts).
HISTORY_KEY = "history_before_resume"
#: Keys of a Tune config that are not hyperparameters of the run.
STRUCTURE_KEYS = ("teacher", "student", "method")


def trial_hparams(config: dict) -> tuple[dict, float | None]:
    """Split a sampled config into the method's loss hyperparameters and the learning rate."""
    from l2d.losses import METHODS

    method = METHODS[config["method"]]
    hparams = {name: float(config[name]) for name in method.defaults if name in config}
    lr = config.get("lr")
    return hparams, float(lr) if lr is not None else None


def _teacher_key(context: dict, teacher: str):
    from l2d.teachers import TeacherKey

    return TeacherKey(**context["teacher_keys"][teacher])


def _measure_latency(model, image_size: int, device, repeats: int = 10) -> float:
    """Median milliseconds of one forward pass on one image (eval mode, no grad)."""
    import torch

    model.eval()
    images = torch.rand(1, 3, image_size, image_size, device=device)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(images)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def _count_worker_nodes() -> int:
    """How many distinct Ray nodes this trial's workers run on (gathered over the process group)."""
    import ray
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    nodes: list = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return len(set(nodes))


# Per-process caches: a reused Tune trial process (in-process trials) builds each dataset split and loads each
# teacher once, not once per trial. A Ray Train worker is a fresh process per trial and only fills them.
_DATASETS: dict[str, Any] = {}
_TEACHERS: dict[str, Any] = {}
_MAX_TEACHERS = 4


def _dataset_split(context: dict, split: str):
    from l2d.data import build_dataset

    dataset = context["dataset"]
    key = json.dumps([dataset, context["image_size"]], sort_keys=True, default=str)
    if key not in _DATASETS:
        _DATASETS.clear()  # another dataset (another sweep in this process): keep one
        _DATASETS[key] = {}
    splits = _DATASETS[key]
    if split not in splits:
        splits[split] = build_dataset(dataset["name"], dataset["root"], split, context["image_size"],
                                      **dataset["options"])
    return splits[split]


def _teacher(context: dict, teacher: str, num_classes: int):
    from l2d.teachers import TeacherStore

    key = _teacher_key(context, teacher)
    cache_key = f"{context['teacher_store']}|{key.digest()}"
    if cache_key not in _TEACHERS:
        while len(_TEACHERS) >= _MAX_TEACHERS:
            _TEACHERS.pop(next(iter(_TEACHERS)))
        _TEACHERS[cache_key], _ = TeacherStore(context["teacher_store"]).load(key, num_classes)
    return _TEACHERS[cache_key]


class _RayTrainSession:
    """A Ray Train worker's view of the run: rank, device, its checkpoint, and where it reports."""

    def __init__(self, config: dict):
        import ray.train
        import ray.train.torch

        self.device = ray.train.torch.get_device()
        self.rank = ray.train.get_context().get_world_rank()
        self.checkpoint = ray.train.get_checkpoint()
        if self.checkpoint is None and config.get("resume_from"):
            self.checkpoint = ray.train.Checkpoint(config["resume_from"])

    def report(self, metrics: dict, epoch: int, state: dict | None, history: list[dict]) -> None:
        import ray.train
        import torch

        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if state is not None:
                torch.save(state, os.path.join(folder, STATE_FILE))
                with open(os.path.join(folder, HISTORY_FILE), "w") as stream:
                    json.dump(history, stream)
                saved = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=saved, checkpoint_dir_name=f"epoch-{epoch:04d}")


class _InProcessSession:
    """An in-process trial: it reports to Tune and writes its ``epoch-NNNN`` checkpoints itself, in the same
    layout as Ray Train (``<sweep>/train/trial-<id>``), keeping the last two."""

    def __init__(self, run_uri: str, resume_from: str | None, use_gpu: bool):
        import ray.train
        import torch

        self.run_uri = run_uri
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.rank = 0
        self.checkpoint = ray.train.Checkpoint(resume_from) if resume_from else None

    def report(self, metrics: dict, epoch: int, state: dict | None, history: list[dict]) -> None:
        import ray.tune
        import torch

        from sweeps.results import filesystem_for

        if state is None:  # nothing new to save (a trial that had finished every epoch before a crash)
            ray.tune.report(metrics)
            return
        filesystem, base = filesystem_for(self.run_uri)
        folder = f"{base}/epoch-{epoch:04d}"
        filesystem.create_dir(folder, recursive=True)
        with filesystem.open_output_stream(f"{folder}/{HISTORY_FILE}") as stream:
            stream.write(json.dumps(history).encode())
        # The state file last, under a temporary name then moved: a folder with a state file is complete.
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with filesystem.open_output_stream(f"{folder}/{STATE_FILE}.partial") as stream:
            stream.write(buffer.getvalue())
        filesystem.move(f"{folder}/{STATE_FILE}.partial", f"{folder}/{STATE_FILE}")
        for old in _checkpoint_folders(filesystem, base)[2:]:
            filesystem.delete_dir(old)
        ray.tune.report(metrics)


def _run(context: dict, sampled: dict, session) -> None:
    """One trial's training loop (the same in a Ray Train worker and in an in-process trial)."""
    import torch

    from l2d.engine import Distiller, Recipe, unwrap
    from l2d.models import build_model, count_parameters

    torch.set_num_threads(max(1, round(context["cpus_per_worker"])))
    splits = {split: _dataset_split(context, split) for split in ("train", "val", "test")}
    num_classes = len(splits["train"].class_names)
    teacher = None
    if context["needs_teacher"][sampled["method"]]:
        teacher = _teacher(context, sampled["teacher"], num_classes)
    hparams, lr = trial_hparams(sampled)
    recipe = Recipe(epochs=context["max_epochs"], lr=lr or context["default_lr"], **context["recipe"])
    torch.manual_seed(context["seed"])
    student = build_model(sampled["student"], num_classes, context["embed_dim"])
    distiller = Distiller(student, teacher, splits["train"], splits["val"], splits["test"], sampled["method"],
                          hparams, recipe, session.device, context["seed"])
    history: list[dict] = []
    if session.checkpoint is not None:
        with session.checkpoint.as_directory() as folder:
            distiller.load_state_dict(torch.load(os.path.join(folder, STATE_FILE), map_location="cpu",
                                                 weights_only=True))
            with open(os.path.join(folder, HISTORY_FILE)) as stream:
                history = json.load(stream)
        logger.info("resumed %s from its epoch %d checkpoint", sampled["student"], distiller.epoch)
    latency = _measure_latency(unwrap(distiller.student), context["image_size"], session.device)
    parameters = count_parameters(student)
    worker_nodes = _count_worker_nodes()

    # The first report after a resume carries the epochs before it, so that a driver that died before
    # recording them can still fill its tables (see sweeps.runner.SweepCallback).
    replay = json.dumps(history) if history else None
    if history and distiller.epoch >= context["max_epochs"]:
        # Every epoch was done before the crash: report the last one again, to close the trial.
        last = history[-1]
        session.report({**last, HISTORY_KEY: replay}, int(last["epoch"]), None, history)
        return
    while distiller.epoch < context["max_epochs"]:
        metrics = distiller.run_epoch()
        metrics.update(student_params=parameters, latency_ms=latency, worker_nodes=worker_nodes,
                       resumed_from=float(session.checkpoint is not None))
        history.append({k: float(v) for k, v in metrics.items()})
        report = dict(history[-1])
        if replay is not None:
            report[HISTORY_KEY], replay = replay, None
        session.report(report, int(metrics["epoch"]), distiller.state_dict() if session.rank == 0 else None,
                       history)


def train_worker(config: dict) -> None:
    """The per-worker loop of a TorchTrainer (Ray Train sets up the process group before calling it)."""
    _run(config["context"], config["sampled"], _RayTrainSession(config))


def _checkpoint_folders(filesystem, base: str) -> list[str]:
    """A run folder's ``epoch-NNNN`` folders holding a state file, newest first."""
    infos = filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    candidates = sorted((i.path for i in infos if i.type == pafs.FileType.Directory
                         and os.path.basename(i.path).startswith("epoch-")), reverse=True)
    return [path for path in candidates
            if filesystem.get_file_info(f"{path}/{STATE_FILE}").type == pafs.FileType.File]


def latest_checkpoint(run_uri: str) -> str | None:
    """The newest ``epoch-NNNN`` checkpoint holding a state file under a trial's Ray Train run folder."""
    from sweeps.results import filesystem_for

    filesystem, base = filesystem_for(run_uri)
    for path in _checkpoint_folders(filesystem, base):
        return path if "://" not in run_uri else f"{run_uri.split('://')[0]}://{path}"
    return None


def run_trial(config: dict, context: dict) -> None:
    """The Tune function trainable: one TorchTrainer per trial (or the loop itself, for an in-process trial),
    resumed from its own latest checkpoint."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray.tune.get_context().get_trial_id()
    sampled = normalize_config(config)
    name = f"trial-{trial_id}"
    train_root = f"{context['sweep_dir']}/train"
    # Ray Train restores a run of the same name from its own snapshot; our latest checkpoint is the fallback
    # when that snapshot is missing (a driver killed between the checkpoint upload and the snapshot write).
    resume_from = latest_checkpoint(f"{train_root}/{name}")
    if context["trainer"] == "in-process":
        _run(context, sampled, _InProcessSession(f"{train_root}/{name}", resume_from,
                                                 bool(context["gpus_per_worker"])))
        return
    resources = {"CPU": context["cpus_per_worker"]}
    if context["gpus_per_worker"]:
        resources["GPU"] = context["gpus_per_worker"]
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"context": context, "sampled": sampled, "resume_from": resume_from},
        scaling_config=ray.train.ScalingConfig(num_workers=context["workers_per_trial"],
                                               use_gpu=bool(context["gpus_per_worker"]),
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=train_root,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=context["max_failures"]),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def normalize_config(config: dict[str, Any]) -> dict[str, Any]:
    """A Tune config (define-by-run names such as ``student@resnet34``) as plain teacher/student/method/weights."""
    result = {k: v for k, v in config.items() if not k.startswith("student@") and k != "pairing"}
    if "pairing" in config:
        result["teacher"] = config["pairing"]
        result["student"] = config[f"student@{config['pairing']}"]
    return result
