"""The teacher phase of a sweep: every teacher the spec can pick is loaded from the teacher store, or trained into
it, before any student trial starts; one Ray task per teacher, in parallel across the cluster.

Each teacher is :func:`l2d.run.get_teacher` of the sweep's base run with that teacher: the same key as
``l2d-sweep teacher`` or ``l2d-sweep train`` with the same settings, so teachers are shared.
"""

from __future__ import annotations

from typing import Callable

from l2d.run import RunConfig
from l2d.storage import Location


def teacher_runs(spec) -> dict[str, RunConfig]:
    """The base run of each teacher of ``spec`` (by teacher name), with its initial weights."""
    return {pairing.teacher: spec.run_for(pairing.teacher) for pairing in spec.pairings}


def _ensure_teacher(config: RunConfig, store: Location) -> dict:
    """Ray task: load ``config``'s teacher from the store (which checks that it is readable; an unreadable one is set
    aside), or train and store it. Returns its card."""
    from l2d.run import get_teacher
    from l2d.teachers import TeacherStore

    _, card, trained = get_teacher(config, TeacherStore(store))
    return {**{k: v for k, v in card.items() if k != "history"}, "trained_now": trained}


def teacher_phase(spec, say: Callable[[str], None]) -> dict[str, dict]:
    """Fetch or train every teacher ``spec`` can pick (one Ray task each); returns their cards by name."""
    import ray

    from l2d.losses import METHODS

    if not any(METHODS[m].needs_teacher for m in spec.methods):
        return {}
    task = ray.remote(_ensure_teacher).options(num_cpus=spec.resources.cpus_per_worker,
                                                num_gpus=spec.resources.gpus_per_worker, max_retries=1)
    runs = teacher_runs(spec)
    say(f"teacher phase: {len(runs)} teacher(s) from the store {spec.teacher_store} (trained there when missing)")
    refs = {teacher: task.remote(config, spec.teacher_store) for teacher, config in runs.items()}
    cards = {}
    for teacher, ref in refs.items():
        card = ray.get(ref)
        cards[teacher] = card
        say(f"  teacher {teacher}: {'trained' if card['trained_now'] else 'loaded'}, val mAP {card['val_mAP']:.2f}, "
            f"test mAP {card['test_mAP']:.2f}, {card['parameters']:,} parameters")
    return cards
