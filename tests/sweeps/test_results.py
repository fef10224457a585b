"""The results tables: statuses, best/last metrics, reseeding from disk after a crash, SQL, formats."""

import json

import pyarrow.parquet as pq

from sweeps.results import TRIAL_SCHEMA, ResultsWriter, SweepResults, format_table

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
    assert again.forget_except({"done", "cut"}) == ["bad"]
    again.write()
    assert pq.read_table(tmp_path / "results" / "trials.parquet").num_rows == 2


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
