"""The confirmation stage (``budget.confirm``, ``l2d-sweep confirm``): a sweep's verdict that survives seed noise.

A search ranks configurations by one run each, at the spec's seed, and two runs of one configuration differ by about as
much as the middle methods do: the best single run is partly the luckiest seed. After the search, the ``top`` best
configurations (or the best of each method, ``per_method``) and a ``baseline`` (by default ``bce``: the student alone,
on the same pairing at the same learning rate as the best finalist of that pairing, with its method's default weights)
are rerun on ``seeds`` fresh seeds, the spec's ``seed + 1, + 2, ...``: disjoint from the tuning seed, so no rerun is
the run that got its configuration selected. Every configuration runs under every seed with the same student
initialisation and data order (the seed is the student's: ``RunConfig.student_seed``; the teacher stays the search's),
so the runs pair by seed.

Confirmation runs are trials like the others (results rows with ``stage`` confirm, ``seed`` and ``confirms``: the
search trial whose configuration they rerun; checkpoints; live lines), run as one more Tune experiment
(``tune-confirm``) without early stopping, and never shown to the study. Their ids derive from the sweep, the
configuration and the seed, so a killed confirmation resumes: finished runs stay, a running one continues from its
last epoch checkpoint.

:func:`summarize` reads them back: per configuration the mean and sd of the metric over the seeds, the paired
difference to the baseline and to the winner with a paired t-interval at the Bonferroni level of the table's
comparisons (family-wise 95 %), Holm-adjusted p-values, and the smallest difference the design could detect beside
every "not established". The confirmed winner is the best mean, not the best single run; ``export --best`` and
``Sweep.best()`` take it (its best-scoring run) when there is one, and say so.

No Ray here: the Tune experiment is built by :func:`sweeps.tune.experiment.build_confirm_tuner`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from l2d.losses import METHODS
from l2d.run import default_hparams
from sweeps.core.vocab import FINISHED, SCORED, sign
from sweeps.results.schema import OBJECTIVE_COLUMNS
from sweeps.results.stats import holm, holm_level, paired_t

STAGE = "confirm"
#: The Tune experiment of the confirmation runs (in the sweep folder, beside ``tune``, ``tune-<k>``).
TUNE_FOLDER = "tune-confirm"
#: The level the table holds jointly (each interval is at the Bonferroni level of the table's comparisons).
LEVEL = 0.95


@dataclass(frozen=True)
class Candidate:
    """A configuration the stage reruns: a search trial's (``key`` its trial id) or the baseline's."""

    key: str
    config: dict  # teacher, student, method, its weights, lr
    baseline: bool = False
    search_value: float | None = None  # the metric of the search trial (None: the baseline)

    @property
    def label(self) -> str:
        return f"baseline {self.config['method']}" if self.baseline else f"{self.config['method']} ({self.key})"


@dataclass(frozen=True)
class Plan:
    """What the stage runs: its seeds, its configurations (best first, the baseline last) and every run, seed-major
    (so an interrupted stage leaves whole seeds)."""

    seeds: tuple[int, ...]
    candidates: tuple[Candidate, ...]

    def runs(self, sweep_id: str) -> list[tuple[str, dict]]:
        """``(trial id, config)`` of every run."""
        return [
            (run_id(sweep_id, candidate, seed), run_config(candidate, seed))
            for seed in self.seeds
            for candidate in self.candidates
        ]


def run_id(sweep_id: str, candidate: Candidate, seed: int) -> str:
    """A confirmation run's trial id: 8 hex digits of the sweep, the configuration and the seed (the same on every
    resume, so a run lost in a crash finds its own checkpoints)."""
    key = (
        candidate.key
        if not candidate.baseline
        else "baseline:" + ":".join(f"{k}={candidate.config[k]}" for k in sorted(candidate.config))
    )
    return hashlib.sha256(f"{sweep_id}:{STAGE}:{key}:{seed}".encode()).hexdigest()[:8]


def run_config(candidate: Candidate, seed: int) -> dict:
    config = {**candidate.config, "stage": STAGE, "seed": seed}
    if not candidate.baseline:
        config["confirms"] = candidate.key
    return config


def seeds_of(spec) -> tuple[int, ...]:
    """The confirmation seeds, the next ``seeds`` after the search's own: ``seed + 1`` to ``seed + seeds`` (the search
    ran at ``seed``), or after its ``budget.selection_seeds`` (``seed`` to ``seed + selection_seeds - 1``)."""
    first = spec.seed + spec.budget.selection_seeds
    return tuple(first + k for k in range(spec.budget.confirm.seeds))


def config_of(row: dict) -> dict:
    """A trials-table row's configuration: pairing, method, the method's weights and the learning rate."""
    config = {"teacher": row["teacher"], "student": row["student"], "method": row["method"]}
    for name in ("lr", *METHODS[row["method"]].defaults):
        if row.get(name) is not None:
            config[name] = float(row[name])
    return config


def finalists(spec, rows: list[dict]) -> list[dict]:
    """The search trials the stage confirms, best first: the ``top`` best by the spec's metric, or (``per_method``)
    the best trial of each method, the ``top`` best such."""
    metric, mode = spec.objective_list[0]
    column = OBJECTIVE_COLUMNS[metric]
    scored = [
        r
        for r in rows
        if (r.get("stage") or "search") == "search" and r["status"] in SCORED and r.get(column) is not None
    ]
    scored.sort(key=lambda r: (-sign(mode) * r[column], r["trial_id"]))
    if spec.budget.confirm.per_method:
        seen: set[str] = set()
        scored = [r for r in scored if not (r["method"] in seen or seen.add(r["method"]))]
    return scored[: spec.budget.confirm.top]


def baseline_config(spec, pairing: tuple[str, str], lr: float | None) -> dict:
    """The baseline's configuration on ``pairing``: its method with the spec's fixed weights or the dataset's
    defaults, at ``lr`` (the best finalist's of that pairing)."""
    method = spec.budget.confirm.baseline
    config = {"teacher": pairing[0], "student": pairing[1], "method": method}
    if lr is not None:
        config["lr"] = float(lr)
    defaults = default_hparams(spec.dataset.name, method)
    for name in METHODS[method].defaults:
        fixed = spec.search_space.get(name)
        config[name] = float(fixed) if isinstance(fixed, (int, float)) else float(defaults[name])
    return config


def plan(spec, rows: list[dict]) -> Plan | None:
    """The stage of ``spec`` over the search's ``rows`` (None: the spec asks for none, or no search trial scored)."""
    if spec.budget.confirm is None:
        return None
    chosen = finalists(spec, rows)
    if not chosen:
        return None
    metric = OBJECTIVE_COLUMNS[spec.objective_list[0][0]]
    candidates = [Candidate(r["trial_id"], config_of(r), search_value=r[metric]) for r in chosen]
    if spec.budget.confirm.baseline is not None:
        pairings: dict[tuple[str, str], float | None] = {}
        for candidate in candidates:  # best first: each pairing's lr is its best finalist's
            pairings.setdefault((candidate.config["teacher"], candidate.config["student"]), candidate.config.get("lr"))
        for pairing, lr in pairings.items():
            config = baseline_config(spec, pairing, lr)
            if not any(_same(c.config, config) for c in candidates):  # a finalist already is the baseline
                candidates.append(Candidate(f"baseline@{pairing[0]}>{pairing[1]}", config, baseline=True))
    return Plan(seeds_of(spec), tuple(candidates))


def _same(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    return all(
        math.isclose(a[k], b[k], rel_tol=1e-9) if isinstance(a[k], float) and isinstance(b[k], float) else a[k] == b[k]
        for k in a
    )


def pending(plan_: Plan, sweep_id: str, rows: list[dict]) -> list[tuple[str, dict]]:
    """The runs of ``plan_`` that have not finished (no row, or one still running, pending or interrupted)."""
    done = {r["trial_id"] for r in rows if r["status"] in FINISHED}
    return [(trial_id, config) for trial_id, config in plan_.runs(sweep_id) if trial_id not in done]


# --- reading the stage back ------------------------------------------------------------------------------------------


@dataclass
class Confirmed:
    """One configuration's confirmation: its values per seed, their mean and sd, and its paired differences."""

    candidate: Candidate
    values: dict[int, float]  # seed -> the metric at the run's best epoch
    tests: dict[int, float]  # seed -> test mAP at that epoch
    runs: dict[int, str]  # seed -> trial id
    vs_baseline: object | None = None  # sweeps.results.stats.Paired (this - baseline)
    vs_winner: object | None = None  # sweeps.results.stats.Paired (this - winner)
    p_baseline: float | None = None  # Holm-adjusted
    p_winner: float | None = None

    @property
    def mean(self) -> float | None:
        return math.fsum(self.values.values()) / len(self.values) if self.values else None

    @property
    def sd(self) -> float | None:
        if len(self.values) < 2:
            return None
        mean = self.mean
        return math.sqrt(math.fsum((v - mean) ** 2 for v in self.values.values()) / (len(self.values) - 1))

    @property
    def test_mean(self) -> float | None:
        return math.fsum(self.tests.values()) / len(self.tests) if self.tests else None


@dataclass
class Confirmation:
    """The confirmation stage as read from the results: each configuration's runs and comparisons, the winner."""

    metric: str
    mode: str
    seeds: tuple[int, ...]
    rows: list[Confirmed]
    winner: Confirmed | None
    comparisons: int  # how many paired comparisons the table makes (the Bonferroni divisor)
    level: float  # each interval's level
    missing: int  # planned runs not finished (a failed run is finished: resume does not make it again)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.missing == 0

    def best_run(self) -> str | None:
        """The winner's run with the best value (what ``export --best`` exports): None without a winner."""
        if self.winner is None:
            return None
        direction = sign(self.mode)
        seed = max(self.winner.values, key=lambda s: (direction * self.winner.values[s], -s))
        return self.winner.runs[seed]

    def chosen(self) -> tuple[str, str] | None:
        """``(trial id, words)``: the winner's best run and what it is, what ``export --best`` and ``Sweep.best()``
        take and say; None without a winner."""
        run = self.best_run()
        if run is None:
            return None
        return run, (
            f"the confirmed winner: {self.winner.candidate.label}, mean {self.metric} {self.winner.mean:.4g} over "
            f"{len(self.winner.values)} seed(s); its best run, trial {run}"
            + ("" if self.complete else f" ({self.missing} confirmation run(s) not finished)")
        )

    def table(self) -> list[dict]:
        """One row per configuration, best mean first (``results`` prints it; ``--format json`` holds it)."""
        out = []
        for entry in self.rows:
            row = {
                "configuration": entry.candidate.label,
                "method": entry.candidate.config["method"],
                "student": entry.candidate.config["student"],
                "seeds": len(entry.values),
                f"mean_{self.metric}": entry.mean,
                "sd": entry.sd,
                "test_mAP": entry.test_mean,
                "search_value": entry.candidate.search_value,
            }
            for name, paired, p in (
                ("baseline", entry.vs_baseline, entry.p_baseline),
                ("winner", entry.vs_winner, entry.p_winner),
            ):
                row[f"vs_{name}"] = paired.mean if paired is not None else None
                row[f"vs_{name}_low"] = paired.low if paired is not None else None
                row[f"vs_{name}_high"] = paired.high if paired is not None else None
                row[f"vs_{name}_p_holm"] = p
                row[f"vs_{name}_verdict"] = _verdict(paired, self.mode) if paired is not None else None
                row[f"vs_{name}_detectable"] = paired.detectable if paired is not None else None
            row["winner"] = entry is self.winner
            out.append(row)
        return out

    def describe(self) -> list[str]:
        """The stage in words: the winner, each comparison's verdict with its interval or the effect it could have
        seen, and what is missing."""
        lines = [
            f"confirmation: {len(self.rows)} configuration(s) on seeds {', '.join(map(str, self.seeds))} "
            f"({self.comparisons} paired comparison(s); each interval at {self.level:.2%}, family-wise {LEVEL:.0%})"
        ]
        if self.winner is not None:
            lines.append(
                f"confirmed winner: {self.winner.candidate.label}, mean {self.metric} {self.winner.mean:.2f} over "
                f"{len(self.winner.values)} seed(s) (the best mean, not the best single run)"
            )
        for entry in self.rows:
            for other, paired in (("the baseline", entry.vs_baseline), ("the winner", entry.vs_winner)):
                if paired is not None:
                    lines.append(f"  {entry.candidate.label} vs {other}: {_words(paired, self.mode)}")
        if self.missing:
            lines.append(f"{self.missing} planned run(s) not finished: `l2d-sweep resume` runs them")
        return lines + self.notes


def _verdict(paired, mode: str) -> str:
    better = paired.low > 0 if mode == "max" else paired.high < 0
    worse = paired.high < 0 if mode == "max" else paired.low > 0
    return "better" if better else "worse" if worse else "not established"


def _words(paired, mode: str) -> str:
    interval = f"{paired.mean:+.2f} [{paired.low:+.2f}, {paired.high:+.2f}]"
    verdict = _verdict(paired, mode)
    if verdict != "not established":
        return f"{verdict}: {interval}"
    return f"not established: {interval}; this design detects differences of {paired.detectable:.2f} or more"


def summarize(spec, rows: list[dict]) -> Confirmation | None:
    """The confirmation stage of ``spec`` as its results ``rows`` hold it (None: the spec asks for none, or the
    search has no finalist yet). Runs are matched by configuration and seed, so the table is the one of the
    finalists the search has now (an extended sweep's new finalists appear without their runs until confirmed)."""
    found = plan(spec, rows)
    if found is None:
        return None
    metric, mode = spec.objective_list[0]
    column = OBJECTIVE_COLUMNS[metric]
    confirm_rows = [r for r in rows if r.get("stage") == STAGE and r["status"] in FINISHED]
    entries = []
    missing = failed = 0
    for candidate in found.candidates:
        entry = Confirmed(candidate, {}, {}, {})
        lost = set()
        for row in confirm_rows:
            if row.get("seed") not in found.seeds:
                continue
            if candidate.baseline:
                matches = row.get("confirms") is None and _same(config_of(row), candidate.config)
            else:
                matches = row.get("confirms") == candidate.key
            if matches and (row["status"] not in SCORED or row.get(column) is None):
                lost.add(row["seed"])  # a run that failed: finished, without a value
            elif matches:
                entry.values[row["seed"]] = float(row[column])
                entry.runs[row["seed"]] = row["trial_id"]
                if row.get("test_mAP_at_best") is not None:
                    entry.tests[row["seed"]] = float(row["test_mAP_at_best"])
        failed += len(lost - set(entry.values))
        missing += len(set(found.seeds) - set(entry.values) - lost)
        entries.append(entry)
    direction = sign(mode)
    ranked = sorted(
        (e for e in entries if len(e.values) >= 2),
        key=lambda e: (-direction * e.mean, e.candidate.baseline, e.candidate.key),
    )
    winner = ranked[0] if ranked else None
    baseline = next((e for e in entries if e.candidate.baseline), None)
    pairs = []  # (entry, attribute, other)
    for entry in entries:
        if baseline is not None and entry is not baseline:
            pairs.append((entry, "baseline", baseline))
        # the baseline against the winner is the winner's own vs_baseline, and a winning baseline is the baseline:
        # neither is made twice
        if winner is not None and winner is not baseline and entry is not winner and entry is not baseline:
            pairs.append((entry, "winner", winner))
    comparisons = len(pairs)
    level = holm_level(LEVEL, comparisons)
    p_values, made = [], []
    notes = []
    for entry, attribute, other in pairs:
        shared = sorted(set(entry.values) & set(other.values))
        if len(shared) < 2:
            continue
        paired = paired_t([entry.values[s] - other.values[s] for s in shared], level)
        setattr(entry, f"vs_{attribute}", paired)
        p_values.append(paired.p)
        made.append((entry, attribute))
    for (entry, attribute), adjusted in zip(made, holm(p_values) if p_values else []):
        setattr(entry, f"p_{attribute}", adjusted)
    if baseline is not None and winner is baseline:
        notes.append(
            f"the baseline ({baseline.candidate.config['method']}) has the best mean: no distillation recipe was "
            f"confirmed better than the student alone"
        )
    if failed:
        notes.append(
            f'{failed} confirmation run(s) failed (see `l2d-sweep results --sql "SELECT trial_id, seed, error FROM '
            f"trials WHERE stage = 'confirm' AND status = 'failed'\"`): their seeds are left out of the pairs"
        )
    entries.sort(key=lambda e: (e.mean is None, -direction * (e.mean or 0.0), e.candidate.key))
    return Confirmation(metric, mode, found.seeds, entries, winner, comparisons, level, missing, notes)
