"""One student trial: a Ray Tune function trainable that trains through a Ray Train ``TorchTrainer`` or in-process.

With ``trainer: torch-trainer`` the Tune trial (:func:`run_trial`) builds a TorchTrainer with the spec's
ScalingConfig and a deterministic ``RunConfig(name="trial-<trial id>")`` under ``<sweep>/train``; its workers
(:func:`train_worker`) run the loop. With ``trainer: in-process`` (single worker) the Tune trial runs the loop
itself, in a process Tune reuses from trial to trial, and writes the checkpoints itself in the same layout
(:mod:`sweeps.folder.checkpoints`). The loop (:func:`_run`) is :func:`l2d.run.fit`, the engine of ``l2d-sweep train``:
it reports every epoch (a 1-based ``epoch``, val metrics and loss parts, test mAP, images/s) and checkpoints every
epoch from rank 0. A trial restarted after a crash finds its latest checkpoint and continues from the next epoch.
With ``budget.selection_seeds`` > 1 a search trial trains one student per seed, an epoch of each in turn, and
reports their means (:func:`combine_replicas`); its checkpoints hold every student.

In the driver and the Tune trial this module uses ``ray.tune``; in the workers ``ray.train``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray
import ray.train
import ray.train.torch
import ray.tune
import torch
import torch.distributed as dist
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from l2d.losses import METHODS
from l2d.models import count_parameters
from l2d.run import build_run, build_splits, fit, get_teacher, measure_latency, resolve, splits_key
from l2d.storage import Location
from l2d.teachers import TeacherStore
from sweeps.core.faults import failpoint
from sweeps.folder.checkpoints import (
    HISTORY_FILE,
    HISTORY_KEY,
    STATE_FILE,
    BestCheckpoint,
    UnreadableCheckpointError,
    checkpoint_folders,
    load_checkpoint,
    restore_newest,
    set_aside,
    write_checkpoint,
)
from sweeps.search.space import trial_run
from sweeps.tune.scheduler import stopped_at

if TYPE_CHECKING:
    from l2d.run import RunConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its sampled config (plain data, shipped to every worker).

    Attributes:
        sweep_dir: the sweep folder.
        base: the sweep's resolved base run; each trial sets its pairing, method, weights and learning rate.
        teacher_store: where the teachers are (filled by the teacher phase before any trial starts).
        max_epochs: epochs of a trial that is never stopped.
        workers_per_trial / cpus_per_worker / gpus_per_worker: a trial's resources.
        max_failures: retries of a trial whose worker or node died.
        trainer: ``in-process`` or ``torch-trainer`` (``auto`` already resolved).
        weights: each backbone's initial weights (the spec's ``weights``).
        metric / mode: what makes an epoch the trial's best (its checkpoint is kept in ``best/``).
        selection_seeds: students a search trial trains, one per seed (``budget.selection_seeds``): its reported
            metrics are their means (:func:`combine_replicas`), so ASHA and the final pick score a configuration by
            the mean of several seeds. A confirmation run trains one.
    """

    sweep_dir: Location
    base: RunConfig
    teacher_store: Location
    max_epochs: int
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 0
    trainer: str = "in-process"
    weights: dict | None = None
    metric: str = "val_mAP"
    mode: str = "max"
    selection_seeds: int = 1

    @classmethod
    def from_spec(cls, spec) -> TrialContext:
        return cls(
            sweep_dir=spec.sweep_dir,
            base=resolve(spec.base_run()),
            teacher_store=spec.teacher_store,
            max_epochs=spec.budget.max_epochs,
            workers_per_trial=spec.resources.workers_per_trial,
            cpus_per_worker=spec.resources.cpus_per_worker,
            gpus_per_worker=spec.resources.gpus_per_worker,
            max_failures=spec.resources.max_failures,
            trainer=spec.trainer,
            weights=dict(spec.weights),
            metric=spec.metric,
            mode=spec.mode,
            selection_seeds=spec.budget.selection_seeds,
        )

    def run_dir(self, trial_id: str) -> Location:
        return self.sweep_dir / "train" / f"trial-{trial_id}"


