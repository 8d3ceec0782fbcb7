"""Helpers shared by tests."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from pyspark.sql import functions as F

from lakehouse import delta
from lakehouse.config import Config, load_config
from lakehouse.curate import curate
from lakehouse.datasets import parse_datasets
from lakehouse.featuresets import build_features
from lakehouse.ingest import ingest
from lakehouse.maintain import lakehouse_tables
from lakehouse.submit import beeline_command, submit_env


def in_database(cfg: Config, db: str) -> Config:
    """The config with a catalog database of its own, and a tracking store of its own
    (MLflow's model names are global to a store; every test trains its own wine_mlp)."""
    store = cfg.home / "mlflow" / f"{db}.db"
    return dataclasses.replace(
        cfg, catalog=dataclasses.replace(cfg.catalog, database=db),
        tracking=dataclasses.replace(cfg.tracking, uri=f"sqlite:///{store.resolve()}"))


def wine_features(spark, cfg: Config):
    """The wine data set ingested, curated and built into its gold table."""
    ingest(spark, cfg, ["wine"], "b1")
    curate(spark, cfg, ["wine"])
    return build_features(spark, cfg, "wine", partitions=4)


def with_paths(cfg: Config, **paths: Path | str) -> Config:
    """The config with some catalog entries reading other files (outside any package)."""
    datasets = dict(cfg.datasets)
    for name, path in paths.items():
        entry = datasets[name]
        source = dataclasses.replace(entry.source, files=(str(path),), package="")
        datasets[name] = dataclasses.replace(entry, source=source)
    return dataclasses.replace(cfg, datasets=datasets)


def with_datasets(cfg: Config, entries: dict) -> Config:
    """The config with more catalog entries, given as they would be written in YAML."""
    parsed, problems = parse_datasets(entries)
    assert not problems, problems
    return dataclasses.replace(cfg, datasets={**cfg.datasets, **parsed})


def silver_spec(spark, cfg: Config, dataset: str):
    """The silver table spec of a catalog entry (for tests that write silver rows)."""
    from lakehouse.dataset_check import dataset_tables

    return dataset_tables(spark, cfg.datasets[dataset])[1]


ORDERS_DDL = "order_id BIGINT NOT NULL, placed_at TIMESTAMP, amount DOUBLE, status STRING"
AMOUNT_POSITIVE = {"name": "amount_positive", "expr": "amount > 0", "on_fail": "quarantine"}


def orders_entry(folder: Path | str, **silver) -> dict:
    """A catalog entry (as written in YAML) of a CSV landing folder of orders."""
    return {"kind": "tabular", "roles": {"id": "order_id", "label": "status"},
            "source": {"files": str(folder), "format": "csv", "options": {"header": True},
                       "schema": ORDERS_DDL},
            "silver": {"keys": ["order_id"], **silver}}


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def table_state(spark, cfg: Config) -> dict[str, tuple[int, int, int]]:
    """Per table of the lakehouse: latest version, rows and an order-independent hash."""
    state = {}
    for name in lakehouse_tables(spark, cfg):
        df = spark.table(name)
        digest = df.select(F.sum(F.xxhash64(*df.columns).cast("decimal(38,0)"))).first()[0]
        state[name] = (delta.current_version(spark, name), df.count(), int(digest or 0))
    return state


def small_job_env(home: Path, entries: Path | None = None) -> dict[str, str]:
    """The environment of lakeforge jobs started as processes on a small lakehouse.

    Two local cores, no UI, two shuffle partitions, a 1 GB driver, ``home`` as
    LAKEFORGE_HOME, and (if given) a folder of extra catalog entries.
    """
    env = {**os.environ, "LAKEFORGE_HOME": str(home), "LAKEFORGE_SPARK__MASTER": "local[2]",
           "LAKEFORGE_SPARK__UI_ENABLED": "false", "LAKEFORGE_SPARK__SHUFFLE_PARTITIONS": "2",
           "LAKEFORGE_SPARK__DRIVER_MEMORY": "1g"}
    if entries is not None:
        env["LAKEFORGE_CATALOG__DATASET_DIRS"] = json.dumps([str(entries)])
    return env


def lakeforge(env: dict[str, str], *args: str) -> subprocess.Popen:
    """Start ``lakeforge ARGS`` in a process of its own, its output piped."""
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def succeeded(proc: subprocess.Popen, timeout: int = 1500) -> str:
    """The output of a started command, which must exit with 0."""
    out = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, f"{proc.args}:\n{out[-4000:]}"
    return out


def wait_listening(port: int, server: subprocess.Popen, log: Path | None = None,
                   wait: float = 600) -> None:
    """Wait until a server process listens on ``port`` on the loopback interface.

    A server that exits, or does not listen within ``wait`` seconds, fails the test with
    the tail of its ``log``.
    """
    def tail() -> str:
        return log.read_text(errors="replace")[-3000:] if log and log.exists() else ""

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server stopped before it listened:\n{tail()}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(1)
    raise AssertionError(f"nothing listened on {port} within {wait} s:\n{tail()}")


def beeline(env: dict[str, str], port: int, query: str, user: str = "", password: str = "",
            check: bool = True) -> str:
    """Run a query through a Thrift server with beeline (CSV output).

    With ``check`` the call must succeed and its output is returned; without, its output
    and errors are returned whatever happened.
    """
    out = subprocess.run(beeline_command(port, query, user=user, password=password),
                         capture_output=True, text=True, timeout=600, check=False,
                         env=submit_env(load_config(environ=env)))
    if not check:
        return out.stdout + out.stderr
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout
