"""The storage layer: parsing, joining, atomic writes, listing and deleting; local and on a real S3 server."""

import pytest

from l2d.storage import Location, StorageError


def test_local_paths_are_absolute_and_join(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = Location.parse("runs")
    assert here.is_local and here.path == str(tmp_path / "runs")
    assert str(here / "a" / "b.txt") == str(tmp_path / "runs" / "a" / "b.txt")
    assert Location.parse(f"file://{tmp_path}/x") == Location.parse(tmp_path / "x")
    assert (here / "a").parent == here and (here / "a").name == "a"


def test_uris_keep_their_options_out_of_paths():
    root = Location.parse("s3://bucket/pre/fix/?scheme=http&endpoint_override=127.0.0.1:9000")
    assert (root.scheme, root.path) == ("s3", "bucket/pre/fix")
    assert root.query == "endpoint_override=127.0.0.1:9000&scheme=http"  # sorted: one spelling per location
    child = root / "sweep" / "spec.yaml"
    assert child.path == "bucket/pre/fix/sweep/spec.yaml" and child.query == root.query
    assert str(child) == "s3://bucket/pre/fix/sweep/spec.yaml?endpoint_override=127.0.0.1:9000&scheme=http"
    assert Location.parse(str(child)) == child  # round-trips through its string
    assert child.parent.parent == root
    assert Location.parse("gcs://b/x") == Location.parse("gs://b/x")


@pytest.mark.parametrize("text,message", [
    ("s3://AKIDEXAMPLE:s3cr3tvalue@bucket/runs", "carries credentials in the URI"),
    ("s3://bucket/runs?access_key=AKIDEXAMPLE&secret_key=s3cr3tvalue", "carries a credential parameter (access_key)"),
    ("ftp://host/x", "unsupported scheme 'ftp'"),
    ("s3:///runs", "has no bucket"),
    ("", "expected a folder or a URI"),
])
def test_bad_locations_are_refused(text, message):
    with pytest.raises(StorageError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        Location.parse(text)
    assert "s3cr3tvalue" not in str(error.value) and "AKIDEXAMPLE" not in str(error.value)  # never echoed


def test_relative_parts_are_refused(tmp_path):
    with pytest.raises(StorageError, match="relative part"):
        Location.parse(tmp_path) / ".."


def _exercise(root: Location) -> None:
    folder = root / "a"
    (folder / "one.txt").write_text("1")
    (folder / "sub" / "two.bin").write_bytes(b"22")
    assert (folder / "one.txt").read_text() == "1" and (folder / "one.txt").is_file()
    assert folder.is_dir() and not (folder / "none").exists()
    assert [entry.name for entry in folder.list()] == ["one.txt", "sub"]  # no temporary file left behind
    assert folder.size() == 3 and (folder / "one.txt").size() == 1
    (folder / "one.txt").write_text("replaced")
    assert (folder / "one.txt").read_text() == "replaced"
    with pytest.raises(FileNotFoundError, match=r"none\.txt.*: file not found"):
        (folder / "none.txt").read_bytes()
    (folder / "sub").delete()
    assert [entry.name for entry in folder.list()] == ["one.txt"]
    folder.delete()
    assert not folder.exists() and folder.list() == []
    folder.delete()  # deleting what is gone is not an error


def test_local_files(tmp_path):
    _exercise(Location.parse(tmp_path))


def test_s3_with_the_endpoint_in_the_uri(s3_server):
    _exercise(Location.parse(f"s3://sweeps/prefix?endpoint_override={s3_server}&scheme=http"))
