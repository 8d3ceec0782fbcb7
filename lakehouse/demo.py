"""``lakeforge demo``: the pipeline end to end on the real data and embedded defaults."""

from __future__ import annotations

import logging
import time

from pyspark.sql import SparkSession

from lakehouse.catalog import format_table, list_tables
from lakehouse.config import Config
from lakehouse.curate import curate
from lakehouse.ingest import ingest
from lakehouse.sources import SOURCES

log = logging.getLogger(__name__)


def run_demo(spark: SparkSession, cfg: Config, batch: str = "demo") -> None:
    """Ingest and curate every real source, then print the table list.

    Args:
        spark: the session.
        cfg: configuration.
        batch: batch id; re-running with the same id changes nothing.
    """
    start = time.monotonic()
    names = list(SOURCES)
    for step, (what, fn) in enumerate((("ingest", ingest), ("curate", curate)), start=1):
        log.info("[%d/2] %s %d sources (batch %s)", step, what, len(names), batch)
        for i, name in enumerate(names, start=1):
            log.info("  %s %d/%d: %s", what, i, len(names), name)
            fn(spark, cfg, [name], batch)
    infos = list_tables(spark, cfg)
    print()
    print(format_table(["table", "rows", "version"], [(t.name, t.rows, t.version) for t in infos]))
    print(f"\nwarehouse: {cfg.warehouse_dir}")
    print(f"demo finished in {time.monotonic() - start:.0f} s")
