"""Bronze ingest: raw files -> bronze Delta tables, bad records -> quarantine.

Files are parsed on executors (one task per file) and handed to Spark as Arrow
batches. Each record either lands in bronze with lineage columns or in the
quarantine table with the reason and its raw text. A batch is written once:
re-running the same source and batch id changes nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.sources import SOURCES, Source, get_source, source_files, source_options
from lakehouse.sources.base import ERROR, RAW, RECORD, ParseOptions
from lakehouse.tables import LINEAGE_NAMES, table

log = logging.getLogger(__name__)
SOURCE_FILE = "_source_file"


@dataclass(frozen=True)
class IngestResult:
    """What one source's ingest did."""

    source: str
    table: str
    batch: str
    files: int
    read: int
    bronze: int
    quarantined: int
    skipped: bool

    def summary(self) -> str:
        """One log line."""
        if self.skipped:
            return f"{self.source}: batch {self.batch} already in {self.table}; nothing to do"
        return (
            f"{self.source}: read {self.read:,} records from {self.files} file(s) -> "
            f"{self.table} {self.bronze:,}, quarantined {self.quarantined:,} (batch {self.batch})"
        )


def resolve_sources(names: Sequence[str]) -> list[Source]:
    """Source names (or ``all``) to sources, failing on unknown names."""
    if not names or list(names) == ["all"]:
        return list(SOURCES.values())
    return [get_source(n) for n in names]


def ingest(
    spark: SparkSession, cfg: Config, names: Sequence[str], batch: str
) -> list[IngestResult]:
    """Ingest sources into bronze.

    Args:
        spark: the session.
        cfg: configuration.
        names: source names, or ``["all"]``.
        batch: batch id recorded in ``_ingest_batch``; the unit of idempotency.

    Returns:
        One result per source.
    """
    sources = resolve_sources(names)
    return [ingest_source(spark, cfg, s, batch) for s in sources]


def _parse_files(batches: Iterator[pd.DataFrame], parse, options: ParseOptions):
    """Executor side: parse each file named in the incoming rows."""
    for paths in batches:
        for path in paths["path"]:
            for frame in parse(path, options):
                if len(frame):
                    yield frame.assign(**{SOURCE_FILE: path})


def parse_source(spark: SparkSession, cfg: Config, source: Source) -> tuple[DataFrame, int]:
    """Parse a source's files on executors into a DataFrame (bronze columns + status).

    Returns:
        The parsed rows (data columns, ``_record``, ``_error``, ``_raw``,
        ``_source_file``) and the number of files.
    """
    files = source_files(cfg, source)
    spec = table(f"bronze.{source.dataset}")
    options = source_options(cfg, source, list(spec.fields))
    out_schema = StructType([
        *[StructField(f.name, f.dataType, True) for f in spec.fields],
        StructField(RECORD, LongType()), StructField(ERROR, StringType()),
        StructField(RAW, StringType()), StructField(SOURCE_FILE, StringType()),
    ])
    paths = spark.createDataFrame([(f,) for f in files], "path string").repartition(len(files))
    parser = functools.partial(_parse_files, parse=source.parse, options=options)
    return paths.mapInPandas(parser, schema=out_schema), len(files)


def ingest_source(spark: SparkSession, cfg: Config, source: Source, batch: str) -> IngestResult:
    """Ingest one source for one batch (see :func:`ingest`)."""
    db = cfg.catalog.database
    bronze_spec = table(f"bronze.{source.dataset}")
    bronze = delta.ensure_table(spark, bronze_spec, db)
    quarantine = delta.ensure_table(spark, table("ops.quarantine"), db)
    if _batch_present(spark, bronze, quarantine, source.name, batch):
        result = IngestResult(source.name, bronze, batch, 0, 0, 0, 0, skipped=True)
        log.info(result.summary())
        return result

    parsed, n_files = parse_source(spark, cfg, source)
    parsed = parsed.persist()
    try:
        counts = {r["ok"]: r["n"] for r in
                  parsed.groupBy(F.col(ERROR).isNull().alias("ok")).agg(F.count("*").alias("n"))
                  .collect()}
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        good = parsed.filter(F.col(ERROR).isNull()).select(
            *[F.col(f.name).cast(f.dataType) for f in bronze_spec.fields],
            F.lit(batch).alias("_ingest_batch"), F.lit(source.name).alias("_source"),
            F.col(SOURCE_FILE).alias("_source_file"), F.col(RECORD).alias("_record"),
            F.lit(now).cast("timestamp").alias("_ingested_at"),
        )
        bad = quarantine_rows(parsed.filter(F.col(ERROR).isNotNull()), source.name, bronze,
                              "ingest", batch, now)
        delta.append_once(good, bronze, f"lakeforge/ingest/{source.name}/{batch}")
        if counts.get(False, 0):
            delta.append_once(bad, quarantine, f"lakeforge/ingest/{source.name}/{batch}/quarantine")
    finally:
        parsed.unpersist()
    n_good, n_bad = counts.get(True, 0), counts.get(False, 0)
    result = IngestResult(source.name, bronze, batch, n_files, n_good + n_bad, n_good, n_bad,
                          skipped=False)
    log.info(result.summary())
    return result


def quarantine_rows(
    rejected: DataFrame, source: str, target: str, stage: str, batch: str, now: dt.datetime
) -> DataFrame:
    """Shape rejected rows (with ``_error``, ``_raw``, ``_record``, ``_source_file``)."""
    return rejected.select(
        F.lit(source).alias("source"), F.lit(target).alias("target_table"),
        F.lit(stage).alias("stage"), F.lit(batch).alias("batch"),
        F.col(SOURCE_FILE).alias("source_file"), F.col(RECORD).alias("record"),
        F.col(ERROR).alias("reason"), F.col(RAW).alias("raw"),
        F.lit(now).cast("timestamp").alias("quarantined_at"),
    )


def _batch_present(
    spark: SparkSession, bronze: str, quarantine: str, source: str, batch: str
) -> bool:
    """Whether a batch of a source already left rows in bronze or quarantine."""
    in_bronze = (spark.table(bronze)
                 .filter((F.col("_source") == source) & (F.col("_ingest_batch") == batch))
                 .select(LINEAGE_NAMES[0]).limit(1).collect())
    if in_bronze:
        return True
    return bool(spark.table(quarantine)
                .filter((F.col("source") == source) & (F.col("batch") == batch)
                        & (F.col("stage") == "ingest"))
                .select("batch").limit(1).collect())
