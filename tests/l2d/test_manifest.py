"""A user's own data, declared: manifests (CSV, JSON Lines, Parquet) and COCO files under any name (l2d.data.manifest).

Every test writes real images (PNG canvases) and real tables, and reads them back through the builders a sweep uses.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from l2d.data import DatasetError, build_dataset, check_declared, data_fingerprint
from l2d.data import manifest as manifest_module
from tests.userdata import CLASSES
from tests.userdata import labels as _labels
from tests.userdata import png as _png
from tests.userdata import write_csv as _csv


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Every test loads its own files (the per-process cache of loaded manifests emptied)."""
    manifest_module._LOADED.clear()
    yield
    manifest_module._LOADED.clear()


def _images(folder, count: int, prefix: str = "") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"{prefix}{i:03d}.png"
        (folder / name).write_bytes(_png(i + (1000 if prefix else 0)))
        names.append(name)
    return names


def _split_files(tmp_path, train: int = 20, test: int = 6, labels=None, delimiter: str = "|") -> dict:
    """train.csv and test.csv beside images/ (paths relative to the tables)."""
    names = _images(tmp_path / "images", train + test)
    labels = labels or _labels(train + test)
    rows = [[f"images/{n}", delimiter.join(labels[i])] for i, n in enumerate(names)]
    return {
        "train": _csv(tmp_path / "train.csv", ["image", "labels"], rows[:train]),
        "test": _csv(tmp_path / "test.csv", ["image", "labels"], rows[train:]),
    }


def _expected(labels: list[list[str]]) -> np.ndarray:
    return np.array([[name in row for name in CLASSES] for row in labels], dtype=np.uint8)


# --- formats ----------------------------------------------------------------------------------------------------------


def test_csv_with_delimited_labels_and_a_held_out_val(tmp_path):
    files = _split_files(tmp_path)
    loaded = check_declared("manifest", None, files)
    assert loaded.class_names == CLASSES and loaded.classes_from == "data"
    assert {split: len(images) for split, (images, _) in loaded.splits.items()} == {"train": 18, "val": 2, "test": 6}
    test = build_dataset("manifest", None, "test", 16, **files)
    assert test.class_names == CLASSES
    np.testing.assert_array_equal(test.targets, _expected(_labels(26)[20:]))
    image, target = test[0]
    assert image.shape == (3, 16, 16) and target.tolist() == _expected(_labels(26)[20:21])[0].tolist()
    assert test.paths[0] == str(tmp_path / "images" / "020.png")
    train, val = (build_dataset("manifest", None, s, 16, **files) for s in ("train", "val"))
    assert not set(train.paths) & set(val.paths) and len(set(train.paths) | set(val.paths)) == 20


def test_one_table_with_a_split_column_and_an_explicit_val(tmp_path):
    names = _images(tmp_path / "img", 12)
    labels = _labels(12)
    splits = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    path = _csv(
        tmp_path / "all.csv",
        ["file_name", "tags", "subset"],
        [[f"img/{n}", ",".join(labels[i]), splits[i]] for i, n in enumerate(names)],
    )
    loaded = check_declared("manifest", None, {"path": path, "split_column": "subset"})
    assert {split: len(images) for split, (images, _) in loaded.splits.items()} == {"train": 6, "val": 3, "test": 3}
    np.testing.assert_array_equal(loaded.splits["val"][1], _expected(labels[6:9]))
    with pytest.raises(DatasetError, match=r"all.csv: no split column 'split'"):
        manifest_module.load_manifest(path=path)


def test_json_lines_with_label_lists_and_a_classes_file(tmp_path):
    names = _images(tmp_path / "images", 10)
    labels = _labels(10)
    for split, rows in (("train", range(7)), ("test", range(7, 10))):
        with open(tmp_path / f"{split}.jsonl", "w") as handle:
            for i in rows:
                handle.write(json.dumps({"path": str(tmp_path / "images" / names[i]), "labels": labels[i]}) + "\n")
    (tmp_path / "classes.txt").write_text("dog\ncat\ncar\n")  # the model's output order, not sorted
    options = {"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl")}
    loaded = check_declared("manifest", None, {**options, "classes": str(tmp_path / "classes.txt")})
    assert loaded.class_names == ["dog", "cat", "car"] and loaded.classes_from == "file"
    np.testing.assert_array_equal(loaded.splits["test"][1], _expected(labels[7:])[:, ::-1])


