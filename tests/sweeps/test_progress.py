"""The driver's progress view: plain lines in a log (the state only when it changes), a live line redrawn in place
on a real terminal (a pseudo-terminal here), the callback's lines, and the teacher phase's epochs on real Ray."""

import os
import pty
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from l2d.storage import Location
from sweeps.core.progress import ProgressView, about, clock, live_wanted, opened
from sweeps.tune.callback import SweepCallback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_plain_view_prints_events_and_only_changed_states(capsys):
    view = ProgressView(live=False)
    view.say("trial a started")
    view.status("trials 1 running of 4", changed=False)  # an epoch: the state is not printed in a log
    view.status("trials 1 completed of 4", changed=True)
    view.status("trials 1 completed of 4", changed=True)  # the same state again: printed once
    view.say("plain", stamp=False)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].endswith("] trial a started") and lines[0].startswith("[")
    assert lines[1].endswith("] trials 1 completed of 4")
    assert lines[2] == "plain"


def test_quiet_view_prints_nothing(capsys):
    with opened(quiet=True) as view:
        view.say("x")
        view.status("y")
    assert capsys.readouterr().out == ""


def test_the_environment_forces_either_mode(monkeypatch):
    monkeypatch.setenv("L2D_PROGRESS", "live")
    assert live_wanted(sys.stdout)
    monkeypatch.setenv("L2D_PROGRESS", "plain")
    assert not live_wanted(SimpleNamespace(isatty=lambda: True))
    monkeypatch.delenv("L2D_PROGRESS")
    monkeypatch.setenv("TERM", "xterm")
    assert live_wanted(SimpleNamespace(isatty=lambda: True))
    assert not live_wanted(SimpleNamespace(isatty=lambda: False))


def test_clock_and_estimates():
    assert (clock(5), clock(125), clock(3725)) == ("0:05", "2:05", "1:02:05")
    assert (about(40), about(240), about(9000)) == ("~40 s", "~4 min", "~2.5 h")


def _in_a_terminal(code: str) -> str:
    """Run ``code`` with its stdout on a pseudo-terminal; everything it wrote there."""
    primary, secondary = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "100", "PYTHONPATH": ROOT}
    env.pop("L2D_PROGRESS", None)
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdout=secondary, stderr=secondary, env=env, cwd=ROOT
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=60)
    os.close(primary)
    assert process.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_live_view_on_a_terminal_redraws_its_line_and_keeps_events():
    out = _in_a_terminal("""
        import time
        from sweeps.core.progress import opened
        with opened() as view:
            assert view.live
            view.say("trial a started")
            for n in range(3):
                view.status(f"trials {n} completed of 3 | best val mAP {50 + n}.00", changed=True)
                time.sleep(0.6)
            print("a stray print")  # Ray's and Tune's own prints scroll above the live line too
            view.say("trial a completed")
        """)
    assert "trial a started" in out and "trial a completed" in out and "a stray print" in out
    assert "\x1b[2K" in out or "\x1b[1A" in out  # the live line erased and redrawn in place (cursor control)
    # Its last state stays on the screen as one line when the view closes.
    assert out.rstrip().splitlines()[-1].endswith("trials 2 completed of 3 | best val mAP 52.00")


CONFIG = {
    "pairing": "test_resnet",
    "student@test_resnet": "test_efficientnet",
    "method": "mld",
    "lr": 1e-3,
    "lambda_mld": 2.0,
}


def _trial(trial_id):
    return SimpleNamespace(
        trial_id=trial_id, config=dict(CONFIG), status="RUNNING", error_file=None, get_error=lambda: None
    )


