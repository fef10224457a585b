"""The Tune experiment of a sweep, and the Ray cluster it runs on: a local cluster (checked against this machine)
or the one in ``RAY_ADDRESS``; the trainable and the resources its trials hold; the driver's callbacks; the Tuner
with its searcher, scheduler and retries. :mod:`sweeps.tune.runner` runs, resumes and extends sweeps with it.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

import ray
import torch
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import FIFOScheduler

from l2d.models import build_model
from l2d.run import resolve
from sweeps.folder.lease import LeaseKeeper
from sweeps.results.confirm import TUNE_FOLDER
from sweeps.results.export import export_trial
from sweeps.specs import SpecError, SweepSpec
from sweeps.tune.callback import SweepCallback, write_hparams_config
from sweeps.tune.scheduler import PersistentASHA
from sweeps.tune.searcher import FixedRuns, FixedRunsGenerator, build_search
from sweeps.tune.tracking import tracker_for
from sweeps.tune.trial import TrialContext, run_trial

logger = logging.getLogger(__name__)


def check_local_resources(spec: SweepSpec) -> None:
    """Before Ray starts: a local cluster (no ``RAY_ADDRESS``) must hold one trial and the teacher phase, and every
    backbone's initial weights must be there and fit it (on a cluster, the teacher phase checks them on the nodes).

    Raises:
        SpecError: the trial needs more CPUs or GPUs than this machine has.
        WeightsError: weights missing, unreadable or not fitting their backbone (named).
    """
    if os.environ.get("RAY_ADDRESS"):
        return

    embed_dim = resolve(spec.base_run()).embed_dim
    for backbone, source in spec.weights.items():
        build_model(backbone, 2, embed_dim, weights=source)  # found, readable, fitting; then dropped
    cores = os.cpu_count() or 1
    needed = spec.resources.workers_per_trial * spec.resources.cpus_per_worker
    if needed > cores:
        raise SpecError(
            f"resources: a trial needs {needed:g} CPUs (workers_per_trial {spec.resources.workers_per_trial}"
            f" x cpus_per_worker {spec.resources.cpus_per_worker:g}) but this machine has {cores} and no "
            f"RAY_ADDRESS is set (a local cluster); lower them, or run on a cluster"
        )
    gpus = spec.resources.workers_per_trial * spec.resources.gpus_per_worker
    if gpus:
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus > available:
            raise SpecError(
                f"resources: a trial needs {gpus:g} GPUs (workers_per_trial x gpus_per_worker) but this "
                f"machine has {available} and no RAY_ADDRESS is set (a local cluster); set "
                f"gpus_per_worker: 0, or run on a GPU cluster"
            )


def init_ray(num_cpus: int | None = None, log_to_driver: bool = False):
    """Connect to the cluster in ``RAY_ADDRESS`` when set, else start a local one.

    A local cluster keeps what it can on loopback: the dashboard on 127.0.0.1 and no metrics exporter
    (``RAY_enable_metrics_collection=false`` unless set). Ray 2.60 itself binds its GCS, raylet and worker gRPC
    servers on every interface and its agents on the node's address (it maps 127.0.0.1 to it); token
    authentication, Ray's default since 2.59, is left on. Returns Ray's context (None when Ray was already
    initialized). ``log_to_driver`` shows the workers' logs (``--verbose``).
    """
    # One set of logs: the project's TensorBoard and tables; Tune's automatic loggers stay off (its JSON log is
    # added back by _callbacks: Tune reads it for its result grid).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Tune's own banner ("Configuration for experiment", "View detailed results here") only with --verbose: its
    # newer output engine prints it whatever the verbosity; the classic reporter honours verbose=0.
    if not log_to_driver:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        # and its "Wrote the latest version of all result files" at every experiment's end
        tune_logger = logging.getLogger("ray.tune.tune")
        tune_logger.setLevel(logging.WARNING)
        if not any(isinstance(f, _TuneStopLines) for f in tune_logger.filters):
            tune_logger.addFilter(_TuneStopLines())
    if ray.is_initialized():
        return None
    # Ray's own log lines (its token notice, "Started a local Ray instance", the controller's) only with --verbose;
    # Tune's warnings (a trial that cannot be placed, say) stay.
    quiet_ray = {} if log_to_driver else {"logging_level": logging.ERROR}
    if not log_to_driver:
        logging.getLogger("ray.tune").setLevel(logging.WARNING)
        logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.ERROR)
        # Tune's result grid (which the sweep does not read: its results are the Parquet tables) looks for a resumed
        # trial's result.json under the folder the experiment began in, and warns when the sweep was moved since.
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if os.environ.get("RAY_ADDRESS"):
        return ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=log_to_driver, **quiet_ray)
    os.environ.setdefault("RAY_enable_metrics_collection", "false")
    # What the cluster's processes inherit from this one's environment when ray.init starts them, and this process
    # itself does not keep (a later cluster in the same process, a test's, must not find them).
    inherited = {}
    # The training workers' gloo connections on loopback (all ranks of a local cluster share this machine); torch's
    # rendezvous store has no such option (docs/security.md).
    loopback = _loopback_interface()
    if loopback and "GLOO_SOCKET_IFNAME" not in os.environ:
        inherited["GLOO_SOCKET_IFNAME"] = loopback
    # One logical CPU more than the cores: each trial's driver holds 0.01 CPU while it only waits on its
    # workers, and without the headroom a worker asking for every core could never be placed beside it.
    cpus = (num_cpus or os.cpu_count() or 1) + 1
    # address="local": always a new local cluster. Without it ray.init joins a cluster that `ray start` left on
    # this machine (even a dead one's address file), which is not what "no RAY_ADDRESS" means.
    # The dashboard's port chosen here and named in the environment the cluster's processes inherit: Ray Train's
    # clean-up of a trial's placement group asks the state API, which otherwise looks the cluster up among the Ray
    # processes of this machine and fails when another sweep's local cluster runs beside this one (the group then
    # leaks, and the next trial waits for its CPUs forever).
    port = _free_port()
    if "RAY_API_SERVER_ADDRESS" not in os.environ:
        inherited["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    os.environ.update(inherited)
    try:
        context = ray.init(
            address="local",
            num_cpus=cpus,
            dashboard_host="127.0.0.1",
            dashboard_port=port,
            log_to_driver=log_to_driver,
            **quiet_ray,
        )
    finally:
        for name in inherited:
            os.environ.pop(name, None)
    if context.dashboard_url and not context.dashboard_url.endswith(f":{port}"):
        logger.warning(
            "Ray's dashboard took %s instead of port %d (taken meanwhile); with another local Ray cluster "
            "on this machine, Ray Train may fail to release a trial's CPUs",
            context.dashboard_url,
            port,
        )
    return context


class _TuneStopLines(logging.Filter):
    """Tune's lines about its own graceful stop speak of its API (``Tuner.restore(path=...)``, "press CTRL+C or
    send SIGKILL"): the first becomes this tool's, the others go (the driver names ``l2d-sweep resume`` itself, see
    :mod:`sweeps.core.interrupt`). Shown as they are with ``--verbose``."""

    DROPPED = ("Experiment has been interrupted", "Training has been interrupted", "Trials did not complete")

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Stop signal received"):  # in Tune's signal handler, on the main thread
            print(
                "l2d-sweep: stopping: the running trials are saved for `l2d-sweep resume` (Ctrl-C again stops at once)",
                file=sys.stderr,
                flush=True,
            )
            return False
        return not message.startswith(self.DROPPED)


def _loopback_interface() -> str | None:
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((name for name in ("lo", "lo0") if name in names), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def trainable(spec: SweepSpec):
    trainable = tune.with_parameters(run_trial, context=TrialContext.from_spec(spec))
    if spec.trainer == "in-process":
        # The trial trains itself: it holds the worker's resources.
        resources = {"cpu": spec.resources.cpus_per_worker}
        if spec.resources.gpus_per_worker:
            resources["gpu"] = spec.resources.gpus_per_worker
        return tune.with_resources(trainable, resources)
    return tune.with_resources(trainable, driver_resources())


#: A custom resource a cluster's head node may declare (cluster/aws.yaml, gcp.yaml, kuberay/): where it exists, the
#: driver of every TorchTrainer trial asks for one unit of it, so that drivers stay on the (on-demand) head and never
#: land on a spot worker that may vanish with them.
DRIVER_RESOURCE = "trial_driver"


def driver_resources() -> dict:
    """What the driver of a TorchTrainer trial holds: a unit of :data:`DRIVER_RESOURCE` where the cluster has it,
    else a sliver of a CPU (the workers get the real ones). Its Train controller follows it to the same node."""
    if ray.is_initialized() and ray.cluster_resources().get(DRIVER_RESOURCE, 0) >= 1:
        return {"cpu": 0, DRIVER_RESOURCE: 1}
    return {"cpu": 0.01}


def callbacks(
    spec: SweepSpec,
    quiet: bool,
    lease: LeaseKeeper | None,
    sweep_id: str | None = None,
    experiment: int = 0,
    total_trials: int | None = None,
    folder: str | None = None,
) -> list:
    """The driver's callbacks, each handed its collaborators here: the lease guard (checked before every write),
    the tracker, the exporter the tracker logs a finished trial's student with, and the folder of Tune's state it
    signs as Tune saves it (``experiment``)."""

    def exporter(trial_id: str, folder: str):
        return export_trial(spec.sweep_dir, trial_id, folder, progress=lambda text: None)

    write_hparams_config(spec)
    callback = SweepCallback(
        spec.sweep_dir,
        spec.budget.max_epochs,
        spec.metric,
        spec.mode,
        quiet,
        guard=lease.verify if lease is not None else None,
        tracker=tracker_for(spec, sweep_id) if sweep_id else None,
        exporter=exporter,
        keep=spec.keep,
        tune_folder=folder or tune_dir_name(experiment),
        total=total_trials or spec.budget.num_samples,
        concurrency=spec.resources.max_concurrent_trials,
    )
    # Tune's default loggers are off (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS: its TensorBoard copy would show every
    # trial twice beside the sweep's own); its JSON log stays, as Tune reads it back to build its result grid.

    return [callback, JsonLoggerCallback()]


def tune_dir_name(experiment: int) -> str:
    """The folder of a sweep's ``experiment``-th Tune experiment: ``tune`` for the first, ``tune-<k>`` after."""
    return "tune" if experiment == 0 else f"tune-{experiment}"


