"""The results tables: statuses and best/last metrics, segments and their manifest, a writer that continues from the
files, readers that never see two generations mixed, rebuilds that lose no value a source still holds, SQL, formats."""

import json
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from sweeps.results import TRIAL_SCHEMA, CorruptResultsError, KnownTrial, ResultsWriter, SweepResults, format_table
from sweeps.results.store import FANOUT, MAX_LEVEL

CONFIG = {"teacher": "resnet14t", "student": "resnet10t", "method": "l2d", "lr": 0.002, "lambda_mld": 10.0}


def _fill(sweep):
    writer = ResultsWriter(str(sweep), max_epochs=3)
    for epoch, (val, test) in enumerate([(30.0, 29.0), (42.0, 40.0), (41.0, 41.5)], start=1):
        writer.record_epoch(
            "done",
            CONFIG,
            {
                "epoch": epoch,
                "val_mAP": val,
                "test_mAP": test,
                "student_params": 100.0,
                "epoch_seconds": 2.0,
                "time_total_s": 9,
            },
        )
        writer.write()
    writer.finish("done", CONFIG)
    writer.record_epoch("cut", {**CONFIG, "method": "kd", "lambda_kd": 5.0}, {"epoch": 1, "val_mAP": 20.0})
    writer.finish("cut", {})
    writer.trial("bad", {**CONFIG, "method": "mld"})
    writer.finish("bad", {}, error="NonFiniteLossError: non-finite loss at epoch 1, batch 3/9")
    writer.write()
    return writer


def _rows(sweep):
    return {row["trial_id"]: row for row in SweepResults(str(sweep)).trials.to_pylist()}


def test_rows_statuses_and_best_epoch(tmp_path):
    _fill(tmp_path).publish()
    trials = _rows(tmp_path)
    assert SweepResults(str(tmp_path)).trials.schema == TRIAL_SCHEMA
    done, cut, bad = trials["done"], trials["cut"], trials["bad"]
    assert (done["status"], done["epochs_run"], done["stopped_early"]) == ("completed", 3, False)
    assert (done["best_val_mAP"], done["best_epoch"], done["test_mAP_at_best"]) == (42.0, 2, 40.0)
    assert (done["last_val_mAP"], done["last_test_mAP"], done["wall_time_s"]) == (41.0, 41.5, 6.0)
    assert (cut["status"], cut["stopped_early"], cut["lambda_kd"], cut["lambda_mld"]) == ("stopped", True, 5.0, 10.0)
    assert bad["status"] == "failed" and bad["error"].startswith("NonFiniteLossError") and bad["epochs_run"] == 0
    epochs = SweepResults(str(tmp_path)).epochs
    assert epochs.num_rows == 4 and "time_total_s" not in epochs.schema.names  # Tune's own keys are left out
    # The compacted pair, for tools that read Parquet themselves, holds the same rows.
    published = {r["trial_id"]: r for r in pq.read_table(tmp_path / "results" / "trials.parquet").to_pylist()}
    assert published == trials


def test_a_new_writer_continues_from_the_files(tmp_path):
    _fill(tmp_path)
    again = ResultsWriter(str(tmp_path), max_epochs=3)
    assert again.rebuilt is None
    assert again.has_epoch("done", 3) and again.trials["bad"].error.startswith("NonFiniteLossError")
    again.record_epoch("lost", CONFIG, {"epoch": 1, "val_mAP": 5.0})
    # An unfinished trial no experiment continued keeps its rows, marked interrupted; finished ones are untouched.
    assert again.interrupt_unknown({"done", "cut"}) == ["lost"]
    again.write()
    rows = _rows(tmp_path)
    assert set(rows) == {"done", "cut", "bad", "lost"} and rows["lost"]["status"] == "interrupted"
    assert rows["lost"]["best_val_mAP"] == 5.0


