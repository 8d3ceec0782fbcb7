"""Silver curation: bronze -> typed, validated, deduplicated silver tables (Delta MERGE).

Each dataset has validation rules (a SQL condition each row must meet, and the
reason recorded when it does not). Rows that fail go to quarantine; the rest are
deduplicated on the registry keys (latest ingest wins) and merged into silver.
A source is curated once per bronze version: re-running changes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.ingest import quarantine_rows, resolve_sources
from lakehouse.sources import Source
from lakehouse.sources.base import ERROR, RAW
from lakehouse.tables import TableSpec, table

log = logging.getLogger(__name__)

# dataset -> [(condition every row must meet, reason when it does not)]
RULES: dict[str, list[tuple[str, str]]] = {
    "breast_cancer": [("size(features) = 30", "expected 30 features"),
                      ("label IN (0, 1)", "label must be 0 or 1")],
    "wine": [("size(features) = 13", "expected 13 features"),
             ("label IN (0, 1, 2)", "label must be 0, 1 or 2")],
    "flights": [
        ("year IS NOT NULL AND month BETWEEN 1 AND 12 AND day BETWEEN 1 AND 31",
         "date (year, month, day) missing or out of range"),
        ("sched_dep_time BETWEEN 0 AND 2359 AND sched_arr_time BETWEEN 0 AND 2359",
         "scheduled times missing or not HHMM"),
        ("carrier IS NOT NULL AND origin IS NOT NULL AND dest IS NOT NULL",
         "carrier, origin or dest missing"),
        ("distance > 0", "distance missing or not positive"),
    ],
    "fashion_mnist": [("length(pixels) = 784", "image is not 28x28 bytes"),
                      ("label BETWEEN 0 AND 9", "label must be 0..9")],
    "documents": [("text IS NOT NULL AND length(trim(text)) > 0", "document has no text")],
    "word_analogies": [("a IS NOT NULL AND b IS NOT NULL AND c IS NOT NULL AND d IS NOT NULL",
                        "analogy needs four words")],
    "word_similarity": [("score BETWEEN 0 AND 10", "score missing or outside 0..10")],
    "series": [("value IS NOT NULL AND NOT isnan(value)", "value missing")],
    "streams": [("value IS NOT NULL AND NOT isnan(value)", "value missing"),
                ("label IN (0, 1)", "label must be 0 or 1")],
}


@dataclass(frozen=True)
class CurateResult:
    """What one source's curation did."""

    source: str
    table: str
    bronze_version: int
    valid: int
    rejected: int
    inserted: int
    updated: int
    skipped: bool

    def summary(self) -> str:
        """One log line."""
        if self.skipped:
            return (f"{self.source}: {self.table} already curated from bronze "
                    f"v{self.bronze_version}; nothing to do")
        return (f"{self.source}: {self.valid:,} valid, {self.rejected:,} quarantined -> "
                f"{self.table} +{self.inserted:,} new, {self.updated:,} updated "
                f"(bronze v{self.bronze_version})")


def curate(spark: SparkSession, cfg: Config, names: Sequence[str],
           batch: str | None = None) -> list[CurateResult]:
    """Curate sources from bronze into silver.

    Args:
        spark: the session.
        cfg: configuration.
        names: source names, or ``["all"]``.
        batch: only this ingest batch (default: every batch in bronze).

    Returns:
        One result per source.
    """
    return [curate_source(spark, cfg, s, batch) for s in resolve_sources(names)]


def validate(df: DataFrame, dataset: str) -> DataFrame:
    """Add ``_error``: the reason of the first rule a row breaks, or null."""
    reason = F.lit(None).cast("string")
    for condition, why in reversed(RULES.get(dataset, [])):
        reason = F.when(~F.coalesce(F.expr(condition), F.lit(False)), F.lit(why)).otherwise(reason)
    return df.withColumn(ERROR, reason)