def test_parquet_with_embedded_bytes_as_hugging_face_writes_it(tmp_path):
    labels = _labels(12)
    for split, rows in (("train", range(9)), ("test", range(9, 12))):
        table = pa.table(
            {
                "image": pa.array(
                    [{"bytes": _png(i), "path": f"photo_{i}.png"} for i in rows],
                    type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
                ),
                "label": pa.array([labels[i] for i in rows], type=pa.list_(pa.string())),
            }
        )
        pq.write_table(table, tmp_path / f"{split}.parquet")
    options = {"train": str(tmp_path / "train.parquet"), "test": str(tmp_path / "test.parquet")}
    test = build_dataset("manifest", None, "test", 16, **options)
    image, target = test[1]
    assert image.shape == (3, 16, 16)
    assert target.tolist() == _expected([labels[10]])[0].tolist()
    # Images held as bytes: two datasets with other pixels of the same sizes have other fingerprints.
    other = tmp_path / "other"
    other.mkdir()
    for split in ("train", "test"):
        table = pq.read_table(tmp_path / f"{split}.parquet")
        flipped = [{"bytes": row["bytes"][:-12] + bytes(12), "path": row["path"]} for row in table["image"].to_pylist()]
        pq.write_table(
            table.set_column(0, "image", pa.array(flipped, type=table["image"].type)), other / f"{split}.parquet"
        )
    manifest_module._LOADED.clear()
    again = build_dataset(
        "manifest", None, "test", 16, train=str(other / "train.parquet"), test=str(other / "test.parquet")
    )
    assert again.fingerprint() != test.fingerprint()


def test_one_column_per_class(tmp_path):
    names = _images(tmp_path / "images", 10)
    labels = _labels(10)
    onehot = _expected(labels)
    rows = [[f"images/{n}", *onehot[i].tolist()] for i, n in enumerate(names)]
    files = {
        "train": _csv(tmp_path / "train.csv", ["image", *CLASSES], rows[:7]),
        "test": _csv(tmp_path / "test.csv", ["image", *CLASSES], rows[7:]),
    }
    loaded = check_declared("manifest", None, files)
    assert loaded.class_names == CLASSES
    np.testing.assert_array_equal(loaded.splits["test"][1], onehot[7:])
    bad = [row[:] for row in rows]
    bad[3][2] = 2
    _csv(tmp_path / "train.csv", ["image", *CLASSES], bad[:7])
    manifest_module._LOADED.clear()
    with pytest.raises(DatasetError, match=r"train.csv: row 4: class column 'cat' holds 2; allowed: 0 or 1"):
        check_declared("manifest", None, files)


def test_coco_files_under_any_name(tmp_path):
    categories = [{"id": 7, "name": "dog"}, {"id": 3, "name": "car"}, {"id": 5, "name": "cat"}]
    for split, count in (("fit", 8), ("holdout", 4)):
        names = _images(tmp_path / f"{split}_pictures", count, prefix=split)
        images = [{"id": 100 + i, "file_name": n} for i, n in enumerate(names)]
        objects = [{"id": i, "image_id": 100 + i, "category_id": (3, 5, 7)[i % 3]} for i in range(count - 1)]
        (tmp_path / f"{split}-labels.json").write_text(
            json.dumps({"images": images, "annotations": objects, "categories": categories})
        )
    options = {
        "train": str(tmp_path / "fit-labels.json"),
        "train_images": str(tmp_path / "fit_pictures"),
        "test": str(tmp_path / "holdout-labels.json"),
        "test_images": str(tmp_path / "holdout_pictures"),
    }
    loaded = check_declared("coco", None, options)
    assert loaded.class_names == ["car", "cat", "dog"]  # the rank of the category id
    assert len(loaded.splits["test"][0]) == 3  # the image without an object dropped
    test = build_dataset("coco", None, "test", 16, **options, keep_empty_test=True)
    assert len(test) == 4 and test.targets[:3].argmax(1).tolist() == [0, 1, 2]
    (tmp_path / "holdout-labels.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": categories[:2]})
    )
    manifest_module._LOADED.clear()
    with pytest.raises(DatasetError, match=r"holdout-labels.json: its categories differ from those of .*fit-labels"):
        check_declared("coco", None, options)


