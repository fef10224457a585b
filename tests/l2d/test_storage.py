"""The storage layer: parsing, joining, atomic writes, listing and deleting; local and on a real S3 server."""

import os
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
    for part in ("..", "a/../b", "./a", "a/./b"):
        with pytest.raises(StorageError, match="relative part"):
            Location.parse(tmp_path) / part


def test_a_uri_without_options_prints_without_a_question_mark():
    assert str(Location.parse("s3://bucket/runs")) == "s3://bucket/runs"


def test_uri_options_keep_blank_values_and_may_hold_a_uri():
    assert Location.parse("s3://bucket/runs?anonymous=").query == "anonymous="
    inner = Location.parse("s3://bucket/runs?endpoint_override=http://127.0.0.1:9000")
    assert (inner.scheme, inner.path) == ("s3", "bucket/runs")
    assert (Location.parse("s3://bucket/runX") / "a").path == "bucket/runX/a"  # the path's own characters kept


def _exercise(root: Location) -> None:
    folder = root / "a"
    (folder / "one.txt").write_text("1")
    (folder / "sub" / "two.bin").write_bytes(b"22")
    assert (folder / "one.txt").read_text() == "1" and (folder / "one.txt").is_file()
    assert folder.is_dir() and not (folder / "none").exists()
    assert [entry.name for entry in folder.list()] == ["one.txt", "sub"]  # no temporary file left behind
    assert folder.list()[0].read_text() == "1"  # a listed entry keeps the scheme and the options of its folder
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
        # The user-info is the host part's, up to its last "@"; a colon after the "@" is a port.
        ("postgresql://u@corp:hunter2@h/db", ["password"]),
        ("postgresql://u@h:5432/db", []),
        ("s3://bucket/a:b@c/d", []),  # an "@" and a ":" in the path
        ("s3://bucket?x=a:b@c?y=1", ["x (a user:password@ in its value)"]),  # ... in a query value
        # The query is everything after the first "?"; a blank secret parameter is still one.
        ("s3://b/r?x=1?token=2", []),
        ("s3://b/r?a=1?b=2&token=3", ["token"]),
        ("s3://b/r?token=", ["token"]),
    ],
)
def test_credentials_in_uris_are_found(uri, found):
    from l2d.storage import credentials_in_uri, redact

    assert credentials_in_uri(uri) == found
    assert "hunter2" not in redact(uri)


@pytest.mark.parametrize(
    "value, secret",
    [
        ("alice:hunter2@host:9000", True),  # a user-info without a scheme
        ("http://alice:hunter2@host:9000", True),  # ... and with one
        ("http://host:9000/a:b@c", False),  # an "@" and a ":" in the path, not in the host part
        ("host:9000/x/a:b@c", False),
        ("http://host:9000", False),
        ("alice@corp:hunter2@host:9000", True),  # the user-info runs to the last "@" of the host part
        ("alice@host:9000", False),  # a user without a password, then a port
        ("host:9000/a:b@c/d", False),
        ("http://host:9000/x?next=ftp://a:b@c", False),  # a URI inside the value's own query
    ],
)
def test_a_password_inside_a_query_value_is_found_in_the_host_part_only(value, secret):
    from l2d.storage import credentials_in_uri

    found = credentials_in_uri(f"s3://bucket/runs?endpoint_override={value}&scheme=http")
    assert found == (["endpoint_override (a user:password@ in its value)"] if secret else [])


@pytest.mark.parametrize(
    "text, shown",
    [
        ("postgresql://u:p@ss@h/db", "postgresql://***@h/db"),  # a raw "@" inside the password
        ("s3://bucket/team@corp/runs/x", "s3://bucket/team@corp/runs/x"),  # an "@" in the path is not user-info
        ("s3://b/r?endpoint_override=http://alice:pw@h&x=1", "s3://b/r?endpoint_override=***&x=***"),
        ("s3://b/r?token=a=b", "s3://b/r?token=***"),  # an "=" inside a value
        ("s3://b/r?a=1?b=2", "s3://b/r?a=***"),  # a "?" inside a value
        ("s3://u@b/r?x=1", "s3://***@b/r?x=***"),
        ("/plain/path?x=1", "/plain/path?x=1"),
        ("s3://b?x=a@c?y=1", "s3://b?x=***"),  # an "@" in a query value is not user-info
    ],
)
def test_redact_masks_the_user_info_and_every_query_value_and_nothing_else(text, shown):
    from l2d.storage import redact

    assert redact(text) == shown


