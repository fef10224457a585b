"""How the results tables are kept: append-only segments named by a manifest, so a report costs a few small writes
however large the sweep, and a reader always sees one generation whole.

``<sweep>/results/``::

    manifest.json                   the current generation: the segments that make up both tables, in order
    segments/g<gen>-<tag>-trials.parquet   the trial rows a report changed (immutable)
    segments/g<gen>-<tag>-epochs.parquet   the epoch rows it added (immutable)
    trials.parquet, epochs.parquet  the two tables compacted: rewritten now and then during a sweep (after a number of
                                    reports that grows with the sweep, so their cost per report stays flat: they lag
                                    by at most 5 % of the rows or 50 reports) and always
                                    when an experiment ends; for tools that read Parquet files themselves

A report writes one segment (one or two small files) and replaces the manifest (a rename locally; one PUT, which the
store makes visible whole, on S3 or GCS): its cost does not grow with the rows already written. The manifest lists
segments oldest first, each with a level; when the :data:`FANOUT` newest have the same level they are merged into
one of the next level (capped at :data:`MAX_LEVEL`), so a manifest lists a few dozen files and the merging costs each
row a bounded number of rewrites. A trial's row in a later segment replaces its earlier ones; an epoch row
likewise, by ``(trial_id, epoch)``.

Readers read the manifest once and then only the (immutable) files it names: the trials and epochs they see are of
one generation, never a mix. Files a merge made obsolete are deleted :data:`GRACE` generations later; a reader that
still finds one gone reads the newer manifest and starts again. A sweep written before manifests existed (the two
tables alone) is read as they are, and the first writer migrates it in place.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from l2d.storage import Location
from sweeps.core.faults import failpoint
from sweeps.results.schema import epochs_table, trials_table

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SEGMENTS = "segments"
TRIALS_FILE, EPOCHS_FILE = "trials.parquet", "epochs.parquet"
FORMAT = 2
#: How many segments of a level are merged into one of the next: a reader reads at most FANOUT per level.
FANOUT = 8
#: Merged segments stop growing at this level (FANOUT**MAX_LEVEL reports): a merge never rewrites the whole sweep.
MAX_LEVEL = 4
#: Generations an obsolete segment is kept after a merge, for readers of an older manifest.
GRACE = 16
#: The compacted pair is rewritten after this many reports at least, or more as the sweep grows (half its rows).
PUBLISH_EVERY = 50


class CorruptResultsError(RuntimeError):
    """A results file cannot be read; the message names it and how to repair it."""


def write_table(table: pa.Table, location: Location, small: bool = False) -> int:
    """Write a Parquet file atomically (see :meth:`l2d.storage.Location.write_bytes`); returns its size in bytes.
    ``small``: a segment of a few rows, written without statistics or dictionaries (half the bytes, no use there)."""
    buffer = io.BytesIO()
    if small:
        pq.write_table(table, buffer, write_statistics=False, use_dictionary=False, compression="none")
    else:
        pq.write_table(table, buffer)
    data = buffer.getvalue()
    location.write_bytes(data)
    return len(data)


def read_table(location: Location) -> pa.Table | None:
    """A Parquet file as a table, or None when it does not exist.

    Raises:
        CorruptResultsError: the file exists but is not a readable Parquet file.
    """
    try:
        data = location.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as error:
        raise CorruptResultsError(
            f"{location}: unreadable Parquet file ({str(error).splitlines()[0][:200]}); "
            f"`l2d-sweep resume` rebuilds it from the other results files, the checkpoints and "
            f"Tune's state"
        ) from None


def columns_digest(table: pa.Table) -> str:
    """A short digest of a table's column names: recorded for each file it writes, so a file that lost a column
    (rewritten by hand, a tool's accident) is found and rebuilt rather than read with holes."""
    return hashlib.sha256(",".join(table.column_names).encode()).hexdigest()[:10]


def generation_of(table: pa.Table | None, default: int = 0) -> int:
    """The generation a file was written at (its Parquet metadata; the compacted pair carries it)."""
    metadata = (table.schema.metadata or {}) if table is not None else {}
    try:
        return int(metadata.get(b"l2d.generation", default))
    except (TypeError, ValueError):
        return default


@dataclass
class Segment:
    """One entry of the manifest: a trials file and (maybe) an epochs file, of a level, covering ``reports`` reports;
    ``columns`` the digest of each file's columns."""

    trials: str | None
    epochs: str | None
    level: int = 0
    reports: int = 1
    columns: dict = field(default_factory=dict)

    def files(self) -> list[str]:
        return [f for f in (self.trials, self.epochs) if f]


@dataclass
class Manifest:
    generation: int = 0
    segments: list[Segment] = field(default_factory=list)
    garbage: list[dict] = field(default_factory=list)  # {"files": [...], "after": generation}
    published: dict = field(default_factory=lambda: {"generation": 0, "reports": 0, "rows": 0})
    reports: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "generation": self.generation,
                "reports": self.reports,
                "segments": [s.__dict__ for s in self.segments],
                "garbage": self.garbage,
                "published": self.published,
                "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("segments"), list):
            raise ValueError("not a results manifest")
        return cls(
            generation=int(data["generation"]),
            segments=[Segment(**s) for s in data["segments"]],
            garbage=list(data.get("garbage", [])),
            published=dict(data.get("published") or {}),
            reports=int(data.get("reports", 0)),
        )


def latest(tables: list[pa.Table], keys: list[str]) -> pa.Table | None:
    """The tables concatenated in order, keeping the last row of each ``keys`` value (later segments win)."""
    tables = [t for t in tables if t is not None]
    if not tables:
        return None
    combined = pa.concat_tables(tables, promote_options="default").combine_chunks()
    if combined.num_rows <= 1:
        return combined
    order = pa.array(range(combined.num_rows), pa.int64())
    keyed = pa.table({**{k: combined.column(k) for k in keys}, "__order": order})
    last = keyed.group_by(keys, use_threads=False).aggregate([("__order", "max")]).column("__order_max")
    kept = combined.take(last)
    return kept.sort_by([(k, "ascending") for k in keys])


@dataclass
class Generation:
    """What a reader sees: both tables as of one manifest generation (``generation`` 0: a folder without one)."""

    generation: int
    trials: pa.Table | None
    epochs: pa.Table | None


class ResultsStore:
    """The results folder of a sweep: reading a generation, appending segments, merging, publishing."""

    def __init__(self, sweep_dir: Location):
        self.sweep_dir = sweep_dir
        self.folder = sweep_dir / "results"
        self.manifest_file = self.folder / MANIFEST
        self.bytes_written = 0
        self.writes = 0
        # The tables of the segments this writer wrote that a merge will read again (levels below MAX_LEVEL): kept in
        # memory, so a merge reads nothing back from storage (a few thousand rows at most).
        self._recent: dict[str, pa.Table] = {}

    # --- reading ------------------------------------------------------------------------------------------------------

    def last_change(self):
        """When the results last changed (the manifest's, else the compacted trials table's, modification time), or
        None when neither says."""
        for location in (self.manifest_file, self.folder / TRIALS_FILE):
            when = location.modified()
            if when is not None:
                return when
        return None

    def read_manifest(self) -> Manifest | None:
        """The manifest, None when there is none.

        Raises:
            CorruptResultsError: it exists but cannot be read (named).
        """
        try:
            text = self.manifest_file.read_text()
        except FileNotFoundError:
            return None
        try:
            return Manifest.from_json(text)
        except (ValueError, TypeError, KeyError) as error:
            raise CorruptResultsError(
                f"{self.manifest_file}: unreadable results manifest ({error}); `l2d-sweep "
                f"resume` rebuilds it from the segments, the checkpoints and Tune's state"
            ) from None

    def read(self, attempts: int = 5) -> Generation:
        """Both tables of the current generation (or the two tables of a folder from before manifests).

        Raises:
            CorruptResultsError: a file of the generation cannot be read (named).
        """
        for attempt in range(attempts):
            manifest = self.read_manifest()
            if manifest is None:
                if (self.folder / SEGMENTS).is_dir() and self.segment_files():
                    raise CorruptResultsError(
                        f"{self.manifest_file}: missing, though the folder holds results "
                        f"segments; `l2d-sweep resume` rebuilds it from them, the checkpoints "
                        f"and Tune's state"
                    )
                return Generation(0, read_table(self.folder / TRIALS_FILE), read_table(self.folder / EPOCHS_FILE))
            try:
                return self._read_generation(manifest)
            except FileNotFoundError:
                if attempt == attempts - 1:
                    raise CorruptResultsError(
                        f"{self.manifest_file}: names a segment that is gone (generation "
                        f"{manifest.generation}); `l2d-sweep resume` rebuilds the results"
                    ) from None
                time.sleep(0.05 * (attempt + 1))  # a merge replaced it: the newer manifest names its successor
        raise AssertionError("unreachable")

    def _read_generation(self, manifest: Manifest) -> Generation:
        trials, epochs = [], []
        for segment in manifest.segments:
            for name, into in ((segment.trials, trials), (segment.epochs, epochs)):
                if name:
                    location = self.folder / name
                    table = read_table(location)  # None: gone (a merge replaced it since the manifest was read)
                    if table is None:
                        raise FileNotFoundError(name)
                    expected = segment.columns.get(name)
                    if expected and columns_digest(table) != expected:
                        raise CorruptResultsError(
                            f"{location}: its columns are not the ones written (a column "
                            f"dropped or renamed); `l2d-sweep resume` rebuilds the results"
                        )
                    into.append(table)

        # A generation is whole: no epochs file yet means no epoch rows yet.
        return Generation(
            manifest.generation,
            latest(trials, ["trial_id"]) or trials_table([]),
            latest(epochs, ["trial_id", "epoch"]) or epochs_table([]),
        )

    def check_published(self, manifest: Manifest) -> list[str]:
        """What is wrong with the compacted pair (missing, unreadable, other columns than written); empty if nothing."""
        problems = []
        for name in (TRIALS_FILE, EPOCHS_FILE):
            expected = manifest.published.get("columns", {}).get(name)
            if not expected:
                continue
            try:
                table = read_table(self.folder / name)
            except CorruptResultsError as error:
                problems.append(str(error).split(";")[0])
                continue
            if table is None:
                problems.append(f"{self.folder / name}: missing")
            elif columns_digest(table) != expected:
                problems.append(f"{self.folder / name}: its columns are not the ones written")
        return problems

    def segment_files(self) -> list[Location]:
        """Every segment file in the folder (named by the manifest or not), oldest generation first."""
        folder = self.folder / SEGMENTS
        return sorted((f for f in folder.list() if f.name.endswith(".parquet")), key=lambda f: f.name)

    # --- writing (the lease holder only) -----------------------------------------------------------------------------

    def _write(self, table: pa.Table, location: Location, small: bool = False) -> None:
        self.bytes_written += write_table(table, location, small)
        self.writes += 1

    def _new_segment(
        self, manifest: Manifest, trials: pa.Table | None, epochs: pa.Table | None, level: int, reports: int
    ) -> Segment:
        tag = f"g{manifest.generation + 1:09d}-{uuid.uuid4().hex[:6]}"
        names, columns = {}, {}
        for kind, table in (("trials", trials), ("epochs", epochs)):
            if table is not None and table.num_rows:
                names[kind] = f"{SEGMENTS}/{tag}-{kind}.parquet"
                self._write(table, self.folder / names[kind], small=level == 0)
                if level < MAX_LEVEL:
                    self._recent[names[kind]] = table
                columns[names[kind]] = columns_digest(table)
                failpoint("segment-write")
        return Segment(names.get("trials"), names.get("epochs"), level, reports, columns)

    def _swap(self, manifest: Manifest) -> None:
        """Replace the manifest (atomically): the next generation becomes what readers see."""
        failpoint("manifest-swap")
        manifest.generation += 1
        text = manifest.to_json()
        self.manifest_file.write_text(text)
        self.bytes_written += len(text)
        self.writes += 1

    def append(self, manifest: Manifest, trials: pa.Table | None, epochs: pa.Table | None) -> None:
        """Add one report's rows as a segment, then merge equal levels and collect old files: the next generation."""
        segment = self._new_segment(manifest, trials, epochs, 0, 1)
        if not segment.files():
            return
        manifest.segments.append(segment)
        manifest.reports += 1
        self._merge(manifest)
        self._swap(manifest)
        self._collect(manifest)

    def replace_all(self, manifest: Manifest, trials: pa.Table, epochs: pa.Table) -> None:
        """Make ``(trials, epochs)`` the whole of the next generation (a rebuild, a migration): one top-level segment;
        every earlier segment becomes garbage."""
        segment = self._new_segment(manifest, trials, epochs, MAX_LEVEL, max(manifest.reports, 1))
        old = [f for s in manifest.segments for f in s.files()]
        manifest.segments = [segment] if segment.files() else []
        if old:
            manifest.garbage.append({"files": old, "after": manifest.generation + 1 + GRACE})
        self._swap(manifest)

    def _merge(self, manifest: Manifest) -> None:
        segments = manifest.segments
        while (
            len(segments) >= FANOUT
            and len({s.level for s in segments[-FANOUT:]}) == 1
            and segments[-1].level < MAX_LEVEL
        ):
            group = segments[-FANOUT:]
            trials = latest([self._read_segment(s.trials) for s in group if s.trials], ["trial_id"])
            epochs = latest([self._read_segment(s.epochs) for s in group if s.epochs], ["trial_id", "epoch"])
            merged = self._new_segment(manifest, trials, epochs, group[0].level + 1, sum(s.reports for s in group))
            failpoint("compaction")
            segments[-FANOUT:] = [merged]
            manifest.garbage.append(
                {"files": [f for s in group for f in s.files()], "after": manifest.generation + 1 + GRACE}
            )

    def _read_segment(self, name: str) -> pa.Table:
        """A segment a merge folds: from memory when this writer wrote it, else from storage."""
        table = self._recent.pop(name, None)
        return table if table is not None else read_table(self.folder / name)

    def _collect(self, manifest: Manifest) -> None:
        """Delete the obsolete files whose grace has passed (the manifest that lists them as garbage is already out)."""
        due = [g for g in manifest.garbage if g["after"] <= manifest.generation]
        if not due:
            return
        manifest.garbage = [g for g in manifest.garbage if g["after"] > manifest.generation]
        for entry in due:
            for name in entry["files"]:
                (self.folder / name).delete()

    def publish(self, manifest: Manifest, trials: pa.Table, epochs: pa.Table) -> None:
        """Rewrite the compacted pair ``trials.parquet`` / ``epochs.parquet`` (each atomically; epochs first), each
        carrying the generation it holds in its metadata."""
        stamp = {b"l2d.generation": str(manifest.generation).encode()}
        trials, epochs = (t.replace_schema_metadata({**(t.schema.metadata or {}), **stamp}) for t in (trials, epochs))
        self._write(epochs, self.folder / EPOCHS_FILE)
        failpoint("publish")
        self._write(trials, self.folder / TRIALS_FILE)
        manifest.published = {
            "generation": manifest.generation,
            "reports": manifest.reports,
            "rows": epochs.num_rows,
            "columns": {TRIALS_FILE: columns_digest(trials), EPOCHS_FILE: columns_digest(epochs)},
        }

    @staticmethod
    def publish_due(manifest: Manifest) -> bool:
        """Whether the compacted pair lags enough to be rewritten: :data:`PUBLISH_EVERY` reports, or a twentieth of the
        rows it held (so rewriting it costs each report a bounded share, about 20 rows, however large the sweep)."""
        since = manifest.reports - manifest.published.get("reports", 0)
        return since >= max(PUBLISH_EVERY, manifest.published.get("rows", 0) // 20)
