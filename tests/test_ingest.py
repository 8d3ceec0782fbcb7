"""Bronze ingest and silver curation on real local Spark + Delta."""

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from lakehouse.curate import curate
from lakehouse.delta import current_version
from lakehouse.errors import SchemaMismatchError, SourceError
from lakehouse.ingest import ingest
from tests.helpers import with_paths

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
