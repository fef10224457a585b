"""Fixtures for the sweep tests: a tiny spec (toy timm models, 16-32 px, a few dozen canvases)."""

import os

import pytest
import yaml

TINY_SPEC = {
    "name": "tiny",
    "dataset": {"name": "mosaic-digits", "image_size": 32, "options": {"scale": 0.05}},
    "pairings": [{"teacher": "test_resnet", "students": ["test_efficientnet", "test_convnext"]}],
    "methods": ["l2d", "kd"],
    "search_space": {"lambda_mld": {"low": 1, "high": 100}, "lr": {"low": 5e-4, "high": 5e-3}},
    "budget": {"num_samples": 5, "max_epochs": 3, "grace_period": 1, "reduction_factor": 2, "teacher_epochs": 1},
    "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1},
    "recipe": {"batch_size": 16, "embed_dim": 32},
    "seed": 0,
}


@pytest.fixture
def tiny_spec(tmp_path):
    """Write the tiny spec (storage under tmp_path) and return its path; a dict of changes may be applied."""

    def make(**changes):
        data = {**TINY_SPEC, "storage": str(tmp_path / "sweeps"), **changes}
        path = tmp_path / f"{data['name']}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return make


@pytest.fixture
def ray_cleanup():
    """Shut down the Ray cluster a test started in this process."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def plant_payload(path, target) -> None:
    """A pickle at ``path`` that, when loaded, creates ``target`` (what a planted pickle could do)."""
    import pickle

    path.write_bytes(pickle.dumps(_Payload(target)))
