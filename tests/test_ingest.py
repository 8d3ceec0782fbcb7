"""Bronze ingest and silver curation on real local Spark + Delta."""

import socket
import subprocess

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F

import lakehouse.delta
import lakehouse.ingest
from lakehouse.curate import curate
from lakehouse.dataset_check import plan_dataset
from lakehouse.delta import current_version, ensure_table
from lakehouse.errors import SchemaMismatchError, SourceError
from lakehouse.ingest import ingest, load_batch, read_dataset
from lakehouse.landing import list_files
from lakehouse.tables import table
from tests.helpers import orders_entry, with_datasets, with_paths

STREAM = "data,label\n0.5,0\n0.6,0\nnot-a-number,0\n0.9,1\n0.4,maybe\n,0\n"


@pytest.fixture
def stream_cfg(cfg, tmp_path):
    (tmp_path / "streams").mkdir()
    (tmp_path / "streams" / "stream.csv").write_text(STREAM)
    return with_paths(cfg, mitdb=tmp_path / "streams")


def _q(spark, cfg):
    return spark.table(f"{cfg.catalog.database}.ops_quarantine")


def test_every_record_lands_in_bronze_or_quarantine(spark, stream_cfg):
    cfg = stream_cfg
    [result] = ingest(spark, cfg, ["mitdb"], "b1")
    bronze = spark.table(f"{cfg.catalog.database}.bronze_streams")
    assert result.read == 6 and result.bronze == 4 and result.quarantined == 2
    assert bronze.count() == 4
    rows = bronze.orderBy("t").select("t", "value", "label", "_ingest_batch", "_source").collect()
    assert [(r.t, r.value, r.label) for r in rows] == [(0, 0.5, 0), (1, 0.6, 0), (3, 0.9, 1),
                                                       (5, None, 0)]
    assert {r._ingest_batch for r in rows} == {"b1"} and {r._source for r in rows} == {"mitdb"}
    q = _q(spark, cfg).orderBy("record").collect()
    assert [(r.record, r.stage, r.batch, r.raw) for r in q] == [
        (4, "ingest", "b1", "not-a-number,0"), (6, "ingest", "b1", "0.4,maybe")]
    assert q[0].reason == "column 'value': 'not-a-number' is not a valid double"
    assert q[1].reason == "column 'label': 'maybe' is not 0 or 1"
    assert q[0].target_table.endswith("bronze_streams") and q[0].source_file.endswith("stream.csv")


def test_rerunning_a_batch_changes_nothing(spark, stream_cfg):
    cfg = stream_cfg
    ingest(spark, cfg, ["mitdb"], "b1")
    names = [f"{cfg.catalog.database}.{t}" for t in ("bronze_streams", "ops_quarantine")]
    versions = [current_version(spark, n) for n in names]
    [again] = ingest(spark, cfg, ["mitdb"], "b1")
    assert again.skipped
    [nothing_new] = ingest(spark, cfg, ["mitdb"], "b2")     # a new batch, no new file
    assert nothing_new.skipped and nothing_new.files == 0
    assert [current_version(spark, n) for n in names] == versions
    assert spark.table(names[0]).count() == 4 and spark.table(names[1]).count() == 2


def test_curate_validates_dedups_and_is_idempotent(spark, stream_cfg, tmp_path):
    cfg = stream_cfg
    db = cfg.catalog.database
    ingest(spark, cfg, ["mitdb"], "b1")
    (tmp_path / "streams" / "again.csv").write_text(STREAM)   # the same rows, landed again
    ingest(spark, cfg, ["mitdb"], "b2")
    [result] = curate(spark, cfg, ["mitdb"])
    silver = spark.table(f"{db}.silver_streams")
    # 8 bronze rows = 2 batches x 4; the row with a missing value is quarantined (twice,
    # once per batch), the 3 good keys are merged once each.
    assert (result.valid, result.rejected, result.inserted) == (6, 2, 3)
    assert sorted(r.t for r in silver.collect()) == [0, 1, 3]
    curated_q = _q(spark, cfg).filter("stage = 'curate'").collect()
    assert [r.reason for r in curated_q] == ["broke rule(s): value_present"] * 2
    assert [r.rules for r in curated_q] == [["value_present"]] * 2
    assert '"t":5' in curated_q[0].raw
    version = current_version(spark, f"{db}.silver_streams")
    [again] = curate(spark, cfg, ["mitdb"])
    assert again.skipped and current_version(spark, f"{db}.silver_streams") == version
    assert _q(spark, cfg).filter("stage = 'curate'").count() == 2


