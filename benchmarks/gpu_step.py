"""Images/s of one distillation step (teacher forward + student forward/backward + optimizer), the share of the
step spent in the L2D loss (MLD + CD + ID, forward + backward), and the peak GPU memory.

The step is the engine's: AMP (bf16 where supported) and channels_last on CUDA, float32 on CPU. The loss share
is measured by timing the loss alone, forward and backward, on the step's own outputs. With ``--weights`` both
models are built from initial weights through l2d's loader (timm's file mechanism): ``timm`` for the ImageNet
weights in the local Hugging Face cache, or ``files`` for state dicts this script writes first (the same shapes
and the same loading path, on a machine that cannot download; the speed does not depend on the values).

Usage (GPU, the issue's shape):
    python benchmarks/gpu_step.py --device cuda --teacher resnet101 --student resnet34 --image-size 224 \\
        --batch-size 64 --classes 80
Smoke test on a CPU: python benchmarks/gpu_step.py --device cpu --teacher test_resnet --student test_resnet \\
    --image-size 32 --batch-size 8 --classes 10 --embed-dim 32 --steps 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_report  # noqa: E402 - run as a script: the repository on sys.path first
from l2d.engine import Recipe, amp_dtype, build_optimizer  # noqa: E402 - run as a script: the repository on sys.path first
from l2d.losses import distillation_loss  # noqa: E402 - run as a script: the repository on sys.path first
from l2d.models import build_model  # noqa: E402 - run as a script: the repository on sys.path first


def _weights(args) -> dict:
    """Each backbone's weights source for ``--weights``."""
    if args.weights == "none":
        return {args.teacher: None, args.student: None}
    if args.weights == "timm":
        return {args.teacher: "timm", args.student: "timm"}
    import tempfile

    import timm

    folder = Path(tempfile.mkdtemp(prefix="l2d-gpu-weights-"))
    sources = {}
    for backbone in (args.teacher, args.student):
        path = folder / f"{backbone}.pth"
        torch.save(timm.create_model(backbone, pretrained=False).state_dict(), path)  # an ImageNet-shaped file
        sources[backbone] = str(path)
    return sources


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--teacher", default="resnet101")
    parser.add_argument("--student", default="resnet34")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--labels-per-image", type=float, default=2.9)
    parser.add_argument("--embed-dim", type=int, default=768)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
    parser.add_argument(
        "--weights",
        choices=["none", "files", "timm"],
        default="none",
        help="initial weights of both models (see above)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_step.json"))
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = amp_dtype(device, True)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    torch.manual_seed(0)
    sources = _weights(args)
    teacher = build_model(args.teacher, args.classes, args.embed_dim, weights=sources[args.teacher])
    teacher = teacher.to(device, memory_format=memory_format).eval()
    student = build_model(args.student, args.classes, args.embed_dim, weights=sources[args.student])
    student = student.to(device, memory_format=memory_format)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    optimizer = build_optimizer(student, Recipe())
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device)
    images = images.contiguous(memory_format=memory_format)
    targets = (torch.rand(args.batch_size, args.classes, device=device) < args.labels_per_image / args.classes).float()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step():
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            teacher_output = teacher(images).map(torch.clone)
        teacher_output = teacher_output.map(torch.clone)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            student_output = student(images)
        loss, _ = distillation_loss("l2d", student_output, teacher_output, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return student_output, teacher_output

    def loss_only(student_output, teacher_output):
        leaves = student_output.map(lambda t: t.detach().requires_grad_(True))
        loss, _ = distillation_loss("l2d", leaves, teacher_output, targets)
        loss.backward()

    for _ in range(3):
        outputs = step()
    step_times, loss_times = [], []
    for _ in range(args.steps):
        sync()
        start = time.perf_counter()
        outputs = step()
        sync()
        step_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        loss_only(*outputs)
        sync()
        loss_times.append(time.perf_counter() - start)
    step_s, loss_s = statistics.median(step_times), statistics.median(loss_times)
    row = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "teacher": args.teacher,
        "student": args.student,
        "image_size": args.image_size,
        "batch": args.batch_size,
        "classes": args.classes,
        "amp": str(dtype).replace("torch.", "") if dtype else "float32",
        "step_ms": 1000 * step_s,
        "images_per_s": args.batch_size / step_s,
        "l2d_loss_ms": 1000 * loss_s,
        "l2d_loss_share": loss_s / step_s,
        "init": args.weights,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    print(
        f"{'device':<24} {'pair':<24} {'init':>5} {'px':>4} {'B':>4} {'C':>4} {'amp':>9} {'step ms':>8} "
        f"{'img/s':>8} {'loss ms':>8} {'loss share':>10} {'peak GiB':>9}"
    )
    peak = f"{row['peak_memory_gib']:.2f}" if row["peak_memory_gib"] is not None else "-"
    print(
        f"{row['device'][:24]:<24} {args.teacher + '->' + args.student:<24} {args.weights:>5} {args.image_size:>4} "
        f"{args.batch_size:>4} {args.classes:>4} {row['amp']:>9} {row['step_ms']:>8.1f} {row['images_per_s']:>8.1f} "
        f"{row['l2d_loss_ms']:>8.2f} {100 * row['l2d_loss_share']:>9.1f}% {peak:>9}"
    )
    write_report(args.out, "gpu_step", [row], steps=args.steps)
    return row


if __name__ == "__main__":
    main()
