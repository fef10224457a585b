"""Initial weights for a backbone, offline: a local file, or timm's / Hugging Face's pretrained weights already in the
local Hugging Face cache. Nothing is ever downloaded.

A weights *source* is one of:

- a path to a local file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``): a timm/torchvision state dict of the
  backbone (its classifier is dropped, timm's way), or a whole model saved by this project;
- ``timm``: the backbone's default pretrained weights in timm (e.g. ``resnet34`` -> ``timm/resnet34.a1_in1k``);
- ``timm:<tag>``: one of its tagged weights (``timm:a1_in1k`` for ``resnet34.a1_in1k``; ``timm.list_pretrained()``);
- ``hf-hub:<org>/<repo>``: a Hugging Face repository holding timm weights.

The hub sources are looked up in the local cache only (``$HF_HOME``/``$HF_HUB_CACHE``, default
``~/.cache/huggingface/hub``); a missing one is a one-line error saying how to put it there from a machine with
internet (``huggingface-cli download <repo> model.safetensors``, then copy the cache). A source's *identity* is the
SHA-256 of its file: part of a teacher's key, so other initial weights give another teacher.
"""

from __future__ import annotations

import functools
import hashlib
import os

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
LOCAL_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


class WeightsError(ValueError):
    """Weights cannot be found or do not fit; the message names the source or file and what to do."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """A weights file, or a hub repository in the local cache, is missing."""


def _hub_repo(source: str, backbone: str) -> str:
    """The Hugging Face repository of a ``timm`` / ``timm:<tag>`` / ``hf-hub:<repo>`` source."""
    import timm

    if source.startswith("hf-hub:"):
        repo = source.removeprefix("hf-hub:").strip("/")
        if repo.count("/") != 1:
            raise WeightsError(f"weights {source!r}: expected hf-hub:<org>/<repo>")
        return repo
    tag = source.removeprefix("timm").removeprefix(":")
    name = f"{backbone}.{tag}" if tag else backbone
    try:
        config = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError):
        config = None
    if config is None or not getattr(config, "hf_hub_id", None):
        known = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{backbone}.*")][:8]
        raise WeightsError(f"weights {source!r}: timm has no pretrained weights {name!r} on the Hugging Face hub"
                           + (f"; tags of {backbone}: {', '.join(known)}" if known else ""))
    return config.hf_hub_id


def hub_cache() -> str:
    """The local Hugging Face hub cache, read from the environment now (``$HF_HUB_CACHE``, ``$HF_HOME/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return os.path.join(os.path.expanduser(os.environ.get("HF_HOME", "~/.cache/huggingface")), "hub")


def resolve(source: str, backbone: str) -> str:
    """The local file of a weights source (see the module docstring).

    Raises:
        WeightsError: the file does not exist, or a hub source is not in the local cache (with how to put it there).
    """
    if source.startswith(("timm", "hf-hub:")) and not os.path.exists(source):
        from huggingface_hub import try_to_load_from_cache

        repo = _hub_repo(source, backbone)
        cache = hub_cache()
        for filename in WEIGHT_FILES:
            found = try_to_load_from_cache(repo, filename, cache_dir=cache)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        raise WeightsNotFoundError(f"weights {source!r} for {backbone}: {repo} is not in the local Hugging Face cache "
                           f"({cache}) and nothing is downloaded at run time; on a machine with internet run "
                           f"`huggingface-cli download {repo} model.safetensors` and copy the cache (or set HF_HOME "
                           f"to it), or give a local file")
    path = os.path.abspath(os.path.expanduser(source))
    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"weights {source!r} for {backbone}: file not found (give a local file, or timm / "
                           f"timm:<tag> / hf-hub:<org>/<repo> from the local Hugging Face cache)")
    return path


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def identity(source: str | None, backbone: str) -> str | None:
    """The SHA-256 (16 hex digits) of a source's file; None for no source (random initialisation)."""
    if not source:
        return None
    path = resolve(source, backbone)
    stat = os.stat(path)
    return _file_digest(path, stat.st_size, stat.st_mtime_ns)


def read_state_dict(path: str) -> object:
    """What a weights file holds: a safetensors file's tensors, or a ``torch.load`` (``weights_only``) result."""
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle, zip and safetensors raise many kinds for a bad file
        raise WeightsError(f"{path}: not a readable weights file ({str(error).splitlines()[0][:200]})") from None
