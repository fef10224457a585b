"""What a report costs the driver as a sweep grows: time, bytes and storage writes per epoch report at 100, 1,000 and
10,000 trials x 10 epochs, local and ``s3://`` storage, today's writer beside the full-rewrite writer it replaced.

No training: synthetic reports (a real report's keys: every metric an L2D epoch reports, Tune's own keys) go through
the real :class:`sweeps.tune.callback.SweepCallback` (quiet; its progress line, TensorBoard events, status and leader
bookkeeping included), the real writer and the real storage layer (:class:`l2d.storage.Location`; ``s3://`` is a moto
server on 127.0.0.1 started here, the tests' S3 server).

For each size the sweep is prefilled to its end state minus a window (the store written as a sweep of that size holds
it: one top-level segment per 4,096 reports and the compacted pair); then the last trials of the sweep are replayed
through the callback (start, 10 epoch reports, completion). Today's writer: enough reports to include one of each
of its periodic costs (4,097: a merge into the top level; or a twentieth of the sweep's rows plus one: a rewrite of
the compacted pair), at most the whole sweep (1,000 reports at 100 trials, so its window is the sweep from empty).
The baseline, whose every report rewrites both tables whole: fewer. Per report: the mean wall time of the window,
the bytes written and the storage writes (``Location.write_bytes`` calls), and for S3 the HTTP requests the server
logged. The verdict: today's per-report time at 10,000 trials within 2x of that at 100.

The baseline (``benchmarks/baseline_writer.py``) is the writer of commit ee4ade0, through today's storage layer.

Usage:
    python benchmarks/driver_scale.py [--sizes 100 1000 10000] [--stores local s3]
    python benchmarks/driver_scale.py --summarize benchmarks/results/driver_scale.json --readme
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import add_report_arguments, command_line, parse_report_args, readme_block, write_report  # noqa: E402 - run as a script: the repository on sys.path first

EPOCHS = 10
TEACHER, STUDENT, METHOD = "tf_efficientnet_lite2", "tf_efficientnet_lite0", "l2d"
#: Baseline windows (reports): each of its reports rewrites the whole sweep, so fewer of them are enough.
BASELINE_WINDOW = {100: 200, 1000: 50, 10000: 10}
_PARTS = ("mld", "cd", "id")


def report(trial: int, epoch: int, rng: random.Random) -> dict:
    """An epoch report with the keys a real L2D trial sends (metrics and Tune's own)."""
    result = {
        "epoch": epoch,
        "val_mAP": 40 + 40 * rng.random(),
        "val_loss": rng.random(),
        "test_mAP": 40 + 40 * rng.random(),
        "val_CF1": rng.random() * 100,
        "val_OF1": rng.random() * 100,
        "test_CF1": rng.random() * 100,
        "test_OF1": rng.random() * 100,
        "test_paper_CF1": rng.random() * 100,
        "test_paper_OF1": rng.random() * 100,
        "train_total": rng.random(),
        "images_per_s": 150 + rng.random(),
        "lr": 1e-3,
        "epoch_seconds": 10 + rng.random(),
        "student_params": 3_400_000,
        "latency_ms": 5 + rng.random(),
    }
    for part in _PARTS:
        result[f"train_{part}"] = rng.random()
        result[f"val_{part}"] = rng.random()
        result[f"train_grad_share_{part}"] = rng.random()
    result.update(
        training_iteration=epoch,
        time_this_iter_s=10.0,
        time_total_s=10.0 * epoch,
        timestamp=time.time(),
        pid=os.getpid(),
        done=False,
        hostname="bench",
        node_ip="127.0.0.1",
        trial_id=f"t{trial:06d}",
    )
    return result


def config(trial: int) -> dict:
    rng = random.Random(trial)
    return {
        "pairing": TEACHER,
        f"student@{TEACHER}": STUDENT,
        "method": METHOD,
        "lr": 10 ** rng.uniform(-4, -2),
        "lambda_mld": 10 ** rng.uniform(-1, 2),
        "lambda_cd": 10 ** rng.uniform(-1, 2),
        "lambda_id": 10 ** rng.uniform(-1, 3),
    }


def trial_object(trial: int) -> SimpleNamespace:
    """What the callback reads off a Tune trial."""
    return SimpleNamespace(
        trial_id=f"t{trial:06d}", config=config(trial), status="RUNNING", error_file=None, get_error=lambda: None
    )


class Counter:
    """Counts ``Location.write_bytes`` calls and bytes (every file the writer and the callback write to storage)."""

    def __init__(self):
        from l2d.storage import Location

        self.writes = self.bytes = 0
        original = Location.write_bytes

        def counted(location, data):
            self.writes += 1
            self.bytes += len(data)
            return original(location, data)

        Location.write_bytes = counted

    def snapshot(self) -> tuple[int, int]:
        return self.writes, self.bytes


class S3Server:
    """moto on 127.0.0.1 with a bucket ``bench``; counts the HTTP requests it logs."""

    def __init__(self, work: Path):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log = work / "moto.log"
        self._stream = open(self.log, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._stream,
            stderr=subprocess.STDOUT,
        )
        os.environ.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
        )
        os.environ.pop("AWS_ENDPOINT_URL", None)
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("error: the moto S3 server did not start (pip install 'moto[server]')") from None
                time.sleep(0.2)
        import boto3

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.port}").create_bucket(Bucket="bench")

    def uri(self, name: str) -> str:
        return f"s3://bench/{name}?endpoint_override=127.0.0.1:{self.port}&scheme=http"

    def requests(self) -> int:
        self._stream.flush()
        text = self.log.read_text(errors="replace")
        return sum(
            1
            for line in text.splitlines()
            if '"GET ' in line or '"PUT ' in line or '"POST ' in line or '"HEAD ' in line or '"DELETE ' in line
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # moto's server can be slow to stop after a large run
            self.process.kill()
            self.process.wait(timeout=30)
        self._stream.close()


def prefill(writer, kind: str, trials: int, window_trials: int, rng: random.Random) -> None:
    """The sweep's state before the window: every trial but the last ``window_trials`` complete (10 epochs each),
    written as the store holds a sweep that size."""
    done = trials - window_trials
    for index in range(done):
        cfg = _decoded(index)
        for epoch in range(1, EPOCHS + 1):
            writer.record_epoch(f"t{index:06d}", cfg, report(index, epoch, rng))
        writer.finish(f"t{index:06d}", cfg)
    if kind == "baseline":
        writer.write()
        return
    from sweeps.results.schema import epochs_table, trials_table
    from sweeps.results.store import FANOUT, MAX_LEVEL

    store, manifest = writer.store, writer.manifest
    chunk = FANOUT**MAX_LEVEL  # reports per top-level segment
    ids = [f"t{index:06d}" for index in range(done)]
    trials_per_chunk = max(1, chunk // EPOCHS)
    for start in range(0, len(ids), trials_per_chunk):
        group = ids[start : start + trials_per_chunk]
        segment = store._new_segment(
            manifest,
            trials_table([writer.row(t) for t in group]),
            epochs_table([row for t in group for _, row in sorted(writer.epochs[t].items())]),
            MAX_LEVEL,
            len(group) * EPOCHS,
        )
        manifest.segments.append(segment)
        manifest.reports += len(group) * EPOCHS
    store._swap(manifest)
    writer.publish()
    writer._dirty_trials, writer._new_epochs = set(), []


def _decoded(index: int) -> dict:
    from sweeps.search.space import decode

    return decode(config(index))


def _window(trials: int, least: int) -> int:
    """Today's writer: enough reports to include one of each of its periodic costs (a merge into the top level every
    4,096 reports; the compacted pair rewritten after a twentieth of its rows), and at most the whole sweep."""
    from sweeps.results.store import FANOUT, MAX_LEVEL

    return min(trials * EPOCHS, max(least, FANOUT**MAX_LEVEL + 1, trials * EPOCHS // 20 + 1))


def measure(
    kind: str, store: str, trials: int, window: int, location: str, counter: Counter, server: S3Server | None
) -> dict:
    from sweeps.tune.callback import SweepCallback

    rng = random.Random(trials)
    window_trials = -(-window // EPOCHS)
    callback = SweepCallback(location, EPOCHS, "val_mAP", "max", quiet=True)
    if kind == "baseline":
        from benchmarks.baseline_writer import FullRewriteWriter

        writer = FullRewriteWriter(location, EPOCHS)
    else:
        from sweeps.results import ResultsWriter

        writer = ResultsWriter(location, EPOCHS)
    prefill(writer, kind, trials, window_trials, rng)
    callback._writer = writer
    callback._reconciled = True
    objects = [trial_object(index) for index in range(trials - window_trials, trials)]
    writes0, bytes0 = counter.snapshot()
    requests0 = server.requests() if server else 0
    reports = 0
    start = time.perf_counter()
    for trial in objects:
        callback.on_trial_start(0, [], trial)
        index = int(trial.trial_id[1:])
        for epoch in range(1, EPOCHS + 1):
            callback.on_trial_result(0, [], trial, report(index, epoch, rng))
            reports += 1
        trial.status = "TERMINATED"
        callback.on_trial_complete(0, [], trial)
    elapsed = time.perf_counter() - start
    writes1, bytes1 = counter.snapshot()
    requests = (server.requests() - requests0) if server else None
    for board in callback._boards.values():
        board.close()
    row = {
        "writer": kind,
        "store": store,
        "trials": trials,
        "epoch_rows": trials * EPOCHS,
        "window_reports": reports,
        "ms_per_report": 1000 * elapsed / reports,
        "kb_per_report": (bytes1 - bytes0) / 1024 / reports,
        "writes_per_report": (writes1 - writes0) / reports,
        "requests_per_report": requests / reports if requests is not None else None,
    }
    print(
        f"  {kind:9s} {store:5s} {trials:6d} trials: {row['ms_per_report']:8.2f} ms/report, "
        f"{row['kb_per_report']:9.1f} KiB/report, {row['writes_per_report']:.2f} writes/report"
        + (f", {row['requests_per_report']:.1f} requests/report" if requests is not None else ""),
        flush=True,
    )
    return row


def table(report: dict) -> list[str]:
    lines = [
        f"{'store':5s} {'trials':>6s} {'writer':>12s} {'ms/report':>10s} {'KiB/report':>11s} {'writes':>7s} "
        f"{'HTTP req':>9s}"
    ]
    for row in report["rows"]:
        requests = f"{row['requests_per_report']:9.1f}" if row["requests_per_report"] is not None else f"{'-':>9s}"
        name = "segments" if row["writer"] == "segments" else "full rewrite"
        lines.append(
            f"{row['store']:5s} {row['trials']:6d} {name:>12s} {row['ms_per_report']:10.2f} "
            f"{row['kb_per_report']:11.1f} {row['writes_per_report']:7.2f} {requests}"
        )
    for store, verdict in report["verdicts"].items():
        lines.append(
            f"{store}: today's per-report time at {verdict['largest']:,} trials is {verdict['ratio']:.2f}x "
            f"that at {verdict['smallest']:,} ({'within' if verdict['ratio'] <= 2 else 'NOT within'} 2x); "
            f"the full-rewrite writer's is {verdict['baseline_ratio']:.0f}x"
        )
    return lines


def summarize(report: dict, write: bool) -> str:
    lines = [f"$ {report['command']}", *table(report)]
    return readme_block("driver_scale", lines, write)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000], help="trials per sweep")
    parser.add_argument("--stores", nargs="+", default=["local", "s3"], choices=["local", "s3"])
    parser.add_argument(
        "--window",
        type=int,
        default=500,
        help="today's writer: reports replayed at least (see the "
        "docstring: more where the sweep's periodic costs need)",
    )
    add_report_arguments(parser, "driver_scale")
    args = parse_report_args(parser, argv, summarize)
    if args is None:
        return
    work = Path(tempfile.mkdtemp(prefix="l2d-driver-scale-"))
    os.environ["L2D_SWEEP_CACHE"] = str(work / "cache")  # TensorBoard staging of the s3 sweeps
    counter = Counter()
    server = S3Server(work) if "s3" in args.stores else None
    rows = []
    try:
        for store in args.stores:
            for trials in args.sizes:
                for kind in ("segments", "baseline"):
                    window = _window(trials, args.window) if kind == "segments" else BASELINE_WINDOW.get(trials, 10)
                    name = f"{kind}-{trials}"
                    location = str(work / "local" / name) if store == "local" else server.uri(name)
                    rows.append(measure(kind, store, trials, window, location, counter, server))
        report = _report(args, rows)
    finally:
        if server:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    for line in table(report):
        print(line)


def _report(args, rows: list[dict]) -> dict:
    verdicts = {}
    for store in args.stores:
        mine = {r["trials"]: r for r in rows if r["store"] == store and r["writer"] == "segments"}
        base = {r["trials"]: r for r in rows if r["store"] == store and r["writer"] == "baseline"}
        small, large = min(mine), max(mine)
        verdicts[store] = {
            "smallest": small,
            "largest": large,
            "ratio": mine[large]["ms_per_report"] / mine[small]["ms_per_report"],
            "baseline_ratio": base[large]["ms_per_report"] / base[small]["ms_per_report"],
        }
    out = {"command": command_line("driver_scale.py", args.argv), "verdicts": verdicts}
    write_report(args.out, "driver_scale", rows, epochs=EPOCHS, window=args.window, **out)
    return {"rows": rows, **out}


if __name__ == "__main__":
    main()
