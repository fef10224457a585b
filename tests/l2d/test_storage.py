"""The storage layer: parsing, joining, atomic writes, listing and deleting; local and on a real S3 server."""

import re

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


@pytest.mark.parametrize(
    "text,message",
    [
        ("s3://AKIDEXAMPLE:s3cr3tvalue@bucket/runs", "carries credentials in the URI"),
        (
            "s3://bucket/runs?access_key=AKIDEXAMPLE&secret_key=s3cr3tvalue",
            "carries a credential parameter (access_key)",
        ),
        ("ftp://host/x", "unsupported scheme 'ftp'"),
        ("s3:///runs", "has no bucket"),
        ("", "expected a folder or a URI"),
    ],
)
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


def _tree(root):
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else None) for p in root.rglob("*"))


def test_write_target_rule_refuses_what_it_did_not_write(tmp_path, monkeypatch):
    """Issue 22: `export --out ~/Documents` replaced the folder's files, `--out <sweep>` the sweep, `--out .` emptied
    the
    working directory. Now a target must be new, empty, or carry the tool's marker; anything else is refused and
    nothing under it changes."""
    from l2d.storage import OUTPUT_MARKER, SWEEP_MARKER, check_output, prepare_output

    documents = tmp_path / "Documents"
    documents.mkdir()
    (documents / "thesis.tex").write_text("years of work")
    sweep = tmp_path / "runs" / "quickstart"
    (sweep / "train").mkdir(parents=True)
    (sweep / SWEEP_MARKER).write_text("{}")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.md").write_text("mine")
    monkeypatch.chdir(tmp_path / "work")
    before = _tree(tmp_path)
    for target, message in [
        (documents, "is not empty and was not written by l2d-sweep"),
        (".", "is the current directory"),
        (tmp_path, "is the current directory (or holds it)"),
        (sweep, "is a sweep folder"),
        (sweep / "train" / "x", "inside the sweep folder"),
        (documents / "thesis.tex", "exists and is not a folder"),
    ]:
        with pytest.raises(StorageError, match=re.escape(message)):
            prepare_output(target)
    assert _tree(tmp_path) == before  # nothing touched
    # New, empty, or written by this tool before: accepted (and marked).
    assert prepare_output(tmp_path / "new" / "export").is_dir()
    (tmp_path / "empty").mkdir()
    prepare_output(tmp_path / "empty")
    assert (tmp_path / "empty" / OUTPUT_MARKER).is_file()
    (tmp_path / "empty" / "student.safetensors").write_bytes(b"x")
    assert check_output(tmp_path / "empty") == Location.parse(tmp_path / "empty")


def test_write_target_rule_on_s3(s3_server):
    from l2d.storage import SWEEP_MARKER, prepare_output

    root = Location.parse(f"s3://sweeps/targets?endpoint_override={s3_server}&scheme=http")
    (root / "runs" / "sweep" / SWEEP_MARKER).write_text("{}")
    (root / "theirs" / "notes.txt").write_text("keep")
    for target, message in [
        (root / "runs" / "sweep", "is a sweep folder"),
        (root / "runs" / "sweep" / "exports", "inside the sweep folder"),
        (root / "theirs", "was not written by l2d-sweep"),
    ]:
        with pytest.raises(StorageError, match=message):
            prepare_output(target)
    assert (root / "theirs" / "notes.txt").read_text() == "keep"
    prepare_output(root / "exports" / "best")
    assert [p.name for p in (root / "exports" / "best").list()] == [".l2d-output"]


@pytest.mark.parametrize(
    "uri, found",
    [
        ("postgresql://u@h/db?password=hunter2", ["password"]),
        ("postgresql://u@h/db?sslpassword=hunter2&sslmode=require", ["sslpassword"]),
        ("postgresql://u:hunter2@h/db", ["password"]),
        ("https://mlflow.example/?token=hunter2", ["token"]),
        ("s3://bucket/runs?secret_access_key=hunter2", ["secret_access_key"]),
        ("s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http", []),
        ("postgresql://u@h/db?sslmode=require", []),
        ("/plain/path", []),
    ],
)
def test_credentials_in_uris_are_found(uri, found):
    from l2d.storage import credentials_in_uri, redact

    assert credentials_in_uri(uri) == found
    assert "hunter2" not in redact(uri)
