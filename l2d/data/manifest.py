"""Datasets declared, not coded: a manifest table (CSV, JSON Lines or Parquet) or COCO instances files under any name.

``manifest``: one table per split (``train``, ``val``, ``test``) or one table with a split column (``path``,
``split_column``). Each row is an image and its labels:

- the image (``image_column``, default: the first of :data:`IMAGE_COLUMNS` present): a path relative to the
  manifest's folder, an absolute path, an ``s3://`` / ``gs://`` URI (read through :mod:`l2d.storage`, cached once
  per node under the cache folder), embedded bytes (a binary column), or the ``{bytes, path}`` struct that Hugging
  Face ``datasets`` writes to Parquet;
- the labels (``label_format``): ``delimited`` (one string, ``delimiter`` between labels: ``|``, ``;``, ``,`` or a
  space, found in the data when not given), ``list`` (a list column, or a JSON array in a CSV cell) or ``columns``
  (one 0/1 column per class: every column but the image and split ones). ``auto`` (default) picks the one the
  table has, and refuses a table that has two.

The class list is read from ``classes`` (a text file, one name per line, in the order of the model's outputs) or
taken from the data: every label of every split, sorted (the 0/1 columns in the table's order). Without a val
split, val is a seeded hold-out (``val_fraction``, ``val_seed``) of train.

``coco``: COCO-format instances files under any name, each with its image folder (``train`` + ``train_images``,
``test`` + ``test_images``, optionally ``val`` + ``val_images``); every file must list the same categories.
The class index is the rank of the category id (COCO's convention); images without an object are dropped unless
``keep_empty`` (every split) or ``keep_empty_test``.

Everything a sweep needs is checked when the dataset is loaded, before any image is decoded (:func:`load`), each a
one-line :class:`~l2d.data.registry.DatasetError` naming the file, the row and the value: a missing image (how many,
and the first five), a label outside the class list, an empty split, the same image in two splits, an ambiguous
label column, a URI with credentials. A class without a positive in train is a warning (:attr:`Manifest.warnings`).
Loading is vectorised (pyarrow): a manifest of a million rows loads in seconds. Torch-free: the datasets themselves
are built by :meth:`Manifest.dataset`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from l2d.data.formats import ImageListDataset
from l2d.data.images import Images
from l2d.data.registry import DatasetError
from l2d.storage import Location, StorageError

# Loaded late, inside the functions that use them: pyarrow (imported where its absence is handled).

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_COLUMNS", "LABEL_COLUMNS", "Images", "Manifest", "load", "load_coco", "load_manifest"]

SPLITS = ("train", "val", "test")
#: Column names taken for the image when ``image_column`` is not given (the first present; case-insensitive).
IMAGE_COLUMNS = ("image", "image_path", "img", "path", "filepath", "file_path", "file", "filename", "file_name")
#: Column names taken for the labels when ``label_column`` is not given (case-insensitive).
LABEL_COLUMNS = ("labels", "label", "tags", "classes", "categories", "targets", "target")
#: Delimiters looked for in a label string, in this order; a space only when none of them is present.
DELIMITERS = ("|", ";", ",")
LABEL_FORMATS = ("auto", "delimited", "list", "columns")
_READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet", ".pq": "parquet"}
_SHOWN = 5  # missing images named in an error


# --- one table ------------------------------------------------------------------------------------------------------


@dataclass
class _Part:
    """The rows of one split read from one table: where they came from (for messages) and their cells."""

    split: str
    source: str  # the file, for messages
    base: Location  # what relative image paths are relative to
    table: pa.Table
    rows: np.ndarray  # the table's row numbers (0-based) of these rows, for messages


def _location(text: str, root: str | None, what: str) -> Location:
    try:
        if root and "://" not in text and not os.path.isabs(os.path.expanduser(text)):
            return Location.parse(root, "dataset.root").join(text)
        return Location.parse(text, what)
    except StorageError as error:
        raise DatasetError(str(error)) from None


def _read_table(location: Location, what: str) -> pa.Table:
    suffix = os.path.splitext(location.name)[1].lower()
    kind = _READERS.get(suffix)
    if kind is None:
        raise DatasetError(
            f"{what}: {location}: unknown manifest format {suffix or '(no extension)'!r}; allowed: "
            + ", ".join(_READERS)
        )
    try:
        data = pa.BufferReader(location.read_bytes())
    except FileNotFoundError:
        raise DatasetError(f"{what}: {location}: file not found") from None
    except OSError as error:
        raise DatasetError(f"{what}: {location}: could not be read ({error})") from None
    try:
        if kind in ("csv", "tsv"):
            from pyarrow import csv

            return csv.read_csv(
                data,
                parse_options=csv.ParseOptions(delimiter="\t" if kind == "tsv" else ","),
                convert_options=csv.ConvertOptions(strings_can_be_null=False, quoted_strings_can_be_null=False),
            )
        if kind == "json":
            from pyarrow import json as pajson

            return pajson.read_json(data)
        import pyarrow.parquet as pq

        return pq.read_table(data)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as error:
        raise DatasetError(
            f"{what}: {location}: not a readable {kind.upper()} file ({str(error).splitlines()[0]})"
        ) from None


def _column(table: pa.Table, wanted: str | None, candidates: tuple[str, ...], what: str, source: str) -> str | None:
    if wanted is not None:
        if wanted not in table.column_names:
            raise DatasetError(f"{source}: no column {wanted!r} ({what}); columns: {', '.join(table.column_names)}")
        return wanted
    lower = {name.lower(): name for name in table.column_names}
    found = [lower[c] for c in candidates if c in lower]
    if what == "labels" and len(found) > 1:
        raise DatasetError(
            f"{source}: ambiguous label column: {', '.join(repr(f) for f in found)} could each be the labels; "
            f"set label_column"
        )
    return found[0] if found else None


# --- labels ---------------------------------------------------------------------------------------------------------


@dataclass
class _Labels:
    """How every table of the dataset gives its labels (decided once, from the first table)."""

    format: str
    column: str | None = None  # delimited / list
    delimiter: str | None = None  # delimited
    columns: list[str] = field(default_factory=list)  # columns


def _is_binary_column(column: pa.ChunkedArray) -> bool:
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        values = pc.unique(column.combine_chunks().cast(pa.int64())).to_pylist()
        return set(values) <= {0, 1, None}
    return False


def _decide_labels(part: _Part, options: dict, reserved: set[str], others_parts: list[_Part] = ()) -> _Labels:
    """How the labels are given, decided from the first table ``part`` (a delimiter from every table's values)."""
    table, source = part.table, part.source
    wanted = options.get("label_format", "auto")
    column = _column(table, options.get("label_column"), LABEL_COLUMNS, "labels", source)
    others = [c for c in table.column_names if c not in reserved and c != column]
    if wanted == "columns" or (wanted == "auto" and column is None):
        label_columns = [c for c in table.column_names if c not in reserved]
        if not label_columns:
            raise DatasetError(
                f"{source}: no label column (looked for {', '.join(LABEL_COLUMNS)} or 0/1 columns); set label_column"
            )
        return _Labels("columns", columns=label_columns)
    if column is None:
        raise DatasetError(
            f"{source}: no label column for label_format {wanted} (looked for {', '.join(LABEL_COLUMNS)}); "
            f"set label_column"
        )
    binary = [c for c in others if _is_binary_column(table.column(c))]
    if wanted == "auto" and binary and len(binary) == len(others):
        raise DatasetError(
            f"{source}: ambiguous label column: {column!r} and the 0/1 columns {', '.join(binary[:5])} could each be "
            f"the labels; set label_format (delimited, list or columns)"
        )
    for other in others_parts:
        if column not in other.table.column_names:
            raise DatasetError(f"{other.source}: no column {column!r} (the label column of {source})")
    kind = table.column(column).type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        if wanted == "delimited":
            raise DatasetError(
                f"{source}: column {column!r} holds lists, not delimited strings; set label_format: list"
            )
        return _Labels("list", column)
    if wanted == "list" or (wanted == "auto" and _looks_like_json_lists(table.column(column))):
        return _Labels("list", column)
    delimiter = options.get("delimiter")
    if delimiter is None:
        found = {_find_delimiter(p.table.column(column), column, p.source, p.rows) for p in (part, *others_parts)}
        found.discard(" ")  # a table with one label per row has none of the delimiters
        if len(found) > 1:
            raise DatasetError(
                f"{source}: ambiguous label column {column!r}: the tables use different delimiters "
                f"({', '.join(repr(d) for d in sorted(found))}); set delimiter"
            )
        delimiter = found.pop() if found else _find_delimiter(table.column(column), column, source, part.rows)
    return _Labels("delimited", column, delimiter)


def _strings(column: pa.ChunkedArray) -> pa.Array:
    array = column.combine_chunks()
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        array = array.cast(pa.string())
    return pc.fill_null(array, "")


def _looks_like_json_lists(column: pa.ChunkedArray) -> bool:
    values = pc.utf8_trim_whitespace(_strings(column))
    filled = pc.filter(values, pc.not_equal(values, ""))
    return len(filled) > 0 and pc.all(pc.starts_with(filled, "[")).as_py()


def _find_delimiter(column: pa.ChunkedArray, name: str, source: str, rows: np.ndarray) -> str:
    values = _strings(column)
    present = [d for d in DELIMITERS if pc.any(pc.match_substring(values, d)).as_py()]
    if len(present) > 1:
        first = [
            int(np.flatnonzero(pc.match_substring(values, d).to_numpy(zero_copy_only=False))[0]) for d in present[:2]
        ]
        raise DatasetError(
            f"{source}: ambiguous label column {name!r}: both {present[0]!r} (row {rows[first[0]] + 1}: "
            f"{values[first[0]].as_py()!r}) and {present[1]!r} (row {rows[first[1]] + 1}: "
            f"{values[first[1]].as_py()!r}) "
            f"appear; set delimiter"
        )
    return present[0] if present else " "


def _label_lists(part: _Part, labels: _Labels) -> pa.ListArray:
    """Each row's labels as a list of strings (for delimited and list formats)."""
    column = part.table.column(labels.column)
    if labels.format == "delimited":
        values = _strings(column)
        if labels.delimiter == " ":
            lists = pc.split_pattern_regex(pc.utf8_trim_whitespace(values), r"\s+")
        else:
            lists = pc.split_pattern(values, labels.delimiter)
    else:
        kind = column.type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            lists = column.combine_chunks()
            if pa.types.is_large_list(kind):
                lists = lists.cast(pa.list_(kind.value_type))
            lists = (
                pa.ListArray.from_arrays(pc.fill_null(lists.offsets, 0), lists.flatten().cast(pa.string()))
                if lists.null_count == 0
                else _lists_with_nulls(lists)
            )
        else:
            lists = _parse_json_lists(_strings(column), part, labels.column)
    flat = pc.utf8_trim_whitespace(lists.flatten().cast(pa.string()))
    return pa.ListArray.from_arrays(lists.offsets, flat)


def _lists_with_nulls(lists: pa.ListArray) -> pa.ListArray:
    return pa.array([[str(v) for v in (row or [])] for row in lists.to_pylist()], type=pa.list_(pa.string()))


def _parse_json_lists(values: pa.Array, part: _Part, column: str) -> pa.ListArray:
    rows = []
    for k, text in enumerate(values.to_pylist()):
        if not text.strip():
            rows.append([])
            continue
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, list):
            raise DatasetError(
                f"{part.source}: row {part.rows[k] + 1}: column {column!r}: {text!r} is not a JSON list of labels"
            )
        rows.append([str(v) for v in parsed])
    return pa.array(rows, type=pa.list_(pa.string()))


