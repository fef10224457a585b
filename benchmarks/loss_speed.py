"""Speed of the L2D loss (MLD + CD + ID, forward + backward): vectorized vs the loop reference.

The loop reference is the official code's formulation: a Python loop over classes (CD) and images (ID), each
set's structure computed on its own (tests/l2d/reference_losses.py, the same code the tests check against).
MLD is vectorized in both, as in the official code. Both run side by side in one process, on the same inputs;
peak memory of each is measured in a fresh subprocess.

Usage:
    python benchmarks/loss_speed.py [--device cpu|cuda] [--repeats 20] [--out benchmarks/results/loss_speed.json]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_report  # noqa: E402 - run as a script: the repository on sys.path first
from l2d.losses import cd_id_losses, mld_loss  # noqa: E402 - run as a script: the repository on sys.path first
from tests.l2d.reference_losses import cd_loss_loop, id_loss_loop  # noqa: E402 - run as a script: the repository on sys.path first

# name: (B, C, D, mean positive labels per image), the statistics of the paper's datasets.
SHAPES = {
    "coco": (64, 80, 768, 2.9),
    "voc": (64, 20, 768, 1.4),
    "nuswide": (64, 81, 768, 2.4),
}
# Each returns (L_CD, L_ID). Ours is what training calls (l2d.losses.distillation_loss for l2d and led).
IMPLEMENTATIONS = {
    "vectorized": cd_id_losses,
    "loop": lambda s, t, y: (cd_loss_loop(s, t, y), id_loss_loop(s, t, y)),
}


def make_inputs(shape: str, device: str, seed: int = 0):
    batch, classes, dim, mean_labels = SHAPES[shape]
    generator = torch.Generator().manual_seed(seed)
    # Label counts: 1 + Poisson(mean - 1), so every image has a label and the mean matches the dataset.
    counts = 1 + torch.poisson(torch.full((batch,), mean_labels - 1.0), generator=generator).long()
    counts = counts.clamp(max=classes)
    targets = torch.zeros(batch, classes)
    for i, count in enumerate(counts.tolist()):
        targets[i, torch.randperm(classes, generator=generator)[:count]] = 1.0
    tensors = dict(
        student_logits=torch.randn(batch, classes, generator=generator),
        teacher_logits=torch.randn(batch, classes, generator=generator),
        student_embeddings=torch.randn(batch, classes, dim, generator=generator),
        teacher_embeddings=torch.randn(batch, classes, dim, generator=generator),
        targets=targets,
    )
    return {name: t.to(device) for name, t in tensors.items()}


def step(implementation: str, inputs: dict) -> None:
    student_logits = inputs["student_logits"].detach().requires_grad_(True)
    student_embeddings = inputs["student_embeddings"].detach().requires_grad_(True)
    cd, instance = IMPLEMENTATIONS[implementation](student_embeddings, inputs["teacher_embeddings"], inputs["targets"])
    loss = 10 * mld_loss(student_logits, inputs["teacher_logits"]) + 100 * cd + 1000 * instance
    loss.backward()


def time_steps(implementation: str, inputs: dict, repeats: int, device: str) -> list[float]:
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step(implementation, inputs)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step(implementation, inputs)
        sync()
        times.append(time.perf_counter() - start)
    return times


def peak_memory_mib(shape: str, implementation: str, device: str) -> float:
    """Peak extra memory of one step, in a fresh process (CPU: peak RSS growth, Linux only; CUDA: allocator)."""
    output = subprocess.run(
        [sys.executable, __file__, "--measure-memory", shape, implementation, "--device", device],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(output.strip().splitlines()[-1])


def _measure_memory(shape: str, implementation: str, device: str) -> None:
    inputs = make_inputs(shape, device)
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(implementation, inputs)
        torch.cuda.synchronize()
        print((torch.cuda.max_memory_allocated() - base) / 2**20)
    else:
        # Reset the kernel's peak-RSS mark (VmHWM) so that imports and set-up do not count, then read it back.
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kib("VmRSS")
        step(implementation, inputs)
        print((_status_kib("VmHWM") - base) / 1024)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per implementation and shape")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "loss_speed.json"))
    parser.add_argument("--measure-memory", nargs=2, metavar=("SHAPE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory:
        _measure_memory(*args.measure_memory, args.device)
        return

    rows = []
    for shape in SHAPES:
        inputs = make_inputs(shape, args.device)
        row = {
            "shape": shape,
            "B": SHAPES[shape][0],
            "C": SHAPES[shape][1],
            "D": SHAPES[shape][2],
            "labels_per_image": round(inputs["targets"].sum(1).mean().item(), 2),
        }
        for implementation in IMPLEMENTATIONS:
            times = time_steps(implementation, inputs, args.repeats, args.device)
            row[f"{implementation}_ms"] = 1000 * statistics.median(times)
            row[f"{implementation}_peak_mib"] = peak_memory_mib(shape, implementation, args.device)
        row["speedup"] = row["loop_ms"] / row["vectorized_ms"]
        rows.append(row)

    header = (
        f"{'shape':<8} {'B':>3} {'C':>3} {'D':>4} {'labels':>6} {'loop ms':>9} {'ours ms':>8} {'speedup':>8} "
        f"{'loop MiB':>9} {'ours MiB':>9}"
    )
    print(
        f"MLD+CD+ID forward+backward, median of {args.repeats} steps, device={args.device}, "
        f"torch threads={torch.get_num_threads()}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['shape']:<8} {r['B']:>3} {r['C']:>3} {r['D']:>4} {r['labels_per_image']:>6} {r['loop_ms']:>9.2f} "
            f"{r['vectorized_ms']:>8.2f} {r['speedup']:>7.1f}x {r['loop_peak_mib']:>9.1f} "
            f"{r['vectorized_peak_mib']:>9.1f}"
        )
    write_report(args.out, "loss_speed", rows, device=args.device, repeats=args.repeats)


if __name__ == "__main__":
    main()