def test_curate_updates_changed_rows_only(spark, stream_cfg, tmp_path):
    cfg = stream_cfg
    db = cfg.catalog.database
    ingest(spark, cfg, ["mitdb"], "b1")
    curate(spark, cfg, ["mitdb"])
    changed = tmp_path / "changed.csv"
    changed.write_text("data,label\n0.5,0\n0.65,0\n")
    ingest(spark, with_paths(cfg, mitdb=changed), ["mitdb"], "b2")
    [result] = curate(spark, cfg, ["mitdb"], batch="b2")
    assert (result.inserted, result.updated) == (0, 1)
    values = {r.t: r.value for r in spark.table(f"{db}.silver_streams").collect()}
    assert values == {0: 0.5, 1: 0.65, 3: 0.9}


def test_schema_mismatch_names_table_and_column(spark, cfg):
    db = cfg.catalog.database
    spark.sql(f"CREATE TABLE {db}.bronze_wine (row_id BIGINT, features STRING) USING delta")
    with pytest.raises(SchemaMismatchError,
                       match=rf"{db}.bronze_wine: column 'features' is string, expected array"):
        ingest(spark, cfg, ["wine"], "b1")


def test_curate_before_ingest_names_missing_table(spark, cfg):
    from lakehouse.errors import TableNotFoundError

    with pytest.raises(TableNotFoundError, match="bronze_wine does not exist"):
        curate(spark, cfg, ["wine"])


def test_unknown_source_stops_before_writing(spark, cfg):
    with pytest.raises(SourceError, match="unknown data set 'winez'"):
        ingest(spark, cfg, ["winez"], "b1")
    assert spark.sql(f"SHOW TABLES IN {cfg.catalog.database}").count() == 0


def test_bronze_tables_are_plain_delta(spark, stream_cfg):
    ingest(spark, stream_cfg, ["mitdb"], "b1")
    detail = DeltaTable.forName(spark, f"{stream_cfg.catalog.database}.bronze_streams").detail()
    assert detail.select(F.col("format")).first()[0] == "delta"


def _orders_cfg(cfg, landing):
    landing.mkdir(exist_ok=True)
    return with_datasets(cfg, {"orders": orders_entry(landing)})


def _day(landing, name, first, n):
    """A CSV file of ``n`` orders from id ``first``, and one malformed line."""
    rows = "".join(f"{i},,{i % 50 + 1},NEW\n" for i in range(first, first + n))
    (landing / name).write_text("order_id,placed_at,amount,status\n" + rows + "oops,,x,NEW\n")


def _ops(spark, cfg, dataset="orders"):
    """Per batch: claimed files, quarantined records and ingest counts rows."""
    db = cfg.catalog.database

    def per_batch(name, column, where):
        rows = spark.table(f"{db}.{name}").filter(F.col(column) == dataset).filter(where)
        return {r["batch"]: r["count"] for r in rows.groupBy("batch").count().collect()}

    return (per_batch("ops_ingest_files", "dataset", "true"),
            per_batch("ops_quarantine", "source", "stage = 'ingest'"),
            per_batch("ops_quality", "dataset", "stage = 'ingest'"))


class _Killed(Exception):
    pass


def _kill_at(monkeypatch, call: int):
    """Make the ``call``-th plain append after a bronze commit fail, as a kill would."""
    real, seen = lakehouse.delta.append, []

    def append(df, full_name):
        seen.append(full_name)
        if len(seen) == call:
            raise _Killed(full_name)
        return real(df, full_name)

    monkeypatch.setattr(lakehouse.delta, "append", append)
    return seen


@pytest.mark.parametrize("killed_at", [1, 2, 3])
def test_a_batch_killed_after_its_bronze_commit_is_finished_once(spark, cfg, tmp_path,
                                                                 monkeypatch, killed_at):
    """The bronze commit decides: killed before its files (1), quarantine (2) or counts
    (3) are written, the next run (a new batch, a new file landed) finishes the batch
    from the commit's metadata, writes only what was missing, and never takes its file
    for new."""
    landing = tmp_path / "landing"
    cfg = _orders_cfg(cfg, landing)
    _day(landing, "day1.csv", 0, 40)
    seen = _kill_at(monkeypatch, killed_at)
    with pytest.raises(_Killed):
        ingest(spark, cfg, ["orders"], "b1")
    assert [name.rsplit("_", 1)[-1] for name in seen] == ["files", "quarantine", "quality"][
        :killed_at]
    monkeypatch.undo()
    bronze = spark.table(f"{cfg.catalog.database}.bronze_orders")
    assert bronze.count() == 40                                    # committed before the kill
    _day(landing, "day2.csv", 1000, 25)
    [result] = ingest(spark, cfg, ["orders"], "b2")
    assert result.resumed == ("b1",) and (result.files, result.bronze) == (1, 25)
    counts = {r["_ingest_batch"]: r["count"]
              for r in bronze.groupBy("_ingest_batch").count().collect()}
    assert counts == {"b1": 40, "b2": 25}
    assert _ops(spark, cfg) == ({"b1": 1, "b2": 1}, {"b1": 1, "b2": 1}, {"b1": 1, "b2": 1})
    [again] = ingest(spark, cfg, ["orders"], "b3")                  # nothing new, nothing left
    assert again.skipped and not again.resumed and again.files == 0


