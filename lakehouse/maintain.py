"""Delta maintenance: OPTIMIZE (compaction) and VACUUM with a safe retention.

Maintenance never changes what the jobs consider done: they key their work on a
table's data version (:class:`lakehouse.delta.Snapshot`), which OPTIMIZE and VACUUM
leave alone, so a pipeline run after ``lakeforge maintain`` does nothing new.

Training tables (``gold_*``) are vacuumed but not compacted: each build writes them
whole, as at least two Parquet files per Horovod rank and split, so every rank gets a
Petastorm shard; compaction would merge them into one file per split and leave ranks
without rows. Everything else is compacted.

VACUUM and reproducibility: a registered model records the data version it was trained
on. Files of older versions are removed once they are older than the retention (at
least 168 hours); the current rows are never removed. A model whose training snapshot
is no longer the table's current data can be retrained from it only within the
retention; after that ``lakeforge train --version N`` stops saying the files are gone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.errors import ConfigError
from lakehouse.tables import REGISTRY, layer_table

log = logging.getLogger(__name__)
MIN_RETENTION_HOURS = 168


def lakehouse_tables(spark: SparkSession, cfg: Config) -> list[str]:
    """Every table of the lakehouse that exists: ops, catalog bronze/silver, gold, predictions."""
    db = cfg.catalog.database
    names = {spec.full_name(db) for spec in REGISTRY.values()}
    for entry in cfg.datasets.values():
        names.update(layer_table(db, layer, entry.table_name) for layer in ("bronze", "silver"))
    for row in spark.sql(f"SHOW TABLES IN {db}").collect():
        if not row["isTemporary"] and row["tableName"].startswith(("gold_", "predictions_")) \
                and not row["tableName"].endswith("_latest"):
            names.add(f"{db}.{row['tableName']}")
    return sorted(n for n in names if delta.table_exists(spark, n))


def is_training_table(full_name: str) -> bool:
    """Whether Horovod ranks read the table as Petastorm shards (not to be compacted)."""
    return full_name.rsplit(".", 1)[-1].startswith("gold_")


@dataclass(frozen=True)
class MaintainResult:
    """What maintenance did to one table."""

    table: str
    files_removed_by_optimize: int
    files_added_by_optimize: int
    optimized: bool
    vacuumed: bool


def maintain(spark: SparkSession, cfg: Config, keys: Sequence[str] = ()) -> list[MaintainResult]:
    """OPTIMIZE and VACUUM registry tables that exist.

    Args:
        spark: the session.
        cfg: configuration (``maintain.optimize``, ``maintain.vacuum_retention_hours``).
        keys: table names in the database (``silver_flights``); default every table of
            the lakehouse: the operational ones, each catalog entry's bronze and silver,
            and every gold and prediction table that exists.

    Returns:
        One result per table maintained.

    Raises:
        ConfigError: if the retention is below 168 hours (readers of old versions,
            such as pinned training runs, would lose their files).
    """
    hours = cfg.maintain.vacuum_retention_hours
    if hours < MIN_RETENTION_HOURS:
        raise ConfigError(
            f"config value maintain.vacuum_retention_hours={hours}: must be at least "
            f"{MIN_RETENTION_HOURS} so pinned table versions keep their files"
        )
    results = []
    db = cfg.catalog.database
    for name in [f"{db}.{k}" for k in keys] or lakehouse_tables(spark, cfg):
        if not delta.table_exists(spark, name):
            continue
        dt = DeltaTable.forName(spark, name)
        removed = added = 0
        optimize = cfg.maintain.optimize and not is_training_table(name)
        if optimize:
            metrics = dt.optimize().executeCompaction().collect()[0]["metrics"]
            removed, added = metrics["numFilesRemoved"], metrics["numFilesAdded"]
        dt.vacuum(float(hours))
        log.info("%s: %s; vacuum retention %dh", name,
                 f"optimize removed {removed} files, added {added}" if optimize
                 else "not compacted", hours)
        results.append(MaintainResult(name, removed, added, optimize, True))
    return results