def test_the_teacher_key_ignores_where_the_files_are(tmp_path):
    """A copy of the data elsewhere is the same data: the same fingerprint, and paths are not in the teacher's key."""
    from l2d.run import RunConfig, teacher_key

    first, second = tmp_path / "a", tmp_path / "b"
    prints = []
    for folder in (first, second):
        folder.mkdir()
        files = _split_files(folder)
        manifest_module._LOADED.clear()
        splits = {s: build_dataset("manifest", None, s, 16, **files) for s in ("train", "val", "test")}
        prints.append(data_fingerprint(splits))
        config = RunConfig(dataset="manifest", dataset_options=files, image_size=16)
        assert "train" not in teacher_key(config, prints[-1]).dataset_options
    assert prints[0] == prints[1]


def test_images_on_s3_are_listed_once_and_cached_per_node(s3_server, tmp_path, monkeypatch):
    import boto3

    monkeypatch.setenv("L2D_SWEEP_CACHE", str(tmp_path / "cache"))
    client = boto3.client("s3", endpoint_url=f"http://{s3_server}")
    labels = _labels(8)
    rows = []
    for i in range(8):
        client.put_object(Bucket="sweeps", Key=f"data/images/{i}.png", Body=_png(i))
        rows.append([f"images/{i}.png", "|".join(labels[i])])
    query = f"?endpoint_override={s3_server}&scheme=http"
    for split, part in (("train", rows[:6]), ("test", rows[6:])):
        _csv(tmp_path / f"{split}.csv", ["image", "labels"], part)
        client.upload_file(str(tmp_path / f"{split}.csv"), "sweeps", f"data/{split}.csv")
    options = {"train": f"s3://sweeps/data/train.csv{query}", "test": f"s3://sweeps/data/test.csv{query}"}
    test = build_dataset("manifest", None, "test", 16, **options)
    assert test.paths[0].startswith("s3://sweeps/data/images/6.png")
    image, target = test[0]
    assert image.shape == (3, 16, 16) and target.tolist() == _expected([labels[6]])[0].tolist()
    cached = list((tmp_path / "cache" / "images").rglob("*.png"))
    assert len(cached) == 1 and cached[0].read_bytes() == _png(6)
    test[0]  # read again: from the cache (the object deleted from the store to prove it)
    client.delete_object(Bucket="sweeps", Key="data/images/6.png")
    assert test[0][0].shape == (3, 16, 16)
    manifest_module._LOADED.clear()
    with pytest.raises(DatasetError, match=r"1 image file\(s\) missing \(s3://sweeps/data/test.csv.* row 1: "):
        check_declared("manifest", None, options)


# --- the checks ---------------------------------------------------------------------------------------------------


def test_missing_images_are_counted_and_the_first_five_named(tmp_path):
    files = _split_files(tmp_path)
    for i in (2, 3, 5, 7, 11, 13, 21):
        (tmp_path / "images" / f"{i:03d}.png").unlink()
    with pytest.raises(DatasetError) as error:
        check_declared("manifest", None, files)
    message = str(error.value)
    assert message.startswith("7 image file(s) missing (")
    assert "train.csv row 3: " in message and "images/002.png" in message and "images/011.png" in message
    assert "013.png" not in message and message.endswith("; ...)")


def test_a_label_outside_the_class_list_names_its_row_and_value(tmp_path):
    labels = _labels(26)
    labels[4] = ["cat", "horse"]
    files = _split_files(tmp_path, labels=labels)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
    with pytest.raises(DatasetError, match=r"train.csv: row 5: label 'horse' is not in the class list \(3 classes"):
        check_declared("manifest", None, {**files, "classes": str(tmp_path / "classes.txt")})


def test_an_empty_split_is_refused(tmp_path):
    files = _split_files(tmp_path)
    _csv(tmp_path / "test.csv", ["image", "labels"], [])
    with pytest.raises(DatasetError, match=r"manifest: the test split is empty \(.*test.csv has no rows\)"):
        check_declared("manifest", None, files)


def test_the_same_image_in_train_and_test_is_refused(tmp_path):
    files = _split_files(tmp_path)
    rows = [["images/003.png", "cat"], ["./images/021.png", "dog"]]
    _csv(tmp_path / "test.csv", ["image", "labels"], rows)
    with pytest.raises(DatasetError, match=r"the same image is in train and test: 1 image\(s\), first .*003.png"):
        check_declared("manifest", None, files)


