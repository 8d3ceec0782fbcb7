"""The shared PostgreSQL metastore: a lakehouse moved onto it from embedded Derby.

(Several real jobs at once on one lakehouse with this metastore, the Thrift server and
two Airflow DAG runs among them, are tested in test_dags.)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.helpers import free_port, lakeforge, orders_entry, small_job_env, succeeded


@pytest.mark.slow
def test_a_derby_lakehouse_moves_to_postgres_with_register():
    # Outside pytest's private temp folder: as root, PostgreSQL runs as its own user,
    # who must be able to reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="lakeforge-move-"))
    root.chmod(0o755)
    landing, entries = root / "landing", root / "entries"
    landing.mkdir()
    entries.mkdir()
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
    finally:
        lakeforge(postgres, "metastore", "stop").communicate(timeout=120)
        shutil.rmtree(root, ignore_errors=True)
