"""A trained student, taken home: its weights, a model card, and the code to rebuild it.

An export folder holds::

    student.safetensors    the model's state dict (backbone, label-wise head, classifier)
    card.json              what the model is and how good it was (see :func:`save_student`)
    README.md              the card as a short model card
    student.torchscript.pt a traced TorchScript module returning the logits (``torchscript`` format)
    student.onnx           the same graph in ONNX (``onnx`` format, when the ``onnx`` package is installed)

:func:`load_student` rebuilds the model from the card (timm backbone, number of classes, embedding size) and loads
the weights: ``model, card = load_student("exports/best")``; ``model(images).logits`` are the label scores.
:func:`evaluate_student` scores it again on a split of the dataset the card names. Pure PyTorch, like the rest of
:mod:`l2d`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path

import torch
from safetensors.torch import load, save_file

from l2d.data import build_dataset
from l2d.engine import evaluate, make_loader
from l2d.models import MultiLabelModel, build_model
from l2d.storage import OUTPUT_MARKER, Location, check_output

# Loaded late, inside the functions that use them: onnx, onnxscript (imported where its absence is handled).

logger = logging.getLogger(__name__)

FORMATS = ("safetensors", "torchscript", "onnx")
WEIGHTS_FILE = "student.safetensors"
CARD_FILE = "card.json"


class _Logits(torch.nn.Module):
    """The model's logits alone: what a traced or exported graph returns."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).logits


def _markdown(card: dict) -> str:
    metrics = card.get("metrics", {})

    def metric(name: str) -> str:
        return f"{metrics[name]:.2f}" if isinstance(metrics.get(name), (int, float)) else "-"

    weights = ", ".join(f"{k}={v:g}" for k, v in (card.get("hparams") or {}).items()) or "none"
    lines = [
        f"# {card['backbone']} student ({card['method']} from {card.get('teacher') or 'no teacher'})",
        "",
        f"A multi-label classifier of {card['num_classes']} labels distilled with l2d-sweep.",
        "",
        "| | |",
        "|---|---|",
        f"| backbone | `{card['backbone']}` ({card['parameters']:,} parameters, label-wise head D = "
        f"{card['embed_dim']}) |",
        f"| input | {card['image_size']} x {card['image_size']} RGB in [0, 1] |",
        f"| labels | {', '.join(card['class_names'])} |",
        f"| data | {card['dataset']['name']} {json.dumps(card['dataset'].get('options') or {})} |",
        f"| teacher | `{card.get('teacher') or '-'}` |",
        f"| method | {card['method']} ({weights}) |",
        f"| epoch | {card.get('epoch')} (the best by {card.get('selected_by', 'val_mAP')}) |",
        f"| val | mAP {metric('val_mAP')}, CF1 {metric('val_CF1')}, OF1 {metric('val_OF1')} |",
        f"| test | mAP {metric('test_mAP')}, CF1 {metric('test_CF1')}, OF1 {metric('test_OF1')}, paper CF1 "
        f"{metric('test_paper_CF1')}, paper OF1 {metric('test_paper_OF1')} |",
        f"| latency | {_number(card.get('latency_ms'))} ms per image on {card.get('device', '?')} |",
        f"| sweep | {card.get('sweep', {}).get('dir', '-')}, trial {card.get('trial_id', '-')} |",
        "| versions | "
        + ", ".join(f"{k} {v}" for k, v in (card.get("versions") or {}).items())
        + (f"; commit {card['git_commit']}" if card.get("git_commit") else "")
        + " |",
        "",
        "```python",
        "from l2d.export import load_student",
        f"model, card = load_student({card.get('folder', 'EXPORT_DIR')!r})",
        "scores = torch.sigmoid(model(images).logits)   # images: [B, 3, H, W] in [0, 1]",
        "```",
        "",
    ]
    return "\n".join(lines)


def check_formats(formats) -> None:
    """Raises ValueError for a format that is unknown, or that this installation cannot write."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format {unknown[0]!r}; allowed: {', '.join(FORMATS)}")
    if "onnx" in formats:
        try:
            import onnx  # noqa: F401 - torch's exporter needs it
            import onnxscript  # noqa: F401 - torch's exporter needs it too
        except ImportError:
            raise ValueError(
                "--format onnx needs the onnx and onnxscript packages: pip install 'l2d-sweep[onnx]'"
            ) from None


def save_student(
    model: MultiLabelModel,
    card: dict,
    out: str | os.PathLike,
    formats: tuple[str, ...] = ("safetensors",),
    progress=print,
) -> list[str]:
    """Write an export folder (see the module docstring); returns the files written.

    Args:
        card: at least ``backbone``, ``num_classes``, ``embed_dim``, ``image_size``, ``class_names``, ``method``,
            ``parameters``, ``dataset``; anything else is kept (metrics, sweep and trial ids, versions...).
        formats: any of :data:`FORMATS` (``safetensors`` always).

    Raises:
        ValueError: an unknown format, or ``onnx`` without the ``onnx`` package.
    """
    check_formats(formats)
    folder = check_output(out, "--out")  # new, empty, or an export of ours: nothing else is replaced

    model = model.cpu().eval()
    card = {**card, "folder": str(folder)}
    # Everything is written into a scratch folder first: a failed export (an operator ONNX lacks, a full disk)
    # leaves no half-written export behind.
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=_scratch_parent(folder)))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(scratch, 0o777 & ~umask)  # mkdtemp's 0700 would become the export's mode
    try:
        written = _write(model, card, scratch, formats, progress)
        for name in written:  # some writers create their files 0600
            os.chmod(scratch / name, 0o666 & ~umask)
        _publish(scratch, folder, written)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return written


def _write(model, card: dict, scratch: Path, formats, progress) -> list[str]:
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(scratch / WEIGHTS_FILE), metadata={"format": "pt"})
    written = [WEIGHTS_FILE]
    progress(f"  weights: {WEIGHTS_FILE} ({sum(t.numel() for t in state.values()):,} values)")
    example = torch.rand(2, 3, card["image_size"], card["image_size"])
    if "torchscript" in formats:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notices: the traced module is what we want
            traced = torch.jit.trace(_Logits(model).eval(), example)
            torch.jit.save(traced, str(scratch / "student.torchscript.pt"))
        written.append("student.torchscript.pt")
        progress("  TorchScript: student.torchscript.pt (traced; returns the logits)")
    if "onnx" in formats:
        # A copy: the exporter runs the module, and must not touch the running statistics of the one saved above.

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants: expected
            torch.onnx.export(
                _Logits(copy.deepcopy(model)).eval(),
                (example,),
                str(scratch / "student.onnx"),
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=False,
            )
        written.append("student.onnx")
        progress("  ONNX: student.onnx (input images [batch, 3, H, W], output logits)")
    (scratch / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
    (scratch / "README.md").write_text(_markdown(card))

    (scratch / OUTPUT_MARKER).write_text(json.dumps({"tool": "l2d-sweep", "kind": "export"}))
    return written + [CARD_FILE, "README.md", OUTPUT_MARKER]


def _local_target(folder: Location) -> Path:
    """The local folder an export replaces: a symbolic link's target, never the link (it stays as the user made it)."""
    target = Path(str(folder)).absolute()
    return target.resolve() if target.is_symlink() else target


def _number(value) -> str:
    """A card's figure for the README: two decimals, or "not measured"."""
    return "not measured" if value is None else f"{value:.2f}"


def _scratch_parent(folder: Location) -> str | None:
    """A local export is assembled beside its target (one rename publishes it); a remote one in the temp dir."""
    if not folder.is_local:
        return None
    parent = _local_target(folder).parent
    parent.mkdir(parents=True, exist_ok=True)
    return str(parent)


def _publish(scratch: Path, folder: Location, written: list[str]) -> None:
    """Move the finished export into ``folder``: a local folder is replaced by one rename (an older export there
    is removed after); a remote one gets each file by an atomic upload, ``card.json`` last."""
    if folder.is_local:
        target = _local_target(folder)
        old = None
        if target.exists():
            old = target.parent / f".old-{target.name}-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
        os.rename(scratch, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return
    for name in sorted(written, key=lambda n: n == CARD_FILE):
        (folder / name).write_bytes((scratch / name).read_bytes())


def load_student(folder: str | os.PathLike) -> tuple[MultiLabelModel, dict]:
    """Rebuild an exported student and load its weights: ``(model in eval mode, card)``.

    Raises:
        FileNotFoundError: the folder lacks ``card.json`` or ``student.safetensors``.
        ValueError: the weights do not fit the model the card describes.
    """
    location = Location.parse(folder, "export folder")
    for name in (CARD_FILE, WEIGHTS_FILE):
        if not (location / name).is_file():
            raise FileNotFoundError(f"{location}: no {name} (is this an export folder? `l2d-sweep export` writes one)")
    card = json.loads((location / CARD_FILE).read_text())
    model = build_model(card["backbone"], card["num_classes"], card["embed_dim"], **card.get("backbone_options", {}))
    try:
        model.load_state_dict(load((location / WEIGHTS_FILE).read_bytes()))
    except RuntimeError as error:
        raise ValueError(
            f"{location / WEIGHTS_FILE}: does not fit {card['backbone']} as the card describes it "
            f"({str(error).splitlines()[0][:200]})"
        ) from None
    return model.eval(), card


def evaluate_student(
    model: MultiLabelModel, card: dict, split: str = "val", batch_size: int | None = None, device: str | None = None
) -> dict[str, float]:
    """The metrics of an exported student on ``split`` of the dataset its card names (rebuilt as the sweep built
    it: name, root, options, image size), as :func:`l2d.engine.evaluate` computes them (mAP, CF1, OF1... in
    percent). Compare with ``card["metrics"]["val_mAP"]``: the same model on the same data gives the same number.

    ``batch_size`` defaults to the card's ``eval_batch_size`` (the sweep's), else 64. Float sums depend on the
    batch and on the thread count (``torch.set_num_threads``): on a small split, a last-bit change that swaps two
    near-equal scores moves the mAP slightly; with the trial's batch size and thread count the number is exact."""
    dataset = card["dataset"]
    data = build_dataset(
        dataset["name"], dataset.get("root"), split, card["image_size"], **(dataset.get("options") or {})
    )
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch_size = batch_size or card.get("eval_batch_size") or 64
    return evaluate(model.to(target), make_loader(data, batch_size, train=False, device=target), target)
