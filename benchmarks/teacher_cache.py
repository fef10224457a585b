"""What computing once per sweep saves: the teacher-output cache and the decoded-image store, side by side in one run.

Three parts, each kept in a cache file beside the report as it ends (a rerun skips what is there; ``--fresh`` does
not):

- ``steps``: for the four pairings of issue 30's table, the teacher's forward pass (eval mode, no grad) against the
  student's training step (forward, BCE, backward, AdamW step) on the same random batch, on this machine's CPU threads:
  the teacher's share of an online step, and how much faster a step is when the teacher's outputs are read instead
  (``(teacher + student) / student``; reading them costs microseconds). Medians of ``--repeats``, taken alternately.
- ``sweeps``: the quickstart and the scenes setting (its first pairing, tf_efficientnet_lite2 -> lite0), each run
  with ``recipe.teacher_cache`` off and on (float16; and float32, the default, for the quickstart, whose leaderboard
  must then be the online one to the bit). Random search without early stopping, seeded: every run has the same
  trials (the same configurations, each for every epoch), so wall times compare trial by trial. The teachers are
  trained (or found in the spec's store) before any timing. Reported: wall time of the sweep and summed over its
  trials, the time ledger's split summed over the trials, the cache's hits and misses, the bytes it holds on disk,
  the trials' speed-up over the online run (``x trials``) and that of the trials which read every output (computed
  none), each against itself run online (``x reader``: what the cache gives every trial after the first of a seed),
  and whether each leaderboard (the trials ranked by their best val mAP) is the online one, with the largest
  difference in a trial's best val mAP. A mode ``float32/K`` also replays K stored views per image
  (``recipe.views_per_image``, FKD-style: not exact by design); its trials' best val mAP and test mAP are compared
  with the same trials online, paired by trial, with t-intervals. Every mode starts from an empty cache.
- ``decoded``: a COCO-layout JPEG dataset written to a temporary folder (``--images`` 500 x 375 JPEGs, read at 224 px,
  as VOC and COCO are): the train loader's images per second in two epochs with the decoded-image store (epoch 1
  decodes and stores, epoch 2 reads) and without it (each epoch decodes).

The caches live under a temporary ``$L2D_SWEEP_CACHE`` (removed at the end), so every run starts from nothing and the
user's own cache is left alone. Time it on a quiet machine: nothing else on the cores.

Usage:
    python benchmarks/teacher_cache.py [--parts steps,sweeps,decoded] [--repeats 3] [--images 256] [--fresh]
        [--pairs T:S:SIDE:BATCH,...] [--spec PATH --modes off,float32 --num-samples N]
        [--out benchmarks/results/teacher_cache.json] [--summarize JSON [--readme]]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import (  # noqa: E402 - run as a script: the repository on sys.path first
    add_report_arguments,
    command_line,
    parse_report_args,
    readme_block,
    spec_label,
    sweep_storage,
    write_report,
)

#: Issue 30's pairings: (teacher, student, image side, batch size).
PAIRS = [
    ("resnet14t", "resnet10t", 32, 64),
    ("tf_efficientnet_lite2", "tf_efficientnet_lite0", 96, 32),
    ("resnet101", "resnet34", 224, 16),
    ("convnext_base", "mobilenetv3_large_100", 224, 16),
]
#: The sweeps part's settings: (label, spec, spec changes, teacher_cache modes). A mode ``float32/K`` runs the float32
#: cache with ``recipe.views_per_image`` K (stored views replayed: not exact, a change of the training distribution),
#: compared with the online run trial by trial.
SETTINGS = [
    ("quickstart", "search_spaces/quickstart.yaml", {}, ["off", "float16", "float32", "float32/1"]),
    (
        "scenes",
        "search_spaces/scenes.yaml",
        {
            "pairings": [{"teacher": "tf_efficientnet_lite2", "students": ["tf_efficientnet_lite0"]}],
            "weights": {"tf_efficientnet_lite2": "offline", "tf_efficientnet_lite0": "offline"},
            "budget.num_samples": 6,
        },
        ["off", "float16", "float32/1"],
    ),
]
#: What the report keeps of each trial.
TRIAL_COLUMNS = ("wall_time_s", "time_teacher_s", "teacher_cache_misses", "best_val_mAP", "test_mAP_at_best")
LEDGER = ("time_data_s", "time_teacher_s", "time_student_s", "time_eval_s", "time_checkpoint_s")


def _median_seconds(step, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_steps(repeats: int, pairs=PAIRS, classes: int = 20) -> list[dict]:
    """The teacher's forward pass against the student's training step, per pairing (see the module docstring)."""
    import torch

    from l2d.models import build_model

    rows = []
    for teacher_name, student_name, side, batch in pairs:
        torch.manual_seed(0)
        teacher = build_model(teacher_name, classes, 128).eval()
        student = build_model(student_name, classes, 128).train()
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        images = torch.rand(batch, 3, side, side)
        targets = (torch.rand(batch, classes) > 0.8).float()

        def teacher_pass(teacher=teacher, images=images):
            with torch.no_grad():
                teacher(images)

        def student_step(student=student, optimizer=optimizer, images=images, targets=targets, loss_fn=loss_fn):
            loss = loss_fn(student(images).logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        teacher_pass(), student_step()  # warm-up: allocations, kernels chosen
        teacher_times, student_times = [], []
        for _ in range(repeats):  # alternately, so that a slow moment of the machine hits both
            teacher_times.append(_median_seconds(teacher_pass, 1))
            student_times.append(_median_seconds(student_step, 1))
        t, s = statistics.median(teacher_times), statistics.median(student_times)
        rows.append(
            {
                "part": "steps",
                "pairing": f"{teacher_name} -> {student_name}",
                "image_size": side,
                "batch_size": batch,
                "teacher_forward_s": t,
                "student_step_s": s,
                "teacher_share": t / (t + s),
                "speedup_if_read": (t + s) / s,
            }
        )
        print(
            f"  {teacher_name} -> {student_name} ({side} px, {batch}): teacher {t:.3f} s, student step {s:.3f} s, "
            f"teacher's share {t / (t + s):.0%}, x{(t + s) / s:.2f} if read",
            flush=True,
        )
        del teacher, student, optimizer
    return rows


def _disk_bytes(folder: Path) -> int:
    """Bytes ``folder``'s files take on disk (the cache's files are sparse until their rows are written)."""
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def run_setting(label: str, spec, modes: list[str]) -> list[dict]:
    """Run ``spec`` once per teacher_cache mode (same trials each time); one row per run."""
    from l2d.storage import cache_dir
    from sweeps.specs import with_overrides
    from sweeps.tune.runner import run_sweep

    rows = []
    for mode in modes:
        cache_type, _, views = mode.partition("/")
        changed = with_overrides(
            spec,
            "benchmark",
            name=f"cache-{label}-{mode.replace('/', '-views')}",
            **{
                "recipe.teacher_cache": cache_type,
                "recipe.views_per_image": int(views or 0),
                "budget.searcher": "random",
                "budget.scheduler": "none",
            },
        )
        # Every mode from an empty teacher-output cache: the replayed views' entries are float32's own (same keys)
        outputs = cache_dir() / "teacher_outputs"
        shutil.rmtree(outputs, ignore_errors=True)
        before = _disk_bytes(outputs)
        print(f"  {label}, teacher_cache {mode}: {changed.budget.num_samples} trials ...", flush=True)
        start = time.perf_counter()
        results = run_sweep(changed, new=True, quiet=True).results
        wall = time.perf_counter() - start
        trials = results.sql("SELECT * FROM trials").to_pylist()
        failed = [t["trial_id"] for t in trials if t["status"] != "completed"]
        if failed:
            raise SystemExit(f"error: {label} ({mode}): trials {failed} did not finish; the runs would not compare")
        # A trial is known across the runs by its configuration (its id names the sweep): random search, seeded.
        by_config = {_configuration(t): t for t in trials}
        if len(by_config) != len(trials):
            raise SystemExit(f"error: {label} ({mode}): two trials of one configuration; the runs would not compare")
        walls = [t["wall_time_s"] for t in trials]
        readers = [t["wall_time_s"] for t in trials if t["teacher_cache_hits"] and not t["teacher_cache_misses"]]
        row = {
            "part": "sweeps",
            "setting": label,
            "teacher_cache": mode,
            "views_per_image": int(views or 0),
            "trials": len(trials),
            "epochs": int(sum(t["epochs_run"] for t in trials)),
            "wall_s": wall,
            "trial_wall_s": sum(walls),
            "reading_trials": len(readers),  # trials that computed no teacher output: every one came from the cache
            **{name: sum(t[name] or 0.0 for t in trials) for name in LEDGER},
            "cache_hits": sum(t["teacher_cache_hits"] or 0 for t in trials),
            "cache_misses": sum(t["teacher_cache_misses"] or 0 for t in trials),
            "cache_bytes": _disk_bytes(outputs) - before,
            "trial": {key: {k: t[k] for k in TRIAL_COLUMNS} for key, t in by_config.items()},
        }
        row["ranking"] = sorted(row["trial"], key=lambda key: (-row["trial"][key]["best_val_mAP"], key))
        rows.append(row)
        print(
            f"    wall {wall:.0f} s, trials {sum(walls):.0f} s, teacher {row['time_teacher_s']:.0f} s, cache hits "
            f"{row['cache_hits']:,} misses {row['cache_misses']:,}, {row['cache_bytes'] / 1e6:.1f} MB",
            flush=True,
        )
    online = next((r for r in rows if r["teacher_cache"] == "off"), None)
    for row in rows:
        if online is None:
            break
        if set(row["trial"]) != set(online["trial"]):
            raise SystemExit(f"error: {label}: the runs have other trials; random search should have drawn the same")
        row["speedup_trials"] = online["trial_wall_s"] / row["trial_wall_s"]
        # the trials that read every output, each against itself run online: what the cache gives a later trial
        reading = [
            k for k, t in row["trial"].items() if row["teacher_cache"] != "off" and not t["teacher_cache_misses"]
        ]
        row["speedup_reading_trials"] = (
            statistics.mean(online["trial"][k]["wall_time_s"] / row["trial"][k]["wall_time_s"] for k in reading)
            if reading
            else None
        )
        row["same_ranking"] = row["ranking"] == online["ranking"]
        row["max_val_mAP_difference"] = max(
            abs(t["best_val_mAP"] - online["trial"][k]["best_val_mAP"]) for k, t in row["trial"].items()
        )
        if row["views_per_image"]:  # not exact by design: what replaying K views does to the trials, paired by trial
            row["views_against_online"] = views_against_online(row, online)
    return rows


def views_against_online(row: dict, online: dict) -> dict:
    """The trials of a run with stored views against the same trials online (fresh views): the paired difference of
    their best val mAP and of their test mAP at that epoch: paired t-intervals over the trials (the trials are the
    pairs: one configuration, one seed), family-wise 95 % over the two (Bonferroni), and Holm-adjusted p-values."""
    from sweeps.results.stats import holm, holm_level, paired_t

    columns = ("best_val_mAP", "test_mAP_at_best")
    level = holm_level(0.95, len(columns))
    found = {}
    for column in columns:
        keys = sorted(row["trial"])
        diffs = [row["trial"][k][column] - online["trial"][k][column] for k in keys]
        found[column] = paired_t(diffs, level).to_dict()
    adjusted = holm([found[c]["p"] for c in found])
    for column, p in zip(found, adjusted):
        found[column]["p_holm"] = p
    return found


def _configuration(trial: dict) -> str:
    """A trial's configuration as text: its pairing, method and every sampled or fixed value."""
    from sweeps.results.schema import HPARAM_COLUMNS

    values = [trial["teacher"], trial["student"], trial["method"], *(trial[name] for name in HPARAM_COLUMNS)]
    return " ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in values if v is not None)