def test_a_trial_id_given_to_another_config_keeps_the_old_rows_aside(tmp_path):
    writer = ResultsWriter(str(tmp_path), max_epochs=3)
    writer.record_epoch("t1", CONFIG, {"epoch": 1, "val_mAP": 7.0})
    writer.write()
    assert writer.set_aside_trial("t1") == "t1-lost"
    assert writer.trials["t1-lost"].status == "interrupted" and writer.has_epoch("t1-lost", 1)
    assert "t1" not in writer.trials and not writer.has_epoch("t1", 1)
    writer.write()
    rows = _rows(tmp_path)
    assert set(rows) == {"t1-lost"}  # the old id's rows are gone from the tables too, not only from memory
    assert SweepResults(str(tmp_path)).epochs.column("trial_id").to_pylist() == ["t1-lost"]


def test_a_report_writes_a_few_small_files_whatever_the_size(tmp_path):
    writer = ResultsWriter(str(tmp_path), max_epochs=10)
    windows = []
    for trial in range(300):
        before = writer.store.writes
        for epoch in range(1, 11):
            writer.record_epoch(f"t{trial}", CONFIG, {"epoch": epoch, "val_mAP": float(epoch)})
            writer.write()
        windows.append(writer.store.writes - before)
    manifest = json.loads((tmp_path / "results" / "manifest.json").read_text())
    assert len(manifest["segments"]) <= FANOUT * (MAX_LEVEL + 1)
    # Files written per trial's 10 reports: the same early and late (merges and the occasional compacted pair aside:
    # the medians of the first and last 50 trials, not their means).
    early, late = sorted(windows[:50])[25], sorted(windows[-50:])[25]
    assert early == late <= 10 * 3 + 4, (early, late)
    results = SweepResults(str(tmp_path))
    assert results.trials.num_rows == 300 and results.epochs.num_rows == 3000 and results.generation >= 3000


def test_readers_never_see_two_generations_mixed(tmp_path):
    """A writer appends in a loop in another process while this one reads in a loop: in every read, each trial's
    epochs_run equals its epoch rows (the two tables of one generation) and rows never go missing."""
    script = f"""
import sys, time
sys.path.insert(0, {str(__import__("pathlib").Path(__file__).resolve().parents[2])!r})
from sweeps.results import ResultsWriter
writer = ResultsWriter({str(tmp_path)!r}, max_epochs=1000)
for epoch in range(1, 100000):
    for trial in range(5):
        writer.record_epoch(f"t{{trial}}", {{"method": "bce"}}, {{"epoch": epoch, "val_mAP": float(epoch)}})
        writer.write()
    if epoch == 2:
        open({str(tmp_path / "started")!r}, "w").close()
"""
    writer = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "started").exists():
            assert writer.poll() is None, writer.stderr.read()
            assert time.time() < deadline
            time.sleep(0.1)
        reads, mixed, previous = 0, 0, 0
        end = time.time() + 10
        while time.time() < end:
            results = SweepResults(str(tmp_path))
            counts = {}
            for trial_id in results.epochs.column("trial_id").to_pylist():
                counts[trial_id] = counts.get(trial_id, 0) + 1
            rows = {r["trial_id"]: r["epochs_run"] for r in results.trials.to_pylist()}
            mixed += any(rows.get(t) != n for t, n in counts.items()) or set(rows) != set(counts)
            total = sum(counts.values())
            assert total >= previous  # a later generation never has fewer rows
            previous, reads = total, reads + 1
        assert writer.poll() is None, writer.stderr.read()
    finally:
        writer.kill()
        writer.wait()
    assert reads >= 20 and mixed == 0, (reads, mixed)


# --- rebuilds ----------------------------------------------------------------------------------------------------


