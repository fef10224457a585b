"""A real Ray cluster, started the way `ray up cluster/aws.yaml` starts one, on 127.0.0.1; a sweep submitted to it.

Two `ray start --block` processes (a head and a worker node), each with its own home folder, run the start commands
of cluster/aws.yaml as ray up runs them: `RAY_OVERRIDE_RESOURCES` set to the node type's resources, `RAY_HEAD_IP`
for the worker, and the cluster's token put on each node by the config's `file_mounts` (created once with
`ray get-auth-token --generate`, as cluster/README.md says). What this machine changes, and nothing else:

- ports: the GCS, dashboard, client and agent ports are free ones, and each node gets its own Ray temp folder
  (two nodes on one disk would otherwise share, and delete, each other's runtime-env folders);
- `ray stop` is skipped (on a fresh node it is a no-op; here it would stop every Ray process on the machine), the
  autoscaler config that ray up writes is left out (no cloud to scale), and `--block` keeps each node a child
  process the test can stop;
- the worker declares 2 CPUs instead of the GPU node type's 192 CPUs and 8 GPUs.

The sweep is submitted with cluster/submit.sh (`ray job submit`) from outside the repository, as a user would.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
BIN = Path(sys.executable).parent
SUBMIT = str(ROOT / "cluster" / "submit.sh")
SPEC = str(ROOT / "search_spaces" / "quickstart.yaml")

pytestmark = [pytest.mark.ray, pytest.mark.timeout(1200)]


def _start_command(key: str, gcs_port: int, extra: str) -> str:
    """The config's `ray start` command for a node, with this machine's ports and flags (see the module docstring)."""
    commands = [c for c in CONFIG[key] if c.strip() != "ray stop"]
    assert len(commands) == 1 and "RAY_AUTH_MODE=token ray start" in commands[0], commands
    command = commands[0].replace("--port=6379", f"--port={gcs_port}").replace(":6379", f":{gcs_port}")
    command = command.replace(" --autoscaling-config=~/ray_bootstrap_config.yaml", "")
    return f"{command} {extra} --block"


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1", **extra)
    return env


def _alive_nodes(address: str, home: Path) -> int:
    status = subprocess.run(
        [str(BIN / "ray"), "status", "--address", address],
        capture_output=True,
        text=True,
        env=_env(home, RAY_AUTH_MODE="token"),
        timeout=60,
    )
    if status.returncode != 0:
        return 0
    active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(line.strip().startswith("1 node_") for line in active.splitlines())


def _stop(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        try:
            os.killpg(process.pid, sig)  # the node's Ray processes share the `ray start` process group
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the raylet and GCS outlive `ray start` on SIGTERM
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real-cluster")
    homes = {name: tmp / name for name in ("local", "head", "worker", "stranger")}
    for home in homes.values():
        home.mkdir()
    # Step 1 of cluster/README.md: the token, created once on the machine that runs `ray up`.
    generated = subprocess.run(
        [str(BIN / "ray"), "get-auth-token", "--generate"],
        capture_output=True,
        text=True,
        env=_env(homes["local"]),
        timeout=60,
    )
    assert generated.returncode == 0, generated.stderr
    # ray up's file_mounts: the same file on every node.
    assert CONFIG["file_mounts"], "cluster/aws.yaml mounts no token"
    for remote, local in CONFIG["file_mounts"].items():
        source = Path(local.replace("~", str(homes["local"]), 1))
        assert source.is_file(), source
        for node in ("head", "worker"):
            target = Path(remote.replace("~", str(homes[node]), 1))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)

    gcs, dashboard, client = free_port(), free_port(), free_port()
    temp = {node: tempfile.mkdtemp(prefix=f"l2d-{node}-", dir="/tmp") for node in ("head", "worker")}  # short paths:
    # Ray's socket paths must fit in 107 characters
    head_type = CONFIG["available_node_types"][CONFIG["head_node_type"]]
    head = subprocess.Popen(
        [
            "bash",
            "-c",
            _start_command(
                "head_start_ray_commands",
                gcs,
                f"--node-ip-address=127.0.0.1 --dashboard-port={dashboard} --ray-client-server-port={client} "
                f"--dashboard-agent-listen-port={free_port()} --temp-dir={temp['head']}",
            ),
        ],
        env=_env(homes["head"], RAY_OVERRIDE_RESOURCES=json.dumps(head_type["resources"])),
        stdout=open(tmp / "head.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = None
    try:
        gcs_address = f"127.0.0.1:{gcs}"
        deadline = time.time() + 120
        while _alive_nodes(gcs_address, homes["local"]) < 1:
            assert head.poll() is None and time.time() < deadline, (tmp / "head.log").read_text()[-3000:]
            time.sleep(2)
        worker = subprocess.Popen(
            [
                "bash",
                "-c",
                _start_command(
                    "worker_start_ray_commands",
                    gcs,
                    f"--node-ip-address=127.0.0.1 --dashboard-agent-listen-port={free_port()} "
                    f"--temp-dir={temp['worker']}",
                ),
            ],
            env=_env(homes["worker"], RAY_HEAD_IP="127.0.0.1", RAY_OVERRIDE_RESOURCES=json.dumps({"CPU": 2})),
            stdout=open(tmp / "worker.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while _alive_nodes(gcs_address, homes["local"]) < 2:
            assert worker.poll() is None and time.time() < deadline, (tmp / "worker.log").read_text()[-3000:]
            time.sleep(2)
        yield {
            "address": f"http://127.0.0.1:{dashboard}",
            "gcs": gcs_address,
            "homes": homes,
            "tmp": tmp,
            "storage": tmp / "storage",
        }
    finally:
        for process in (worker, head):
            if process is not None:
                _stop(process)
        for folder in temp.values():
            shutil.rmtree(folder, ignore_errors=True)


def _submit(cluster, home: Path, *args: str, **env) -> subprocess.CompletedProcess:
    """cluster/submit.sh run from outside the repository, as a user would."""
    return subprocess.run(
        [SUBMIT, SPEC, "--address", cluster["address"], "--", *args],
        capture_output=True,
        text=True,
        cwd=cluster["tmp"],
        env=_env(home, **env),
        timeout=900,
    )


def test_a_sweep_submitted_to_a_token_cluster_runs_and_a_resubmission_resumes(real_cluster):
    storage = real_cluster["storage"]
    args = ("--num-samples", "2", "--max-epochs", "1", "--storage", str(storage), "--name", "on-cluster")
    first = _submit(real_cluster, real_cluster["homes"]["local"], *args)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-5000:]
    assert "succeeded" in output and "sweep finished: 2 completed" in output, output[-5000:]
    assert "teacher resnet14t: trained" in output  # on the worker node: the head has no CPU for it

    sweep = storage / "on-cluster"
    results = subprocess.run(
        [str(BIN / "l2d-sweep"), "results", str(sweep), "--format", "json"],
        capture_output=True,
        text=True,
        env=_env(real_cluster["homes"]["local"]),
        timeout=120,
    )
    assert results.returncode == 0, results.stderr
    rows = json.loads(results.stdout)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}
    trials = pq.read_table(sweep / "results" / "trials.parquet").to_pylist()
    epochs = pq.read_table(sweep / "results" / "epochs.parquet").to_pylist()
    assert len(trials) == 2 and len(epochs) == 2
    record = json.loads((sweep / "run.json").read_text())["runs"]
    assert record[0]["devices"]["cluster"]["nodes"] == 2 and record[0]["devices"]["cluster"]["CPU"] == 2.0

    # The same submission again: the entry point resumes the finished sweep, which has nothing left to run.
    again = _submit(real_cluster, real_cluster["homes"]["local"], *args)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-5000:]
    assert "exists: resuming it (--or-resume)" in output and " started: " not in output, output[-5000:]
    assert pq.read_table(sweep / "results" / "trials.parquet").to_pylist() == trials
    assert pq.read_table(sweep / "results" / "epochs.parquet").num_rows == 2
    assert [r["action"] for r in json.loads((sweep / "run.json").read_text())["runs"]] == ["run", "resume"]


def test_a_submission_without_the_token_is_refused(real_cluster):
    args = ("--num-samples", "1", "--max-epochs", "1", "--storage", str(real_cluster["storage"]), "--name", "refused")
    # No token anywhere the client looks.
    missing = _submit(real_cluster, real_cluster["homes"]["stranger"], *args)
    assert missing.returncode != 0
    assert "token" in (missing.stdout + missing.stderr).lower(), (missing.stdout + missing.stderr)[-3000:]
    # A token, but not the cluster's.
    wrong = _submit(real_cluster, real_cluster["homes"]["stranger"], *args, RAY_AUTH_TOKEN="0" * 64)
    text = (wrong.stdout + wrong.stderr).lower()
    assert wrong.returncode != 0 and "invalid authentication token" in text, text[-3000:]  # the dashboard's 403
    # Nothing ran: the cluster lists no such job, and no sweep folder was made.
    jobs = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", real_cluster["address"]],
        capture_output=True,
        text=True,
        env=_env(real_cluster["homes"]["local"], RAY_AUTH_MODE="token"),
        timeout=120,
    )
    assert jobs.returncode == 0, jobs.stderr
    assert "--name refused" not in jobs.stdout
    assert not (real_cluster["storage"] / "refused").exists()
