"""Datasets: the mosaics (determinism, disjoint items, co-occurrence, cache) and each on-disk format."""

import gzip
import json
import logging
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from l2d.data import DatasetError, build_dataset, dataset_stats
from l2d.data.formats import VOC_CLASSES
from l2d.data.mosaic import MosaicConfig, generate_mosaic, item_pool, load_source
from l2d.data.transforms import build_transform

SMALL = dict(size=120)


# --- mosaics --------------------------------------------------------------------------------------------------


def test_mosaic_is_deterministic_for_a_seed():
    a, ta = generate_mosaic(MosaicConfig("digits", "train", 50, seed=3))
    b, tb = generate_mosaic(MosaicConfig("digits", "train", 50, seed=3))
    c, tc = generate_mosaic(MosaicConfig("digits", "train", 50, seed=4))
    assert np.array_equal(a, b) and np.array_equal(ta, tb)
    assert not np.array_equal(a, c)


def test_mosaic_item_pools_are_disjoint():
    config = MosaicConfig("digits", "train", 10)
    source = load_source(config)
    train_from, train_items = item_pool(config, len(source["train"][0]))
    val_from, val_items = item_pool(MosaicConfig("digits", "val", 10), len(source["train"][0]))
    test_from, _ = item_pool(MosaicConfig("digits", "test", 10), len(source["test"][0]))
    assert train_from == val_from == "train" and test_from == "test"
    assert not set(train_items.tolist()) & set(val_items.tolist())
    assert len(train_items) + len(val_items) == len(source["train"][0])
    # The source's train and test images are themselves different images.
    train_bytes = {image.tobytes() for image in source["train"][0]}
    assert sum(image.tobytes() in train_bytes for image in source["test"][0]) <= 2  # the digits hold rare exact twins


def test_mosaic_canvases_only_use_their_own_pool():
    # Every canvas cell holding an item must equal an item of that split's pool (rendered at the cell size).
    config = MosaicConfig("digits", "val", 40, cell_size=8)
    images, targets = generate_mosaic(config)
    source = load_source(config)
    _, chosen = item_pool(config, len(source["train"][0]))
    pool = {img.tobytes() for img in source["train"][0][chosen]}
    others = {img.tobytes() for i, img in enumerate(source["train"][0]) if i not in set(chosen.tolist())}
    cells = [
        images[n, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8]
        for n in range(len(images))
        for r in range(2)
        for c in range(2)
    ]
    filled = [cell for cell in cells if cell.any()]
    assert len(filled) == int(targets.sum())
    # At cell_size 8 the digits are rendered at their native 8 x 8 size.
    assert all(cell.tobytes() in pool for cell in filled)
    assert not any(cell.tobytes() in others - pool for cell in filled)


def test_mosaic_labels_co_occur_like_scenes():
    dataset = build_dataset("mosaic-digits", split="train", size=1500)
    stats = dataset_stats(dataset)
    cardinality = dataset.targets.sum(1)
    assert cardinality.min() >= 1 and cardinality.max() <= 4
    assert 1.5 < stats["labels_per_image_mean"] < 3.5
    # Independent labels would give a lift near 1 for every pair; scenes make some pairs far more common.
    lifts = [pair[3] for pair in stats["top_pairs"]]
    assert max(lifts) > 1.8
    frequencies = dataset.targets.mean(0)
    assert frequencies.max() > 2 * frequencies.min()  # scene popularity makes classes unequal


def test_mosaic_cache_is_reused(_isolated_cache):
    def cache_files():  # the session's cache holds other tests' splits too
        return set((_isolated_cache / "datasets").glob("mosaic-digits-test-*.npz"))

    before = cache_files()
    build_dataset("mosaic-digits", split="test", size=300, seed=9)
    files = list(cache_files() - before)
    assert len(files) == 1 and not list((_isolated_cache / "datasets").glob("*.tmp"))
    fresh, targets = generate_mosaic(MosaicConfig("digits", "test", 300, seed=9))
    with np.load(files[0]) as cached:
        assert np.array_equal(cached["images"], fresh) and np.array_equal(cached["targets"], targets)
    # Mark the cached copy: a second build must return the mark, i.e. read the cache instead of regenerating.
    marked = fresh.copy()
    marked[0] = 255
    np.savez(files[0], images=marked, targets=targets)
    again = build_dataset("mosaic-digits", split="test", size=300, seed=9)
    assert (again.images[0] == 255).all()
    other = build_dataset("mosaic-digits", split="test", size=300, seed=10)  # another key, another file
    assert not (other.images[0] == 255).all()
    assert len(cache_files() - before) == 2