def latest_per_key(df: DataFrame, spec: TableSpec) -> DataFrame:
    """Keep one row per key: the most recently ingested (within a file, the last record)."""
    order = Window.partitionBy(*spec.keys).orderBy(
        F.col("_ingested_at").desc(), F.col("_ingest_batch").desc(), F.col("_record").desc())
    return df.withColumn("_n", F.row_number().over(order)).filter("_n = 1").drop("_n")


def curate_source(spark: SparkSession, cfg: Config, source: Source,
                  batch: str | None = None) -> CurateResult:
    """Curate one source (see :func:`curate`)."""
    db = cfg.catalog.database
    bronze_spec, silver_spec = table(f"bronze.{source.dataset}"), table(f"silver.{source.dataset}")
    bronze = bronze_spec.full_name(db)
    version = delta.current_version(spark, bronze)
    silver = delta.ensure_table(spark, silver_spec, db)
    quarantine = delta.ensure_table(spark, table("ops.quarantine"), db)

    rows = delta.read_version(spark, bronze, version).filter(F.col("_source") == source.name)
    if batch is not None:
        rows = rows.filter(F.col("_ingest_batch") == batch)
    checked = validate(rows, source.dataset).persist()
    try:
        counts = {r["ok"]: r["n"] for r in checked.groupBy(F.col(ERROR).isNull().alias("ok"))
                  .agg(F.count("*").alias("n")).collect()}
        app_id = f"lakeforge/curate/{source.name}/{batch or '*'}"
        with _txn(spark, app_id, version):
            before = delta.current_version(spark, silver)
            _merge(spark, silver, silver_spec,
                   latest_per_key(checked.filter(F.col(ERROR).isNull()), silver_spec))
            merged = delta.current_version(spark, silver) != before
        metrics = _last_metrics(spark, silver) if merged else {}
        if merged and counts.get(False, 0):
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            bad = checked.filter(F.col(ERROR).isNotNull()).withColumn(
                RAW, F.to_json(F.struct(*[f.name for f in silver_spec.fields])))
            delta.append_once(
                quarantine_rows(bad, source.name, silver, "curate", batch or "*", now),
                quarantine, f"{app_id}/v{version}/quarantine")
    finally:
        checked.unpersist()
    result = CurateResult(source.name, silver, version, counts.get(True, 0),
                          counts.get(False, 0), metrics.get("numTargetRowsInserted", 0),
                          metrics.get("numTargetRowsUpdated", 0), skipped=not merged)
    log.info(result.summary())
    return result


def _merge(spark: SparkSession, silver: str, spec: TableSpec, updates: DataFrame) -> None:
    data_cols = [f.name for f in spec.fields]
    on = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in spec.keys)
    changed = " OR ".join(f"NOT (t.`{c}` <=> s.`{c}`)" for c in data_cols if c not in spec.keys)
    assignments = {f"`{c}`": f"s.`{c}`" for c in data_cols}
    delta.with_retries(
        lambda: DeltaTable.forName(spark, silver).alias("t")
        .merge(updates.select(*data_cols).alias("s"), on)
        .whenMatchedUpdate(condition=changed or None, set=assignments)
        .whenNotMatchedInsert(values=assignments)
        .execute(),
        what=f"merge into {silver}",
    )


def _last_metrics(spark: SparkSession, full_name: str) -> dict[str, int]:
    last = DeltaTable.forName(spark, full_name).history(1).collect()[0]
    return {k: int(v) for k, v in (last["operationMetrics"] or {}).items() if v.isdigit()}


@contextmanager
def _txn(spark: SparkSession, app_id: str, version: int):
    """Make the DML inside idempotent per (app_id, version) with Delta's txn confs."""
    spark.conf.set("spark.databricks.delta.write.txnAppId", app_id)
    spark.conf.set("spark.databricks.delta.write.txnVersion", str(version))
    try:
        yield
    finally:
        spark.conf.unset("spark.databricks.delta.write.txnAppId")
        spark.conf.unset("spark.databricks.delta.write.txnVersion")
