"""The driver's callback on its own: what it writes for each event of a trial (results tables, TensorBoard, progress
lines), its collaborators (lease guard, tracker, exporter) as handed over, and what it rebuilds from Tune's trials.
Trials are plain stand-ins with the attributes Tune's Trial has that the callback reads."""

import json
from types import SimpleNamespace

import pyarrow.parquet as pq

from l2d.storage import Location
from sweeps.folder.checkpoints import HISTORY_KEY
from sweeps.results import SweepResults
from sweeps.tune.callback import SweepCallback, known_trial


def _epochs(folder):
    return SweepResults(folder).epochs.to_pylist()


def _trials(folder):
    return SweepResults(folder).trials.to_pylist()


CONFIG = {
    "pairing": "test_resnet",
    "student@test_resnet": "test_efficientnet",
    "method": "mld",
    "lr": 1e-3,
    "lambda_mld": 2.0,
}


def _trial(trial_id="t1", status="RUNNING", error=None):
    return SimpleNamespace(
        trial_id=trial_id, config=dict(CONFIG), status=status, error_file=None, get_error=lambda: error
    )


def _callback(tmp_path, **collaborators):
    folder = tmp_path / "sweep"
    folder.mkdir()
    return SweepCallback(Location.parse(folder), 3, "val_mAP", "max", quiet=False, **collaborators), folder


def test_every_epoch_is_written_before_its_line_is_printed(tmp_path, capsys):
    guarded = []
    callback, folder = _callback(tmp_path, guard=lambda: guarded.append(1))
    trial = _trial()
    callback.on_trial_start(0, [trial], trial)
    for epoch in (1, 2):
        callback.on_trial_result(
            0,
            [trial],
            trial,
            {
                "epoch": epoch,
                "val_mAP": 40.0 + epoch,
                "test_mAP": 39.0,
                "train_grad_share_mld": 0.3,
                "images_per_s": 10.0,
            },
        )
        rows = _epochs(folder)  # the current generation: written before the line was printed
        assert [r["epoch"] for r in rows] == list(range(1, epoch + 1))
    trial.status = "TERMINATED"
    callback.on_trial_complete(0, [trial], trial)
    callback.on_experiment_end([trial])
    out = capsys.readouterr().out
    assert "trial t1 started: test_resnet -> test_efficientnet, mld" in out
    assert out.index("epoch 1/3") < out.index("epoch 2/3") < out.index("trial t1 stopped")
    [row] = _trials(folder)
    assert (row["status"], row["epochs_run"], row["best_epoch"], row["best_val_mAP"]) == ("stopped", 2, 2, 42.0)
    # At the experiment's end the compacted pair holds the same, for tools that read the Parquet files themselves.
    assert pq.read_table(folder / "results" / "trials.parquet").to_pylist() == [row]
    assert len(guarded) >= 4  # before every write: start, two epochs, the end
    # TensorBoard got the epoch scalars, the gradient share among them.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tensorboard" / "t1"))
    events.Reload()
    assert {"val/mAP", "train/grad_share_mld"} <= set(events.Tags()["scalars"])


def test_a_replayed_history_fills_the_epochs_a_dead_driver_never_wrote(tmp_path):
    callback, folder = _callback(tmp_path)
    trial = _trial()
    history = [{"epoch": 1, "val_mAP": 41.0}, {"epoch": 2, "val_mAP": 43.0}]
    callback.on_trial_result(0, [trial], trial, {**history[-1], HISTORY_KEY: json.dumps(history)})
    rows = _epochs(folder)
    assert [(r["epoch"], r["val_mAP"]) for r in rows] == [(1, 41.0), (2, 43.0)]


def test_the_tracker_gets_the_exporter_it_was_handed(tmp_path):
    calls = []

    class Tracker:
        def start(self, trial_id, config):
            calls.append(("start", trial_id))

        def epoch(self, trial_id, config, result):
            calls.append(("epoch", trial_id))

        def finish(self, trial_id, config, status, export):
            calls.append(("finish", trial_id, status))
            export("somewhere")

    callback, _ = _callback(
        tmp_path, tracker=Tracker(), exporter=lambda trial_id, folder: calls.append(("export", trial_id, folder))
    )
    trial = _trial()
    callback.on_trial_start(0, [trial], trial)
    callback.on_trial_result(0, [trial], trial, {"epoch": 3, "val_mAP": 50.0})
    trial.status = "TERMINATED"
    callback.on_trial_complete(0, [trial], trial)
    assert calls == [("start", "t1"), ("epoch", "t1"), ("finish", "t1", "completed"), ("export", "t1", "somewhere")]
    # The collaborators are not pickled with the callback (Tune pickles it into the experiment).
    import pickle

    restored = pickle.loads(pickle.dumps(callback))
    assert restored.tracker is None and restored.exporter is None and restored.guard is None


