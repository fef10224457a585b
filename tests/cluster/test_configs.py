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
    # A wheel, not an editable install of a source tree; pinned versions; the ray user owns its folder.
    assert "pip wheel" in text and " -e " not in text and "-c constraints.txt" in text
    assert "chown ray:users /home/ray/l2d-sweep" in text and text.rstrip().splitlines().count("USER ray") >= 2


def test_the_lock_pins_every_dependency():
    # One lock for the dev install, CI and the image (requirements/lock.txt, written by `make lock`).
    assert (
        "-c $(LOCK)" in (ROOT / "Makefile").read_text()
        and "requirements/lock.txt" in (CLUSTER / "Dockerfile").read_text()
    )
    pinned = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert "[" not in line, f"{line}: pip refuses a constraint with extras (pin the extra's packages)"
            name, version = line.split("==")
            pinned[re.sub(r"\[.*\]", "", name).lower()] = version
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("dependencies = [", 1)[1].split("]\n", 1)[0]
    extras = text.split("[project.optional-dependencies]", 1)[1].split("\n[project.scripts]", 1)[0]  # dev's too
    names = {
        re.match(r'"([A-Za-z0-9_.-]+)', item).group(1).lower()
        for item in re.findall(r'"[^"]+"', block + extras)
        if not item.startswith('"ray[')
    }
    assert names and names <= set(pinned), sorted(names - set(pinned))
    assert pinned["ray"] == "2.60.0"


def test_dockerignore_keeps_the_build_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", "exports", ".git"} <= set(ignored)


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_ray_up_configs(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / name).read_text())
    validate_config(prepare_config(config))  # Ray's own schema, after Ray's own defaults
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and head["resources"]["trial_driver"] >= 1
    workers = {k: n for k, n in nodes.items() if k != config["head_node_type"]}
    assert workers and all(w["max_workers"] >= w["min_workers"] >= 0 for w in workers.values())
    for worker in workers.values():
        # Every GPU node type declares its GPUs (the GCP provider does not fill them in) and waits for the driver.
        assert worker["resources"]["GPU"] >= 1 and worker["resources"]["CPU"] >= 1
        assert any("nvidia-smi" in c for c in worker["initialization_commands"])
        assert "spot" in str(worker["node_config"]).lower()
    if name == "gcp.yaml":
        gpu = next(iter(workers.values()))["node_config"]
        assert gpu["guestAccelerators"][0]["acceleratorCount"] == next(iter(workers.values()))["resources"]["GPU"]
        assert {"key": "install-nvidia-driver", "value": "True"} in gpu["metadata"]["items"]
    assert config["docker"]["image"].endswith(_image_tag())
    # One token everywhere: the file the user generated, mounted on every node; token mode in every start command.
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token ray start" in c for c in starts), starts
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in (CLUSTER / name).read_text()
    for port in ("8265", "10001", "6379"):  # no firewall rule or port mapping opens Ray's ports
        assert f"-p {port}" not in str(config["docker"].get("run_options")) and "IpPermissions" not in str(config)


def _kuberay(name):
    documents = [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / name).read_text()) if d]
    return {d["kind"]: d for d in documents}