def test_mosaic_item_shapes_and_transforms():
    dataset = build_dataset("mosaic-digits", split="train", image_size=40, **SMALL)
    image, target = dataset[0]
    assert image.shape == (3, 40, 40) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert target.shape == (10,) and set(target.unique().tolist()) <= {0.0, 1.0}
    test = build_dataset("mosaic-digits", split="test", image_size=40, **SMALL)
    assert torch.equal(test[3][0], test[3][0])  # no augmentation at test time


def test_unknown_mosaic_option():
    with pytest.raises(ValueError, match="unknown mosaic-digits option 'sizes'"):
        build_dataset("mosaic-digits", split="train", sizes=10)


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def _fashion_root(tmp_path, train=300, test=100):
    rng = np.random.default_rng(0)
    root = tmp_path / "fashion"
    root.mkdir()
    for prefix, count in (("train", train), ("t10k", test)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (count, 28, 28)))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    return root


def test_mosaic_fashion_reads_idx_files(tmp_path):
    root = _fashion_root(tmp_path)
    dataset = build_dataset("mosaic-fashion", root=str(root), split="val", size=30)
    assert len(dataset) == 30 and dataset.class_names[0] == "t-shirt"


def test_mosaic_fashion_bad_files(tmp_path):
    root = _fashion_root(tmp_path)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        build_dataset("mosaic-fashion", root=str(root), split="test", size=10)
    data = gzip.open(root / "train-images-idx3-ubyte.gz").read()
    with gzip.open(root / "train-images-idx3-ubyte.gz", "wb") as stream:
        stream.write(data[:-100])  # truncated
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: header says"):
        build_dataset("mosaic-fashion", root=str(root), split="train", size=10)