def test_callback_prints_the_best_once_not_on_every_epoch_line(tmp_path, capsys):
    folder = tmp_path / "sweep"
    folder.mkdir()
    callback = SweepCallback(Location.parse(folder), 3, "val_mAP", "max", total=2)
    a, b = _trial("a"), _trial("b")
    callback.on_trial_start(0, [a], a)
    for epoch, value in ((1, 40.0), (2, 45.0), (3, 44.0)):
        callback.on_trial_result(0, [a], a, {"epoch": epoch, "val_mAP": value, "test_mAP": 39.0, "epoch_seconds": 2.0})
    a.status = "TERMINATED"
    callback._trial_started["a"] -= 3000  # a ran for 3000 s (its start, its workers, 3 epochs), plus the test's own
    callback.on_trial_complete(0, [a, b], a)
    callback.on_trial_start(0, [a, b], b)
    callback.on_trial_result(0, [a, b], b, {"epoch": 1, "val_mAP": 30.0, "test_mAP": 29.0, "epoch_seconds": 2.0})
    lines = capsys.readouterr().out.splitlines()
    epoch_lines = [line for line in lines if " epoch " in line and "trial " in line]
    assert len(epoch_lines) == 4 and not any("best val mAP" in line for line in epoch_lines), epoch_lines
    assert "(new best)" in epoch_lines[0] and "(new best)" in epoch_lines[1] and "(new best)" not in epoch_lines[2]
    assert "(new best)" not in epoch_lines[3]  # b's 30 is below a's 45
    states = [line for line in lines if "best val mAP" in line]
    # Printed when a new best appeared (a's epochs 1 and 2) and when a trial ended: not per epoch.
    assert len(states) == 3, lines
    assert "trials 1 completed of 2 | epochs 3/6" in states[-1] and "best val mAP 45.00" in states[-1]
    # Before any trial ended: every epoch of the budget at the reported 2 s an epoch, an upper bound.
    assert "at most ~" in states[0]
    # Once a trial has ended, from its wall time (3000 s for 3 epochs): the next one is expected to run as many.
    assert "| ~50 min left |" in states[-1], states[-1]
    # While b runs: 2 of its expected 3 epochs left, 1000 s each.
    assert "| ~33 min left |" in callback._summary()


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_teacher_phase_prints_each_teacher_epoch(tiny_spec, ray_cleanup):
    import ray

    from sweeps.specs import load_spec
    from sweeps.tune.teacher_phase import teacher_phase

    spec = load_spec(tiny_spec(budget={**{"num_samples": 1, "max_epochs": 1, "teacher_epochs": 2}}))
    ray.init(num_cpus=1)
    lines: list[str] = []
    cards = teacher_phase(spec, lines.append)
    text = "\n".join(lines)
    assert "teacher test_resnet epoch 1/2: val mAP" in text and "left)" in text, text
    assert "teacher test_resnet epoch 2/2: val mAP" in text, text
    assert "teacher test_resnet: trained" in text and cards["test_resnet"]["trained_now"]
    assert text.index("epoch 1/2") < text.index("epoch 2/2") < text.index("test_resnet: trained")
    lines.clear()
    teacher_phase(spec, lines.append)  # now in the store: loaded, no epochs
    assert not any("test_resnet epoch " in line for line in lines) and any(
        "test_resnet: loaded" in line for line in lines
    )


def test_train_on_a_terminal_shows_a_bar_with_the_time_left(tmp_path):
    out = _in_a_terminal(f"""
        import sys
        from sweeps.cli import main
        sys.exit(main(["train", "--teacher", "test_resnet", "--student", "test_efficientnet", "--method", "mld",
                       "--epochs", "2", "--teacher-epochs", "1", "--dataset-option", "scale=0.05",
                       "--image-size", "32", "--embed-dim", "32", "--batch-size", "8", "--device", "cpu",
                       "--store", {str(tmp_path / "store")!r}, "--out", {str(tmp_path / "out")!r}]))
        """)
    assert "teacher test_resnet epoch 1/1: loss" in out, out[-3000:]
    assert "student test_efficientnet (mld) epoch 1/2: loss" in out and "epoch 2/2: loss" in out, out[-3000:]
    assert " left " in out and "loss " in out  # the bar: its loss, elapsed and time-left columns
    assert "\x1b[2K" in out or "\x1b[1A" in out  # redrawn in place
    assert "test mAP" in out and "wrote " in out  # the final table and where it went
