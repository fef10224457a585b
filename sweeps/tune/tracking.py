"""Report a sweep to an experiment tracker: with ``tracking: {mlflow: {tracking_uri, experiment}}`` in the spec, every
trial is an MLflow run (its parameters, its metrics per epoch, its status, and its best student exported as
artifacts), created by the driver through MLflow's own client (the ``mlflow-skinny`` package: the ``[mlflow]``
extra). A trial re-created after a crash finds its run again by its tags (``l2d.sweep_id``, ``l2d.trial_id``), so a
resumed sweep adds no run twice. A tracker that cannot be reached is logged and skipped: it never stops a sweep.
"""

from __future__ import annotations

import logging
import tempfile
import time

logger = logging.getLogger(__name__)


class MlflowTracker:
    """One MLflow run per trial of a sweep."""

    def __init__(self, tracking_uri: str, experiment: str, sweep_dir: str, sweep_id: str, sweep_name: str):
        self.tracking_uri, self.experiment_name = tracking_uri, experiment
        self.sweep_dir, self.sweep_id, self.sweep_name = sweep_dir, sweep_id, sweep_name
        self._client = None
        self._experiment_id = None
        self.runs: dict[str, str] = {}
        self.broken = False

    @property
    def client(self):
        if self._client is None:
            try:
                from mlflow.tracking import MlflowClient
            except ImportError:
                raise RuntimeError("tracking.mlflow needs MLflow's client: pip install 'l2d-sweep[mlflow]'") from None
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
            found = self._client.get_experiment_by_name(self.experiment_name)
            self._experiment_id = found.experiment_id if found else self._client.create_experiment(self.experiment_name)
        return self._client

    def _guard(self, action: str, function, *args):
        if self.broken:
            return None
        try:
            return function(*args)
        except Exception as error:  # noqa: BLE001 - a tracker outage must not stop the sweep
            self.broken = True
            logger.warning(
                "MLflow at %s: %s failed (%s); the sweep goes on without tracking",
                self.tracking_uri,
                action,
                str(error).splitlines()[0][:200] if str(error) else type(error).__name__,
            )
            return None

    def _run_id(self, trial_id: str, config: dict) -> str:
        if trial_id in self.runs:
            return self.runs[trial_id]
        client = self.client
        existing = client.search_runs(
            [self._experiment_id],
            filter_string=f"tags.`l2d.sweep_id` = '{self.sweep_id}' and tags.`l2d.trial_id` = '{trial_id}'",
        )
        if existing:
            run_id = existing[0].info.run_id
        else:
            run = client.create_run(
                self._experiment_id,
                run_name=f"{self.sweep_name}-{trial_id}",
                tags={
                    "l2d.sweep": self.sweep_name,
                    "l2d.sweep_dir": self.sweep_dir,
                    "l2d.sweep_id": self.sweep_id,
                    "l2d.trial_id": trial_id,
                },
            )
            run_id = run.info.run_id
            from mlflow.entities import Param

            params = [Param(k, str(v)) for k, v in sorted(config.items()) if v is not None]
            client.log_batch(run_id, params=params)
        self.runs[trial_id] = run_id
        return run_id

    def start(self, trial_id: str, config: dict) -> None:
        self._guard("starting a run", self._run_id, trial_id, config)

    def epoch(self, trial_id: str, config: dict, result: dict) -> None:
        def log():
            from mlflow.entities import Metric

            run_id = self._run_id(trial_id, config)
            step, stamp = int(result["epoch"]), int(time.time() * 1000)
            metrics = [
                Metric(k, float(v), stamp, step)
                for k, v in sorted(result.items())
                if isinstance(v, (int, float))
                and not isinstance(v, bool)
                and k != "epoch"
                and k.startswith(("val_", "train_", "test_", "images_per_s", "lr", "latency_ms"))
            ]
            self.client.log_batch(run_id, metrics=metrics)

        self._guard("logging an epoch", log)

    def finish(self, trial_id: str, config: dict, status: str, export) -> None:
        """Close the trial's run; ``export(folder)`` writes its best student there, logged as artifacts."""

        def close():
            run_id = self._run_id(trial_id, config)
            self.client.set_tag(run_id, "l2d.status", status)
            if status not in ("failed", "interrupted") and export is not None:
                with tempfile.TemporaryDirectory() as folder:
                    try:
                        export(folder)
                        self.client.log_artifacts(run_id, folder, artifact_path="student")
                    except ValueError as error:  # no best checkpoint (e.g. failed in its first epoch)
                        logger.info("trial %s: no student to log (%s)", trial_id, error)
            self.client.set_terminated(run_id, {"failed": "FAILED", "interrupted": "KILLED"}.get(status, "FINISHED"))

        self._guard("closing a run", close)


def check_tracking(spec) -> None:
    """Refuse a spec whose tracker cannot work here, before anything is written.

    Raises:
        ValueError: the spec asks for MLflow and its client is not installed.
    """
    if (spec.tracking or {}).get("mlflow"):
        try:
            import mlflow.tracking  # noqa: F401 - installed? (checked before Ray starts)
        except ImportError:
            raise ValueError(
                "tracking.mlflow: MLflow's client is not installed; pip install 'l2d-sweep[mlflow]' "
                "(mlflow-skinny), or remove tracking from the spec"
            ) from None


def tracker_for(spec, sweep_id: str):
    """The spec's tracker, or None (see :func:`check_tracking`)."""
    check_tracking(spec)
    settings = (spec.tracking or {}).get("mlflow")
    if not settings:
        return None
    return MlflowTracker(
        settings["tracking_uri"], settings.get("experiment", "l2d-sweep"), str(spec.sweep_dir), sweep_id, spec.name
    )