#: Per-epoch values a multi-seed trial adds up over its students (time spent, images counted); the rest are means.
SUMMED = ("train_seconds", "epoch_seconds", "teacher_cache_hits", "teacher_cache_misses", "train_grad_samples")


def combine_replicas(replicas: list[dict]) -> dict:
    """One epoch of a trial that trains a student per selection seed: each metric's mean over the students (val and
    test metrics, losses, throughput), the seconds and counts of :data:`SUMMED` and the time ledger (``time_*_s``)
    added up, the epoch as it is."""
    combined = {}
    for key in replicas[0]:
        values = [float(replica[key]) for replica in replicas if key in replica]
        if key == "epoch":
            combined[key] = values[0]
        elif key in SUMMED or (key.startswith("time_") and key.endswith("_s")):
            combined[key] = sum(values)
        else:
            combined[key] = sum(values) / len(values)
    return combined


def replica_seeds(run_config: RunConfig, count: int) -> list[int | None]:
    """The student seeds of a trial's ``count`` students: its own (None: the run's seed) and the next ``count - 1``
    (the confirmation stage's seeds come after them, :func:`sweeps.results.confirm.seeds_of`)."""
    if count <= 1:
        return [run_config.student_seed]
    first = run_config.seed if run_config.student_seed is None else run_config.student_seed
    return [first + k for k in range(count)]


def _count_worker_nodes() -> int:
    """How many distinct Ray nodes this trial's workers run on (gathered over the process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1  # one worker: one node

    node = ray.get_runtime_context().get_node_id()
    nodes: list = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return len(set(nodes))


# Per-process caches: a reused Tune trial process (in-process trials) builds each dataset split and loads each
# teacher once, not once per trial. A Ray Train worker is a fresh process per trial and only fills them.
_SPLITS: dict[str, Any] = {}
_TEACHERS: dict[str, Any] = {}
_MAX_TEACHERS = 4


def _splits(config: RunConfig) -> dict:
    key = json.dumps(
        [config.dataset, config.data_root, config.dataset_options, config.image_size], sort_keys=True, default=str
    )
    if key not in _SPLITS:
        _SPLITS.clear()  # another dataset (another sweep in this process): keep one
        _SPLITS[key] = build_splits(config)
    return _SPLITS[key]


def _teacher(config: RunConfig, store: Location, splits: dict):
    """The trial's teacher: from this process's cache, else from the store (the teacher phase put it there; one
    found unreadable since is set aside and trained again)."""
    cache_key = f"{store}|{splits_key(config, splits).digest()}|{config.teacher_image_size}"
    if cache_key not in _TEACHERS:
        while len(_TEACHERS) >= _MAX_TEACHERS:
            _TEACHERS.pop(next(iter(_TEACHERS)))
        _TEACHERS[cache_key], _, _ = get_teacher(config, TeacherStore(store), splits)
    return _TEACHERS[cache_key]


class _RayTrainSession:
    """A Ray Train worker's view of the run: rank, device, its checkpoint, and where it reports."""

    def __init__(self, run_dir: Location):
        self.device = ray.train.torch.get_device()
        self.rank = ray.train.get_context().get_world_rank()
        self.run_dir = run_dir

    def restore(self) -> tuple[dict, list[dict]] | None:
        """Ray Train's own checkpoint of this run, else the newest readable one on storage (a snapshot the driver
        lost, or Ray Train's checkpoint unreadable)."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            try:
                with checkpoint.as_directory() as folder:
                    return load_checkpoint(Location.parse(folder))
            except UnreadableCheckpointError as error:
                logger.warning("%s; falling back to the newest readable checkpoint on storage", error)
        # Every rank loads the state; only rank 0 moves an unreadable checkpoint aside.
        return restore_newest(self.run_dir, set_aside_unreadable=self.rank == 0)

    def report(self, metrics: dict, epoch: int, state: dict | None, history: list[dict], since: float) -> None:
        """Report ``metrics`` with the epoch's checkpoint; ``time_checkpoint_s`` counts from ``since`` to the checkpoint
        written locally (Ray Train uploads it to storage inside its report, after that)."""
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if state is not None:
                torch.save(state, os.path.join(folder, STATE_FILE))
                with open(os.path.join(folder, HISTORY_FILE), "w") as stream:
                    json.dump(history, stream)
                saved = ray.train.Checkpoint.from_directory(folder)
            metrics.setdefault("time_checkpoint_s", time.perf_counter() - since)  # a re-report keeps its own
            ray.train.report(metrics, checkpoint=saved, checkpoint_dir_name=f"epoch-{epoch:04d}")


class _InProcessSession:
    """An in-process trial: it reports to Tune and writes its ``epoch-NNNN`` checkpoints itself, in the same
    layout as Ray Train (``<sweep>/train/trial-<id>``), keeping the last two."""

    def __init__(self, run_dir: Location, use_gpu: bool):
        self.run_dir = run_dir
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.rank = 0

    def restore(self) -> tuple[dict, list[dict]] | None:
        return restore_newest(self.run_dir)

    def report(self, metrics: dict, epoch: int, state: dict | None, history: list[dict], since: float) -> None:
        """Write the epoch's checkpoint and report ``metrics``, with ``time_checkpoint_s`` from ``since``."""
        if state is not None:  # None: nothing new to save (a trial that had finished every epoch before a crash)
            write_checkpoint(self.run_dir, epoch, state, history)
        metrics.setdefault("time_checkpoint_s", time.perf_counter() - since)  # a re-report keeps its own
        ray.tune.report(metrics)