def test_the_cache_folder_is_the_environment_s_or_the_user_s(monkeypatch, tmp_path):
    from pathlib import Path

    from l2d.storage import cache_dir

    monkeypatch.setenv("L2D_SWEEP_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("L2D_SWEEP_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == Path(tmp_path) / ".cache" / "l2d-sweep"


def test_modified_and_size_of_missing_empty_and_present_files(tmp_path):
    import datetime

    root = Location.parse(tmp_path)
    assert (root / "none").modified() is None and (root / "none").size() == 0
    (root / "empty").write_bytes(b"")
    assert (root / "empty").size() == 0
    (root / "folder" / "empty").write_bytes(b"")
    assert (root / "folder").size() == 0  # a folder of empty files holds no bytes
    (root / "one").write_bytes(b"x")
    when = (root / "one").modified()
    assert isinstance(when, datetime.datetime)
    assert abs(when.timestamp() - (tmp_path / "one").stat().st_mtime) < 1


def test_failpoints_act_only_where_named_and_kill_on_the_nth_pass(monkeypatch):
    """The fault-injection harness the slow fault tests drive (sweeps.core.faults): a named point raises, sleeps or
    kills the process the N-th time it passes; every other point, and any point with nothing set, does nothing."""
    import subprocess
    import sys
    import time

    from l2d import storage

    monkeypatch.setattr(storage, "_PASSED", {})
    storage.failpoint("write-window")  # nothing set: nothing happens
    monkeypatch.setenv("L2D_SWEEP_FAILPOINTS", "other=error, write-window = error,slow=sleep:0.3")
    with pytest.raises(OSError, match="failpoint write-window: a storage failure"):
        storage.failpoint("write-window")  # the second item, spaces around it
    started = time.monotonic()
    storage.failpoint("slow")
    assert time.monotonic() - started >= 0.3
    storage.failpoint("unnamed")  # a point nobody named
    script = (
        "import os, sys; from l2d.storage import failpoint\n"
        "for n in range(1, 5):\n"
        "    failpoint('other'); failpoint('point'); print(n, flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "L2D_SWEEP_FAILPOINTS": "other=9,point=3"},
        timeout=60,
    )
    assert done.returncode == -9 and done.stdout.split() == ["1", "2"]  # killed on the third pass of `point`


def test_a_refused_target_is_named_with_the_flag_given_and_the_sweep_it_is_inside(tmp_path):
    from l2d.storage import SWEEP_MARKER, check_output, prepare_output

    sweep = tmp_path / "runs" / "quickstart"
    sweep.mkdir(parents=True)
    (sweep / SWEEP_MARKER).write_text("{}")
    with pytest.raises(
        StorageError, match=rf"^--plots .*/train/x: is inside the sweep folder {re.escape(str(sweep))};"
    ):
        prepare_output(sweep / "train" / "x", "--plots")
    with pytest.raises(StorageError, match=r"^--export-dir"):
        check_output("", "--export-dir")  # a location that does not parse: the flag named too
    with pytest.raises(StorageError, match=r"^--export-dir"):
        prepare_output("", "--export-dir")


def test_a_sweep_far_above_the_target_is_still_found(tmp_path):
    """The walk up from the target checks 64 folders (the target and 63 above it): a sweep 63 levels up is found."""
    from l2d.storage import SWEEP_MARKER, check_output

    (tmp_path / SWEEP_MARKER).write_text("{}")
    deep = tmp_path.joinpath(*["d"] * 63)
    with pytest.raises(StorageError, match="inside the sweep folder"):
        check_output(deep)