def test_tunes_trials_become_known_trials_and_rebuild_lost_rows(tmp_path):
    failed = _trial("t2", "ERROR", error=RuntimeError("NonFiniteLossError: non-finite loss at epoch 1"))
    assert known_trial(failed).state == "failed" and "non-finite" in known_trial(failed).error
    assert known_trial(_trial("t3", "PENDING")).state == "pending"
    callback, folder = _callback(tmp_path)
    callback.on_step_begin(0, [_trial("t1", "TERMINATED"), failed])
    rows = {r["trial_id"]: r for r in _trials(folder)}
    assert rows["t2"]["status"] == "failed" and "non-finite" in rows["t2"]["error"]
    assert rows["t1"]["student"] == "test_efficientnet"


def test_the_sweep_level_hparams_config_declares_every_domain(tmp_path):
    """TensorBoard's HParams dashboard reads the sweep's config at the top of its folder: each hyperparameter with
    its domain (a searched range as an interval, teachers, students and methods as their values) and the metrics."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata

    from sweeps.specs import parse_spec
    from sweeps.tune.callback import write_hparams_config
    from tests.sweeps.conftest import TINY_SPEC

    spec = parse_spec({**TINY_SPEC, "storage": str(tmp_path)}, "tiny.yaml")
    write_hparams_config(spec)
    write_hparams_config(spec)  # a second driver replaces the config, never adds a second one
    folder = tmp_path / "tiny" / "tensorboard"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    events = EventMultiplexer().AddRunsFromDirectory(str(folder))
    events.Reload()
    content = events.PluginRunToTagToContent(metadata.PLUGIN_NAME)["."][metadata.EXPERIMENT_TAG]
    experiment = metadata.parse_experiment_plugin_data(content)
    infos = {info.name: info for info in experiment.hparam_infos}
    assert sorted(infos) == ["lambda_mld", "lr", "method", "student", "teacher"]
    assert (infos["lr"].domain_interval.min_value, infos["lr"].domain_interval.max_value) == (5e-4, 5e-3)
    assert [v.string_value for v in infos["method"].domain_discrete.values] == ["kd", "l2d"]
    assert [v.string_value for v in infos["student"].domain_discrete.values] == ["test_convnext", "test_efficientnet"]
    assert [m.name.tag for m in experiment.metric_infos] == ["hparam/best_val_mAP", "hparam/test_mAP_at_best"]


def test_tensorboards_hparams_dashboard_shows_every_searched_dimension(tmp_path):
    """What the HParams dashboard shows, asked of a real TensorBoard server the way its page asks: the sweep's one
    config, never a trial's own (TensorBoard shows whichever experiment config it finds first, and a trial's lists
    only that trial's hyperparameters: the l2d trials hid lambda_kd and kd_temperature); every trial a session."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata

    from sweeps.specs import parse_spec
    from sweeps.tune.callback import write_hparams_config
    from tests.sweeps.conftest import TINY_SPEC

    space = {
        **TINY_SPEC["search_space"],
        "lambda_kd": {"low": 0.5, "high": 50},
        "kd_temperature": {"low": 1, "high": 8},
    }
    spec = parse_spec({**TINY_SPEC, "storage": str(tmp_path), "search_space": space}, "tiny.yaml")
    write_hparams_config(spec)
    callback = SweepCallback(Location.parse(spec.sweep_dir), 3, "val_mAP", "max")
    kd = {
        "pairing": "test_resnet",
        "student@test_resnet": "test_efficientnet",
        "method": "kd",
        "lr": 2e-3,
        "lambda_kd": 5.0,
        "kd_temperature": 4.0,
    }
    for trial in (_trial("l2d1"), SimpleNamespace(**{**vars(_trial("kd1")), "config": kd})):
        callback.on_trial_start(0, [trial], trial)
        callback.on_trial_result(0, [trial], trial, {"epoch": 1, "val_mAP": 40.0, "test_mAP": 39.0})
        trial.status = "TERMINATED"
        callback.on_trial_complete(0, [trial], trial)
    folder = spec.sweep_dir.path + "/tensorboard"
    events = EventMultiplexer().AddRunsFromDirectory(folder)
    events.Reload()
    tags = events.PluginRunToTagToContent(metadata.PLUGIN_NAME)
    assert [run for run, t in tags.items() if metadata.EXPERIMENT_TAG in t] == ["."]
    assert all(metadata.SESSION_START_INFO_TAG in tags[run] for run in ("l2d1", "kd1"))

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            folder,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        answer = None
        for _ in range(120):
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/data/plugin/hparams/experiment",
                    data=b'{"experimentName": ""}',
                    method="POST",
                    headers={"Content-Type": "application/json"},
                )
                answer = json.loads(urllib.request.urlopen(request, timeout=5).read())
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        assert answer is not None, "TensorBoard did not answer"
        shown = sorted(info["name"] for info in answer["hparamInfos"])
        assert shown == sorted([*space, "teacher", "student", "method"]), shown
        assert sorted(m["name"]["tag"] for m in answer["metricInfos"]) == [
            "hparam/best_val_mAP",
            "hparam/test_mAP_at_best",
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)
