"""Silver curation: bronze -> typed, validated, deduplicated silver tables (Delta MERGE).

Each data set's catalog entry gives an optional SQL select (renames, ``try_cast``,
derived columns), the silver keys and named quality rules (:mod:`lakehouse.quality`).
Rows that break a ``quarantine`` rule go to quarantine naming every rule they broke;
the rest are deduplicated on the keys (latest ingest wins) and merged into silver.
Counts per rule go to ``ops_quality``. A data set is curated once per bronze data
version (maintenance of bronze is not a new version) and silver declaration:
re-running changes nothing, and when the rule counts of that version and declaration
are already in ``ops_quality`` (the last write of a curation) it reads nothing either.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.dataset_check import check_datasets, dataset_tables
from lakehouse.datasets import Dataset
from lakehouse.errors import QualityError
from lakehouse.quality import apply_rules, count_rules, quality_rows, quarantine_rows, raise_on_fail
from lakehouse.sources.base import ERROR, RAW
from lakehouse.tables import LINEAGE_NAMES, TableSpec, table

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class CurateResult:
    """What one data set's curation did."""

    source: str
    table: str
    bronze_version: int
    valid: int | None       # None: already curated, nothing was read or counted
    rejected: int | None
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
        names: data set names, or ``["all"]``.
        batch: only this ingest batch (default: every batch in bronze).

    Returns:
        One result per data set.

    Raises:
        CatalogError: when an entry cannot be used (checked before anything is written).
        QualityError: when a rule with ``on_fail: fail`` is broken (nothing is written).
    """
    entries = check_datasets(spark, cfg, names)
    return [curate_dataset(spark, cfg, e, batch) for e in entries]


def to_silver(rows: DataFrame, entry: Dataset, bronze: TableSpec) -> DataFrame:
    """Bronze rows in the silver shape (the entry's select), with lineage and ``_raw``."""
    carried = [*LINEAGE_NAMES, RAW]
    with_raw = rows.withColumn(RAW, F.to_json(F.struct(*[f.name for f in bronze.fields])))
    if not entry.silver.select:
        return with_raw
    shaped = with_raw.selectExpr(*entry.silver.select)
    missing = [c for c in carried if c not in shaped.columns]   # a "*" keeps them already
    return with_raw.selectExpr(*entry.silver.select, *missing) if missing else shaped


def latest_per_key(df: DataFrame, spec: TableSpec) -> DataFrame:
    """Keep one row per key: the most recently ingested (within a file, the last record)."""
    order = Window.partitionBy(*spec.keys).orderBy(
        F.col("_ingested_at").desc(), F.col("_ingest_batch").desc(), F.col("_record").desc())
    return df.withColumn("_n", F.row_number().over(order)).filter("_n = 1").drop("_n")


def curate_dataset(spark: SparkSession, cfg: Config, entry: Dataset,
                   batch: str | None = None) -> CurateResult:
    """Curate one data set (see :func:`curate`).

    Keyed on the bronze table's data version (:class:`lakehouse.delta.Snapshot`), so
    maintenance of bronze causes no work. Writes nothing that is already there: silver
    changes only by rows that differ, each quarantined record is written once per data
    set, stage and ingest batch, and the rule counts once per bronze data version.
    """
    db = cfg.catalog.database
    bronze_spec, silver_spec = dataset_tables(spark, entry)
    bronze = delta.snapshot(spark, bronze_spec.full_name(db))
    silver = delta.ensure_table(spark, silver_spec, db)
    quarantine = delta.ensure_table(spark, table("ops.quarantine"), db)
    quality = delta.ensure_table(spark, table("ops.quality"), db)
    rules = entry.silver.rules
    app_id = f"lakeforge/curate/{entry.name}/{batch or '*'}"
    # The rule counts are a curation's last write: once they are in, so is the rest.
    # Ids written before the declaration's digest was part of them still count (a
    # re-run after an upgrade writes no second set of counts).
    declared = hashlib.sha256(repr((entry.silver, silver_spec.fields)).encode()).hexdigest()
    quality_id = f"{app_id}/v{bronze.data_version}/{declared[:12]}/quality"
    legacy_id = f"{app_id}/v{bronze.data_version}/quality"
    counted = delta.committed_writes(spark, quality, [quality_id, legacy_id]) if rules else {}
    if counted.get(quality_id) is not None:
        result = CurateResult(entry.name, silver, bronze.data_version, None, None, 0, 0,
                              skipped=True)
        log.info(result.summary())
        return result

    rows = delta.read_version(spark, bronze.table, bronze.version)
    rows = rows.filter(F.col("_source") == entry.name)
    if batch is not None:
        rows = rows.filter(F.col("_ingest_batch") == batch)
    checked = apply_rules(to_silver(rows, entry, bronze_spec), rules).persist()
    try:
        total, rule_counts = _count(checked, rules, entry.name, batch)
        raise_on_fail(checked, rule_counts, entry.name, batch or "*")
        n_bad = checked.filter(F.col(ERROR).isNotNull()).count() if rules else 0
        n_good = total - n_bad
        updates = latest_per_key(checked.filter(F.col(ERROR).isNull()), silver_spec)
        with _txn(spark, app_id, bronze.data_version):
            merged = _merge(spark, silver, silver_spec, updates)
        metrics = _last_metrics(spark, silver) if merged else {}
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        wrote = merged
        if n_bad:
            wrote |= _quarantine_once(spark, quarantine, entry.name, quarantine_rows(
                checked.filter(F.col(ERROR).isNotNull()), entry.name, silver, "curate",
                F.col("_ingest_batch"), now), f"{app_id}/v{bronze.data_version}/quarantine")
        # A batch with no rows in bronze checked nothing.
        if rule_counts and total and counted.get(legacy_id) is None:
            wrote |= _append_counted(spark, quality, quality_rows(
                spark, entry.name, silver, "curate", batch or "*",
                [c.row() for c in rule_counts], now), quality_id)
    finally:
        checked.unpersist()
    result = CurateResult(entry.name, silver, bronze.data_version, n_good, n_bad,
                          metrics.get("numTargetRowsInserted", 0),
                          metrics.get("numTargetRowsUpdated", 0), skipped=not wrote)
    for c in rule_counts:
        if c.warned:
            log.warning("%s: rule %s (%s) warned on %s of %s rows", entry.name, c.rule, c.expr,
                        f"{c.warned:,}", f"{c.checked:,}")
    log.info(result.summary())
    return result


def _quarantine_once(spark: SparkSession, quarantine: str, dataset: str, rows: DataFrame,
                     app_id: str) -> bool:
    """Append the quarantined records the table does not hold yet; whether any were new.

    A record is known by data set, stage, ingest batch, file and record number, so a
    re-curation of bronze (with a new batch in it) does not quarantine old records twice.
    """
    held = (spark.table(quarantine)
            .filter((F.col("source") == dataset) & (F.col("stage") == "curate"))
            .select("batch", "source_file", "record"))
    on = [rows["batch"] == held["batch"], rows["source_file"].eqNullSafe(held["source_file"]),
          rows["record"].eqNullSafe(held["record"])]
    return _append_counted(spark, quarantine, rows.join(held, on, "left_anti"), app_id)


def _append_counted(spark: SparkSession, target: str, rows: DataFrame, app_id: str) -> bool:
    """:func:`delta.append_once`; whether it committed (an already-seen id or no rows do not)."""
    before = delta.current_version(spark, target)
    delta.append_once(rows, target, app_id)
    return delta.current_version(spark, target) != before


def _count(checked: DataFrame, rules, dataset: str, batch: str | None):
    """Rows and rule counts; a bad cast in the entry's select surfaces here, named."""
    try:
        counts = count_rules(checked, rules)
        return (counts[0].checked if counts else checked.count()), counts
    except Exception as exc:  # noqa: BLE001 - Spark raises JVM errors of many classes
        if "CAST_INVALID_INPUT" in str(exc) or "ARITHMETIC_OVERFLOW" in str(exc):
            raise QualityError(
                f"data set {dataset!r}, batch {batch or '*'}: silver.select failed on a value "
                f"(ANSI mode: a bad CAST throws; use try_cast): {str(exc).splitlines()[0]}"
            ) from exc
        raise


def _merge(spark: SparkSession, silver: str, spec: TableSpec, updates: DataFrame) -> bool:
    """MERGE the rows that differ from silver; whether it committed.

    Rows equal to what silver holds (same keys, same 64-bit hash of every column) are
    dropped first, so a MERGE that would change nothing commits nothing (Delta would
    rewrite every file it matched) and the files it does rewrite hold changed rows.
    """
    data_cols = [f.name for f in spec.fields]
    digest = F.xxhash64(*data_cols).alias("_digest")
    source = updates.select(*data_cols, digest)
    held = spark.table(silver).select(*spec.keys, digest)
    same = [source[k].eqNullSafe(held[k]) for k in spec.keys]
    changes = source.join(held, [*same, source["_digest"] == held["_digest"]],
                          "left_anti").drop("_digest")
    if changes.isEmpty():
        return False
    on = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in spec.keys)
    assignments = {f"`{c}`": f"s.`{c}`" for c in data_cols}
    before = delta.current_version(spark, silver)
    delta.with_retries(
        lambda: DeltaTable.forName(spark, silver).alias("t")
        .merge(changes.alias("s"), on)
        .whenMatchedUpdate(set=assignments)
        .whenNotMatchedInsert(values=assignments)
        .execute(),
        what=f"merge into {silver}",
    )
    return delta.current_version(spark, silver) != before   # False: this txn was done


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
