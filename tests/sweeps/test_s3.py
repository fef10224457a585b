"""A sweep whose storage is S3: an S3-compatible server (moto) on 127.0.0.1, a small sweep, its resume, results.

Everything goes through the ordinary code paths: pyarrow's S3 filesystem (pointed at the local server by
AWS_ENDPOINT_URL), Ray Tune's and Ray Train's storage, the teacher store and the Parquet results.
"""

import os
import socket
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_server(monkeypatch):
    pytest.importorskip("moto")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.time() < deadline, "the S3 server did not start"
            time.sleep(0.2)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_EC2_METADATA_DISABLED": "true"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="sweeps")
    yield "s3://sweeps/runs"
    server.terminate()
    server.wait(timeout=10)


def _cli(*args, timeout=700):
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


def test_sweep_resume_and_results_on_s3(s3_server, tiny_spec):
    import pyarrow.fs as pafs

    path = tiny_spec(name="on-s3", storage=s3_server,
                     budget={"num_samples": 1, "max_epochs": 2, "grace_period": 1, "reduction_factor": 2,
                             "teacher_epochs": 1})
    run = _cli("run", str(path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    sweep = f"{s3_server}/on-s3"
    filesystem, base = pafs.FileSystem.from_uri(sweep)
    for name in ("spec.yaml", "asha.json", "results/trials.parquet", "results/epochs.parquet"):
        assert filesystem.get_file_info(f"{base}/{name}").type == pafs.FileType.File, name
    teachers = filesystem.get_file_info(pafs.FileSelector("sweeps/runs/teachers", recursive=True))
    assert any(info.path.endswith("card.json") for info in teachers)
    checkpoints = filesystem.get_file_info(pafs.FileSelector(f"{base}/train", recursive=True))
    assert any(info.path.endswith("/state.pt") for info in checkpoints)  # epoch checkpoints live in the bucket

    # Resuming a finished sweep runs nothing again.
    resumed = _cli("resume", sweep)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert " started: " not in resumed.stdout

    results = _cli("results", sweep, "--sql", "SELECT count(*) AS trials FROM trials", "--format", "csv")
    assert results.returncode == 0, results.stderr
    assert results.stdout.splitlines() == ["trials", "1"]
    status = _cli("status", sweep)
    assert status.returncode == 0 and "trials by state:" in status.stdout
