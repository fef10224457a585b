"""What a sweep gives back: each trial's best epoch kept, retention, `export`, `load_student`, one set of logs."""

import io
import json
import re
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import torch

from l2d.export import evaluate_student, load_student, save_student
from l2d.models import build_model
from l2d.storage import Location
from sweeps.cli import main
from sweeps.folder.checkpoints import BestCheckpoint, UnreadableCheckpointError, checkpoint_folders, prune, read_best


def _run(model, history):
    train = SimpleNamespace(class_names=[str(i) for i in range(10)])
    return SimpleNamespace(student=model, history=history, splits={"train": train})


def test_best_checkpoint_keeps_an_earlier_epoch(tmp_path):
    """The best epoch is epoch 2 of 3: best/ holds epoch 2's weights and history, not the last epoch's."""
    run_dir = Location.parse(tmp_path / "trial")
    model = build_model("test_efficientnet", 10, 32)
    config = SimpleNamespace(student="test_efficientnet", embed_dim=32, image_size=32, device="cpu")
    best = BestCheckpoint(run_dir, "val_mAP", "max")
    weights = {}
    history = []
    for epoch, value in enumerate([40.0, 55.0, 50.0], start=1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * epoch)
        weights[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        metrics = {"epoch": epoch, "val_mAP": value}
        history.append(metrics)
        assert best.offer(dict(metrics), _run(model, list(history)), config) == (epoch != 3)
    info, model_bytes, kept_history = read_best(run_dir)
    assert info["epoch"] == 2 and info["metrics"]["val_mAP"] == 55.0 and info["backbone"] == "test_efficientnet"
    assert [h["epoch"] for h in kept_history] == [1, 2]
    # One unit: best.json, written last, names the epoch's own files with their digests; no other epoch's file stays.
    assert sorted(p.name for p in (tmp_path / "trial" / "best").iterdir()) == sorted(
        ["best.json", info["files"]["model"], info["files"]["history"]]
    )
    saved = torch.load(io.BytesIO(model_bytes), weights_only=True)
    assert all(torch.equal(saved[k], weights[2][k]) for k in saved)
    assert not all(torch.equal(saved[k], weights[3][k]) for k in saved)
    assert [h["epoch"] for h in BestCheckpoint.history(run_dir)] == [1, 2]
    # A resumed trial reads the best so far: a worse epoch 4 does not replace it, a better one does.
    again = BestCheckpoint(run_dir, "val_mAP", "max")
    assert not again.offer({"epoch": 4, "val_mAP": 54.0}, _run(model, history), config)
    assert again.offer({"epoch": 5, "val_mAP": 56.0}, _run(model, history), config)
    # A crash inside the write window (the new epoch's two files written, best.json not yet): the previous best is
    # still whole; a damaged file is named, never paired with another epoch's metrics.
    folder = tmp_path / "trial" / "best"
    (folder / "model-0009-deadbeef.pt").write_bytes(b"half")
    (folder / "history-0009-deadbeef.json").write_text("[")
    assert read_best(run_dir)[0]["epoch"] == 5
    model_file = folder / json.loads((folder / "best.json").read_text())["files"]["model"]
    model_file.write_bytes(model_file.read_bytes()[:100])
    with pytest.raises(UnreadableCheckpointError, match=re.escape(f"{model_file}: not the file best.json describes")):
        read_best(run_dir)
    (folder / "best.json").write_text('{"epoch": 5, "backb')
    with pytest.raises(UnreadableCheckpointError, match=re.escape(f"{folder / 'best.json'}: unreadable")):
        read_best(run_dir)
    # mode min: the lowest value wins.
    low = BestCheckpoint(Location.parse(tmp_path / "other"), "val_loss", "min")
    assert low.offer({"epoch": 1, "val_loss": 2.0}, _run(model, history), config)
    assert not low.offer({"epoch": 2, "val_loss": 3.0}, _run(model, history), config)
    assert low.offer({"epoch": 3, "val_loss": 1.0}, _run(model, history), config)


def _trial_folder(root, epochs=(1, 2, 3), best=True):
    for epoch in epochs:
        folder = root / f"epoch-{epoch:04d}"
        folder.mkdir(parents=True)
        (folder / "state.pt").write_bytes(b"x" * 1000)
        (folder / "history.json").write_text("[]")
    if best:
        (root / "best").mkdir(parents=True)
        (root / "best" / "best.json").write_text("{}")
    return Location.parse(root)


@pytest.mark.parametrize(
    "keep, status, kept",
    [
        ("best+last", "completed", ["epoch-0003"]),
        ("best+last", "stopped", []),
        ("best+last", "failed", []),
        ("best", "completed", []),
        ("all", "completed", ["epoch-0001", "epoch-0002", "epoch-0003"]),
        ("all", "stopped", ["epoch-0001", "epoch-0002", "epoch-0003"]),
    ],
)
def test_prune_keeps_what_the_spec_says(tmp_path, keep, status, kept):
    run_dir = _trial_folder(tmp_path / "trial")
    freed = prune(run_dir, status, keep)
    assert sorted(f.name for f in checkpoint_folders(run_dir)) == kept
    assert (tmp_path / "trial" / "best" / "best.json").is_file()
    assert freed >= 1000 * (3 - len(kept))


def test_prune_keeps_everything_of_a_trial_without_a_best(tmp_path):
    run_dir = _trial_folder(tmp_path / "trial", best=False)
    assert prune(run_dir, "failed", "best") == 0 and len(checkpoint_folders(run_dir)) == 3


def _card(model):
    return {
        "backbone": "test_efficientnet",
        "num_classes": 10,
        "class_names": [str(i) for i in range(10)],
        "embed_dim": 32,
        "image_size": 32,
        "method": "l2d",
        "teacher": "test_resnet",
        "parameters": 1,
        "dataset": {"name": "mosaic-digits", "root": None, "options": {"scale": 0.05}},
        "metrics": {},
    }


def test_saved_student_loads_and_its_graphs_give_the_same_logits(tmp_path):
    torch.manual_seed(0)
    model = build_model("test_efficientnet", 10, 32).eval()
    formats = ["safetensors", "torchscript"]
    try:
        import onnx  # noqa: F401 - installed?
        import onnxruntime
    except ImportError:
        onnxruntime = None
    else:
        formats.append("onnx")
    out = tmp_path / "export"
    written = save_student(model, _card(model), out, tuple(formats), progress=lambda text: None)
    assert sorted(p.name for p in out.iterdir()) == sorted(written)
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(images).logits
    loaded, card = load_student(out)
    with torch.no_grad():
        assert torch.equal(loaded(images).logits, expected)
        assert torch.allclose(torch.jit.load(str(out / "student.torchscript.pt"))(images), expected, atol=1e-5)
    assert card["folder"] == str(out) and "test_efficientnet" in (out / "README.md").read_text()
    if onnxruntime is not None:
        session = onnxruntime.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
        (logits,) = session.run(["logits"], {"images": images.numpy()})  # a batch of 3: the batch axis is dynamic
        assert logits.shape == (3, 10) and abs(logits - expected.numpy()).max() < 1e-4

    # Exporting again replaces the folder as a whole; a failed export leaves the old one and no scratch folder.
    save_student(model, _card(model), out, ("safetensors",), progress=lambda text: None)
    assert sorted(p.name for p in out.iterdir()) == [".l2d-output", "README.md", "card.json", "student.safetensors"]
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        save_student(model, _card(model), out, ("safetensors", "tflite"))
    broken = dict(_card(model), image_size="large")  # fails while tracing, after the weights were written
    with pytest.raises(Exception):  # noqa: B017 - whatever the tracer raises: what matters is the folder after
        save_student(model, broken, out, ("safetensors", "torchscript"), progress=lambda text: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert load_student(out)[1]["image_size"] == 32


def test_load_student_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no card.json"):
        load_student(tmp_path)


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_sweep_keeps_each_best_epoch_and_exports_the_best_student(tiny_spec, tmp_path, ray_cleanup, capsys):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    # Ranked by the *highest* val loss, the best epoch is an early one: the case where the last checkpoints alone
    # would have lost it.
    path = tiny_spec(
        metric="val_loss",
        mode="max",
        methods=["l2d"],
        budget={"num_samples": 3, "max_epochs": 3, "grace_period": 1, "reduction_factor": 2, "teacher_epochs": 1},
    )
    assert main(["run", str(path)]) == 0
    sweep = tmp_path / "sweeps" / "tiny"
    trials = pq.read_table(sweep / "results" / "trials.parquet").to_pylist()
    epochs = pq.read_table(sweep / "results" / "epochs.parquet").to_pylist()
    assert {t["status"] for t in trials} <= {"completed", "stopped"} and "completed" in {t["status"] for t in trials}

    earlier = 0
    for trial in trials:
        run_dir = sweep / "train" / f"trial-{trial['trial_id']}"
        history = [e for e in epochs if e["trial_id"] == trial["trial_id"]]
        best_epoch = max(history, key=lambda e: e["val_loss"])
        info = json.loads((run_dir / "best" / "best.json").read_text())
        assert info["epoch"] == best_epoch["epoch"] and info["metrics"]["val_mAP"] == best_epoch["val_mAP"]
        earlier += info["epoch"] < trial["epochs_run"]
        # keep: best+last (the default): a completed trial keeps its last checkpoint, a stopped one none.
        kept = sorted(p.name for p in run_dir.iterdir() if p.name.startswith("epoch-"))
        assert kept == ([f"epoch-{trial['epochs_run']:04d}"] if trial["status"] == "completed" else [])
    assert earlier, "no trial had its best epoch before its last: the test does not test what it should"

    # export --best: the trial with the highest best_val_loss, at its best epoch.
    out = tmp_path / "exports" / "best"
    capsys.readouterr()
    assert main(["export", str(sweep), "--best", "--out", str(out), "--format", "torchscript"]) == 0
    printed = capsys.readouterr().out
    chosen = max(trials, key=lambda t: t["best_val_loss"])
    assert f"exported trial {chosen['trial_id']}" in printed and "load_student" in printed
    model, card = load_student(out)
    best_epoch = json.loads((sweep / "train" / f"trial-{chosen['trial_id']}" / "best" / "best.json").read_text())
    assert card["trial_id"] == chosen["trial_id"] and card["epoch"] == best_epoch["epoch"]
    assert {"torch", "ray", "optuna", "timm"} <= set(card["versions"])
    assert card["hparams"]["lambda_mld"] == chosen["lambda_mld"] and card["teacher"] == "test_resnet"
    # The trial ran on one thread (cpus_per_worker 1); so does this check. With another thread count the float sums
    # differ in the last bits, which can swap two near-equal scores of this 25-image split and move mAP by ~0.03.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = evaluate_student(model, card, "val", device="cpu")
        test = evaluate_student(model, card, "test", device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert again["mAP"] == pytest.approx(card["metrics"]["val_mAP"], abs=1e-3)
    assert test["mAP"] == pytest.approx(card["metrics"]["test_mAP"], abs=1e-3)
    # An explicit trial; one that does not exist is named.
    other = next(t for t in trials if t["trial_id"] != chosen["trial_id"])
    assert main(["-q", "export", str(sweep), "--trial", other["trial_id"], "--out", str(tmp_path / "other")]) == 0
    assert load_student(tmp_path / "other")[1]["trial_id"] == other["trial_id"]
    assert main(["export", str(sweep), "--trial", "nope", "--out", str(tmp_path / "none")]) == 2
    assert "--trial nope: no such trial" in capsys.readouterr().err and not (tmp_path / "none").exists()

    # One set of logs: Tune's own loggers are off, so TensorBoard over the whole storage finds each trial once.
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(tmp_path / "sweeps"))
    runs = multiplexer.Runs()
    # (and the sweep's HParams config at the top of its folder, the run "tiny/tensorboard")
    assert sorted(runs) == sorted(["tiny/tensorboard", *(f"tiny/tensorboard/{t['trial_id']}" for t in trials)])
    assert not list((sweep / "tune").rglob("events.out.tfevents*"))

    # Run metadata: versions, command, devices, times.
    record = json.loads((sweep / "run.json").read_text())["runs"]
    assert len(record) == 1 and record[0]["action"] == "run" and record[0]["ended"] >= record[0]["started"]
    assert {"torch", "ray", "optuna", "timm"} <= set(record[0]["versions"]) and record[0]["devices"]["local"]

    assert main(["status", str(sweep)]) == 0
    assert "of checkpoints)" in capsys.readouterr().out


def _exportable_sweep(tmp_path):
    """A sweep folder with one trial and its best checkpoint, written without Ray (the results writer, a real
    study, BestCheckpoint)."""
    from tests.sweeps.test_what_a_user_reads import _write_sweep

    sweep = _write_sweep(tmp_path / "runs", "exp", 1)  # its one trial: exp00000
    model = build_model("test_efficientnet", 10, 32)
    config = SimpleNamespace(student="test_efficientnet", embed_dim=32, image_size=32, device="cpu")
    metrics = {"epoch": 2, "val_mAP": 30.67}
    BestCheckpoint(Location.parse(sweep / "train" / "trial-exp00000"), "val_mAP", "max").offer(
        dict(metrics), _run(model, [metrics]), config
    )
    return sweep


def test_export_into_a_symlink_leaves_the_link_as_it_was(tmp_path, capsys):
    import os

    sweep = _exportable_sweep(tmp_path)
    real = tmp_path / "real-exports"
    real.mkdir()
    link = tmp_path / "exports"
    os.symlink(real, link)
    assert main(["export", str(sweep), "--out", str(link)]) == 0, capsys.readouterr().err
    assert link.is_symlink() and os.readlink(link) == str(real)  # the link is the user's: still a link, same target
    assert (real / "card.json").is_file() and load_student(str(link))[1]["trial_id"] == "exp00000"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports", "real-exports", "runs"]  # nothing left over
    # Exporting again through the link replaces this tool's export in the real folder, the link untouched.
    assert main(["export", str(sweep), "--out", str(link)]) == 0
    assert link.is_symlink() and (real / "card.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports", "real-exports", "runs"]


def test_export_checks_its_target_before_anything(tmp_path, capsys):
    # The output-target rule, through the command: a folder of the user's with a file in it is refused, unchanged.
    sweep = _exportable_sweep(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    assert main(["export", str(sweep), "--out", str(mine)]) == 2
    assert "was not written by l2d-sweep" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    assert main(["export", str(sweep), "--out", str(sweep / "inside")]) == 2  # never into the sweep
    assert not (sweep / "inside").exists()
