"""The shared PostgreSQL metastore: a lakehouse moved onto it from embedded Derby.

(Several real jobs at once on one lakehouse with this metastore, the Thrift server and
two Airflow DAG runs among them, are tested in test_dags.)
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from lakehouse.config import load_config
from models import tracking
from models.store import ModelRecord
from models.tracking import Tracker
from tests.helpers import free_port, lakeforge, orders_entry, small_job_env, succeeded


@pytest.mark.slow
def test_a_derby_lakehouse_moves_to_postgres_with_register():
    # Outside pytest's private temp folder: as root, PostgreSQL runs as its own user,
    # who must be able to reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="lakeforge-move-"))
    root.chmod(0o755)
    landing, entries, staged = root / "landing", root / "entries", root / "staged"
    for folder in (landing, entries, staged):
        folder.mkdir()
    (staged / "model.keras").write_bytes(b"weights")
    rows = "".join(f"{n},,{n},NEW\n" for n in range(200))
    (landing / "day1.csv").write_text("order_id,placed_at,amount,status\n" + rows)
    (entries / "north.yml").write_text(json.dumps({"datasets": {"north": orders_entry(landing)}}))
    derby = {**small_job_env(root / "home", entries), "LAKEFORGE_METASTORE__KIND": "derby",
             "LAKEFORGE_METASTORE__PORT": str(free_port())}
    postgres = {**derby, "LAKEFORGE_METASTORE__KIND": "postgres"}
    try:
        succeeded(lakeforge(derby, "ingest", "north", "--batch", "b1"))
        succeeded(lakeforge(postgres, "metastore", "start"), timeout=300)
        moved = succeeded(lakeforge(postgres, "metastore", "register"))
        assert "registered 4 table(s)" in moved and "lakeforge.bronze_north" in moved
        again = succeeded(lakeforge(postgres, "metastore", "register"))
        assert "registered 0 table(s)" in again
        listed = succeeded(lakeforge(postgres, "sql",
                                     "SELECT count(*) AS n FROM lakeforge.bronze_north"))
        assert "200" in listed
        # MLflow's tracking store is a database of its own on the same service.
        tracker = Tracker(load_config(environ=postgres))
        assert tracker.uri.startswith("postgresql://lakeforge:lakeforge@127.0.0.1:")
        assert tracker.uri.endswith("/mlflow")
        mlrun = tracker.start("r1", "north_mlp", "mlp", "lakeforge.gold_north", 3, {"epochs": 2})
        tracker.log_training(mlrun, {"loss": [0.5, 0.25]}, 0, {"accuracy": 0.75})
        tracker.log_model(mlrun, staged)
        record = ModelRecord("north_mlp", 1, "mlp", {}, {}, "lakeforge.gold_north", 3, "r1",
                             str(staged), dt.datetime.now(), mlrun)
        assert tracker.register(record, mlrun) == 1
        tracker.finish(mlrun)
        again = Tracker(load_config(environ=postgres))          # another process's view
        assert again.find_run("r1").info.status == "FINISHED"
        assert [m.value for m in again.client.get_metric_history(mlrun, "epoch_loss")] == \
            [0.5, 0.25]
        assert tracking.check(again, [record]) == []
    finally:
        lakeforge(postgres, "metastore", "stop").communicate(timeout=120)
        shutil.rmtree(root, ignore_errors=True)