def _targets(part: _Part, labels: _Labels, classes: list[str]) -> np.ndarray:
    """The ``[N, C]`` 0/1 matrix of ``part``; a label outside ``classes`` names its row and value."""
    count = part.table.num_rows
    if labels.format == "columns":
        missing = [c for c in classes if c not in part.table.column_names]
        if missing:
            raise DatasetError(f"{part.source}: no column for class(es) {', '.join(repr(m) for m in missing[:5])}")
        extra = [c for c in labels.columns if c not in classes and c in part.table.column_names]
        if extra:
            raise DatasetError(
                f"{part.source}: column {extra[0]!r} is not a class of the class list (not a 0/1 label column?)"
            )
        targets = np.zeros((count, len(classes)), dtype=np.uint8)
        for k, name in enumerate(classes):
            column = part.table.column(name).combine_chunks()
            if not (
                pa.types.is_integer(column.type)
                or pa.types.is_boolean(column.type)
                or pa.types.is_floating(column.type)
            ):
                raise DatasetError(
                    f"{part.source}: row {part.rows[0] + 1}: class column {name!r} holds {column.type}, not 0/1 values"
                )
            values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(~np.isin(values, (0.0, 1.0)))
            if len(bad):
                raise DatasetError(
                    f"{part.source}: row {part.rows[bad[0]] + 1}: class column {name!r} holds "
                    f"{column[int(bad[0])].as_py()!r}; "
                    f"allowed: 0 or 1"
                )
            targets[:, k] = values.astype(np.uint8)
        return targets
    lists = _label_lists(part, labels)
    flat = lists.flatten()
    keep = pc.not_equal(flat, "")
    row_of = np.repeat(np.arange(count), np.diff(lists.offsets.to_numpy()))
    index = pc.index_in(flat, value_set=pa.array(classes, type=pa.string()))
    unknown = np.flatnonzero(pc.and_(pc.is_null(index), keep).to_numpy(zero_copy_only=False))
    if len(unknown):
        first = int(unknown[0])
        shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
        raise DatasetError(
            f"{part.source}: row {part.rows[row_of[first]] + 1}: label {flat[first].as_py()!r} is not in the class "
            f"list "
            f"({len(classes)} classes: {shown}); {len(unknown)} such label(s) in this file"
        )
    known = pc.and_(pc.is_valid(index), keep).to_numpy(zero_copy_only=False)
    targets = np.zeros((count, len(classes)), dtype=np.uint8)
    targets[row_of[known], index.to_numpy(zero_copy_only=False)[known].astype(np.int64)] = 1
    return targets