def test_the_same_embedded_bytes_in_train_and_test_are_refused(tmp_path):
    for split, seeds in (("train", list(range(1, 11))), ("test", [40, 2])):
        pq.write_table(
            pa.table({"image": [_png(s) for s in seeds], "labels": ["cat"] * len(seeds)}), tmp_path / f"{split}.parquet"
        )
    with pytest.raises(
        DatasetError, match=r"the same image is in train and test: 1 image\(s\), first the same embedded bytes"
    ):
        check_declared(
            "manifest", None, {"train": str(tmp_path / "train.parquet"), "test": str(tmp_path / "test.parquet")}
        )


def test_a_class_without_a_positive_in_train_is_a_warning(tmp_path, caplog):
    labels = _labels(26)
    labels = [[n for n in row if n != "dog"] or ["cat"] for row in labels[:20]] + labels[20:]
    files = _split_files(tmp_path, labels=labels)
    loaded = check_declared("manifest", None, files)  # its callers (run, validate, dataset) print the warnings
    assert loaded.warnings == [
        "1 class(es) without a positive in train (they cannot be learnt; mAP skips a class without a positive only "
        "in the split it scores): dog"
    ]
    manifest_module._LOADED.clear()
    with caplog.at_level(logging.WARNING, logger="l2d.data.manifest"):
        build_dataset("manifest", None, "train", 16, **files)  # a run's or a trial's process logs them
    assert "without a positive in train" in caplog.text and "dog" in caplog.text


@pytest.mark.parametrize(
    "header, row, expected",
    [
        (["image", "labels", "tags"], ["images/000.png", "cat", "dog"], "ambiguous label column: 'labels', 'tags'"),
        (["image", "labels", "cat", "dog"], ["images/000.png", "cat", 1, 0], "ambiguous label column: 'labels' and"),
        (["image", "labels"], ["images/000.png", "cat|dog;car"], "ambiguous label column 'labels': both '|'"),
    ],
)
def test_an_ambiguous_label_column_is_refused(tmp_path, header, row, expected):
    _images(tmp_path / "images", 1)
    files = {
        "train": _csv(tmp_path / "train.csv", header, [row]),
        "test": _csv(tmp_path / "test.csv", header, [row]),
    }
    with pytest.raises(DatasetError, match=expected.replace("|", r"\|").replace("(", r"\(")):
        check_declared("manifest", None, files)


def test_an_image_uri_with_credentials_is_refused_without_echoing_it(tmp_path):
    files = _split_files(tmp_path)
    _csv(tmp_path / "test.csv", ["image", "labels"], [["s3://alice:s3cr3t@bucket/a.png", "cat"]])
    with pytest.raises(DatasetError) as error:
        check_declared("manifest", None, files)
    assert "test.csv: row 1: image" in str(error.value) and "carries credentials" in str(error.value)
    assert "s3cr3t" not in str(error.value)


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"train": "data.xlsx"}, "unknown manifest format '.xlsx'"),
        ({"train": "nope.csv", "test": "nope.csv"}, "train: .*nope.csv: file not found"),
        ({"test": "test.csv"}, "manifest: no train split"),
        ({"path": "train.csv", "train": "train.csv"}, "give either path"),
        ({"label_format": "xml"}, "label_format: 'xml' is not allowed"),
    ],
)
def test_bad_declarations_name_what_is_wrong(tmp_path, monkeypatch, options, expected):
    monkeypatch.chdir(tmp_path)
    files = _split_files(tmp_path)
    if "label_format" in options:
        options = {**files, **options}
    with pytest.raises(DatasetError, match=expected):
        check_declared("manifest", None, options)


def test_a_classes_file_with_a_name_twice_is_refused(tmp_path):
    files = _split_files(tmp_path)
    (tmp_path / "classes.txt").write_text("car\ncat\ncar\n")
    with pytest.raises(DatasetError, match=r"classes.txt: class 'car' listed twice \(line 3\)"):
        check_declared("manifest", None, {**files, "classes": str(tmp_path / "classes.txt")})


def test_tables_with_different_delimiters_are_refused(tmp_path):
    """Each table alone is unambiguous (train uses '|', test ';'), but together they would parse as other labels."""
    files = _split_files(tmp_path)
    _csv(tmp_path / "test.csv", ["image", "labels"], [["images/021.png", "cat;dog"], ["images/022.png", "car"]])
    with pytest.raises(DatasetError, match=r"ambiguous label column 'labels': the tables use different delimiters"):
        check_declared("manifest", None, files)


