"""Re-runs and maintenance change nothing: work is keyed on data, not on table versions."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lakehouse import curate as curating
from lakehouse import delta
from lakehouse.config import load_config
from lakehouse.curate import curate
from lakehouse.ingest import ingest
from lakehouse.maintain import maintain
from lakehouse.session import hold_lakehouse
from models.runner import staging_dir
from models.store import ModelStore
from tests.helpers import AMOUNT_POSITIVE, orders_entry, table_state, with_datasets

HEADER = "order_id,placed_at,amount,status\n"


def _orders(folder: Path) -> dict:
    return {"orders": orders_entry(folder, rules=[AMOUNT_POSITIVE])}


def _landing(tmp_path: Path) -> Path:
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "day1.csv").write_text(HEADER + "1,,10,NEW\n2,,-5,PAID\n3,,oops,NEW\n")
    return landing


def test_snapshot_data_version_ignores_maintenance_and_noop_commits(spark, cfg):
    name = f"{cfg.catalog.database}.t"
    spark.sql(f"CREATE TABLE {name} (k INT, v STRING) USING delta")
    assert delta.snapshot(spark, name).data_version == 0          # empty: its first version
    for rows in ([(1, "a")], [(2, "b")]):
        spark.createDataFrame(rows, "k int, v string").write.format("delta").mode("append") \
            .saveAsTable(name)
    written = delta.current_version(spark, name)
    spark.sql(f"OPTIMIZE {name}")
    spark.sql(f"ALTER TABLE {name} SET TBLPROPERTIES ('team' = 'ops')")
    spark.sql(f"MERGE INTO {name} t USING (SELECT 1 AS k, 'a' AS v) s ON t.k = s.k "
              f"WHEN MATCHED AND t.v <> s.v THEN UPDATE SET * "
              f"WHEN NOT MATCHED THEN INSERT *")      # rewrites the file, changes no row
    after = delta.snapshot(spark, name)
    assert (after.data_version, after.version) == (written, written + 3)
    spark.sql(f"MERGE INTO {name} t USING (SELECT 1 AS k, 'z' AS v) s ON t.k = s.k "
              f"WHEN MATCHED THEN UPDATE SET *")
    assert delta.snapshot(spark, name).data_version == written + 4


HOLDER = """
import sys, time
from lakehouse.config import load_config
from lakehouse.session import hold_lakehouse
from models.runner import staging_dir
from models.store import ModelStore
hold_lakehouse(load_config([f"home={sys.argv[1]}"], environ={}))
print("holding", flush=True)
time.sleep(120)
"""


def test_second_process_on_a_derby_lakehouse_stops_with_one_line(tmp_path):
    home = tmp_path / "home"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(home)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        second = subprocess.run(
            [sys.executable, "-m", "jobs.cli", "tables", "--set", f"home={home}"],
            capture_output=True, text=True, timeout=120)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert second.returncode == 2
    errors = [line for line in second.stderr.splitlines() if "lakeforge tables: error" in line]
    assert len(errors) == 1 and f"in use by pid {holder.pid}" in errors[0]
    assert "shared metastore" in errors[0]
    assert len(second.stderr.splitlines()) == 1 and "Exception" not in second.stderr
    hold_lakehouse(load_config([f"home={home}"], environ={}))   # a killed holder lets go


def test_unknown_operations_count_as_data_changes():
    assert delta.changes_data("RESTORE", {}, {})
    assert delta.changes_data("WRITE", {"mode": "Overwrite"}, {"numOutputRows": "0"})
    assert not delta.changes_data("WRITE", {"mode": "Append"}, {"numOutputRows": "0"})
    assert not delta.changes_data("VACUUM END", {}, {})
    assert delta.changes_data("MERGE", {}, {})                    # no metrics: assume it did


def test_recurating_with_a_new_batch_quarantines_each_record_once(spark, cfg, tmp_path):
    landing = _landing(tmp_path)
    cfg = with_datasets(cfg, _orders(landing))
    db = cfg.catalog.database
    ingest(spark, cfg, ["orders"], "d1")
    [first] = curate(spark, cfg, ["orders"])
    assert (first.valid, first.rejected, first.skipped) == (1, 1, False)
    silver_version = delta.current_version(spark, f"{db}.silver_orders")

    # The same rows landed again under a new name: bronze grows, silver has nothing new,
    # and only the new batch is read.
    (landing / "day1-copy.csv").write_text((landing / "day1.csv").read_text())
    ingest(spark, cfg, ["orders"], "d2")
    [again] = curate(spark, cfg, ["orders"])
    assert (again.valid, again.rejected, again.batches) == (1, 1, ("d2",))
    assert again.inserted == 0
    assert delta.current_version(spark, f"{db}.silver_orders") == silver_version
    curated = spark.table(f"{db}.ops_quarantine").filter("stage = 'curate'")
    assert sorted((r.batch, json.loads(r.raw)["order_id"]) for r in curated.collect()) == \
        [("d1", 2), ("d2", 2)]

    maintain(spark, cfg)
    maintained = table_state(spark, cfg)
    [third] = curate(spark, cfg, ["orders"])
    assert third.skipped and third.bronze_version == again.bronze_version
    assert table_state(spark, cfg) == maintained


def _curate_rows(spark, db: str) -> tuple[list, list, list]:
    """The curate-stage bookkeeping: quarantined records, rule counts, curated batches."""
    quarantined = sorted((r.batch, r.record) for r in spark.table(f"{db}.ops_quarantine")
                         .filter("stage = 'curate'").collect())
    counts = sorted((r.batch, r.rule, r.quarantined) for r in spark.table(f"{db}.ops_quality")
                    .filter("stage = 'curate'").collect())
    curated = sorted(r.batch for r in spark.table(f"{db}.ops_curations").collect())
    return quarantined, counts, curated


def test_a_curation_stopped_after_its_decision_is_left_to_its_live_run_then_finished(
        spark, cfg, tmp_path, monkeypatch):
    cfg = with_datasets(cfg, _orders(_landing(tmp_path)))
    db = cfg.catalog.database
    ingest(spark, cfg, ["orders"], "d1")
    live = subprocess.Popen(["sleep", "300"])
    owner = f"{socket.gethostname()} {live.pid}"
    try:
        # A run (here: of the sleeping process) commits its quarantine rows, then stops.
        with monkeypatch.context() as m:
            m.setattr(curating, "owner_line", lambda: owner)
            m.setattr(curating, "_write_counts", lambda *a, **k: 1 / 0)
            with pytest.raises(ZeroDivisionError):
                curate(spark, cfg, ["orders"])
        [left] = curate(spark, cfg, ["orders"])
        assert (left.skipped, left.left_to) == (True, owner)
        assert _curate_rows(spark, db) == ([("d1", 1)], [], [])
    finally:
        live.kill()
        live.wait()
    [finished] = curate(spark, cfg, ["orders"])          # its run is gone: finished here
    assert (finished.valid, finished.rejected, finished.skipped) == (1, 1, False)
    assert _curate_rows(spark, db) == ([("d1", 1)], [("d1", "amount_positive", 1)], ["d1"])
    [again] = curate(spark, cfg, ["orders"])
    assert again.skipped and not again.left_to


def test_a_curation_stopped_after_its_counts_then_given_a_new_batch_counts_each_once(
        spark, cfg, tmp_path, monkeypatch):
    landing = _landing(tmp_path)
    cfg = with_datasets(cfg, _orders(landing))
    db = cfg.catalog.database
    ingest(spark, cfg, ["orders"], "d1")
    real = delta.append

    def stop_at_curations(df, name):
        assert not name.endswith("ops_curations"), "stopped"
        real(df, name)

    with monkeypatch.context() as m:
        m.setattr(delta, "append", stop_at_curations)
        with pytest.raises(AssertionError, match="stopped"):
            curate(spark, cfg, ["orders"])
    assert _curate_rows(spark, db) == ([("d1", 1)], [("d1", "amount_positive", 1)], [])
    # Another batch lands before the next curate: a new scope decides again, and the
    # records and counts the stopped run wrote are not written twice.
    (landing / "day2.csv").write_text(HEADER + "4,,-1,NEW\n5,,7,NEW\n")
    ingest(spark, cfg, ["orders"], "d2")
    [both] = curate(spark, cfg, ["orders"])
    assert (both.valid, both.rejected, both.batches) == (2, 2, ("d1", "d2"))
    assert _curate_rows(spark, db) == (
        [("d1", 1), ("d2", 0)], [("d1", "amount_positive", 1), ("d2", "amount_positive", 1)],
        ["d1", "d2"])


def test_a_curated_version_is_not_read_again_until_its_declaration_changes(
        spark, cfg, tmp_path, monkeypatch):
    landing = _landing(tmp_path)
    cfg = with_datasets(cfg, _orders(landing))
    quality = f"{cfg.catalog.database}.ops_quality"
    ingest(spark, cfg, ["orders"], "d1")
    [first] = curate(spark, cfg, ["orders"])
    assert (first.valid, first.rejected, first.skipped) == (1, 1, False)
    reads, real = [], delta.read_version
    monkeypatch.setattr(delta, "read_version",
                        lambda spark, name, *args: reads.append(name) or real(spark, name, *args))
    [again] = curate(spark, cfg, ["orders"])
    assert again.skipped and again.valid is None and reads == []     # bronze not even read

    # Another rule declared on the same bronze: curated again, its counts recorded once.
    warn = {"name": "status_new", "expr": "status = 'NEW'", "on_fail": "warn"}
    stricter = with_datasets(cfg, {"orders": orders_entry(landing,
                                                          rules=[AMOUNT_POSITIVE, warn])})
    [changed] = curate(spark, stricter, ["orders"])
    assert reads and (changed.valid, changed.rejected, changed.skipped) == (1, 1, False)
    [settled] = curate(spark, stricter, ["orders"])
    assert settled.skipped and len(reads) == 1
    counts = spark.table(quality).filter("stage = 'curate'").groupBy("rule").count().collect()
    assert sorted(tuple(r) for r in counts) == [("amount_positive", 2), ("status_new", 1)]


def test_staging_removes_folders_of_killed_runs_only(cfg, tmp_path):
    cfg = dataclasses.replace(cfg, home=tmp_path / "home")     # no other test's runs
    root = cfg.home / "staging"
    root.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    for run, pid in (("killed-run", dead.pid), ("live-run", os.getpid())):
        (root / run).mkdir()
        (root / run / "model.keras").write_text("partial")
        (root / f"{run}.owner").write_text(f"{host} {pid}")
    (root / "orphan").mkdir()                                  # no owner at all
    staged = staging_dir(cfg, "new-run")
    assert staged.is_dir() and not any(staged.iterdir())
    assert sorted(p.name for p in root.iterdir()) == \
        ["live-run", "live-run.owner", "new-run", "new-run.owner"]


def test_concurrent_registrations_of_one_model_get_distinct_versions(spark, cfg, tmp_path):
    store = ModelStore(spark, cfg)

    def register(run: str) -> int:
        staged = tmp_path / run
        staged.mkdir()
        (staged / "model.keras").write_text(run)
        return store.register("m", "mlp", staged, {}, {}, "t", 1, run).version

    with ThreadPoolExecutor(3) as pool:
        versions = sorted(pool.map(register, ["r1", "r2", "r3"]))
    assert versions == [1, 2, 3]
    rows = spark.table(store.table).filter("name = 'm'").collect()
    assert sorted(r.version for r in rows) == [1, 2, 3]
    assert {(Path(r.artifact) / "model.keras").read_text() for r in rows} == {"r1", "r2", "r3"}


def test_tables_whose_creation_was_killed_are_created_on_the_next_run(spark, cfg):
    from lakehouse.tables import table

    db = cfg.catalog.database
    folder = Path(spark.catalog.getDatabase(db).locationUri.removeprefix("file:"))
    half = folder / "ops_quality" / "_delta_log"                 # killed before commit 0
    half.mkdir(parents=True)
    (half / "00000000000000000000.json.tmp").write_text("{")
    assert delta.ensure_table(spark, table("ops.quality"), db) == f"{db}.ops_quality"
    assert spark.table(f"{db}.ops_quality").count() == 0

    spec = table("ops.quarantine")                              # killed after commit 0
    rows = spark.createDataFrame([], spec.schema)
    rows.write.format("delta").save(str(folder / "ops_quarantine"))
    assert delta.ensure_table(spark, spec, db) == f"{db}.ops_quarantine"
    assert delta.current_version(spark, f"{db}.ops_quarantine") == 0