def build_tuner(
    spec: SweepSpec,
    quiet: bool,
    lease: LeaseKeeper | None,
    sweep_id: str,
    experiment: int = 0,
    warm_started: bool = False,
    total_trials: int | None = None,
):
    if spec.budget.scheduler == "asha":
        scheduler = PersistentASHA(
            spec.sweep_dir / "asha.json",
            time_attr="epoch",
            max_t=spec.budget.max_epochs,
            grace_period=spec.budget.grace_period,
            reduction_factor=spec.budget.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    # Tune restarts a failed trial up to max_failures times, from the trial's own latest checkpoint: an in-process
    # trial whose process or node died, and a TorchTrainer trial whose Train run gave up (Ray Train first restarts
    # lost workers itself, ray.train.FailureConfig) or whose driver was lost with its node.
    retries = spec.resources.max_failures
    # An in-process trial's process is kept for the next trial (imports, dataset splits and teachers stay
    # loaded). A TorchTrainer trial's thread outlives its last report while the worker group shuts down, and
    # Tune fails a trial whose predecessor's thread does not end within 2 s: no reuse there.
    storage_path, filesystem = spec.sweep_dir.ray_storage
    return tune.Tuner(
        trainable(spec),
        tune_config=tune.TuneConfig(
            search_alg=build_search(spec, sweep_id, experiment, warm_started),
            scheduler=scheduler,
            num_samples=spec.budget.num_samples,
            metric=spec.metric,
            mode=spec.mode,
            reuse_actors=spec.trainer == "in-process",
        ),
        run_config=tune.RunConfig(
            name=tune_dir_name(experiment),
            storage_path=storage_path,
            storage_filesystem=filesystem,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=retries),
            callbacks=callbacks(spec, quiet, lease, sweep_id, experiment, total_trials),
        ),
    )


def build_confirm_tuner(
    spec: SweepSpec, quiet: bool, lease: LeaseKeeper | None, sweep_id: str, runs: list[tuple[str, dict]], total: int
):
    """The Tune experiment of the confirmation stage (:mod:`sweeps.results.confirm`): ``runs`` (trial id, config) in
    order, every one for max_epochs (no early stopping: each rerun is a full replicate), in ``tune-confirm``; ``total``:
    the trials of the sweep once they have run (the progress lines' count)."""
    storage_path, filesystem = spec.sweep_dir.ray_storage
    search = FixedRunsGenerator(FixedRuns(runs, spec.metric, spec.mode), spec.resources.max_concurrent_trials)
    return tune.Tuner(
        trainable(spec),
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=FIFOScheduler(),
            num_samples=len(runs),
            metric=spec.metric,
            mode=spec.mode,
            reuse_actors=spec.trainer == "in-process",
        ),
        run_config=tune.RunConfig(
            name=TUNE_FOLDER,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
            callbacks=callbacks(spec, quiet, lease, sweep_id, total_trials=total, folder=TUNE_FOLDER),
        ),
    )