def _classes_from_data(parts: list[_Part], labels: _Labels) -> list[str]:
    if labels.format == "columns":
        return list(labels.columns)
    names: set[str] = set()
    for part in parts:
        flat = pc.utf8_trim_whitespace(_label_lists(part, labels).flatten())
        names.update(v for v in pc.unique(flat).to_pylist() if v)
    return sorted(names)


def _read_classes(location: Location) -> list[str]:
    try:
        text = location.read_text()
    except FileNotFoundError:
        raise DatasetError(f"classes: {location}: file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"classes: {location}: could not be read ({error})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"classes: {location}: no class names (one per line)")
    seen: set[str] = set()
    for number, name in enumerate(names, 1):
        if name in seen:
            raise DatasetError(f"classes: {location}: class {name!r} listed twice (line {number})")
        seen.add(name)
    return names


# --- images of a table ----------------------------------------------------------------------------------------------


def _images(part: _Part, column: str) -> Images:
    """The images of ``part``: relative paths resolved against its manifest's folder, URIs checked, bytes kept."""
    cells = part.table.column(column).combine_chunks()
    blobs = None
    kind = cells.type
    if pa.types.is_struct(kind):
        fields = {kind.field(i).name for i in range(kind.num_fields)}
        if "bytes" not in fields and "path" not in fields:
            raise DatasetError(f"{part.source}: column {column!r} holds structs without 'bytes' or 'path' fields")
        blobs = cells.field("bytes") if "bytes" in fields else None
        paths = cells.field("path") if "path" in fields else pa.nulls(len(cells), pa.string())
        if blobs is not None:
            has_bytes = pc.and_(pc.is_valid(blobs), pc.greater(pc.binary_length(blobs), 0))
            paths = pc.if_else(has_bytes, pa.nulls(len(cells), pa.string()), paths.cast(pa.string()))
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        blobs, paths = cells, pa.nulls(len(cells), pa.string())
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        paths = cells.cast(pa.string())
    else:
        raise DatasetError(f"{part.source}: image column {column!r} holds {kind}; allowed: paths, URIs or bytes")
    if blobs is not None:
        blobs = blobs.cast(pa.binary())
        empty = pc.or_(pc.is_null(blobs), pc.equal(pc.binary_length(blobs), 0))
        orphan = np.flatnonzero(
            pc.and_(empty, pc.or_(pc.is_null(paths), pc.equal(paths, ""))).to_numpy(zero_copy_only=False)
        )
    else:
        orphan = np.flatnonzero(pc.or_(pc.is_null(paths), pc.equal(paths, "")).to_numpy(zero_copy_only=False))
    if len(orphan):
        raise DatasetError(
            f"{part.source}: row {part.rows[orphan[0]] + 1}: no image in column {column!r} "
            f"({len(orphan)} row(s) without one)"
        )
    refs = [_resolve(text, part, row) if text is not None else None for row, text in enumerate(paths.to_pylist())]
    sizes = np.zeros(len(refs), dtype=np.int64)
    if blobs is not None:
        sizes = pc.fill_null(pc.binary_length(blobs), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        blobs = pc.if_else(pc.is_valid(pa.array(refs, pa.string())), pa.nulls(len(refs), pa.binary()), blobs)
        if blobs.null_count == len(blobs):
            blobs = None
    return Images(pa.array(refs, type=pa.string()), blobs, sizes)


def _resolve(text: str, part: _Part, row: int) -> str:
    text = text.strip()
    if "://" in text:
        try:
            return str(Location.parse(text, f"{part.source}: row {part.rows[row] + 1}: image"))
        except StorageError as error:
            raise DatasetError(str(error)) from None
    if os.path.isabs(text):
        return os.path.normpath(text)
    if any(piece == ".." for piece in text.replace("\\", "/").split("/")) and not part.base.is_local:
        raise DatasetError(
            f"{part.source}: row {part.rows[row] + 1}: image {text!r}: '..' is not allowed in a remote manifest"
        )
    if part.base.is_local:
        return os.path.normpath(os.path.join(part.base.path, text))
    return str(part.base.join(text))


def _check_images(images: Images, part_of: list[tuple[str, int]]) -> list[str]:
    """Which referenced images are missing (``"<file> row N: <image>"``): one listing per folder (local or remote),
    not one request per image. Fills ``images.sizes`` (and ``versions`` of remote ones)."""
    refs = images.refs.to_pylist()
    by_folder: dict[str, list[int]] = {}
    for row, ref in enumerate(refs):
        if ref is not None:
            if "://" in ref:
                body, _, query = ref.partition("?")
                folder = body.rsplit("/", 1)[0] + "?" + query
            else:
                folder = os.path.dirname(ref)
            by_folder.setdefault(folder, []).append(row)
    versions: list[str | None] = [None] * len(refs)
    remote = False
    missing: list[int] = []
    for folder, rows in by_folder.items():
        if "://" in refs[rows[0]]:
            remote = True
            listing = _remote_listing(refs[rows[0]])
            for row in rows:
                found = listing.get(refs[row].split("?", 1)[0].rsplit("/", 1)[-1])
                if found is None:
                    missing.append(row)
                else:
                    images.sizes[row], versions[row] = found
        else:
            try:
                entries = {e.name: e for e in os.scandir(folder)}
            except (FileNotFoundError, NotADirectoryError):
                entries = {}
            except PermissionError as error:
                raise DatasetError(f"{folder}: the image folder cannot be listed ({error})") from None
            for row in rows:
                entry = entries.get(os.path.basename(refs[row]))
                if entry is None or not entry.is_file():
                    missing.append(row)
                else:
                    images.sizes[row] = entry.stat().st_size
    if remote:
        images.versions = pa.array(versions, type=pa.string())
    return [f"{part_of[r][0]} row {part_of[r][1] + 1}: {refs[r]}" for r in sorted(missing)]


def _remote_listing(uri: str) -> dict[str, tuple[int, str]]:
    folder = Location.parse(uri, "image").parent
    try:
        infos = folder.filesystem.get_file_info(pafs.FileSelector(folder.path, allow_not_found=True))
    except OSError as error:
        raise DatasetError(f"{folder}: the image folder cannot be listed ({error})") from None
    return {
        info.base_name: (int(info.size or 0), f"{info.size}:{info.mtime_ns}")
        for info in infos
        if info.type == pafs.FileType.File
    }


# --- the dataset ----------------------------------------------------------------------------------------------------


@dataclass
class Manifest:
    """Every split of a declared dataset, loaded and checked.

    Attributes:
        class_names: the classes, in the order of the model's outputs.
        classes_from: ``"file"`` or ``"data"`` (sorted labels, or the 0/1 columns' order).
        splits: per split, its images and ``[N, C]`` uint8 targets.
        warnings: what a user should know but does not stop a sweep (classes without a positive in train).
        description: one line per split saying where it came from.
    """

    name: str
    class_names: list[str]
    classes_from: str
    splits: dict[str, tuple[Images, np.ndarray]]
    warnings: list[str] = field(default_factory=list)
    description: list[str] = field(default_factory=list)

    def dataset(self, split: str, image_size: int, train: bool, skip_corrupt: bool = False):
        """The torch dataset of ``split`` (:class:`l2d.data.formats.ImageListDataset`)."""
        images, targets = self.splits[split]
        return ImageListDataset(
            images, targets, self.class_names, image_size, train, skip_corrupt, f"{self.name}/{split}"
        )


def _hold_out(count: int, split: str, val_fraction: float, val_seed: int) -> np.ndarray:
    order = np.random.default_rng(val_seed).permutation(count)
    cut = int(round(count * val_fraction))
    return np.sort(order[:cut] if split == "val" else order[cut:])


def _check_overlap(splits: dict[str, tuple[Images, np.ndarray]], where: dict[str, list[tuple[str, int]]]) -> None:
    seen = {
        split: {identity: row for row, identity in enumerate(images.identities())}
        for split, (images, _) in splits.items()
    }
    for a, b in (("train", "test"), ("val", "test"), ("train", "val")):
        if a not in seen or b not in seen:
            continue
        shared = [key for key in seen[a] if key in seen[b]]
        if shared:
            first = shared[0]
            file_a, row_a = where[a][seen[a][first]]
            file_b, row_b = where[b][seen[b][first]]
            image = first if not first.startswith("sha256:") else "the same embedded bytes"
            raise DatasetError(
                f"the same image is in {a} and {b}: {len(shared)} image(s), first {image} ({file_a} row {row_a + 1}, "
                f"{file_b} row {row_b + 1}); a split must not hold another's images"
            )


def _finish(
    name: str,
    parts_by_split: dict[str, list[_Part]],
    images_by_split: dict[str, Images],
    targets_by_split: dict[str, np.ndarray],
    classes: list[str],
    classes_from: str,
    val_fraction: float,
    val_seed: int,
    description: list[str],
) -> Manifest:
    where = {
        split: [(part.source, int(row)) for part in parts for row in part.rows]
        for split, parts in parts_by_split.items()
    }
    held_out = "val" not in images_by_split
    if held_out:
        images, targets, origin = images_by_split["train"], targets_by_split["train"], where["train"]
        for split in ("val", "train"):
            rows = _hold_out(len(images), split, val_fraction, val_seed)
            images_by_split[split], targets_by_split[split] = images.take(rows), targets[rows]
            where[split] = [origin[r] for r in rows]
        description.append(f"val: {val_fraction:g} of train held out (val_seed {val_seed})")
    for split in SPLITS:
        if len(images_by_split[split]) == 0:
            held = held_out and split in ("train", "val")
            raise DatasetError(
                f"{name}: the {split} split is empty"
                + (f" (val_fraction {val_fraction:g} of {len(origin)} train rows; give a val split)" if held else "")
            )
    splits = {split: (images_by_split[split], targets_by_split[split]) for split in SPLITS}
    _check_overlap(splits, where)
    warnings = []
    absent = [c for c, count in zip(classes, splits["train"][1].sum(0)) if count == 0]
    if absent:
        warnings.append(
            f"{len(absent)} class(es) without a positive in train (they cannot be learnt; mAP skips a class "
            f"without a positive only in the split it scores): {', '.join(absent[:20])}"
            + (", ..." if len(absent) > 20 else "")
        )
    return Manifest(name, classes, classes_from, splits, warnings, description)


def load_manifest(
    root: str | None = None,
    train: str | None = None,
    val: str | None = None,
    test: str | None = None,
    path: str | None = None,
    split_column: str = "split",
    image_column: str | None = None,
    label_column: str | None = None,
    label_format: str = "auto",
    delimiter: str | None = None,
    classes: str | None = None,
    val_fraction: float = 0.1,
    val_seed: int = 0,
    **_ignored: Any,
) -> Manifest:
    """Load and check every split of a manifest dataset (see the module's docstring)."""
    if label_format not in LABEL_FORMATS:
        raise DatasetError(f"label_format: {label_format!r} is not allowed; allowed: {', '.join(LABEL_FORMATS)}")
    parts: dict[str, list[_Part]] = {}
    description = []
    if path is not None:
        if any(v is not None for v in (train, val, test)):
            raise DatasetError(
                "manifest: give either path (one table with a split column) or train/val/test files, not both"
            )
        location = _location(path, root, "path")
        table = _read_table(location, "path")
        if split_column not in table.column_names:
            raise DatasetError(
                f"{location}: no split column {split_column!r}; columns: {', '.join(table.column_names)}"
            )
        values = _strings(table.column(split_column))
        known = pc.is_in(values, value_set=pa.array(SPLITS))
        bad = np.flatnonzero(~known.to_numpy(zero_copy_only=False))
        if len(bad):
            raise DatasetError(
                f"{location}: row {bad[0] + 1}: split {values[int(bad[0])].as_py()!r} is not allowed; allowed: "
                + ", ".join(SPLITS)
            )
        for split in SPLITS:
            rows = np.flatnonzero(pc.equal(values, split).to_numpy(zero_copy_only=False))
            if len(rows):
                parts[split] = [_Part(split, str(location), location.parent, table.take(pa.array(rows)), rows)]
                description.append(f"{split}: {len(rows)} rows of {location} ({split_column} = {split})")
    else:
        for split, text in (("train", train), ("val", val), ("test", test)):
            if text is None:
                continue
            location = _location(text, root, split)
            table = _read_table(location, split)
            if table.num_rows == 0:
                raise DatasetError(f"manifest: the {split} split is empty ({location} has no rows)")
            parts[split] = [_Part(split, str(location), location.parent, table, np.arange(table.num_rows))]
            description.append(f"{split}: {table.num_rows} rows of {location}")
    for split in ("train", "test"):
        if split not in parts:
            how = f"rows with {split_column} = {split}" if path is not None else f"{split}: FILE"
            raise DatasetError(
                f"manifest: no {split} split ({how}); a manifest needs train and test (val is held out of train "
                f"when absent)"
            )
    first = parts["train"][0]
    image = _column(first.table, image_column, IMAGE_COLUMNS, "image", first.source)
    if image is None:
        raise DatasetError(
            f"{first.source}: no image column (looked for {', '.join(IMAGE_COLUMNS)}); set image_column; "
            f"columns: {', '.join(first.table.column_names)}"
        )
    reserved = {image} | ({split_column} if path is not None else set())
    all_parts = [p for split in SPLITS for p in parts.get(split, [])]
    for part in all_parts:
        if image not in part.table.column_names:
            raise DatasetError(f"{part.source}: no column {image!r} (the image column of {first.source})")
    options = {"label_format": label_format, "label_column": label_column, "delimiter": delimiter}
    labels = _decide_labels(first, options, reserved, [p for p in all_parts if p is not first])
    if classes is not None:
        class_names, classes_from = _read_classes(_location(classes, root, "classes")), "file"
    else:
        class_names, classes_from = _classes_from_data(all_parts, labels), "data"
        if not class_names:
            raise DatasetError(f"{first.source}: no labels in any split")
    origin = "classes file" if classes_from == "file" else "columns" if labels.format == "columns" else "data (sorted)"
    description.insert(
        0,
        f"labels: {labels.format}"
        + (f" column {labels.column!r}" if labels.column else "")
        + (f", delimiter {labels.delimiter!r}" if labels.format == "delimited" else "")
        + f"; {len(class_names)} classes from the {origin}",
    )
    images_by_split, targets_by_split = {}, {}
    for split, split_parts in parts.items():
        part = split_parts[0]
        images_by_split[split] = _images(part, image)
        targets_by_split[split] = _targets(part, labels, class_names)
    _check_all_images(images_by_split, parts)
    return _finish(
        "manifest",
        parts,
        images_by_split,
        targets_by_split,
        class_names,
        classes_from,
        val_fraction,
        val_seed,
        description,
    )


def _check_all_images(images_by_split: dict[str, Images], parts: dict[str, list[_Part]]) -> None:
    """Every image of every split exists; else how many are missing, and the first five with their files and rows."""
    missing = []
    for split in SPLITS:
        if split in images_by_split:
            part = parts[split][0]
            missing += _check_images(images_by_split[split], [(part.source, int(r)) for r in part.rows])
    if missing:
        named = "; ".join(missing[:_SHOWN]) + ("; ..." if len(missing) > _SHOWN else "")
        raise DatasetError(f"{len(missing)} image file(s) missing ({named})")


def load_coco(
    root: str | None = None,
    train: str | None = None,
    train_images: str | None = None,
    val: str | None = None,
    val_images: str | None = None,
    test: str | None = None,
    test_images: str | None = None,
    keep_empty: bool = False,
    keep_empty_test: bool = False,
    val_fraction: float = 0.1,
    val_seed: int = 0,
    name: str = "coco",
    **_ignored: Any,
) -> Manifest:
    """Load and check COCO-format instances files under any name (see the module's docstring); ``name``: a preset's
    (``coco2014``), in messages and the datasets' names."""
    given = {"train": (train, train_images), "val": (val, val_images), "test": (test, test_images)}
    for split in ("train", "test"):
        if given[split][0] is None:
            raise DatasetError(f"coco: no {split} split ({split}: INSTANCES.json and {split}_images: FOLDER)")
    parts: dict[str, list[_Part]] = {}
    images_by_split, targets_by_split = {}, {}
    categories_of: tuple[str, list] | None = None
    description = []
    for split, (instances, folder) in given.items():
        if instances is None:
            if folder is not None:
                raise DatasetError(f"coco: {split}_images is given without {split} (its instances file)")
            continue
        if folder is None:
            raise DatasetError(f"coco: {split} is given without {split}_images (the folder of its images)")
        location = _location(instances, root, split)
        try:
            data = json.loads(location.read_bytes())
            categories = sorted(data["categories"], key=lambda c: c["id"])
            images = sorted(data["images"], key=lambda i: i["id"])
            objects = data["annotations"]
        except FileNotFoundError:
            raise DatasetError(f"{split}: {location}: file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise DatasetError(f"{location}: not a COCO instances file ({error!r})") from None
        names = [(c["id"], c["name"]) for c in categories]
        if categories_of is None:
            categories_of = (str(location), names)
        elif names != categories_of[1]:
            raise DatasetError(
                f"{location}: its categories differ from those of {categories_of[0]}; every split needs the same"
            )
        class_index = {c["id"]: k for k, c in enumerate(categories)}
        row_of = {image["id"]: row for row, image in enumerate(images)}
        targets = np.zeros((len(images), len(categories)), dtype=np.uint8)
        for obj in objects:
            if obj.get("category_id") not in class_index:
                raise DatasetError(
                    f"{location}: annotation {obj.get('id')} has category {obj.get('category_id')!r}, not in the "
                    f"file's categories"
                )
            if obj.get("image_id") not in row_of:
                raise DatasetError(
                    f"{location}: annotation {obj.get('id')} names unknown image {obj.get('image_id')!r}"
                )
            targets[row_of[obj["image_id"]], class_index[obj["category_id"]]] = 1
        rows = np.arange(len(images))
        if not (keep_empty or (keep_empty_test and split == "test")):
            rows = np.flatnonzero(targets.any(1))
        base = _location(folder, root, f"{split}_images")
        table = pa.table({"image": pa.array([images[r]["file_name"] for r in rows], pa.string())})
        part = _Part(split, str(location), base, table, rows)
        parts[split] = [part]
        images_by_split[split] = _images(part, "image")
        targets_by_split[split] = targets[rows]
        description.append(f"{split}: {len(rows)} of {len(images)} images of {location}, images in {base}")
    _check_all_images(images_by_split, parts)
    assert categories_of is not None
    class_names = [name for _, name in categories_of[1]]
    return _finish(
        name, parts, images_by_split, targets_by_split, class_names, "file", val_fraction, val_seed, description
    )


_LOADED: dict[str, Manifest] = {}
_LOADED_LOCK = threading.Lock()


def load(kind: str, root: str | None, options: dict, log: bool = True, name: str | None = None) -> Manifest:
    """The checked dataset of ``kind`` (``manifest`` or ``coco``), loaded once per process for the same options;
    its warnings logged when it is first loaded (unless ``log`` is false: the caller prints them). ``name``: a preset's
    (``coco2014``), for its datasets' names."""
    key = json.dumps([kind, root, options, name], sort_keys=True, default=str)
    with _LOADED_LOCK:
        if key not in _LOADED:
            loader = load_manifest if kind == "manifest" else load_coco
            _LOADED.clear()  # one declared dataset per process at a time
            _LOADED[key] = loader(root, **options, **({"name": name} if name else {}))
            for warning in _LOADED[key].warnings if log else ():
                logger.warning("%s: %s", _LOADED[key].name, warning)
        return _LOADED[key]


#: Options that act on one split's torch dataset, not on what is loaded.
SPLIT_ONLY = ("skip_corrupt", "train_transform")


def _builder(kind: str):
    def build(root: str | None, split: str, image_size: int, **options: Any):
        loaded = load(kind, root, {k: v for k, v in options.items() if k not in SPLIT_ONLY})
        train = split == "train" if options.get("train_transform") is None else options["train_transform"]
        return loaded.dataset(split, image_size, train, options.get("skip_corrupt", False))

    build.__name__ = f"build_{kind}"
    build.__doc__ = f"One split of a ``{kind}`` dataset (:func:`load_{kind}`)."
    return build


build_manifest = _builder("manifest")
build_coco = _builder("coco")


def build_coco2014(
    root: str,
    split: str,
    image_size: int,
    keep_empty: bool = False,
    keep_empty_test: bool = False,
    val_fraction: float = 0.1,
    val_seed: int = 0,
    skip_corrupt: bool = False,
    train_transform: bool | None = None,
):
    """COCO 2014 in its standard layout (``<root>/annotations/instances_{train,val}2014.json``, images in
    ``<root>/{train,val}2014/``): a preset of the declared ``coco`` format (:func:`load_coco`), with train2014 for
    train (val held out of it) and val2014 for test."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (allowed: train, val, test)")
    base = Path(root)
    options = {
        "train": str(base / "annotations" / "instances_train2014.json"),
        "train_images": str(base / "train2014"),
        "test": str(base / "annotations" / "instances_val2014.json"),
        "test_images": str(base / "val2014"),
        "keep_empty": keep_empty,
        "keep_empty_test": keep_empty_test,
        "val_fraction": val_fraction,
        "val_seed": val_seed,
    }
    loaded = load("coco", None, options, name="coco2014")
    train = split == "train" if train_transform is None else train_transform
    return loaded.dataset(split, image_size, train, skip_corrupt)