def _run(context: TrialContext, config: dict, session) -> None:
    """One trial's training loop (the same in a Ray Train worker and in an in-process trial)."""
    torch.set_num_threads(max(1, round(context.cpus_per_worker)))
    run_config = trial_run(context.base, config, context.weights).replace(device=str(session.device))
    splits = _splits(run_config)
    teacher = _teacher(run_config, context.teacher_store, splits) if METHODS[run_config.method].needs_teacher else None
    count = context.selection_seeds if not config.get("stage") else 1  # a confirmation run is one seed's
    seeds = replica_seeds(run_config, count)

    def build_all() -> list:
        return [
            build_run(run_config if k == 0 else run_config.replace(student_seed=seed), splits=splits, teacher=teacher)
            for k, seed in enumerate(seeds)
        ]

    runs = build_all()
    run = runs[0]  # the trial's own seed: its student is the one kept in best/ (and exported)
    if run.teacher_cache_said:
        logger.info("%s", run.teacher_cache_said)
    if count > 1:
        logger.info("training %d students (seeds %s): the reported metrics are their means", count, seeds)
    restored = session.restore()
    if restored is not None:
        state, run.history = restored
        try:
            states = state["replicas"] if count > 1 else [state]
            if len(states) != count:
                raise ValueError(f"checkpoint of {len(states)} student(s), this trial trains {count}")
            for replica, replica_state in zip(runs, states, strict=True):
                replica.distiller.load_state_dict(replica_state)
            logger.info("resumed %s from its epoch %d checkpoint", run_config.student, run.distiller.epoch)
        except (ValueError, RuntimeError, KeyError, TypeError) as error:
            # Another configuration's checkpoint under this trial's id (a crash lost the trial it belonged to, and
            # the resumed search gave its id to another config): keep it aside and start afresh.
            logger.warning(
                "trial checkpoint of another configuration (%s); setting it aside, starting from epoch 1",
                str(error).splitlines()[0][:200],
            )
            if session.rank == 0:
                for folder in checkpoint_folders(session.run_dir):
                    set_aside(folder, "foreign")
            restored, runs = None, build_all()
            run = runs[0]
    extra = {
        "student_params": count_parameters(run.student),
        "resumed_from": float(restored is not None),
        "latency_ms": measure_latency(run.student, run_config.image_size, session.device),
        "worker_nodes": _count_worker_nodes(),
    }

    if run.history:
        # A resumed trial first reports its last checkpointed epoch again, with every epoch before it: ASHA decides on
        # it as it would have (a driver that died before seeing that report never did), and a driver that died
        # before recording the earlier epochs fills its tables from them (see sweeps.tune.callback.SweepCallback).
        last = run.history[-1]
        again = {**last, HISTORY_KEY: json.dumps(run.history)}
        session.report(again, int(last["epoch"]), None, run.history, time.perf_counter())
        if run.distiller.epoch >= context.max_epochs:
            return

    best = BestCheckpoint(session.run_dir, context.metric, context.mode) if session.rank == 0 else None
    selection: dict | None = None  # a multi-seed trial's epoch: each student's seed and value of the metric

    def report(metrics: dict) -> None:
        metrics.update(extra)  # kept in the history too
        since = time.perf_counter()  # the ledger's checkpointing: the best's copy, the state, the epoch's checkpoint
        if best is not None:  # before the report: a trial stopped at this epoch has its best on disk already
            best.offer(metrics, run, run_config, selection)
        state = None
        if session.rank == 0:
            state = run.distiller.state_dict() if count == 1 else {"replicas": [r.distiller.state_dict() for r in runs]}
        reported = dict(metrics)
        session.report(reported, int(metrics["epoch"]), state, run.history, since)
        metrics["time_checkpoint_s"] = reported["time_checkpoint_s"]  # the history's next checkpoints hold it
        failpoint(f"reported-{int(metrics['epoch'])}")  # the fault tests hold a trial here (sleep:S)

    if count == 1:
        fit(run, on_epoch=report)
        return
    while run.distiller.epoch < run.distiller.recipe.epochs:  # fit's loop, over every student of the trial
        replicas = [
            {name: float(value) for name, value in r.distiller.run_epoch(None, evaluate_test=True).items()}
            for r in runs
        ]
        selection = {
            "seeds": [run_config.seed if seed is None else seed for seed in seeds],
            "metric": context.metric,
            "values": [replica.get(context.metric) for replica in replicas],
        }
        metrics = combine_replicas(replicas)
        run.history.append(metrics)
        report(metrics)