def test_a_batch_whose_run_is_alive_is_left_to_it(spark, cfg, tmp_path, monkeypatch):
    """A batch committed by a process that still runs is not finished by another run,
    and its files are not new to it; once that process is gone, the next run finishes
    it. A rerun of the same batch id by its own process finishes it too."""
    landing = tmp_path / "landing"
    cfg = _orders_cfg(cfg, landing)
    _day(landing, "day1.csv", 0, 30)
    other = subprocess.Popen(["sleep", "600"])
    try:
        monkeypatch.setattr(lakehouse.ingest, "owner_line",
                            lambda: f"{socket.gethostname()} {other.pid}")
        _kill_at(monkeypatch, 1)
        with pytest.raises(_Killed):
            ingest(spark, cfg, ["orders"], "b1")
        monkeypatch.undo()
        [waiting] = ingest(spark, cfg, ["orders"], "b2")
        assert waiting.skipped and not waiting.resumed and waiting.files == 0
        [same] = ingest(spark, cfg, ["orders"], "b1")          # its own id: still its run's
        assert same.skipped and not same.resumed
    finally:
        other.kill()
        other.wait()
    [finished] = ingest(spark, cfg, ["orders"], "b2")
    assert finished.resumed == ("b1",) and finished.files == 0
    assert _ops(spark, cfg) == ({"b1": 1}, {"b1": 1}, {"b1": 1})
    assert spark.table(f"{cfg.catalog.database}.bronze_orders").count() == 30


def test_a_batch_costs_one_exactly_once_write(spark, cfg, tmp_path, monkeypatch):
    """A batch's only exactly-once write is its bronze commit; the bookkeeping after it
    is plain appends."""
    landing = tmp_path / "landing"
    cfg = _orders_cfg(cfg, landing)
    _day(landing, "day1.csv", 0, 10)
    ingest(spark, cfg, ["orders"], "b1")
    _day(landing, "day2.csv", 100, 10)
    once, plain = [], []
    real_once, real_plain = lakehouse.delta.append_once, lakehouse.delta.append
    monkeypatch.setattr(lakehouse.delta, "append_once",
                        lambda df, name, *a, **k: once.append(name) or real_once(df, name, *a,
                                                                                 **k))
    monkeypatch.setattr(lakehouse.delta, "append",
                        lambda df, name: plain.append(name) or real_plain(df, name))
    [result] = ingest(spark, cfg, ["orders"], "b2")
    assert (result.bronze, result.quarantined) == (10, 1)
    db = cfg.catalog.database
    assert once == [f"{db}.bronze_orders"]
    assert plain == [f"{db}.ops_ingest_files", f"{db}.ops_quarantine", f"{db}.ops_quality"]


@pytest.mark.parametrize("killed_at", [1, 2, None])
def test_a_replayed_micro_batch_writes_each_record_once(spark, cfg, tmp_path, monkeypatch,
                                                        killed_at):
    """A stream's micro-batch replayed under its own name after a kill (before its
    quarantine, before its counts, or after both) leaves every table as one load does."""
    landing = tmp_path / "landing"
    cfg = _orders_cfg(cfg, landing)
    _day(landing, "day1.csv", 0, 20)
    entry = cfg.datasets["orders"]
    plan = plan_dataset(spark, entry)
    for spec in (plan.bronze, *(table(f"ops.{t}") for t in ("quarantine", "quality",
                                                             "ingest_files"))):
        ensure_table(spark, spec, cfg.catalog.database)
    files = list_files(spark, entry)

    def load() -> tuple[int, int]:
        return load_batch(spark, cfg, entry, plan.bronze, "s1-000007",
                          lambda: read_dataset(spark, cfg, entry, plan.bronze, files),
                          "a micro-batch")

    if killed_at:
        _kill_at(monkeypatch, killed_at)
        with pytest.raises(_Killed):
            load()
        monkeypatch.undo()
    else:
        assert load() == (20, 1)
    assert load() == (20, 1)
    assert spark.table(f"{cfg.catalog.database}.bronze_orders").count() == 20
    assert _ops(spark, cfg) == ({}, {"s1-000007": 1}, {"s1-000007": 1})