def test_embedded_bytes_are_hashed_once_for_the_overlap_check_and_the_fingerprint(monkeypatch):
    import hashlib
    import types

    import numpy as np
    import pyarrow as pa

    from l2d.data import images as images_module

    calls = []

    def counted(data=b""):
        calls.append(1)
        return hashlib.sha256(data)

    monkeypatch.setattr(images_module, "hashlib", types.SimpleNamespace(sha256=counted))
    blobs = pa.array([b"a", b"bb", b"ccc", b"dddd"], type=pa.binary())
    images = images_module.Images(pa.nulls(4, pa.string()), blobs, np.array([1, 2, 3, 4]))
    first = images.identities()  # the overlap check
    assert len(calls) == 4 and images.identities() == first and len(calls) == 4
    part = images.take(np.array([2, 0]))  # a split's rows, then its fingerprint
    part.update(hashlib.sha256())
    assert part.identities() == [first[2], first[0]] and len(calls) == 4


def _images_dataset(files: dict, split: str, image_size: int = 16):
    from l2d.data import build_dataset

    return build_dataset("manifest", None, split, image_size, **{k: v for k, v in files.items() if k != "format"})


def test_images_decoded_once_are_the_same_pixels_and_are_not_decoded_again(tmp_path, monkeypatch):
    """The decoded-image store: each image decoded and resized once per node, every later read (another epoch,
    another trial's dataset, a loader worker) from the store, exactly the pixels a fresh decode gives."""
    import pickle

    import torch

    from tests.userdata import csv_dataset

    monkeypatch.setenv("L2D_SWEEP_CACHE", str(tmp_path / "cache"))
    files = csv_dataset(tmp_path / "data", train=10, test=6)
    for split in ("train", "test"):  # augmented and plain
        plain, stored = _images_dataset(files, split), _images_dataset(files, split)
        store = stored.decode_once()
        for index in range(len(plain)):
            torch.manual_seed(index)
            expected = plain[index]
            torch.manual_seed(index)
            got = stored[index]
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), (split, index)
        assert store.count() == len(plain)

    expected = plain[3][0]  # (the test split's plain dataset: no augmentation)
    again = _images_dataset(files, "test")  # another trial on this node: the same store, nothing decoded
    monkeypatch.setattr(type(again), "_decode", lambda self, index: (_ for _ in ()).throw(AssertionError("decoded")))
    again.decode_once()
    assert again.store.key == store.key and again.store.count() == len(again)
    assert torch.equal(again[3][0], expected)
    copied = pickle.loads(pickle.dumps(again))  # a loader worker, a Ray task: the store opened again there
    assert torch.equal(copied[3][0], expected) and copied.store.count() == len(again)
    monkeypatch.undo()
    monkeypatch.setenv("L2D_SWEEP_CACHE", str(tmp_path / "cache"))
    assert _images_dataset(files, "test", image_size=24).decode_once().key != store.key  # another side
    damaged = _images_dataset(files, "test")  # the pixels file cut short: its flags are not trusted, all decoded again
    with open(store.path, "r+b") as handle:
        handle.truncate(100)
    damaged.decode_once()
    assert damaged.store.count() == 0 and torch.equal(damaged[3][0], expected) and damaged.store.count() == 1
    first = tmp_path / "data" / "images" / "010.png"  # the test split's first image, rewritten: another store
    from tests.userdata import png

    first.write_bytes(png(999))
    changed = _images_dataset(files, "test")
    assert changed.decode_once().key != store.key and changed.store.count() == 0
    assert torch.equal(changed[0][0], _images_dataset(files, "test")[0][0])


def test_a_run_decodes_its_image_splits_once_unless_told_not_to(tmp_path, monkeypatch):
    from l2d.run import RunConfig, build_splits
    from tests.userdata import csv_dataset

    monkeypatch.setenv("L2D_SWEEP_CACHE", str(tmp_path / "cache"))
    files = csv_dataset(tmp_path / "data", train=10, test=6)
    config = RunConfig(
        dataset="manifest",
        dataset_options={k: v for k, v in files.items() if k != "format"},
        image_size=16,
        teacher="test_resnet",
        student="test_efficientnet",
    )
    assert all(split.store is not None for split in build_splits(config).values())
    assert all(split.store is None for split in build_splits(config.replace(decoded_images=False)).values())
    assert build_splits(RunConfig(dataset="mosaic-digits", dataset_options={"size": 16}, image_size=16))  # no store