def _finished_sweep(tmp_path):
    """Results as a finished sweep with ``keep: best+last`` leaves them: a completed trial (its last checkpoint and
    best kept), a stopped one (only its best kept), a failed one, and Tune's per-trial logs."""
    sweep = tmp_path / "sweep"
    writer = ResultsWriter(str(sweep), max_epochs=3)
    values = {"full": [30.0, 42.0, 41.0], "cut": [25.0, 27.0]}
    for trial_id, series in values.items():
        for epoch, value in enumerate(series, start=1):
            writer.record_epoch(trial_id, CONFIG, {"epoch": epoch, "val_mAP": value, "test_mAP": value - 1})
            writer.write()
        writer.finish(trial_id, CONFIG)
        writer.write()
        best = max(range(len(series)), key=lambda i: series[i]) + 1
        history = [{"epoch": e, "val_mAP": v, "test_mAP": v - 1} for e, v in enumerate(series, start=1)]
        folder = sweep / "train" / f"trial-{trial_id}" / "best"
        folder.mkdir(parents=True)
        (folder / "history.json").write_text(json.dumps(history[:best]))
        if trial_id == "full":
            last = sweep / "train" / f"trial-{trial_id}" / "epoch-0003"
            last.mkdir()
            (last / "history.json").write_text(json.dumps(history))
            (last / "state.pt").write_bytes(b"x")
        tune = sweep / "tune" / f"run_trial_{trial_id}"
        tune.mkdir(parents=True)
        (tune / "result.json").write_text("".join(json.dumps({**row, "trial_id": trial_id}) + "\n" for row in history))
    writer.trial("bad", {**CONFIG, "method": "mld"})
    writer.finish("bad", {}, error="NonFiniteLossError: at epoch 1")
    writer.write()
    writer.publish()
    return sweep, _summaries(sweep)


def _summaries(sweep):
    return {t: (r["status"], r["best_val_mAP"], r["best_epoch"], r["epochs_run"]) for t, r in _rows(sweep).items()}


def _damage(sweep, target: str, how: str):
    import pyarrow as pa

    manifest = json.loads((sweep / "results" / "manifest.json").read_text())
    files = {
        "manifest": "manifest.json",
        "trials": "trials.parquet",
        "epochs": "epochs.parquet",
        "trials segment": manifest["segments"][0]["trials"],
        "epochs segment": manifest["segments"][0]["epochs"],
    }
    path = sweep / "results" / files[target]
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[:40])
    elif target == "manifest":  # "drop a column" of the JSON: its segment list
        data = json.loads(path.read_text())
        del data["segments"]
        path.write_text(json.dumps(data))
    else:
        table = pq.read_table(path)
        column = "best_val_mAP" if "status" in table.column_names else "val_mAP"
        pq.write_table(table.drop([column]), path)
        assert isinstance(table, pa.Table)


@pytest.mark.parametrize("target", ["manifest", "trials", "epochs", "trials segment", "epochs segment"])
@pytest.mark.parametrize("how", ["delete", "truncate", "drop a column"])
def test_a_rebuild_loses_no_value_any_source_holds(tmp_path, target, how):
    sweep, before = _finished_sweep(tmp_path)
    _damage(sweep, target, how)
    writer = ResultsWriter(str(sweep), max_epochs=3)
    assert writer.rebuilt and ("rebuilt the results" in writer.rebuilt or "rewrote" in writer.rebuilt), writer.rebuilt
    writer.write()
    writer.publish()
    assert _summaries(sweep) == before
    published = {r["trial_id"]: r for r in pq.read_table(sweep / "results" / "trials.parquet").to_pylist()}
    assert {
        t: (r["status"], r["best_val_mAP"], r["best_epoch"], r["epochs_run"]) for t, r in published.items()
    } == before


def test_a_rebuild_that_finds_less_keeps_the_recorded_values_and_says_so(tmp_path):
    sweep, before = _finished_sweep(tmp_path)
    # Every epoch source of the stopped trial gone (its best history, Tune's log) and the epochs files damaged:
    # only its recorded trial row says what it reached.
    (sweep / "train" / "trial-cut" / "best" / "history.json").unlink()
    (sweep / "tune" / "run_trial_cut" / "result.json").unlink()
    for path in (sweep / "results" / "segments").glob("*-epochs.parquet"):  # named by the manifest or kept in grace
        path.write_bytes(b"PAR1 no")
    (sweep / "results" / "epochs.parquet").write_bytes(b"PAR1 no")
    writer = ResultsWriter(str(sweep), max_epochs=3)
    assert "kept the recorded summaries of 1 trial(s)" in writer.rebuilt and "(cut)" in writer.rebuilt
    writer.write()
    assert _summaries(sweep) == before