def write_coco_jpegs(folder: Path, train: int, test: int) -> dict:
    """A COCO-layout dataset of ``train`` + ``test`` 500 x 375 JPEGs (smooth random content, which compresses like a
    photo); returns its ``dataset_options``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    categories = [{"id": 1 + k, "name": name} for k, name in enumerate(["dog", "person", "car", "cat", "chair"])]
    options = {}
    for split, count in (("train", train), ("test", test)):
        images_folder = folder / f"{split}2017"
        images_folder.mkdir(parents=True, exist_ok=True)
        images, objects = [], []
        for k in range(count):
            name = f"{k:06d}.jpg"
            small = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(small).resize((500, 375), Image.BILINEAR).save(images_folder / name, quality=90)
            images.append({"id": k, "file_name": name, "width": 500, "height": 375})
            for c in range(1 + k % 3):
                objects.append({"id": len(objects) + 1, "image_id": k, "category_id": 1 + (k + c) % 5})
        path = folder / f"instances_{split}.json"
        path.write_text(json.dumps({"images": images, "annotations": objects, "categories": categories}))
        options[split], options[f"{split}_images"] = str(path), str(images_folder)
    return options


def measure_decoded(images: int, batch_size: int = 32) -> list[dict]:
    """The train loader's images per second, epoch by epoch, with the decoded-image store and without."""
    from l2d.engine import make_loader
    from l2d.run import RunConfig, build_splits

    rows = []
    with tempfile.TemporaryDirectory(prefix="l2d-coco-jpegs-") as folder:
        options = write_coco_jpegs(Path(folder), images, max(8, images // 8))
        for path in Path(folder).rglob("*.jpg"):  # in the page cache for both runs alike: decoding is what is timed
            path.read_bytes()
        for decoded in (False, True):
            config = RunConfig(
                dataset="coco", dataset_options=options, image_size=224, decoded_images=decoded, device="cpu"
            )
            train = build_splits(config)["train"]
            speeds = []
            for epoch in (1, 2):
                start = time.perf_counter()
                seen = 0
                for batch, *_ in make_loader(train, batch_size, train=True, seed=epoch):
                    seen += len(batch)
                speeds.append(seen / (time.perf_counter() - start))
            rows.append(
                {
                    "part": "decoded",
                    "dataset": f"coco layout, {len(train):,} train JPEGs 500 x 375 at 224 px",
                    "decoded_images": decoded,
                    "epoch_1_images_per_s": speeds[0],
                    "epoch_2_images_per_s": speeds[1],
                }
            )
            print(
                f"  decoded_images {decoded}: epoch 1 {speeds[0]:.0f} images/s, epoch 2 {speeds[1]:.0f} images/s",
                flush=True,
            )
    return rows


def table(rows: list[dict]) -> list[str]:
    """The report's tables, as the README shows them."""
    lines = []
    steps = [r for r in rows if r["part"] == "steps"]
    if steps:
        lines += [
            f"{'pairing':<50}{'side, batch':>13}{'teacher s':>11}{'student s':>11}{'share':>8}{'x if read':>11}",
        ]
        for r in steps:
            lines.append(
                f"{r['pairing']:<50}{str(r['image_size']) + ' px, ' + str(r['batch_size']):>13}"
                f"{r['teacher_forward_s']:>11.3f}{r['student_step_s']:>11.3f}{r['teacher_share']:>8.0%}"
                f"{r['speedup_if_read']:>11.2f}"
            )
        lines.append("")
    sweeps = [r for r in rows if r["part"] == "sweeps"]
    if sweeps:
        lines.append(
            f"{'setting':<12}{'cache':>10}{'trials':>7}{'wall s':>8}{'trials s':>9}{'teacher s':>10}"
            f"{'student s':>10}{'data s':>8}{'eval s':>8}{'hits':>8}{'misses':>8}{'MB':>7}{'x trials':>9}"
            f"{'x reader':>9}{'ranking':>9}{'max |d val|':>12}"
        )
        for r in sweeps:
            compared = "same_ranking" in r and r["teacher_cache"] != "off"
            reader = r.get("speedup_reading_trials")
            ranking = ("same" if r["same_ranking"] else "other") if compared else ""
            difference = f"{r['max_val_mAP_difference']:.3g}" if compared else ""
            lines.append(
                f"{r['setting']:<12}{r['teacher_cache']:>10}{r['trials']:>7}{r['wall_s']:>8.0f}{r['trial_wall_s']:>9.0f}"
                f"{r['time_teacher_s']:>10.0f}{r['time_student_s']:>10.0f}{r['time_data_s']:>8.0f}"
                f"{r['time_eval_s']:>8.0f}{r['cache_hits']:>8,}{r['cache_misses']:>8,}{r['cache_bytes'] / 1e6:>7.1f}"
                f"{r.get('speedup_trials', float('nan')):>9.2f}"
                f"{'' if reader is None else f'{reader:.2f}':>9}"
                f"{ranking:>9}{difference:>12}"
            )
        for r in sweeps:
            if not r.get("views_against_online"):
                continue
            parts = []
            for column, found in r["views_against_online"].items():
                interval = f"{found['mean']:+.2f} [{found['low']:+.2f}, {found['high']:+.2f}]"
                verdict = (
                    "established" if found["established"] else f"not established, detectable {found['detectable']:.2f}"
                )
                parts.append(f"{column} {interval} (Holm p {found['p_holm']:.2g}; {verdict})")
            lines.append(
                f"{r['setting']} views_per_image {r['views_per_image']} - fresh views, paired over its "
                f"{r['trials']} trials (t, family-wise 95 %): " + "; ".join(parts)
            )
        lines.append("")
    decoded = [r for r in rows if r["part"] == "decoded"]
    if decoded:
        lines.append(f"{'decoded-image store':<58}{'epoch 1 img/s':>15}{'epoch 2 img/s':>15}")
        for r in decoded:
            label = f"{r['dataset']}, {'store' if r['decoded_images'] else 'decoded each epoch'}"
            lines.append(f"{label:<58}{r['epoch_1_images_per_s']:>15.0f}{r['epoch_2_images_per_s']:>15.0f}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="steps,sweeps,decoded", help="which parts to run (comma-separated)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per model in the steps part")
    parser.add_argument(
        "--pairs", help="the steps part's pairings as teacher:student:side:batch,... (default: issue 30's four)"
    )
    parser.add_argument("--images", type=int, default=256, help="train JPEGs of the decoded part")
    parser.add_argument("--spec", help="the sweeps part on this spec alone (default: the quickstart and scenes)")
    parser.add_argument("--modes", default="off,float16,float32", help="with --spec: the teacher_cache modes")
    parser.add_argument("--num-samples", type=int, help="with --spec: its trials")
    parser.add_argument("--fresh", action="store_true", help="ignore the cache of finished parts")
    add_report_arguments(parser, "teacher_cache")
    args = parse_report_args(parser, argv, summarize)
    if args is None:
        return
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - {"steps", "sweeps", "decoded"})
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)}; allowed: steps, sweeps, decoded")

    # The finished parts, kept as they end: a run stopped halfway goes on from there.
    cache_path = Path(args.out).with_name(Path(args.out).stem + "-cache.json")
    done = {} if args.fresh or not cache_path.is_file() else json.loads(cache_path.read_text())

    def keep(name: str, rows: list[dict]) -> None:
        done[name] = rows
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(done, indent=1) + "\n")
        os.replace(tmp, cache_path)

    settings = SETTINGS
    if args.spec:
        settings = [(Path(args.spec).stem, args.spec, {"budget.num_samples": args.num_samples}, args.modes.split(","))]
    # a sweeps part of other modes (an earlier version's) is neither reported nor kept
    current = {"steps", "decoded", *(_part_name(label, modes) for label, _, _, modes in settings)}
    done = {name: rows for name, rows in done.items() if name in current}
    caches = tempfile.mkdtemp(prefix="l2d-benchmark-cache-")
    os.environ["L2D_SWEEP_CACHE"] = caches  # before Ray starts: its workers inherit it
    try:
        if "steps" in parts and "steps" not in done:
            print(f"steps: the teacher's forward pass against the student's step ({args.repeats} repeats)", flush=True)
            pairs = PAIRS
            if args.pairs:
                pairs = [
                    (t, s, int(side), int(batch)) for t, s, side, batch in (p.split(":") for p in args.pairs.split(","))
                ]
            keep("steps", measure_steps(args.repeats, pairs))
        if "sweeps" in parts:
            from sweeps.specs import load_spec, with_overrides
            from sweeps.tune.runner import init_ray
            from sweeps.tune.teacher_phase import teacher_phase

            for label, path, changes, modes in settings:
                name = _part_name(label, modes)
                if name in done:
                    continue
                spec = with_overrides(load_spec(str(ROOT / path)), path, **changes)
                init_ray()
                print(f"sweeps: {label} ({spec_label(path)}), teachers first", flush=True)
                teacher_phase(spec, print)  # into the spec's own store, copied into the benchmark's storage
                with sweep_storage(spec, None) as moved:
                    keep(name, run_setting(label, moved, modes))
        if "decoded" in parts and "decoded" not in done:
            print(f"decoded: {args.images} JPEGs, with and without the decoded-image store", flush=True)
            keep("decoded", measure_decoded(args.images))
    finally:
        shutil.rmtree(caches, ignore_errors=True)

    # the parts of this run's settings (an entry of other modes, cached by an earlier version, is not reported)
    names = ("steps", *(_part_name(label, modes) for label, _, _, modes in settings), "decoded")
    rows = [row for name in names for row in done.get(name, [])]
    report = {"rows": rows, "parts": sorted(done), "command": command_line("teacher_cache.py", args.argv)}
    print(summarize(report, False))
    write_report(args.out, "teacher_cache", rows, **{k: v for k, v in report.items() if k != "rows"})


def _part_name(label: str, modes: list[str]) -> str:
    """The cache's key of a setting's sweeps part (its modes in it: other modes are another part)."""
    return f"sweeps:{label}:{','.join(modes)}"


def summarize(report: dict, write: bool) -> str:
    """The report's tables under the command that made it (``--summarize JSON --readme`` puts them in the docs)."""
    return readme_block("teacher_cache", [f"$ {report['command']}", *table(report["rows"])], write)


if __name__ == "__main__":
    main()