@pytest.mark.skipif(
    not __import__("os").path.isdir("/usr/share/datasets/fashion-mnist"),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_mosaic_fashion_from_debian_package():
    dataset = build_dataset("mosaic-fashion", split="test", size=50)
    assert len(dataset) == 50 and dataset.targets.sum(1).min() >= 1


# --- on-disk formats ------------------------------------------------------------------------------------------


def _jpeg(path, seed=0, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG")


VOC_OBJECTS = {
    "000001": [("dog", 0), ("person", 0)],
    "000002": [("cat", 0), ("dog", 1)],
    "000003": [("car", 0)],
    "000004": [("person", 0)],
    "000005": [("sofa", 0), ("cat", 0)],
    "000009": [("cat", 0), ("dog", 1)],
}


def _voc(tmp_path, ids=("000001", "000002", "000003", "000004", "000005"), test_ids=("000009",)):
    base = tmp_path / "VOCdevkit" / "VOC2007"
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "Annotations").mkdir()
    for n, image_id in enumerate(list(ids) + list(test_ids)):
        body = "".join(
            f"<object><name>{name}</name><difficult>{d}</difficult></object>" for name, d in VOC_OBJECTS[image_id]
        )
        (base / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{body}</annotation>")
        _jpeg(base / "JPEGImages" / f"{image_id}.jpg", n)
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    (base / "ImageSets" / "Main" / "test.txt").write_text("\n".join(test_ids) + "\n")
    return base


def test_voc_reader(tmp_path):
    _voc(tmp_path)
    train = build_dataset("voc2007", str(tmp_path), "train", 32, val_fraction=0.2)
    val = build_dataset("voc2007", str(tmp_path), "val", 32, val_fraction=0.2)
    test = build_dataset("voc2007", str(tmp_path), "test", 32)
    assert len(train) == 4 and len(val) == 1 and len(test) == 1
    assert not set(train.paths) & set(val.paths)
    assert len(train.class_names) == 20
    image, target = test[0]
    assert image.shape == (3, 32, 32)
    names = [train.class_names[k] for k in np.flatnonzero(target.numpy())]
    assert names == ["cat"]  # 000009: a cat and a difficult dog, ignored by default
    # Whichever split holds 000001, its labels are dog and person.
    split = train if any(p.endswith("000001.jpg") for p in train.paths) else val
    row = [p.endswith("000001.jpg") for p in split.paths].index(True)
    assert [split.class_names[k] for k in np.flatnonzero(split.targets[row])] == ["dog", "person"]


def test_voc_difficult_option(tmp_path):
    _voc(tmp_path)
    dog = VOC_CLASSES.index("dog")
    assert build_dataset("voc2007", str(tmp_path), "test", 32).targets[0, dog] == 0
    assert build_dataset("voc2007", str(tmp_path), "test", 32, difficult_as_positive=True).targets[0, dog] == 1


def test_voc_bad_inputs(tmp_path):
    base = _voc(tmp_path)
    (base / "Annotations" / "000003.xml").unlink()
    with pytest.raises(DatasetError, match="000003.xml: annotation not found"):
        build_dataset("voc2007", str(tmp_path), "train", 32)
    (base / "Annotations" / "000003.xml").write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(DatasetError, match="000003.xml: class 'unicorn' is not one of the 20 VOC classes"):
        build_dataset("voc2007", str(tmp_path), "train", 32)
    (base / "Annotations" / "000003.xml").write_text("<annotation></annotation>")
    (base / "JPEGImages" / "000009.jpg").unlink()
    with pytest.raises(DatasetError, match="missing, first: .*000009.jpg"):
        build_dataset("voc2007", str(tmp_path), "test", 32)
    (base / "ImageSets" / "Main" / "test.txt").write_text("")
    with pytest.raises(DatasetError, match="voc2007/test: the split is empty"):
        build_dataset("voc2007", str(tmp_path), "test", 32)


def test_truncated_image_errors_or_is_skipped(tmp_path, caplog):
    base = _voc(tmp_path, test_ids=("000009", "000001"))
    data = (base / "JPEGImages" / "000001.jpg").read_bytes()
    (base / "JPEGImages" / "000001.jpg").write_bytes(data[: len(data) // 2])
    dataset = build_dataset("voc2007", str(tmp_path), "test", 32)
    dataset[0]
    with pytest.raises(DatasetError, match="000001.jpg: unreadable or truncated image.*skip_corrupt=True"):
        dataset[1]
    with caplog.at_level(logging.WARNING):
        skipped = build_dataset("voc2007", str(tmp_path), "test", 32, skip_corrupt=True)
    assert len(skipped) == 1 and skipped.paths[0].endswith("000009.jpg")
    assert "voc2007/test: skipped 1 corrupt or unreadable image(s) of 2" in caplog.text
    (base / "JPEGImages" / "000009.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="000009.jpg: unreadable or truncated image"):
        build_dataset("voc2007", str(tmp_path), "test", 32)[0]
    with pytest.raises(DatasetError, match="every image is corrupt"):
        build_dataset("voc2007", str(tmp_path), "test", 32, skip_corrupt=True)


def _coco(tmp_path):
    categories = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    for source, count in (("train2014", 6), ("val2014", 3)):
        images = [{"id": 100 + n, "file_name": f"COCO_{source}_{n:012d}.jpg"} for n in range(count)]
        annotations = [{"id": n, "image_id": 100 + n, "category_id": [18, 1, 3][n % 3]} for n in range(count - 1)]
        annotations.append({"id": 99, "image_id": 100, "category_id": 1})
        for n in range(count):
            _jpeg(tmp_path / source / f"COCO_{source}_{n:012d}.jpg", n)
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / "annotations" / f"instances_{source}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )


def test_coco_reader(tmp_path):
    _coco(tmp_path)
    test = build_dataset("coco2014", str(tmp_path), "test", 32, val_fraction=0.2)  # 10 % of 5: no val at all
    # Classes follow the category ids ascending: person (1), car (3), dog (18).
    assert test.class_names == ["person", "car", "dog"]
    assert len(test) == 2  # the last val image has no label and is dropped
    assert len(build_dataset("coco2014", str(tmp_path), "test", 32, keep_empty=True, val_fraction=0.2)) == 3
    assert test.targets[0].tolist() == [1, 0, 1]  # image 100: dog + person
    train = build_dataset("coco2014", str(tmp_path), "train", 32, val_fraction=0.2)
    val = build_dataset("coco2014", str(tmp_path), "val", 32, val_fraction=0.2)
    assert len(train) + len(val) == 5 and not set(train.paths) & set(val.paths)


def test_coco_bad_inputs(tmp_path):
    _coco(tmp_path)
    path = tmp_path / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["annotations"].append({"id": 7, "image_id": 100, "category_id": 42})
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="instances_val2014.json: annotation 7 has category 42"):
        build_dataset("coco2014", str(tmp_path), "test", 32)
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="instances_val2014.json: not a COCO instances file"):
        build_dataset("coco2014", str(tmp_path), "test", 32)
    path.unlink()
    with pytest.raises(DatasetError, match="instances_val2014.json: file not found"):
        build_dataset("coco2014", str(tmp_path), "test", 32)


def _nuswide(tmp_path):
    concepts = ["sky", "water", "animal"]
    (tmp_path / "Concepts81.txt").write_text("\n".join(concepts) + "\n")
    (tmp_path / "ImageList").mkdir()
    (tmp_path / "TrainTestLabels").mkdir()
    for part, count in (("Train", 5), ("Test", 3)):
        names = [f"scene\\{part.lower()}_{n}.jpg" for n in range(count)]
        (tmp_path / "ImageList" / f"{part}Imagelist.txt").write_text("\n".join(names) + "\n")
        for n, name in enumerate(names):
            _jpeg(tmp_path / "Flickr" / name.replace("\\", "/"), n)
        for k, concept in enumerate(concepts):
            labels = [int((n + k) % 2 == 0 and n < count - 1) for n in range(count)]
            (tmp_path / "TrainTestLabels" / f"Labels_{concept}_{part}.txt").write_text(
                "\n".join(map(str, labels)) + "\n"
            )


def test_nuswide_reader(tmp_path):
    _nuswide(tmp_path)
    test = build_dataset("nuswide", str(tmp_path), "test", 32)
    assert test.class_names == ["sky", "water", "animal"]
    assert len(test) == 2 and test.targets.any(1).all()  # the unlabelled last image is dropped
    assert test.paths[0].endswith("Flickr/scene/test_0.jpg")
    assert len(build_dataset("nuswide", str(tmp_path), "test", 32, keep_empty=True)) == 3
    assert test[0][0].shape == (3, 32, 32)


def test_nuswide_bad_inputs(tmp_path):
    _nuswide(tmp_path)
    label_file = tmp_path / "TrainTestLabels" / "Labels_water_Test.txt"
    label_file.write_text("1\n0\n")
    with pytest.raises(DatasetError, match="Labels_water_Test.txt: 2 labels for 3 images"):
        build_dataset("nuswide", str(tmp_path), "test", 32)
    label_file.write_text("1\n0\n2\n")
    with pytest.raises(DatasetError, match="Labels_water_Test.txt: labels must be 0 or 1"):
        build_dataset("nuswide", str(tmp_path), "test", 32)
    label_file.unlink()
    with pytest.raises(DatasetError, match="Labels_water_Test.txt: file not found"):
        build_dataset("nuswide", str(tmp_path), "test", 32)


def test_build_dataset_errors():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        build_dataset("imagenet")
    with pytest.raises(ValueError, match="needs root="):
        build_dataset("coco2014")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        build_dataset("mosaic-digits", split="dev")


def test_train_transform_applies_cutout_and_randaugment():
    torch.manual_seed(0)
    image = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    train, test = build_transform(32, True), build_transform(32, False)
    outputs = [train(image) for _ in range(8)]
    assert any(not torch.equal(outputs[0], o) for o in outputs[1:])
    assert torch.equal(test(image), test(image)) and test(image).shape == (3, 32, 32)


def test_mosaic_scene_sizes_and_label_floor():
    from l2d.data.mosaic import MosaicConfig

    data = build_dataset(
        "mosaic-digits",
        split="train",
        size=300,
        grid=3,
        cell_size=8,
        min_scene=3,
        max_scene=4,
        min_labels=3,
        image_size=24,
    )
    counts = np.asarray(data.targets).sum(1)
    assert counts.min() >= 3 and counts.max() <= 6  # a scene of <= 4, one class from outside, never past 9 cells
    # The options added since the first cache keys leave the old keys (and so the cached canvases) unchanged.
    assert (
        MosaicConfig("digits", "train", 10).cache_key()
        == MosaicConfig("digits", "train", 10, min_scene=2, max_scene=3, min_labels=1).cache_key()
    )
    assert (
        MosaicConfig("digits", "train", 10, min_labels=2).cache_key() != MosaicConfig("digits", "train", 10).cache_key()
    )
    with pytest.raises(ValueError, match="min_labels 5 exceeds what a 2x2 canvas"):
        build_dataset("mosaic-digits", split="train", size=10, min_labels=5)


@pytest.mark.skipif(
    not __import__("os").path.isdir("/usr/share/datasets/fashion-mnist"),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_mosaic_scenes_is_the_papers_regime():
    from l2d.data import DATASETS, dataset_stats

    data = build_dataset("mosaic-scenes", split="train", scale=0.2)
    stats = dataset_stats(data)
    assert data[0][0].shape == (3, 96, 96) and DATASETS["mosaic-scenes"].image_size == 96
    share = sum(v for k, v in stats["labels_per_image_histogram"].items() if k >= 3) / stats["images"]
    assert share >= 0.8 and min(stats["labels_per_image_histogram"]) >= 2
    # Its defaults: pretrained EfficientNet-Lite teacher and student, 96 / 32 = 3 x 3 tokens at their last stage.
    info = DATASETS["mosaic-scenes"]
    assert info.weights[info.teacher] == "offline" and info.weights[info.student] == "offline"