def train_worker(config: dict) -> None:
    """The per-worker loop of a TorchTrainer (Ray Train sets up the process group before calling it)."""
    _run(config["context"], config["config"], _RayTrainSession(config["run_dir"]))


def _close_if_stopped(context: TrialContext, trial_id: str, run_dir: Location) -> bool:
    """A trial that ASHA stopped just before a crash (the decision saved, Tune's state not) is restored as running:
    report its last epoch again from its checkpoint and end, instead of training on."""
    stop = stopped_at(context.sweep_dir / "asha.json", trial_id)
    if stop is None:
        return False
    restored = restore_newest(run_dir)
    history = restored[1] if restored is not None else BestCheckpoint.history(run_dir)  # pruned: the best's
    if not history or int(history[-1]["epoch"]) < stop and restored is not None:
        return False
    logger.info("trial %s was stopped by ASHA at epoch %d before a crash; closing it", trial_id, stop)
    ray.tune.report({**history[-1], HISTORY_KEY: json.dumps(history)})
    return True


def run_trial(config: dict, context: TrialContext) -> None:
    """The Tune function trainable: one TorchTrainer per trial (or the loop itself, for an in-process trial),
    resumed from its own latest checkpoint."""
    trial_id = ray.tune.get_context().get_trial_id()
    run_dir = context.run_dir(trial_id)
    if _close_if_stopped(context, trial_id, run_dir):
        return
    if context.trainer == "in-process":
        _run(context, config, _InProcessSession(run_dir, bool(context.gpus_per_worker)))
        return
    # Ray Train restores a run of the same name from its own snapshot; the newest readable checkpoint on storage is
    # the fallback when that snapshot is missing (a driver killed between the checkpoint upload and the snapshot
    # write) or unreadable.
    resources = {"CPU": context.cpus_per_worker}
    if context.gpus_per_worker:
        resources["GPU"] = context.gpus_per_worker
    storage_path, filesystem = run_dir.parent.ray_storage
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"context": context, "config": config, "run_dir": run_dir},
        scaling_config=ray.train.ScalingConfig(
            num_workers=context.workers_per_trial, use_gpu=bool(context.gpus_per_worker), resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=run_dir.name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=context.max_failures),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()
