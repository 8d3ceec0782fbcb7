"""Delta maintenance: OPTIMIZE (compaction) and VACUUM with a safe retention."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.errors import ConfigError
from lakehouse.tables import REGISTRY, table

log = logging.getLogger(__name__)
MIN_RETENTION_HOURS = 168


@dataclass(frozen=True)
class MaintainResult:
    """What maintenance did to one table."""

    table: str
    files_removed_by_optimize: int
    files_added_by_optimize: int
    vacuumed: bool


def maintain(spark: SparkSession, cfg: Config, keys: Sequence[str] = ()) -> list[MaintainResult]:
    """OPTIMIZE and VACUUM registry tables that exist.

    Args:
        spark: the session.
        cfg: configuration (``maintain.optimize``, ``maintain.vacuum_retention_hours``).
        keys: registry keys (``silver.flights``); default every registered table.

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
    for key in keys or sorted(REGISTRY):
        name = table(key).full_name(cfg.catalog.database)
        if not delta.table_exists(spark, name):
            continue
        dt = DeltaTable.forName(spark, name)
        removed = added = 0
        if cfg.maintain.optimize:
            metrics = dt.optimize().executeCompaction().collect()[0]["metrics"]
            removed, added = metrics["numFilesRemoved"], metrics["numFilesAdded"]
        dt.vacuum(float(hours))
        log.info("%s: optimize removed %d files, added %d; vacuum retention %dh",
                 name, removed, added, hours)
        results.append(MaintainResult(name, removed, added, True))
    return results
