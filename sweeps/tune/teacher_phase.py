"""The teacher phase of a sweep: every teacher the spec can pick is loaded from the teacher store, or trained into
it, before any student trial starts; one Ray task per teacher, in parallel across the cluster.

Each teacher is :func:`l2d.run.get_teacher` of the sweep's base run with that teacher: the same key as
``l2d-sweep teacher`` or ``l2d-sweep train`` with the same settings, so teachers are shared.
"""

from __future__ import annotations

import time
from typing import Callable

import ray
from ray.util.queue import Empty, Queue

from l2d.losses import METHODS
from l2d.run import RunConfig, build_splits, get_teacher, resolve, teacher_cache_plan
from l2d.storage import Location
from l2d.teachers import TeacherStore
from sweeps.core.progress import about, current


def teacher_runs(spec) -> dict[str, RunConfig]:
    """The base run of each teacher of ``spec`` (by teacher name), with its initial weights."""
    return {pairing.teacher: spec.run_for(pairing.teacher) for pairing in spec.pairings}


def _ensure_teacher(config: RunConfig, store: Location, events=None, methods=()) -> dict:
    """Ray task: load ``config``'s teacher from the store (which checks that it is readable; an unreadable one is set
    aside), or train and store it; each trained epoch is put on ``events`` (a Ray queue the driver reads) as it ends.
    Returns its card, with what the teacher-output cache of ``methods`` will take (``teacher_outputs``, lines)."""
    started = time.time()
    epochs = resolve(config).teacher_epochs or 0

    def on_epoch(metrics) -> None:
        if events is not None:
            try:
                events.put_nowait(
                    {
                        "teacher": config.teacher,
                        "epoch": int(metrics["epoch"]),
                        "epochs": epochs,
                        "val_mAP": float(metrics.get("val_mAP", "nan")),
                        "seconds": time.time() - started,
                    }
                )
            except Exception:  # noqa: BLE001 - progress is best effort: a full or gone queue never fails a teacher
                pass

    splits = build_splits(config)
    teacher, card, trained = get_teacher(config, TeacherStore(store), splits, on_epoch=on_epoch)
    plan = teacher_cache_plan(config, teacher, splits, methods)
    return {**{k: v for k, v in card.items() if k != "history"}, "trained_now": trained, "teacher_outputs": plan}


def _epoch_line(event: dict) -> str:
    """``teacher X epoch 3/8: val mAP 75.01 (~2 min left)``."""
    total, epoch = event["epochs"], event["epoch"]
    left = event["seconds"] / epoch * (total - epoch) if epoch else 0.0
    return (
        f"  teacher {event['teacher']} epoch {epoch}"
        + (f"/{total}" if total else "")
        + f": val mAP {event['val_mAP']:.2f}"
        + (f" ({about(left)} left)" if epoch < total else "")
    )


def teacher_phase(spec, say: Callable[[str], None]) -> dict[str, dict]:
    """Fetch or train every teacher ``spec`` can pick (one Ray task each); returns their cards by name. Prints each
    teacher's epochs as they end (a teacher trains for minutes here, hours on COCO) and what each ended as."""
    if not any(METHODS[m].needs_teacher for m in spec.methods):
        return {}
    task = ray.remote(_ensure_teacher).options(
        num_cpus=spec.resources.cpus_per_worker, num_gpus=spec.resources.gpus_per_worker, max_retries=1
    )
    runs = teacher_runs(spec)
    say(f"teacher phase: {len(runs)} teacher(s) from the store {spec.teacher_store} (trained there when missing)")
    events = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
    methods = list(spec.methods)
    refs = {task.remote(config, spec.teacher_store, events, methods): teacher for teacher, config in runs.items()}
    cards: dict[str, dict] = {}
    pending = list(refs)
    view = current()
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for event in _drain(events):
                say(_epoch_line(event))
                view.status(
                    f"teacher phase: {len(cards)} of {len(runs)} teacher(s) ready; {event['teacher']} at "
                    f"epoch {event['epoch']}/{event['epochs']}",
                    changed=False,
                )
            for ref in done:
                teacher = refs[ref]
                card = cards[teacher] = ray.get(ref)
                how = "trained" if card["trained_now"] else "loaded"
                if card.get("adopted"):  # its checkpoint used as it is (teacher_epochs 0)
                    head = card.get("head_val_mAP")
                    how = "adopted as it is" + (
                        f" (label-wise head fitted: val mAP {head:.2f})" if head is not None else ""
                    )
                say(
                    f"  teacher {teacher}: {how}, val mAP "
                    f"{card['val_mAP']:.2f}, test mAP {card['test_mAP']:.2f}, {card['parameters']:,} parameters"
                )
                if card.get("class_order"):
                    say(f"    class order checked {card['class_order']}")
                digest = card.get("digest")
                if card["trained_now"] and digest:  # the store follows the storage: where it is, how to share it
                    say(
                        f"    stored as {spec.teacher_store / digest}; a sweep with another storage trains it again "
                        f"unless that folder is copied into its <storage>/teachers/"
                    )
                for line in card.pop("teacher_outputs", []):  # the disk its outputs will take, before any trial
                    say(f"    {line}")
                view.status(f"teacher phase: {len(cards)} of {len(runs)} teacher(s) ready", changed=False)
    finally:
        for event in _drain(events):  # epochs that ended between the last read and the task's end
            say(_epoch_line(event))
        ray.kill(events.actor)
    return {teacher: cards[teacher] for teacher in runs}


def _drain(events) -> list[dict]:
    out = []
    while True:
        try:
            out.append(events.get_nowait())
        except Empty:
            return out
