"""The results tables: statuses, best/last metrics, reseeding from disk after a crash, SQL, formats."""

import json
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from sweeps.results import TRIAL_SCHEMA, CorruptResultsError, ResultsWriter, SweepResults, format_table

CONFIG = {"teacher": "resnet14t", "student": "resnet10t", "method": "l2d", "lr": 0.002, "lambda_mld": 10.0}


def _fill(sweep):
    writer = ResultsWriter(str(sweep), max_epochs=3)
    for epoch, (val, test) in enumerate([(30.0, 29.0), (42.0, 40.0), (41.0, 41.5)], start=1):
        writer.record_epoch("done", CONFIG, {"epoch": epoch, "val_mAP": val, "test_mAP": test,
                                             "student_params": 100.0, "epoch_seconds": 2.0, "time_total_s": 9})
    writer.finish("done", CONFIG)
    writer.record_epoch("cut", {**CONFIG, "method": "kd", "lambda_kd": 5.0}, {"epoch": 1, "val_mAP": 20.0})
    writer.finish("cut", {})
    writer.trial("bad", {**CONFIG, "method": "mld"})
    writer.finish("bad", {}, error="NonFiniteLossError: non-finite loss at epoch 1, batch 3/9")
    writer.write()
    return writer


def test_rows_statuses_and_best_epoch(tmp_path):
    _fill(tmp_path)
    trials = {row["trial_id"]: row for row in pq.read_table(tmp_path / "results" / "trials.parquet").to_pylist()}
    assert pq.read_table(tmp_path / "results" / "trials.parquet").schema == TRIAL_SCHEMA
    done, cut, bad = trials["done"], trials["cut"], trials["bad"]
    assert (done["status"], done["epochs_run"], done["stopped_early"]) == ("completed", 3, False)
    assert (done["best_val_mAP"], done["best_epoch"], done["test_mAP_at_best"]) == (42.0, 2, 40.0)
    assert (done["last_val_mAP"], done["last_test_mAP"], done["wall_time_s"]) == (41.0, 41.5, 6.0)
    assert (cut["status"], cut["stopped_early"], cut["lambda_kd"], cut["lambda_mld"]) == ("stopped", True, 5.0, 10.0)
    assert bad["status"] == "failed" and bad["error"].startswith("NonFiniteLossError") and bad["epochs_run"] == 0
    epochs = pq.read_table(tmp_path / "results" / "epochs.parquet")
    assert epochs.num_rows == 4 and "time_total_s" not in epochs.schema.names  # Tune's own keys are left out


def test_a_new_writer_continues_from_the_files(tmp_path):
    _fill(tmp_path)
    again = ResultsWriter(str(tmp_path), max_epochs=3)
    assert again.has_epoch("done", 3) and again.trials["bad"].error.startswith("NonFiniteLossError")
    again.record_epoch("lost", CONFIG, {"epoch": 1, "val_mAP": 5.0})
    # An unfinished trial no experiment continued keeps its rows, marked interrupted; finished ones are untouched.
    assert again.interrupt_unknown({"done", "cut"}) == ["lost"]
    again.write()
    rows = {r["trial_id"]: r for r in pq.read_table(tmp_path / "results" / "trials.parquet").to_pylist()}
    assert set(rows) == {"done", "cut", "bad", "lost"} and rows["lost"]["status"] == "interrupted"
    assert rows["lost"]["best_val_mAP"] == 5.0


def test_a_trial_id_given_to_another_config_keeps_the_old_rows_aside(tmp_path):
    writer = ResultsWriter(str(tmp_path), max_epochs=3)
    writer.record_epoch("t1", CONFIG, {"epoch": 1, "val_mAP": 7.0})
    assert writer.set_aside_trial("t1") == "t1-lost"
    assert writer.trials["t1-lost"].status == "interrupted" and writer.has_epoch("t1-lost", 1)
    assert "t1" not in writer.trials and not writer.has_epoch("t1", 1)


def test_damaged_tables_are_set_aside_and_rebuilt(tmp_path, caplog):
    import json

    _fill(tmp_path)
    # A trial's checkpoint remembers its epochs: the epochs table can be rebuilt from it.
    checkpoint = tmp_path / "train" / "trial-done" / "epoch-0003"
    checkpoint.mkdir(parents=True)
    (checkpoint / "history.json").write_text(json.dumps([{"epoch": e, "val_mAP": v} for e, v in
                                                         [(1, 30.0), (2, 42.0), (3, 41.0)]]))
    (checkpoint / "state.pt").write_bytes(b"x")
    for name in ("trials.parquet", "epochs.parquet"):
        path = tmp_path / "results" / name
        path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CorruptResultsError, match=r"trials\.parquet: unreadable Parquet file"):
        SweepResults(str(tmp_path))
    with caplog.at_level("WARNING"):
        writer = ResultsWriter(str(tmp_path), max_epochs=3)
    assert "epochs.parquet: unreadable Parquet file" in caplog.text and "rebuilt 3 epoch rows" in caplog.text
    assert [writer.epochs["done"][e]["val_mAP"] for e in (1, 2, 3)] == [30.0, 42.0, 41.0]
    aside = sorted(p.name for p in (tmp_path / "results").iterdir() if ".corrupt-" in p.name)
    assert [name.split(".corrupt-")[0] for name in aside] == ["epochs.parquet", "trials.parquet"]
    # Tune still knows the trials: their rows come back with their configs and states.
    tune_trials = [SimpleNamespace(trial_id="done", status="TERMINATED", config={**CONFIG, "pairing": "resnet14t",
                                                                                 "student@resnet14t": "resnet10t"}),
                   SimpleNamespace(trial_id="new", status="PENDING", config={"pairing": "resnet14t",
                                                                             "student@resnet14t": "resnet10t",
                                                                             "method": "bce"})]
    assert writer.reconcile(tune_trials) == ["done", "new"]
    writer.write()
    rows = {r["trial_id"]: r for r in SweepResults(str(tmp_path)).trials.to_pylist()}
    assert rows["done"]["status"] == "completed" and rows["done"]["best_val_mAP"] == 42.0
    assert rows["done"]["student"] == "resnet10t" and rows["new"]["status"] == "pending"


@pytest.mark.parametrize("query", [
    "COPY trials TO '{sweep}/results/trials.parquet'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "ATTACH '{sweep}/x.duckdb' AS x",
    "SET enable_external_access = true",
    "INSTALL httpfs",
    "SELECT * FROM glob('/etc/*')",
])
def test_sql_is_read_only(tmp_path, query):
    _fill(tmp_path)
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
    assert [json.loads(line)["trial_id"] for line in format_table(table, "json").splitlines()] == ["cut", "done"]
    assert format_table(table).endswith("(2 rows)")
