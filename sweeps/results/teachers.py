"""The teachers a sweep distilled from, beside their students trained alone.

The teacher phase writes ``<sweep>/teachers.json``: each teacher's card as the store holds it (its val and test mAP on
the sweep's own splits, whether it was trained or adopted as it is). The results put each pairing's teacher beside its
student trained alone (the search's best ``bce`` trial of that student), so that a teacher that is no better than its
student, from which distillation has nothing to give, is visible: :func:`teacher_warnings` names it.
"""

from __future__ import annotations

import json
import math

from l2d.storage import Location
from sweeps.results.store import CorruptResultsError

#: The teacher phase's record, in the sweep folder.
TEACHERS_FILE = "teachers.json"
#: The method that trains the student alone (no teacher).
ALONE = "bce"
#: What the record keeps of a teacher's card.
CARD_FIELDS = ("val_mAP", "test_mAP", "epochs", "adopted", "logits", "head_val_mAP", "parameters", "digest")


def write_teachers(sweep_dir: Location, cards: dict[str, dict]) -> Location:
    """Record the teacher phase's ``cards`` (by teacher name) in ``<sweep>/teachers.json`` (atomically)."""
    record = {
        name: {
            **{field: card.get(field) for field in CARD_FIELDS},
            "how": "adopted" if card.get("adopted") else "trained",
        }
        for name, card in cards.items()
    }
    target = sweep_dir / TEACHERS_FILE
    target.write_text(json.dumps({"teachers": record}, indent=2))
    return target


def read_teachers(sweep_dir: Location) -> dict[str, dict]:
    """The recorded teachers by name ({} when the sweep has no teacher phase yet).

    Raises:
        CorruptResultsError: the record exists but cannot be read (the next ``resume`` writes it again).
    """
    path = sweep_dir / TEACHERS_FILE
    if not path.is_file():
        return {}
    try:
        teachers = json.loads(path.read_text()).get("teachers")
        if not isinstance(teachers, dict) or not all(isinstance(card, dict) for card in teachers.values()):
            raise ValueError("no 'teachers' mapping")
        return teachers
    except (ValueError, AttributeError, UnicodeDecodeError) as error:
        raise CorruptResultsError(
            f"{path}: unreadable teacher record ({error}); `l2d-sweep resume` writes it again"
        ) from None


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def teacher_rows(teachers: dict[str, dict], trials: list[dict]) -> list[dict]:
    """One row per (teacher, student) pairing the sweep ran: the teacher's val/test mAP; its student's best ``bce``
    trial (``alone_*``: best val mAP and the test mAP at that epoch; None when the sweep trained no student alone);
    the best distilled trial of that pairing; ``margin``: the teacher's val mAP minus the student's alone. Trials of
    the confirmation stage count too (its baseline is a student trained alone)."""
    trials = list(trials)
    pairs = sorted({(row["teacher"], row["student"]) for row in trials if row.get("teacher") in teachers})

    def best(rows: list[dict]) -> dict | None:
        scored = [row for row in rows if _number(row.get("best_val_mAP")) is not None]
        return max(scored, key=lambda row: (row["best_val_mAP"], row["trial_id"]), default=None)

    out = []
    for teacher, student in pairs:
        card = teachers[teacher]
        alone = best([r for r in trials if r["student"] == student and r["method"] == ALONE])
        distilled = best(
            [r for r in trials if r["teacher"] == teacher and r["student"] == student and r["method"] != ALONE]
        )
        val = _number(card.get("val_mAP"))
        alone_val = alone["best_val_mAP"] if alone else None
        out.append(
            {
                "teacher": teacher,
                "how": card.get("how"),
                "teacher_val_mAP": val,
                "teacher_test_mAP": _number(card.get("test_mAP")),
                "student": student,
                "alone_val_mAP": alone_val,
                "alone_test_mAP": _number(alone.get("test_mAP_at_best")) if alone else None,
                "margin": val - alone_val if val is not None and alone_val is not None else None,
                "best_distilled_val_mAP": distilled["best_val_mAP"] if distilled else None,
                "best_distilled_method": distilled["method"] if distilled else None,
            }
        )
    return out


def teacher_warnings(rows: list[dict]) -> list[str]:
    """A line for each teacher that is no better on val than its student trained alone, and for each pairing whose
    student the sweep never trained alone (so that nobody can tell)."""
    lines = []
    for row in rows:
        if row["margin"] is not None and row["margin"] <= 0:
            lines.append(
                f"warning: teacher {row['teacher']} (val mAP {row['teacher_val_mAP']:.2f}) is no better than its "
                f"student {row['student']} trained alone ({ALONE}: val mAP {row['alone_val_mAP']:.2f}): distilling "
                f"from it has little to give; a stronger teacher (more teacher epochs, a larger backbone, your own "
                f"fine-tuned checkpoint) comes first"
            )
        elif row["alone_val_mAP"] is None and row["teacher_val_mAP"] is not None:
            lines.append(
                f"note: the sweep trained no {row['student']} alone ({ALONE} is not among its methods, or no such "
                f"trial has a score yet), so whether teacher {row['teacher']} (val mAP "
                f"{row['teacher_val_mAP']:.2f}) beats it is unknown; add {ALONE} to the methods or "
                f"`budget.confirm` (its baseline is {ALONE})"
            )
    return lines