def test_an_unfinished_trial_found_only_in_the_checkpoints_comes_back_and_tune_names_it(tmp_path):
    sweep, _ = _finished_sweep(tmp_path)
    folder = sweep / "train" / "trial-extra" / "epoch-0001"
    folder.mkdir(parents=True)
    (folder / "history.json").write_text(json.dumps([{"epoch": 1, "val_mAP": 11.0}]))
    (folder / "state.pt").write_bytes(b"x")
    (sweep / "results" / "manifest.json").unlink()
    writer = ResultsWriter(str(sweep), max_epochs=3)
    assert writer.has_epoch("extra", 1) and writer.trials["extra"].status == "running"
    writer.reconcile([KnownTrial("extra", {"teacher": "resnet14t", "student": "resnet10t", "method": "bce"}, "ended")])
    writer.write()
    assert _rows(sweep)["extra"]["status"] == "stopped" and _rows(sweep)["extra"]["student"] == "resnet10t"


def test_readers_name_the_damaged_file(tmp_path):
    sweep, _ = _finished_sweep(tmp_path)
    manifest = json.loads((sweep / "results" / "manifest.json").read_text())
    (sweep / "results" / manifest["segments"][0]["trials"]).write_bytes(b"PAR1 no")
    with pytest.raises(CorruptResultsError, match=r"-trials\.parquet: unreadable Parquet file"):
        SweepResults(str(sweep))
    (sweep / "results" / "manifest.json").write_text("{")
    with pytest.raises(CorruptResultsError, match=r"manifest\.json: unreadable results manifest"):
        SweepResults(str(sweep))


def test_a_sweep_from_before_manifests_is_read_and_migrated(tmp_path):
    sweep, before = _finished_sweep(tmp_path)
    (sweep / "results" / "manifest.json").unlink()
    for path in (sweep / "results" / "segments").iterdir():
        path.unlink()
    assert _summaries(sweep) == before  # the two tables alone, as an older version wrote them
    writer = ResultsWriter(str(sweep), max_epochs=3)
    assert writer.rebuilt is None and (sweep / "results" / "manifest.json").is_file()
    assert _summaries(sweep) == before


# --- SQL and formats ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "COPY trials TO '{sweep}/results/trials.parquet'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "ATTACH '{sweep}/x.duckdb' AS x",
        "SET enable_external_access = true",
        "INSTALL httpfs",
        "SELECT * FROM glob('/etc/*')",
    ],
)
def test_sql_is_read_only(tmp_path, query):
    _fill(tmp_path).publish()
    before = (tmp_path / "results" / "trials.parquet").read_bytes()
    with pytest.raises(ValueError, match="SQL error: "):
        SweepResults(str(tmp_path)).sql(query.format(sweep=tmp_path))
    assert (tmp_path / "results" / "trials.parquet").read_bytes() == before
    assert not (tmp_path / "x.duckdb").exists()


def test_sql_leaderboard_pareto_and_formats(tmp_path):
    _fill(tmp_path)
    results = SweepResults(str(tmp_path))
    board = results.leaderboard().to_pylist()
    assert [row["trial_id"] for row in board] == ["done", "cut"]  # failed trials have no score
    assert results.sql("SELECT count(*) AS n FROM epochs WHERE trial_id = 'done'").to_pylist() == [{"n": 3}]
    table = results.sql("SELECT trial_id, best_val_mAP FROM trials WHERE best_val_mAP IS NOT NULL ORDER BY 1")
    assert format_table(table, "csv").splitlines() == ["trial_id,best_val_mAP", "cut,20.0", "done,42.0"]
    assert [row["trial_id"] for row in json.loads(format_table(table, "json"))] == ["cut", "done"]
    assert [json.loads(line)["trial_id"] for line in format_table(table, "jsonl").splitlines()] == ["cut", "done"]
    # As text: numbers right-aligned; a width that cannot hold every column shows those that fit and names the rest.
    text = format_table(table)
    assert text.splitlines()[2] == "done" + " " * 16 + "42"  # under the 12 letters of best_val_mAP
    narrow = format_table(table, width=16).splitlines()
    assert narrow[0] == "trial_id" and all(len(line) <= 16 for line in narrow)
    assert "1 more column(s) not shown: best_val_mAP" in " ".join(narrow[3:])  # the footer, wrapped to the width
    assert format_table(table).endswith("(2 rows)")
    assert [r["trial_id"] for r in results.pareto().to_pylist()] == ["done"]  # best val mAP, same size


