"""Multi-node sweeps on one machine: ray.cluster_utils.Cluster with a head and worker nodes of logical CPUs.

A trial's 2 DDP workers (gloo) land on different nodes; a worker node removed in the middle of a trial makes
Ray Train restart the trial from its last checkpoint (FailureConfig), and the sweep completes with all rows.
"""

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.multinode, pytest.mark.timeout(900)]


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # As in the shipped cluster configs, the head has no CPU for Ray tasks and holds only the trial drivers (the
    # `trial_driver` resource). Each worker node has 1 CPU, so a trial with 2 workers of 1 CPU each must span two
    # worker nodes, and a driver that landed on a worker instead (0.01 CPU) would leave it too little for a worker:
    # the trials only run if their drivers are on the head.
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "resources": {"trial_driver": 4}})
    yield nodes
    ray.shutdown()
    nodes.shutdown()


def _spec(tiny_spec, name, **budget):
    return tiny_spec(
        name=name,
        methods=["l2d"],
        budget={
            "num_samples": 1,
            "max_epochs": 3,
            "grace_period": 1,
            "reduction_factor": 2,
            "teacher_epochs": 1,
            **budget,
        },
        resources={"workers_per_trial": 2, "cpus_per_worker": 1, "max_concurrent_trials": 1, "max_failures": 3},
    )


def _sweep(path, address):
    env = {**os.environ, "RAY_ADDRESS": address, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", "run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def test_two_workers_on_two_nodes(cluster, tiny_spec, tmp_path):
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    process = _sweep(_spec(tiny_spec, "spread", max_epochs=2), cluster.address)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]
    epochs = pq.read_table(tmp_path / "sweeps" / "spread" / "results" / "epochs.parquet").to_pylist()
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(e["worker_nodes"] == 2 for e in epochs)  # rank 0 and rank 1 on different nodes


def test_sweep_survives_losing_a_worker_node(cluster, tiny_spec, tmp_path):
    from ray.util.state import list_actors

    spare = [cluster.add_node(num_cpus=1) for _ in range(3)]
    cluster.wait_for_nodes()
    import ray

    ray.init(address=cluster.address)
    sweep = tmp_path / "sweeps" / "lossy"
    process = _sweep(_spec(tiny_spec, "lossy", max_epochs=4), cluster.address)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if " epoch 1/4: " in line:
            break
    assert any(" epoch 1/4: " in line for line in lines), "".join(lines)[-4000:]
    workers = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "RayTrainWorker" in a.class_name]
    assert workers, "no training worker found"
    # The trial's driver and its Train controller hold the head's `trial_driver`, not a worker's CPU.
    controllers = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "TrainController" in a.class_name]
    assert controllers and all(a.node_id == cluster.head_node.node_id for a in controllers), controllers
    by_id = {node.node_id: node for node in spare}
    hosts = [a.node_id for a in workers if a.node_id in by_id]
    assert hosts, ([(a.class_name, a.node_id) for a in workers], list(by_id))
    victim = by_id[hosts[0]]
    cluster.remove_node(victim, allow_graceful=False)  # the node dies mid-trial
    rest, _ = process.communicate(timeout=700)
    output = "".join(lines) + rest
    assert process.returncode == 0, output[-4000:]
    trials = pq.read_table(sweep / "results" / "trials.parquet").to_pylist()
    epochs = pq.read_table(sweep / "results" / "epochs.parquet").to_pylist()
    assert len(trials) == 1 and trials[0]["status"] == "completed"
    assert sorted(e["epoch"] for e in epochs) == [1, 2, 3, 4]
    # The restarted worker group continued from a checkpoint, not from scratch.
    assert any(e["resumed_from"] == 1.0 for e in epochs), output[-4000:]
