"""Catalog views: what tables exist, their sizes and versions, and SQL over them."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from lakehouse.config import Config
from lakehouse.render import check_format, render

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableInfo:
    """One line of ``lakeforge tables``."""

    name: str
    rows: int
    version: int


def list_tables(spark: SparkSession, cfg: Config) -> list[TableInfo]:
    """Every Delta table in the project's database with row count and version.

    Args:
        spark: the session.
        cfg: configuration (catalog database).

    Returns:
        Table infos sorted by name.
    """
    db = cfg.catalog.database
    infos = []
    for row in spark.sql(f"SHOW TABLES IN {db}").collect():
        if row["isTemporary"]:
            continue
        name = f"{db}.{row['tableName']}"
        try:
            dt = DeltaTable.forName(spark, name)
        except Exception:  # noqa: BLE001 - views and non-Delta tables have no history
            continue
        version = dt.history(1).collect()[0]["version"]
        rows = spark.table(name).count()
        infos.append(TableInfo(name, rows, version))
    return sorted(infos, key=lambda t: t.name)


def run_sql(spark: SparkSession, cfg: Config, query: str, limit: int = 50,
            fmt: str = "table") -> str:
    """Run a SQL statement in the project's database and render the result.

    Args:
        spark: the session.
        cfg: configuration (the database is made current).
        query: one SQL statement.
        limit: most rows shown in a table (``csv`` and ``json`` write every row).
        fmt: ``table`` (aligned, digits grouped, a row-count footer that says when rows
            were cut), ``csv`` (a header line, then RFC 4180 rows) or ``json`` (one
            object per row, JSON Lines; decimals, dates and timestamps as strings).

    Returns:
        The rendered result (for ``csv`` and ``json`` see :func:`stream_sql`).
    """
    return "".join(stream_sql(spark, cfg, query, limit, fmt)).rstrip("\n")


def stream_sql(spark: SparkSession, cfg: Config, query: str, limit: int = 50,
               fmt: str = "table") -> Iterator[str]:
    """:func:`run_sql`'s output in pieces: csv and json rows as Spark hands them over.

    Raises:
        ConfigError: an unknown format.
    """
    check_format(fmt)
    spark.catalog.setCurrentDatabase(cfg.catalog.database)
    df = spark.sql(query)
    rows = df.limit(limit + 1).collect() if fmt == "table" else df.toLocalIterator()
    yield from render(df.columns, rows, fmt, limit)


def create_views(spark: SparkSession, cfg: Config) -> list[str]:
    """(Re)create the SQL views over models and predictions that exist.

    ``models_latest`` holds each model's newest version; ``predictions_<family>_latest``
    holds, per model, the newest model version's predictions on the newest input
    version it scored, with that model's metrics and training lineage (for the tables
    batch scoring writes; a streaming scorer's table has no input versions).

    Returns:
        The views' full names.
    """
    db = cfg.catalog.database
    tables = {r["tableName"] for r in spark.sql(f"SHOW TABLES IN {db}").collect()}
    views = []
    if "models" in tables:
        _replace_view(spark, f"{db}.models_latest", f"""
            SELECT m.* FROM {db}.models m
            JOIN (SELECT name, max(version) AS version FROM {db}.models GROUP BY name) l
              ON m.name = l.name AND m.version = l.version""")
        views.append(f"{db}.models_latest")
    for name in sorted(t for t in tables if t.startswith("predictions_")
                       and not t.endswith("_latest")):
        if "input_version" not in spark.table(f"{db}.{name}").columns:
            continue        # not a scoring run's table (a streaming scorer's, say)
        _replace_view(spark, f"{db}.{name}_latest", f"""
            SELECT p.*, m.metrics AS model_metrics, m.training_table, m.training_version
            FROM {db}.{name} p
            JOIN {db}.models_latest m ON p.model_name = m.name AND p.model_version = m.version
            JOIN (SELECT model_name, model_version, input_table,
                         max(input_version) AS input_version
                  FROM {db}.{name} GROUP BY model_name, model_version, input_table) n
              ON p.model_name = n.model_name AND p.model_version = n.model_version
             AND p.input_table = n.input_table AND p.input_version = n.input_version""")
        views.append(f"{db}.{name}_latest")
    return views


def _replace_view(spark: SparkSession, name: str, query: str, attempts: int = 5) -> None:
    """CREATE OR REPLACE VIEW, tolerating another job replacing the same view at once.

    On a shared metastore a replace is a drop and a create; two jobs doing it together
    can fail one of them, though the view they both write is the same.
    """
    for attempt in range(1, attempts + 1):
        try:
            spark.sql(f"CREATE OR REPLACE VIEW {name} AS {query}")
            return
        except Exception:  # noqa: BLE001 - the metastore's race surfaces as several JVM errors
            if attempt == attempts:
                if spark.catalog.tableExists(name):
                    log.warning("view %s was being replaced by another job; keeping that one", name)
                    return
                raise
            time.sleep(attempt)