def _pods(cluster_spec):
    return [cluster_spec["headGroupSpec"]] + cluster_spec["workerGroupSpecs"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests(name):
    documents = _kuberay(name)
    kind = {"raycluster.yaml": "RayCluster", "rayjob.yaml": "RayJob"}[name]
    manifest = documents[kind]
    assert manifest["apiVersion"] == "ray.io/v1"
    spec = manifest["spec"]
    if kind == "RayJob":
        assert spec["shutdownAfterJobFinishes"] is True and "--or-resume" in spec["entrypoint"]
        assert spec["backoffLimit"] >= 1 and spec["activeDeadlineSeconds"] > 0
        assert spec["submitterConfig"]["backoffLimit"] >= 1
        # The job runs the spec of its ConfigMap (the user's storage and data), mounted where the entry point reads.
        config_map = documents["ConfigMap"]
        stored = yaml.safe_load(config_map["data"]["spec.yaml"])
        assert stored == yaml.safe_load((ROOT / "search_spaces" / "coco2014.yaml").read_text())
        from sweeps.specs import parse_spec

        assert parse_spec(stored).name == "coco2014-l2d"
        head_volumes = {v["name"]: v for v in spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]}
        assert head_volumes["spec"]["configMap"]["name"] == config_map["metadata"]["name"]
        assert "/etc/l2d-sweep/spec.yaml" in spec["entrypoint"]
        spec = spec["rayClusterSpec"]
    else:
        policy = documents["NetworkPolicy"]["spec"]
        assert policy["policyTypes"] == ["Ingress"] and policy["ingress"][0]["from"][0] == {"podSelector": {}}
        assert documents["ServiceAccount"]["metadata"]["name"] == "l2d-sweep"
        selected = policy["podSelector"]["matchLabels"]
        assert all(selected.items() <= g["template"]["metadata"]["labels"].items() for g in _pods(spec))
    assert spec["rayVersion"] == _image_tag().split("-")[0]
    # KubeRay's own token auth: it sets the token (key auth_token of this Secret) on every container it runs.
    assert spec["authOptions"] == {"mode": "token", "secretName": "l2d-sweep-ray-token"}
    assert "--from-literal=auth_token=" in (CLUSTER / "kuberay" / "raycluster.yaml").read_text()
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"  # not a LoadBalancer on the internet
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert "trial_driver" in spec["headGroupSpec"]["rayStartParams"]["resources"]
    gpu_group = spec["workerGroupSpecs"][0]
    assert gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    for group in _pods(spec):
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"].endswith(_image_tag())
        env = {e["name"] for e in container.get("env", [])}
        assert not env & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}  # KubeRay sets them from authOptions
        assert pod["serviceAccountName"] == "l2d-sweep"
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "l2d-sweep-data"
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["dshm"]["mountPath"] == "/dev/shm" and mounts["data"] == {
            "name": "data",
            "mountPath": "/data",
            "readOnly": True,
        }


def test_submit_script_is_idempotent_and_uploads_the_repository():
    text = (CLUSTER / "submit.sh").read_text()
    assert "ray job submit" in text and "--or-resume" in text
    assert '--working-dir "$repo"' in text and 'repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.."' in text


def test_submit_script_refuses_a_spec_outside_the_repository(tmp_path):
    import subprocess

    spec = tmp_path / "mine.yaml"
    spec.write_text("name: mine\n")
    run = subprocess.run([str(CLUSTER / "submit.sh"), str(spec)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 2 and "is outside the repository" in run.stderr
    run = subprocess.run([str(CLUSTER / "submit.sh"), str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert run.returncode == 2 and "no such spec file" in run.stderr


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
            calls.append((path, text[match.start() : end]))
    assert len(calls) >= 3
    for path, call in calls:
        assert "weights_only=True" in call, f"{path}: {call}"


@pytest.mark.ray
def test_local_cluster_binds_to_localhost_with_token_auth(monkeypatch):
    import ray

    from sweeps.tune.runner import init_ray

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

    row = main(
        [
            "--device",
            "cpu",
            "--teacher",
            "test_resnet",
            "--student",
            "test_efficientnet",
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--classes",
            "10",
            "--embed-dim",
            "32",
            "--steps",
            "2",
            "--weights",
            "files",
            "--out",
            str(tmp_path / "gpu_step.json"),
        ]
    )
    # Measured times, not asserted ones (a loaded machine can time the loss alone slower than a whole step): that
    # each figure is there and positive is what a CPU smoke test can say.
    assert row["images_per_s"] > 0 and row["l2d_loss_share"] > 0 and row["init"] == "files"
    assert (tmp_path / "gpu_step.json").is_file()


def test_gpu_check_script_and_spec():
    from sweeps.specs import load_spec

    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert "benchmarks/gpu_check.yaml" in script and "--image-size 224" in script and "--classes 80" in script
    assert "--weights files" in script and script.count("timeout ") >= 3  # each part has a time limit
    spec = load_spec(str(ROOT / "benchmarks" / "gpu_check.yaml"))
    assert spec.budget.num_samples == 2 and spec.resources.gpus_per_worker == 1
    assert set(spec.weights) == {"resnet14t", "resnet10t"} and all(w.endswith(".pth") for w in spec.weights.values())
