"""The study in a real PostgreSQL server: a sweep with ``study_storage: postgresql://...``, killed mid-trial and
resumed once, keeps the study and the results tables in step (every trial once in each).

The server is Debian's ``postgresql`` package, started by the test on 127.0.0.1 in a temporary data folder (as the
``postgres`` user when the tests run as root, since PostgreSQL refuses to run as root); the test is skipped, not
failed, only when the package or the driver (psycopg) is not installed.
"""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import free_port
from tests.sweeps.conftest import TINY_SPEC

pytestmark = [pytest.mark.ray, pytest.mark.timeout(1200)]


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture
def postgres(tmp_path):
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is not installed")
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    as_postgres = []
    data = tmp_path / "pgdata"
    if os.geteuid() == 0:  # PostgreSQL will not run as root: run it as its own user, in a folder it owns
        import pwd
        import tempfile
        from pathlib import Path

        account = pwd.getpwnam("postgres")
        data = Path(tempfile.mkdtemp(prefix="l2d-pgdata-"))  # pytest's own folders are closed to other users
        os.chown(data, account.pw_uid, account.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [*as_postgres, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True
    )
    subprocess.run(
        [
            *as_postgres,
            pg_ctl,
            "-D",
            str(data),
            "-w",
            "-l",
            str(data / "server.log"),
            "-o",
            f"-p {port} -c listen_addresses=127.0.0.1 -k {data}",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
        ) as connection:
            connection.execute("CREATE DATABASE l2d")
        yield f"postgresql://postgres@127.0.0.1:{port}/l2d"
    finally:
        subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_a_sweep_on_postgres_killed_and_resumed(postgres, tmp_path):
    import optuna

    spec = {
        **TINY_SPEC,
        "name": "on-postgres",
        "storage": str(tmp_path / "sweeps"),
        "study_storage": postgres,
        "budget": {**TINY_SPEC["budget"], "num_samples": 3},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    process = subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", "run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if " started: " in line and sum(" started: " in x for x in lines) == 2:
            time.sleep(0.5)
            break
    os.killpg(process.pid, signal.SIGKILL)  # the driver and its cluster die mid-way through the second trial
    process.wait()
    sweep = tmp_path / "sweeps" / "on-postgres"
    assert not (sweep / "study.db").exists()  # the study is in PostgreSQL, not in the folder
    resumed = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "resume", str(sweep)], capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = pq.read_table(sweep / "results" / "trials.parquet").to_pylist()
    summaries = optuna.get_all_study_summaries(postgres)
    assert len(summaries) == 1 and summaries[0].study_name.startswith("on-postgres-")
    study = optuna.load_study(study_name=summaries[0].study_name, storage=postgres)
    tune_ids = [t.user_attrs["tune_trial_id"] for t in study.trials]
    assert len(rows) == 3 and len(study.trials) == 3
    assert sorted(tune_ids) == sorted(r["trial_id"] for r in rows)  # every trial once, in both
    assert all(t.state.is_finished() for t in study.trials)
    assert all(r["status"] in ("completed", "stopped", "failed") for r in rows)
    # A reader's study is a read-only session: it reads every trial, and its writes fail with the study unchanged.
    from sweeps.api import Sweep

    reader = Sweep.open(sweep).study()
    assert len(reader.trials) == 3
    with pytest.raises(optuna.exceptions.StorageInternalError):
        reader.optimize(lambda trial: trial.suggest_float("lr", 1e-4, 1.0, log=True), n_trials=1)
    assert len(optuna.load_study(study_name=summaries[0].study_name, storage=postgres).trials) == 3