def test_compact_rewrites_the_compacted_pair_from_the_newest_generation(tmp_path, capsys):
    """`results --compact`: the compacted pair lags the segments during a sweep; the command brings it up to the
    newest generation under the sweep's lease (and refuses while a live driver holds it)."""
    import yaml

    from l2d.storage import Location
    from sweeps.cli import main
    from sweeps.folder.lease import LeaseKeeper
    from sweeps.folder.marker import write_marker
    from sweeps.specs import parse_spec
    from sweeps.specs.stored import spec_digest
    from tests.sweeps.conftest import TINY_SPEC

    spec = parse_spec({**TINY_SPEC, "storage": str(tmp_path)}, "tiny.yaml")
    sweep = tmp_path / "tiny"
    sweep.mkdir()
    (sweep / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    write_marker(Location.parse(sweep), spec_digest=spec_digest(spec))
    _fill(sweep)  # segments only: fewer reports than the writer waits for before rewriting the pair
    assert not (sweep / "results" / "trials.parquet").exists()
    keeper = LeaseKeeper(Location.parse(sweep), say=lambda _: None).acquire()  # a live driver holds the sweep
    try:
        assert main(["results", str(sweep), "--compact"]) == 1
        assert "being driven by" in capsys.readouterr().err and not (sweep / "results" / "trials.parquet").exists()
    finally:
        keeper.release()
    assert main(["results", str(sweep), "--compact"]) == 0
    assert "trials.parquet (3 rows) and epochs.parquet (4 rows) rewritten" in capsys.readouterr().out
    published = {r["trial_id"]: r for r in pq.read_table(sweep / "results" / "trials.parquet").to_pylist()}
    assert published == _rows(sweep) and pq.read_table(sweep / "results" / "epochs.parquet").num_rows == 4
    assert not (sweep / "lease.json").exists()


def test_sql_limits_each_hold(tmp_path, monkeypatch):
    """The sandbox's three limits, each exercised: the configuration is locked (a query cannot raise its own memory
    limit or re-open file access), the memory limit is enforced, and the timeout stops a query."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # nothing of DuckDB's may land in the user's home
    _fill(tmp_path / "sweep").publish()
    results = SweepResults(str(tmp_path / "sweep"))
    with pytest.raises(ValueError, match="SQL error: .*lock"):
        results.sql("SET memory_limit = '64GB'; SELECT current_setting('memory_limit') AS m")
    with pytest.raises(ValueError, match="SQL error: .*lock"):
        results.sql("SET allowed_directories = ['/']; SELECT 1 AS x")
    limit = results.sql("SELECT current_setting('memory_limit') AS m", memory_limit="64MB").to_pylist()[0]["m"]
    assert limit.replace(" ", "") in ("61.0MiB", "64.0MB", "64MB")
    with pytest.raises(ValueError, match="SQL error: .*[Mm]emory"):
        results.sql(
            "SELECT sum(length(x)) AS n FROM (SELECT string_agg(range::VARCHAR, ',') AS x FROM range(20000000))",
            memory_limit="32MB",
        )
    with pytest.raises(ValueError, match=r"ran longer than 0.5 s \(--sql-timeout\) and was stopped"):
        results.sql("SELECT count(*) AS n FROM range(100000000000) a WHERE a.range % 7 = 3", timeout_s=0.5)
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("*"))


def _epoch(epoch: int) -> dict:
    """An epoch's full report: every kind of column a trial writes (val, test, loss parts, speed)."""
    return {
        "epoch": epoch,
        "val_mAP": 30.0 + 5 * epoch,
        "test_mAP": 29.5 + 5 * epoch,
        "val_loss": 3.0 - epoch / 10,
        "val_CF1": 20.0 + epoch,
        "test_paper_CF1": 19.0 + epoch,
        "train_bce": 1.5 / epoch,
        "train_mld": 0.25 * epoch,
        "images_per_s": 100.0 + epoch,
        "epoch_seconds": 2.0 + epoch / 100,
    }


@pytest.mark.parametrize("source", ["checkpoints", "Tune's logs", "damaged results files"])
def test_a_rebuild_takes_an_epoch_from_the_one_source_that_holds_it(tmp_path, source):
    """One source alone holds epoch 3 of trial x: after the rebuild, epoch 3 is back with every column that source
    had (test_* included), and the trial's summary follows it (its best epoch is 3); a damaged file is set aside."""
    sweep = tmp_path / "sweep"
    writer = ResultsWriter(str(sweep), max_epochs=3)
    for epoch in (1, 2):
        writer.record_epoch("x", CONFIG, _epoch(epoch))
        writer.write()
    history = [_epoch(e) for e in (1, 2, 3)]
    if source == "checkpoints":
        folder = sweep / "train" / "trial-x" / "epoch-0003"
        folder.mkdir(parents=True)
        (folder / "history.json").write_text(json.dumps(history))
        (folder / "state.pt").write_bytes(b"x")
    elif source == "Tune's logs":
        log = sweep / "tune" / "run_trial_x"
        log.mkdir(parents=True)
        (log / "result.json").write_text("".join(json.dumps({**row, "trial_id": "x"}) + "\n" for row in history))
    else:  # epoch 3 written, then its segment loses a column the other epochs' rows do not need
        writer.record_epoch("x", CONFIG, _epoch(3))
        writer.write()
        manifest = json.loads((sweep / "results" / "manifest.json").read_text())
        damaged = sweep / "results" / manifest["segments"][-1]["epochs"]
        pq.write_table(pq.read_table(damaged).drop(["images_per_s"]), damaged)
    writer.finish("x", CONFIG)
    writer.write()
    if source != "damaged results files":  # the tables lose their index: the rebuild reads every source
        (sweep / "results" / "manifest.json").unlink()
        for path in (sweep / "results").glob("*.parquet"):
            path.unlink()
    rebuilt = ResultsWriter(str(sweep), max_epochs=3)
    assert rebuilt.rebuilt and source in rebuilt.rebuilt, rebuilt.rebuilt
    rebuilt.write()
    results = SweepResults(str(sweep))
    rows = {row["epoch"]: row for row in results.epochs.to_pylist() if row["trial_id"] == "x"}
    assert sorted(rows) == [1, 2, 3]
    lost = {"images_per_s"} if source == "damaged results files" else set()
    for name, value in _epoch(3).items():
        if name not in lost:
            assert rows[3][name] == pytest.approx(value), (source, name)  # every column, test_* included
    [trial] = [row for row in results.trials.to_pylist() if row["trial_id"] == "x"]
    assert (trial["best_epoch"], trial["best_val_mAP"], trial["test_mAP_at_best"]) == (3, 45.0, 44.5)
    aside = sorted(p.name for p in (sweep / "results").rglob("*.corrupt-*"))
    if source == "damaged results files":
        assert aside and all("-epochs.parquet.corrupt-" in name for name in aside), aside  # set aside, kept
    else:
        assert not aside


def test_a_segment_removed_between_the_manifest_and_its_read_is_read_from_the_next_generation(tmp_path, monkeypatch):
    """A merge may remove a segment after a reader read the manifest that names it: the reader reads the manifest
    again (the race the concurrent test above meets now and then, made to happen every time here)."""
    from sweeps.results import ResultsWriter
    from sweeps.results import store as store_module

    writer = ResultsWriter(str(tmp_path), max_epochs=5)
    for epoch in (1, 2):
        writer.record_epoch("t0", {"method": "bce"}, {"epoch": epoch, "val_mAP": float(epoch)})
        writer.write()
    real, gone = store_module.read_table, []

    def racing(location):
        if "segments" in str(location) and not gone:
            gone.append(str(location))
            return None  # the file was listed, then deleted before it was read
        return real(location)

    monkeypatch.setattr(store_module, "read_table", racing)
    results = SweepResults(str(tmp_path))
    assert gone and results.epochs.num_rows == 2 and results.trials.column("epochs_run").to_pylist() == [2]
