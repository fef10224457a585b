"""Ctrl-C and SIGTERM stop a sweep cleanly and read as interrupted: exit 130 / 143, the resume line (not Tune's
``Tuner.restore`` hint), ``interrupted`` in run.json, ``status`` and ``list``; a copy of the interrupted sweep
resumes as itself and never writes into the original."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sweeps.core.interrupt import Interrupts, SweepInterrupted
from tests.sweeps.conftest import TINY_SPEC

ROOT = Path(__file__).resolve().parents[2]


def test_a_signal_outside_tune_raises_sweep_interrupted_and_a_second_stops_at_once():
    found = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)  # SIG_IGN under a background job
    with Interrupts() as interrupts:
        with pytest.raises(SweepInterrupted) as caught:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs on the main thread at the next instruction
        assert caught.value.exit_status == 143 and interrupts.received == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt) as again:  # the second signal: no graceful path any more
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert not isinstance(again.value, SweepInterrupted)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == found  # the ones it found are back


def test_a_sigint_that_tune_handled_is_seen_after_fit():
    """Tune's handler puts back the one it found when it runs (and only then): after ``fit`` returns, that is how a
    graceful stop is told from an end. The stand-in below does what ``ray.tune.tune._setup_signal_catching`` does."""
    with Interrupts() as interrupts:
        original = signal.getsignal(signal.SIGINT)

        def tunes_handler(signum, frame):
            signal.signal(signal.SIGINT, original)

        signal.signal(signal.SIGINT, tunes_handler)  # fit started: Tune's handler in place
        interrupts.after_fit()  # an ordinary end: Tune's handler still there; nothing raised, ours back
        assert signal.getsignal(signal.SIGINT) == interrupts._handle
        signal.signal(signal.SIGINT, tunes_handler)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during fit: Tune's handler runs and hands SIGINT back
        time.sleep(0.5)
        with pytest.raises(SweepInterrupted) as caught:
            interrupts.after_fit()
        assert caught.value.exit_status == 130


def test_an_error_out_of_fit_after_a_sigint_tune_handled_is_the_interruption():
    """A terminal's Ctrl-C reaches the trial's workers too; ``fit`` may then raise (a worker died of it) instead of
    returning. The SIGINT Tune's handler took, recorded through the wrapper, makes that error an interruption; an
    error with no signal before it stays the error it is. (The stand-in does what Tune's handler does.)"""
    with Interrupts() as interrupts:
        original = signal.getsignal(signal.SIGINT)
        took = []

        def tunes_handler(signum, frame):
            took.append(signum)
            signal.signal(signal.SIGINT, original)

        signal.signal(signal.SIGINT, tunes_handler)
        interrupts.after_error(RuntimeError("a real failure"))  # no signal: nothing raised here
        interrupts.watch_tune()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
        assert took == [signal.SIGINT] and interrupts.received == signal.SIGINT
        with pytest.raises(SweepInterrupted) as caught:
            interrupts.after_error(RuntimeError("a worker died of the same Ctrl-C"))
        assert caught.value.exit_status == 130 and isinstance(caught.value.__cause__, RuntimeError)


def _live(args: list[str], stop_at: str, signum: int, group: bool, timeout: float = 600) -> tuple[int, str]:
    """Run ``l2d-sweep ARGS`` in a pseudo-terminal (the live view on), send ``signum`` when ``stop_at`` is printed
    (to the process group, as a terminal's Ctrl-C does, or to the process, as ``kill`` does); its exit status and
    what it printed."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    os.close(slave)
    output, sent, deadline = b"", False, time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            output += data
            if not sent and stop_at.encode() in output:
                (os.killpg if group else os.kill)(process.pid, signum)
                sent = True
        elif process.poll() is not None:
            break
    os.close(master)
    code = process.wait(timeout=120)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever Ray left of this driver's session
    except ProcessLookupError:
        pass
    assert sent, output.decode(errors="replace")[-3000:]
    return code, output.decode(errors="replace").replace("\r\n", "\n")


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _state(sweep: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "status", str(sweep), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.ray
@pytest.mark.timeout(1500)
def test_ctrl_c_and_sigterm_stop_a_sweep_that_then_resumes_as_itself(tiny_spec, tmp_path):
    path = tiny_spec(name="ctrlc", budget={**TINY_SPEC["budget"], "num_samples": 3})
    sweep = tmp_path / "sweeps" / "ctrlc"
    code, text = _live(["run", str(path)], " epoch 1/3: ", signal.SIGINT, group=True)
    assert code == 130, text[-3000:]
    assert f"interrupted (SIGINT); continue it with `l2d-sweep resume {sweep}`" in text, text[-2000:]
    assert "sweep finished" not in text and "Tuner.restore" not in text and "next: " not in text
    assert "Started a local Ray instance" not in text  # Ray's own lines only with -v
    runs = json.loads((sweep / "run.json").read_text())["runs"]
    assert runs[-1]["outcome"] == "interrupted (SIGINT)" and runs[-1]["ended"]
    status = _state(sweep)
    assert status["state"] == "interrupted" and status["detail"].startswith("by SIGINT: ")

    # A copy under another name: it resumes as itself (SIGTERM stops it the same clean way), the original untouched.
    copy = Path(shutil.copytree(sweep, tmp_path / "sweeps" / "ctrlc-copy", symlinks=True))
    before = _digests(sweep)
    code, text = _live(["resume", str(copy)], " epoch ", signal.SIGTERM, group=False)
    assert code == 143 and f"interrupted (SIGTERM); continue it with `l2d-sweep resume {copy}`" in text, text[-3000:]
    assert _state(copy)["state"] == "interrupted" and _state(copy)["detail"].startswith("by SIGTERM: ")
    resumed = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "resume", str(copy)],
        capture_output=True,
        text=True,
        timeout=700,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert str(copy) in resumed.stdout and f"{sweep}/" not in resumed.stdout + resumed.stderr
    trials = pq.read_table(copy / "results" / "trials.parquet").to_pylist()
    assert len(trials) == 3 and all(t["status"] in ("completed", "stopped") for t in trials)
    assert _state(copy)["state"] == "finished"
    assert _digests(sweep) == before  # not one byte of the original changed
    assert _state(sweep)["state"] == "interrupted"


def test_ctrl_c_before_the_first_trial_of_a_new_sweep_says_to_run_it_again(tiny_spec, tmp_path, capsys, monkeypatch):
    """A new sweep stopped before its first trial leaves no folder (as a failed one): the hint is `run`, not
    `resume` of a folder that is gone. The signal arrives while Ray would start: init_ray is where it is raised."""
    from sweeps.cli import main
    from sweeps.tune import runner

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)

    monkeypatch.setattr(runner, "init_ray", interrupted)
    path = tiny_spec(name="early")
    assert main(["run", str(path)]) == 130
    err = capsys.readouterr().err
    assert f"interrupted (SIGINT); nothing was kept: start it again with `l2d-sweep run {path}`" in err, err
    assert not (tmp_path / "sweeps" / "early").exists()
