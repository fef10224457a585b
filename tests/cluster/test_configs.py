"""Cluster configs: every YAML and manifest parses, has its required keys, matches pyproject's versions,
and keeps the safe defaults (no public Ray ports, token auth on, weights-only loading)."""

import os
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"


def _pyproject_ray_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'"ray\[default,train,tune\]>=([0-9.]+)"', text).group(1)


def _image_tag() -> str:
    return re.search(r"^FROM rayproject/ray:(\S+)", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)


def test_dockerfile_matches_pyproject():
    tag = _image_tag()
    version, py = re.match(r"([0-9.]+)-py(\d+)-gpu$", tag).groups()
    assert version == "2.60.0" and version.startswith(_pyproject_ray_version())
    assert py == f"{sys.version_info.major}{sys.version_info.minor}" == "311"
    text = (CLUSTER / "Dockerfile").read_text()
    assert f'"ray[default,train,tune]=={version}"' in text  # the image's Ray is the one the package was tested with
    assert "RAY_AUTH_MODE=token" in text


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_ray_up_configs(name):
    config = yaml.safe_load((CLUSTER / name).read_text())
    for key in ("cluster_name", "max_workers", "idle_timeout_minutes", "provider", "auth", "docker",
                "available_node_types", "head_node_type", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in config, key
    nodes = config["available_node_types"]
    assert config["head_node_type"] in nodes and nodes["head"]["resources"] == {"CPU": 0}
    workers = [n for k, n in nodes.items() if k != config["head_node_type"]]
    assert workers and all(w["max_workers"] >= w["min_workers"] >= 0 for w in workers)
    spot = str(workers[0]["node_config"])
    assert "spot" in spot.lower()
    assert config["docker"]["image"].endswith(_image_tag())
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in (CLUSTER / name).read_text()
    for port in ("8265", "10001", "6379"):  # no firewall rule or port mapping opens Ray's ports
        assert f"-p {port}" not in str(config["docker"].get("run_options")) and "IpPermissions" not in str(config)


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests(name):
    manifest = yaml.safe_load((CLUSTER / "kuberay" / name).read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == {"raycluster.yaml": "RayCluster",
                                                                          "rayjob.yaml": "RayJob"}[name]
    spec = manifest["spec"]
    if name == "rayjob.yaml":
        assert spec["shutdownAfterJobFinishes"] is True and "--or-resume" in spec["entrypoint"]
        spec = spec["rayClusterSpec"]
    assert spec["rayVersion"] == _image_tag().split("-")[0]
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"  # not a LoadBalancer on the internet
    groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    gpu_group = spec["workerGroupSpecs"][0]
    assert gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    for group in groups:
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"].endswith(_image_tag())
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
        shm = [v for v in pod["volumes"] if v["name"] == "dshm"][0]
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_submit_script_is_idempotent():
    text = (CLUSTER / "submit.sh").read_text()
    assert "ray job submit" in text and "--or-resume" in text


def test_every_file_the_cluster_readme_names_exists():
    readme = (CLUSTER / "README.md").read_text()
    named = set(re.findall(r"`((?:cluster/|search_spaces/)?[\w./-]+\.(?:yaml|sh)|Dockerfile)`", readme))
    assert named
    for name in named:
        path = ROOT / name if name.startswith(("cluster/", "search_spaces/")) else CLUSTER / name
        assert path.exists(), name


def test_checkpoints_and_teachers_load_weights_only():
    calls = []
    for path in [p for folder in ("l2d", "sweeps") for p in (ROOT / folder).rglob("*.py")]:
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            depth, end = 1, match.end()
            while depth:  # the whole call, up to its closing parenthesis
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            calls.append((path, text[match.start():end]))
    assert len(calls) >= 3
    for path, call in calls:
        assert "weights_only=True" in call, f"{path}: {call}"


@pytest.mark.ray
def test_local_cluster_binds_to_localhost_with_token_auth(monkeypatch):
    import ray

    from sweeps.runner import init_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    try:
        context = init_ray(num_cpus=1)
        assert context.dashboard_url.startswith("127.0.0.1:")
        assert (Path.home() / ".ray" / "auth_token").is_file()  # Ray >= 2.59 keeps token auth on
        assert os.environ.get("RAY_AUTH_MODE", "token") != "disabled"
    finally:
        ray.shutdown()


def test_gpu_step_benchmark_runs_on_cpu(tmp_path):
    """The GPU check's step benchmark, shrunk to a CPU smoke test (the real run needs a GPU)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.gpu_step import main

    row = main(["--device", "cpu", "--teacher", "test_resnet", "--student", "test_efficientnet", "--image-size",
                "32", "--batch-size", "8", "--classes", "10", "--embed-dim", "32", "--steps", "2", "--weights", "files",
                "--out", str(tmp_path / "gpu_step.json")])
    assert row["images_per_s"] > 0 and 0 < row["l2d_loss_share"] < 1 and row["init"] == "files"
    assert (tmp_path / "gpu_step.json").is_file()


def test_gpu_check_script_and_spec():
    from sweeps.spec import load_spec

    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert "benchmarks/gpu_check.yaml" in script and "--image-size 224" in script and "--classes 80" in script
    assert "--weights files" in script and script.count("timeout ") >= 3  # each part has a time limit
    spec = load_spec(str(ROOT / "benchmarks" / "gpu_check.yaml"))
    assert spec.budget.num_samples == 2 and spec.resources.gpus_per_worker == 1
    assert set(spec.weights) == {"resnet14t", "resnet10t"} and all(w.endswith(".pth") for w in spec.weights.values())
