"""The shared PostgreSQL metastore: a real local service, several real jobs at once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from lakehouse.config import load_config
from lakehouse.submit import beeline_command, submit_env
from tests.helpers import free_port, orders_entry

SOURCES = ("north", "south", "east", "west")


def _cli(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _ok(proc: subprocess.Popen, timeout: int = 1500) -> str:
    out = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, f"{proc.args}:\n{out[-4000:]}"
    return out


def _listening(port: int, server: subprocess.Popen, wait: float = 600) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        assert server.poll() is None, "the Thrift server stopped (see thrift.log)"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(2)
    raise AssertionError(f"the Thrift server did not listen on {port} within {wait} s")


def _beeline(env: dict[str, str], port: int, query: str) -> str:
    """Run a query through the Thrift server (CSV output)."""
    out = subprocess.run(beeline_command(port, query), capture_output=True, text=True,
                         timeout=600, check=False, env=submit_env(load_config(environ=env)))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def lake() -> dict[str, str]:
    """The environment of a lakehouse on a local PostgreSQL metastore, started here.

    The home is outside pytest's private temp folder: as root, PostgreSQL runs as its own
    user, who must be able to reach its data directory.
    """
    root = Path(tempfile.mkdtemp(prefix="lakeforge-pg-"))
    root.chmod(0o755)
    entries = root / "entries"
    entries.mkdir()
    datasets = {}
    for i, name in enumerate(SOURCES):
        landing = root / "landing" / name
        landing.mkdir(parents=True)
        rows = "".join(f"{i * 1000 + n},,{n},NEW\n" for n in range(200 + 10 * i))
        (landing / "day1.csv").write_text("order_id,placed_at,amount,status\n" + rows)
        datasets[name] = orders_entry(landing)
    (entries / "regions.yml").write_text(json.dumps({"datasets": datasets}))
    (root / "pipelines.yml").write_text(yaml.safe_dump({"defaults": {}, "pipelines": {
        "wine_mlp": {"sources": ["wine"], "features": "wine", "family": "mlp",
                     "params": {"epochs": 2, "batch_size": 32, "hidden": [8]}}}}))
    env = {**os.environ, "LAKEFORGE_HOME": str(root / "home"),
           "LAKEFORGE_SPARK__MASTER": "local[2]", "LAKEFORGE_SPARK__UI_ENABLED": "false",
           "LAKEFORGE_SPARK__SHUFFLE_PARTITIONS": "2", "LAKEFORGE_SPARK__DRIVER_MEMORY": "1g",
           "LAKEFORGE_CATALOG__DATASET_DIRS": json.dumps([str(entries)]),
           "LAKEFORGE_METASTORE__KIND": "postgres",
           "LAKEFORGE_METASTORE__PORT": str(free_port())}
    _ok(_cli(env, "metastore", "start"), timeout=300)
    yield env
    _cli(env, "metastore", "stop").communicate(timeout=120)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_jobs_at_once_on_one_lakehouse_all_land_exactly(spark, lake):
    root = Path(lake["LAKEFORGE_HOME"]).parent
    _ok(_cli(lake, "run", "wine_mlp", "--batch", "b1", "--definitions",
             str(root / "pipelines.yml")))
    port, server_log = free_port(), root / "thrift.log"
    server = subprocess.Popen(                                # the Thrift server alongside
        [sys.executable, "-m", "jobs.cli", "sql-server", "--port", str(port)], env=lake,
        stdout=server_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _listening(port, server)
        jobs = [_cli(lake, "ingest", name, "--batch", "b1") for name in SOURCES]
        jobs += [_cli(lake, "score", "mlp", "--model", "wine_mlp", "--run-id", run)
                 for run in ("again-1", "again-2")]
        jobs.append(_cli(lake, "train", "mlp", "--dataset", "wine", "--name", "wine_mlp_2",
                         "--param", "epochs=1", "--param", "hidden=[8]"))
        answer = _beeline(lake, port, "SELECT count(*) AS n FROM lakeforge.gold_wine")
        outputs = [_ok(job) for job in jobs]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=120)
    assert "178" in answer.splitlines(), answer + server_log.read_text()[-3000:]  # mid-jobs
    assert not any("Another instance of Derby" in out for out in outputs)

    tables = Path(lake["LAKEFORGE_HOME"]) / "warehouse" / "lakeforge.db"

    def table(name: str):
        return spark.read.format("delta").load(str(tables / name))

    for i, name in enumerate(SOURCES):
        bronze = table(f"bronze_{name}")
        assert bronze.count() == bronze.select("order_id").distinct().count() == 200 + 10 * i
    runs = {r["run_id"]: r["count"] for r in table("predictions_mlp").groupBy("run_id").count()
            .collect()}
    assert runs.pop("again-1") == runs.pop("again-2") == 178
    assert list(runs.values()) == [178]                       # the pipeline's own run
    models = sorted((r.name, r.version) for r in table("models").collect())
    assert models == [("wine_mlp", 1), ("wine_mlp_2", 1)]

    listed = _ok(_cli(lake, "tables"))
    assert all(f"lakeforge.bronze_{name}" in listed for name in SOURCES)


@pytest.mark.slow
def test_a_derby_lakehouse_moves_to_postgres_with_register(spark, lake):
    root = Path(tempfile.mkdtemp(prefix="lakeforge-move-"))
    root.chmod(0o755)
    derby = {**lake, "LAKEFORGE_HOME": str(root / "home"), "LAKEFORGE_METASTORE__KIND": "derby",
             "LAKEFORGE_METASTORE__PORT": str(free_port())}
    postgres = {**derby, "LAKEFORGE_METASTORE__KIND": "postgres"}
    try:
        _ok(_cli(derby, "ingest", "north", "--batch", "b1"))
        _ok(_cli(postgres, "metastore", "start"), timeout=300)
        moved = _ok(_cli(postgres, "metastore", "register"))
        assert "registered 4 table(s)" in moved and "lakeforge.bronze_north" in moved
        again = _ok(_cli(postgres, "metastore", "register"))
        assert "registered 0 table(s)" in again
        listed = _ok(_cli(postgres, "sql", "SELECT count(*) AS n FROM lakeforge.bronze_north"))
        assert "200" in listed
    finally:
        _cli(postgres, "metastore", "stop").communicate(timeout=120)
        shutil.rmtree(root, ignore_errors=True)
