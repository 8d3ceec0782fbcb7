"""Curation follows its declaration, and a daily curate reads only the new batches.

Each declaration change is checked against a clean curate of the same files into a
fresh database: after the change, silver, the quarantine and the counts must be what
the clean curate gives.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from lakehouse import delta
from lakehouse.curate import curate
from lakehouse.ingest import ingest
from tests.helpers import in_database, with_datasets

HEADER = "id,v,tag\n"
DAY1 = HEADER + "".join(f"{i},{'' if i in (3, 7) else i * 1.5},{'a' if i % 2 else 'b'}\n"
                        for i in range(1, 9))
DAY2 = HEADER + "9,13.5,a\n10,,b\n11,16.5,c\n4,99.0,b\n"      # id 4 lands again, updated
V_PRESENT = {"name": "v_present", "expr": "v IS NOT NULL", "on_fail": "quarantine"}
NOT_C = {"name": "tag_not_c", "expr": "tag <> 'c'", "on_fail": "quarantine"}


def _entry(files: Path, select=None, keys=("id",), rules=(V_PRESENT,)) -> dict:
    silver = {"keys": list(keys), "rules": list(rules)}
    if select:
        silver["select"] = list(select)
    return {"nums": {
        "source": {"files": str(files), "format": "csv", "options": {"header": True},
                   "schema": "id BIGINT NOT NULL, v DOUBLE, tag STRING"},
        "silver": silver}}


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    folder = tmp_path / "landing"
    folder.mkdir()
    (folder / "day1.csv").write_text(DAY1)
    return folder


@pytest.fixture
def fresh(spark, cfg):
    """Another database of the same session: the fresh lake a clean curate goes to."""
    db = f"t_{uuid.uuid4().hex[:10]}"
    spark.sql(f"CREATE DATABASE {db}")
    yield in_database(cfg, db)
    spark.sql(f"DROP DATABASE {db} CASCADE")


def _land_and_curate(spark, cfg, landing: Path):
    """Two days landed, each ingested and curated."""
    ingest(spark, cfg, ["nums"], "d1")
    curate(spark, cfg, ["nums"])
    (landing / "day2.csv").write_text(DAY2)
    ingest(spark, cfg, ["nums"], "d2")
    return curate(spark, cfg, ["nums"])[0]


def _silver(spark, cfg):
    return spark.table(f"{cfg.catalog.database}.silver_nums")


def _quarantined(spark, cfg):
    return (spark.table(f"{cfg.catalog.database}.ops_quarantine")
            .filter("stage = 'curate'")
            .select("source", "batch", "record", "reason", "rules", "declaration"))


# Declarations a user moves through, one after the other, on the same lake.
CHANGES = [
    # rows quarantined before now pass (the minimal case)
    ("select fills gaps", dict(select=["id", "coalesce(v, 0) AS v", "tag"])),
    ("rule added", dict(rules=[V_PRESENT, NOT_C])),
    ("keys changed", dict(keys=("tag",))),
    # a type changed, a column dropped, one added
    ("columns changed", dict(select=["id", "CAST(v AS STRING) AS v", "upper(tag) AS code"])),
]


def _clean_curate(spark, cfg):
    """Curate the fresh lake's bronze as if for the first time."""
    db = cfg.catalog.database
    spark.sql(f"DROP TABLE IF EXISTS {db}.silver_nums")
    spark.sql(f"DROP TABLE IF EXISTS {db}.ops_curations")
    for name in ("ops_quarantine", "ops_quality"):
        if delta.table_exists(spark, f"{db}.{name}"):
            spark.sql(f"DELETE FROM {db}.{name} WHERE stage = 'curate'")
    return curate(spark, cfg, ["nums"])[0]


def _curations(spark, cfg):
    return (spark.table(f"{cfg.catalog.database}.ops_curations")
            .select("batch", "declaration", "rows", "valid", "quarantined"))


