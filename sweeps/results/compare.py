"""Sweeps side by side: one sweep as a summary row (what ``l2d-sweep list`` shows of each), and two or more compared
(``l2d-sweep compare``, :meth:`sweeps.api.Sweep.compare`): each one's summary, the best value of each method and
pairing in each, the configurations two sweeps of one seed both ran (a paired comparison with a t-interval), and the
spec fields that differ. Folders that carry one sweep's id are named as copies. Reads only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from l2d.storage import Location
from sweeps.folder.marker import read_marker
from sweeps.results.reader import SweepResults, sweep_status
from sweeps.results.schema import HPARAM_COLUMNS, OBJECTIVE_COLUMNS
from sweeps.results.stats import Paired, paired_t
from sweeps.results.store import ResultsStore
from sweeps.specs import SweepSpec


def summary_row(spec: SweepSpec) -> dict:
    """One sweep as a row of ``list`` and ``compare``: its trials by state, who drives it, its best trial."""
    status = sweep_status(spec.sweep_dir)
    best = status.best or {}
    return {
        "sweep": spec.sweep_dir.name,
        "state": status.state,
        "trials": sum(status.counts.values()),
        "completed": status.counts.get("completed", 0),
        "stopped": status.counts.get("stopped", 0),
        "failed": status.counts.get("failed", 0),
        "metric": status.metric,
        "best": best.get("value"),
        "test_mAP": best.get("test_mAP"),
        "method": best.get("method"),
        "student": best.get("student"),
        "trial_id": best.get("trial_id"),
        "updated": last_change(spec.sweep_dir),
        "path": str(spec.sweep_dir),
        "sweep_id": (read_marker(spec.sweep_dir) or {}).get("sweep_id"),
    }


def last_change(sweep_dir: Location) -> str | None:
    """When the sweep's results last changed (the newest generation's time, as its reader sees it)."""
    when = ResultsStore(sweep_dir).last_change()
    return when.strftime("%Y-%m-%d %H:%M") if when is not None else None


def copies(rows: list[dict], key: str = "path") -> list[str]:
    """One line per sweep id that more than one of ``rows`` carries: those folders are copies of one sweep (the same
    trials up to the copy; each goes on on its own since). ``key``: what names a folder in the line."""
    by_id: dict[str, list[str]] = {}
    for row in rows:
        if row.get("sweep_id"):
            by_id.setdefault(row["sweep_id"], []).append(row[key])
    return [
        f"{', '.join(paths)} are copies of one sweep (id {sweep_id}): the same trials up to the copy, each on its "
        f"own since"
        for sweep_id, paths in by_id.items()
        if len(paths) > 1
    ]


def short_labels(paths: list) -> list[str]:
    """Labels for sweep folders: their names, or as many trailing path parts as make them differ."""
    parts = [str(p).rstrip("/").split("/") for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


@dataclass
class Comparison:
    """Two or more sweeps compared (:func:`compare`).

    Attributes:
        names: each sweep's label (its folder's name, longer where two clash).
        column: the trials table's column compared (the first sweep's metric).
        mode: ``max`` or ``min``, the first sweep's.
        seed: the first sweep's seed (the paired trials ran under it).
        tables: ``sweeps`` (each one's summary), ``best_per_pairing``, ``paired``, ``spec_differences``: lists of
            rows.
        copies: a line for each sweep id that several of the folders carry.
        no_pairing: why there is no paired comparison ('' when there is one).
        paired_interval: the paired t-interval of the differences over the configurations both ran (two or more).
    """

    names: list[str]
    column: str
    mode: str
    seed: int | None
    tables: dict[str, list[dict]]
    copies: list[str] = field(default_factory=list)
    no_pairing: str = ""
    paired_interval: Paired | None = None


def compare(specs: list[SweepSpec]) -> Comparison:
    """Compare the sweeps of ``specs`` (see the module docstring): the searches only (a confirmation stage's reruns
    are compared by ``results``, within one sweep)."""
    names = short_labels([spec.sweep_dir for spec in specs])  # the folders' names, longer only where they clash
    sweeps = [{**summary_row(spec), "sweep": name} for spec, name in zip(specs, names)]
    column = OBJECTIVE_COLUMNS.get(specs[0].metric, "best_val_mAP")
    tables = [SweepResults(spec.sweep_dir).search_rows() for spec in specs]
    paired, why = paired_trials(tables, specs, names, column)
    # What differs between the specs (the storage left out: the sweeps live where they live).
    flat = [{k: v for k, v in _flatten(spec.to_dict()).items() if k not in ("storage", "name")} for spec in specs]
    keys = sorted(set().union(*flat))
    differ = [
        {"field": key, **{name: str(f.get(key, "-")) for name, f in zip(names, flat)}}
        for key in keys
        if len({str(f.get(key, "-")) for f in flat}) > 1
    ]
    diffs = [row["diff"] for row in paired]
    return Comparison(
        names=names,
        column=column,
        mode=specs[0].mode,
        seed=specs[0].seed,
        tables={
            "sweeps": [{k: v for k, v in row.items() if k != "trial_id"} for row in sweeps],
            "best_per_pairing": best_per_pairing(tables, names, column, specs[0].mode),
            "paired": paired,
            "spec_differences": differ,
        },
        copies=copies(sweeps, key="sweep"),
        no_pairing=why,
        paired_interval=paired_t(diffs) if len(diffs) >= 2 else None,  # the configurations are the pairs
    )


def _flatten(data, prefix: str = "") -> dict:
    if isinstance(data, dict):
        flat = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def best_per_pairing(tables: list[list[dict]], names: list[str], column: str, mode: str) -> list[dict]:
    """One row per (method, teacher, student): the best ``column`` each sweep reached with it (None: not tried), and
    with two sweeps their difference (second minus first)."""
    pick = max if mode == "max" else min
    best: dict[tuple, dict[str, float]] = {}
    for rows, name in zip(tables, names):
        for row in rows:
            if row.get(column) is None:
                continue
            key = (row["method"], row["teacher"], row["student"])
            values = best.setdefault(key, {})
            values[name] = pick(values[name], row[column]) if name in values else row[column]
    out = []
    for (method, teacher, student), values in sorted(best.items()):
        row = {"method": method, "teacher": teacher, "student": student, **{n: values.get(n) for n in names}}
        if len(names) == 2:
            a, b = values.get(names[0]), values.get(names[1])
            row["diff"] = None if a is None or b is None else b - a
        out.append(row)
    return out


def paired_trials(tables: list[list[dict]], specs, names: list[str], column: str) -> tuple[list[dict], str]:
    """The configurations both of two sweeps ran (pairing, method, every hyperparameter equal) under the same seed:
    their values side by side and the difference, a paired comparison. Also why there is none."""
    if len(specs) != 2:
        return [], "" if len(specs) < 2 else "it compares two sweeps at a time"
    if specs[0].seed != specs[1].seed:
        return [], f"the sweeps' seeds differ ({specs[0].seed} and {specs[1].seed}): no trial can be paired"

    def key(row):
        values = tuple(None if row.get(c) is None else float(f"{float(row[c]):.9g}") for c in HPARAM_COLUMNS)
        return row["teacher"], row["student"], row["method"], values

    first = {}
    for row in tables[0]:
        if row.get(column) is not None:
            first.setdefault(key(row), row)
    out = []
    for row in tables[1]:
        match = first.get(key(row)) if row.get(column) is not None else None
        if match is None:
            continue
        hparams = ", ".join(
            f"{c}={row[c]:.3g}"
            for c in HPARAM_COLUMNS
            if row.get(c) is not None and not (isinstance(row[c], float) and math.isnan(row[c]))
        )
        out.append(
            {
                "config": len(out) + 1,
                "method": row["method"],
                "student": row["student"],
                f"trial {names[0]}": match["trial_id"],
                names[0]: match[column],
                f"trial {names[1]}": row["trial_id"],
                names[1]: row[column],
                "diff": row[column] - match[column],
                "hyperparameters": hparams,
            }
        )
    return out, "" if out else "no configuration was run by both (the same pairing, method and hyperparameters)"