def test_each_changed_declaration_gives_what_a_clean_curate_gives(spark, cfg, fresh, landing):
    before = _land_and_curate(spark, with_datasets(cfg, _entry(landing)), landing)
    assert (before.valid, before.rejected, before.rows) == (3, 1, 8)
    ingest(spark, with_datasets(fresh, _entry(landing / "day1.csv")), ["nums"], "d1")
    ingest(spark, with_datasets(fresh, _entry(landing)), ["nums"], "d2")
    silver = f"{cfg.catalog.database}.silver_nums"
    for change, declared in CHANGES:
        version = delta.current_version(spark, silver)
        changed = with_datasets(cfg, _entry(landing, **declared))
        [result] = curate(spark, changed, ["nums"])
        assert result.rebuilt and set(result.batches) == {"d1", "d2"}, change

        clean_cfg = with_datasets(fresh, _entry(landing, **declared))
        clean = _clean_curate(spark, clean_cfg)
        assertDataFrameEqual(_silver(spark, changed), _silver(spark, clean_cfg))
        assertDataFrameEqual(_quarantined(spark, changed), _quarantined(spark, clean_cfg))
        assertDataFrameEqual(_curations(spark, changed), _curations(spark, clean_cfg))
        assert (result.valid, result.rejected) == (clean.valid, clean.rejected), change
        assert result.rows == clean.rows == _silver(spark, changed).count(), change
        assert delta.current_version(spark, silver) == version + 1, change   # one commit
        if change == "select fills gaps":       # 3, 7 and 10 had no v: now they arrive
            assert (result.inserted, result.rejected, result.rows) == (3, 0, 11)
        if change == "rule added":      # 3, 7, 10 leave again, and 11 (tagged c)
            assert (result.deleted, result.rows) == (4, 7)
            [row] = _quarantined(spark, changed).filter("reason LIKE '%tag_not_c%'").collect()
            assert (row.batch, row.rules) == ("d2", ["tag_not_c"])
        if change == "columns changed":
            assert result.rebuilt == ("its columns changed: column 'code' added, column "
                                      "'tag' dropped, column 'v' is now string (was double)")
            old = spark.sql(f"SELECT * FROM {silver} VERSION AS OF {version}")
            assert dict(old.dtypes)["v"] == "double" and "code" not in old.columns

        [again] = curate(spark, changed, ["nums"])
        assert again.skipped, change

    [asked] = curate(spark, changed, ["nums"], rebuild=True)
    assert asked.rebuilt == "asked (--rebuild)" and asked.rows == clean.rows
    assert (asked.inserted, asked.updated, asked.deleted) == (0, 0, 0)
    assert delta.current_version(spark, silver) == version + 1     # nothing to commit


def _bronze_files(spark, cfg, batch: str) -> list[str]:
    bronze = spark.table(f"{cfg.catalog.database}.bronze_nums")
    rows = (bronze.filter(F.col("_ingest_batch") == batch)
            .select(F.input_file_name().alias("f")).distinct().collect())
    return [urlparse(r.f).path for r in rows]


def test_curate_reads_only_the_batches_it_has_not_curated(spark, cfg, landing):
    cfg = with_datasets(cfg, _entry(landing))
    db = cfg.catalog.database
    _land_and_curate(spark, cfg, landing)
    # The files of the batches already curated are gone: a curate that read them fails.
    for batch in ("d1", "d2"):
        for path in _bronze_files(spark, cfg, batch):
            Path(path).unlink()
    (landing / "day3.csv").write_text(HEADER + "12,1.0,a\n13,,b\n")
    ingest(spark, cfg, ["nums"], "d3")
    [result] = curate(spark, cfg, ["nums"])
    assert result.batches == ("d3",) and (result.valid, result.rejected) == (1, 1)
    assert {r.id for r in _silver(spark, cfg).filter("id >= 12").collect()} == {12}
    quality = spark.table(f"{db}.ops_quality").filter("stage = 'curate'")
    assert sorted((r.batch, r.checked, r.quarantined) for r in quality.collect()) == [
        ("d1", 8, 2), ("d2", 4, 1), ("d3", 2, 1)]
    with pytest.raises(Exception, match="(?i)file.*(not exist|not found)"):
        curate(spark, cfg, ["nums"], rebuild=True)       # the same curate of every batch


def test_lineage_columns_can_be_used_in_select(spark, cfg, landing):
    select = ["*", "regexp_extract(_source_file, '([^/]+)[.]csv$', 1) AS landed_as",
              "_ingest_batch AS batch"]
    cfg = with_datasets(cfg, _entry(landing, select=select))
    ingest(spark, cfg, ["nums"], "d1")
    curate(spark, cfg, ["nums"])
    silver = _silver(spark, cfg)
    assert silver.columns == ["id", "v", "tag", "landed_as", "batch"]
    assert {(r.landed_as, r.batch) for r in silver.collect()} == {("day1", "d1")}
    assert DeltaTable.forName(spark, f"{cfg.catalog.database}.silver_nums").detail() \
        .first()["format"] == "delta"
