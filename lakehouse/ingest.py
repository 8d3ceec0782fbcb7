"""Bronze ingest: a data set's new files (or table version) -> bronze, bad records -> quarantine.

For each data set the job:

1. finishes any batch that an earlier run claimed but did not complete (a run killed
   midway), with the files that batch claimed;
2. lists the source's files and claims the new ones for this batch in
   ``ops_ingest_files`` (files claimed before whose size or time changed are reported,
   not ingested again);
3. reads them (Spark's own reader, or a parser plug-in on executors), splits rows that
   were read from records that were not, and appends the rows to ``bronze_<table>``
   and the records to ``ops_quarantine`` with the reason and raw text;
4. records the counts in ``ops_quality`` (rule ``well_formed``), which marks the
   batch complete.

Every write of a batch carries a Delta ``txnAppId`` derived from the data set and the
batch, so a re-run after a crash between two writes skips what was committed and
writes the rest; re-running a completed batch writes nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pandas as pd
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.observation import Observation
from pyspark.sql.types import LongType, StringType, StructField, StructType

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.dataset_check import DatasetPlan, check_datasets, plan_dataset
from lakehouse.datasets import Dataset
from lakehouse.errors import SourceError
from lakehouse.lakefs import LakeFS
from lakehouse.landing import FileInfo, list_files, parser_path
from lakehouse.quality import ingested_batches, quality_rows, quarantine_rows
from lakehouse.sources import get_parser, parse_options
from lakehouse.sources.base import ERROR, RAW, RECORD, ParseOptions
from lakehouse.sources.native import (
    SOURCE_FILE,
    explain_column,
    read_files,
    read_table,
    reject_unreadable_images,
)
from lakehouse.tables import TableSpec, table

log = logging.getLogger(__name__)
WELL_FORMED = "well_formed"


@dataclass(frozen=True)
class IngestResult:
    """What one data set's ingest did."""

    source: str
    table: str
    batch: str
    files: int
    read: int
    bronze: int
    quarantined: int
    skipped: bool
    changed: tuple[str, ...] = ()
    resumed: tuple[str, ...] = ()

    def summary(self) -> str:
        """One log line."""
        if self.skipped:
            what = f"batch {self.batch} already ingested" if self.files else "no new files"
            text = f"{self.source}: {what} into {self.table}; nothing to do"
        else:
            text = (f"{self.source}: read {self.read:,} records from {self.files} file(s) -> "
                    f"{self.table} {self.bronze:,}, quarantined {self.quarantined:,} "
                    f"(batch {self.batch})")
        if self.resumed:
            text += f"; finished interrupted batch(es) {', '.join(self.resumed)}"
        if self.changed:
            text += (f"; {len(self.changed)} file(s) changed after they were ingested and were "
                     f"NOT ingested again: {', '.join(self.changed[:5])}")
        return text


def ingest(spark: SparkSession, cfg: Config, names: Sequence[str], batch: str
           ) -> list[IngestResult]:
    """Ingest data sets into bronze.

    Args:
        spark: the session.
        cfg: configuration (the data catalog included).
        names: data set names, or ``["all"]``.
        batch: batch id recorded in ``_ingest_batch``; the unit of idempotency.

    Returns:
        One result per data set.

    Raises:
        CatalogError: when an entry cannot be used (checked before anything is written).
        SourceError: an entry reads a Kafka topic (``lakehouse.stream.ingest_sources``
            takes files, tables and topics alike).
    """
    plans = check_datasets(spark, cfg, names)
    return [ingest_dataset(spark, cfg, p.entry, batch, p) for p in plans]


def ingest_dataset(spark: SparkSession, cfg: Config, entry: Dataset, batch: str,
                   plan: DatasetPlan | None = None) -> IngestResult:
    """Ingest one data set for one batch (see the module docstring).

    ``plan``: the entry as the catalog check worked it out (its files and tables);
    without it the entry is checked here.
    """
    if entry.source.kind == "kafka":
        raise SourceError(f"data set {entry.name!r} reads Kafka topic "
                          f"{entry.source.kafka.get('topic')!r}: ingest it with `lakeforge "
                          f"stream ingest {entry.name}` (--available-now for what is there)")
    db = cfg.catalog.database
    plan = plan or plan_dataset(spark, entry)
    bronze_spec = plan.bronze
    bronze = delta.ensure_table(spark, bronze_spec, db)
    for key in ("ops.quarantine", "ops.ingest_files", "ops.quality"):
        delta.ensure_table(spark, table(key), db)
    claims = _claims(spark, cfg, entry.name)
    quality = table("ops.quality").full_name(db)
    done = ingested_batches(spark, quality, entry.name) if len(claims) else set()
    resumed = []
    for pending in sorted(set(claims.batch) - done - {batch}):
        files = _claimed(claims, pending)
        _load(spark, cfg, entry, bronze_spec, pending, files)
        resumed.append(pending)
    if batch in done:
        result = IngestResult(entry.name, bronze, batch, len(_claimed(claims, batch)), 0, 0, 0,
                              skipped=True, resumed=tuple(resumed))
        log.info(result.summary())
        return result
    if batch in set(claims.batch):
        files, changed = _claimed(claims, batch), ()
    else:
        files, changed = _new_files(spark, plan, claims)
        if files:
            files = _claim(spark, cfg, entry, batch, files)
    if not files:
        result = IngestResult(entry.name, bronze, batch, 0, 0, 0, 0, skipped=True,
                              changed=changed, resumed=tuple(resumed))
        log.info(result.summary())
        return result
    good, bad = _load(spark, cfg, entry, bronze_spec, batch, files)
    result = IngestResult(entry.name, bronze, batch, len(files), good + bad, good, bad,
                          skipped=False, changed=changed, resumed=tuple(resumed))
    log.info(result.summary())
    return result


def _claims(spark: SparkSession, cfg: Config, dataset: str) -> pd.DataFrame:
    files = table("ops.ingest_files").full_name(cfg.catalog.database)
    rows = (spark.table(files).filter(F.col("dataset") == dataset)
            .select("batch", "path", "size", "modified_at").collect())
    return pd.DataFrame([r.asDict() for r in rows],
                        columns=["batch", "path", "size", "modified_at"])


def _claimed(claims: pd.DataFrame, batch: str) -> list[FileInfo]:
    mine = claims[claims.batch == batch].sort_values("path")
    return [FileInfo(r.path, int(r.size), r.modified_at) for r in mine.itertuples()]


def _new_files(spark: SparkSession, plan: DatasetPlan, claims: pd.DataFrame
               ) -> tuple[list[FileInfo], tuple[str, ...]]:
    """Files no batch has claimed, and claimed files that changed since."""
    entry = plan.entry
    if entry.source.kind == "table":
        version = _table_version(spark, entry)
        label = f"{entry.source.table or entry.source.delta}@v{version}"
        current = [FileInfo(label, -1, None)]
    else:
        current = list(plan.files) if plan.files is not None else list_files(spark, entry)
    seen = {r.path: (int(r.size), r.modified_at) for r in claims.itertuples()}
    new = [f for f in current if f.path not in seen]
    changed = tuple(f.path for f in current if f.path in seen
                    and seen[f.path] != (f.size, f.modified_at))
    for path in changed:
        log.warning("%s: %s changed after it was ingested; it is not ingested again (land "
                    "changed data under a new file name)", entry.name, path)
    return new, changed


def _table_version(spark: SparkSession, entry: Dataset) -> int:
    spec = entry.source
    if spec.version is not None:
        return spec.version
    if spec.delta:
        return delta.history_snapshot(DeltaTable.forPath(spark, spec.delta),
                                      spec.delta).data_version
    return delta.snapshot(spark, spec.table).data_version


def _claim(spark: SparkSession, cfg: Config, entry: Dataset, batch: str,
           files: list[FileInfo]) -> list[FileInfo]:
    """Claim files for a batch; return the files the batch holds.

    Another run of the same batch (a retry while the first one still runs) may claim it
    between this run's read of the claims and its own claim. Delta then skips this
    claim, and the batch goes on with the files the other run claimed: a file only this
    run listed stays new, for the next batch.
    """
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    spec = table("ops.ingest_files")
    rows = [(entry.name, batch, f.path, f.size, f.modified_at, now) for f in files]
    df = spark.createDataFrame(rows, spec.schema)
    if delta.append_once(df, spec.full_name(cfg.catalog.database),
                         f"lakeforge/ingest/{entry.name}/{batch}/files"):
        return files
    theirs = _claimed(_claims(spark, cfg, entry.name), batch)
    if [f.path for f in theirs] != [f.path for f in files]:
        log.warning("%s: batch %s was claimed by another run first; going on with its %d "
                    "file(s)", entry.name, batch, len(theirs))
    return theirs


def read_dataset(spark: SparkSession, cfg: Config, entry: Dataset, spec: TableSpec,
                 files: list[FileInfo]) -> DataFrame:
    """The rows of some files of an entry: data columns plus status columns."""
    fields = list(spec.fields)
    source = entry.source
    if source.kind == "table":
        version = int(files[0].path.rsplit("@v", 1)[1])
        latest = source.version is None and _table_version(spark, entry) == version
        return read_table(spark, source, fields, version, latest=latest)
    if source.kind == "files":
        rows = read_files(spark, source, fields, [f.path for f in files])
        if entry.kind == "image" and source.format == "binaryFile":
            rows = reject_unreadable_images(rows)
        return rows
    options = parse_options(fields, dict(source.options), cfg.ingest.batch_rows,
                            cfg.ingest.max_raw_chars)
    out_schema = StructType([
        *[StructField(f.name, f.dataType, True) for f in fields],
        StructField(RECORD, LongType()), StructField(ERROR, StringType()),
        StructField(RAW, StringType()), StructField(SOURCE_FILE, StringType()),
    ])
    paths = [parser_path(f.path) for f in files]
    listing = spark.createDataFrame([(p,) for p in paths], "path string")
    parser = functools.partial(_parse_files, parse=get_parser(source.parser), options=options,
                               lake=LakeFS.of(cfg))
    return listing.repartition(len(paths)).mapInPandas(parser, schema=out_schema)


def _parse_files(batches: Iterator[pd.DataFrame], parse, options: ParseOptions,
                 lake: LakeFS):
    """Executor side: parse each file named in the incoming rows (remote ones copied)."""
    for paths in batches:
        for path in paths["path"]:
            with lake.local_file(path) as local:
                for frame in parse(local, options):
                    if len(frame):
                        yield frame.assign(**{SOURCE_FILE: path})


def bronze_rows(rows: DataFrame, spec: TableSpec, dataset: str, batch: str,
                now: dt.datetime) -> DataFrame:
    """The records read well (from :func:`read_dataset`) as bronze rows, lineage added."""
    return rows.filter(F.col(ERROR).isNull()).select(
        *[F.col(f.name).cast(f.dataType) for f in spec.fields],
        F.lit(batch).alias("_ingest_batch"), F.lit(dataset).alias("_source"),
        F.col(SOURCE_FILE).alias("_source_file"),
        F.col(RECORD).alias("_record"), F.lit(now).cast("timestamp").alias("_ingested_at"),
    )


def _load(spark: SparkSession, cfg: Config, entry: Dataset, spec: TableSpec, batch: str,
          files: list[FileInfo]) -> tuple[int, int]:
    """Read a batch's files and write bronze, quarantine and quality, each exactly once."""
    return load_batch(spark, cfg, entry, spec, batch,
                      lambda: read_dataset(spark, cfg, entry, spec, files),
                      f"{len(files)} file(s)")


def load_batch(spark: SparkSession, cfg: Config, entry: Dataset, spec: TableSpec, batch: str,
               read: Callable[[], DataFrame], what: str) -> tuple[int, int]:
    """Write one batch's records to bronze, quarantine and quality, each exactly once.

    The rows are read once for bronze, counted on the way (an observation, so no cache
    and no extra pass); rejected records are read again for the quarantine only when
    there are any. If bronze already holds the batch (a resumed run), Delta skips the
    append and the rows are counted in a pass of their own. The quality rows, written
    last, mark the batch complete.

    Args:
        spark: the session.
        cfg: configuration.
        entry: the data set.
        spec: its bronze table.
        batch: the batch id (``_ingest_batch``; the unit of idempotency).
        read: gives the batch's records as :func:`read_dataset` does (data columns and
            status columns); called once, or again for counts and rejected records.
        what: what was read, for the log line (``3 file(s)``, ``a micro-batch``).

    Returns:
        Records written to bronze, and records quarantined.
    """
    db = cfg.catalog.database
    bronze = spec.full_name(db)
    app_id = f"lakeforge/ingest/{entry.name}/{batch}"
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    counted = Observation(f"ingest_{uuid.uuid4().hex}")
    rows = read().observe(
        counted, F.count(F.lit(1)).alias("read"), F.count(F.col(ERROR)).alias("bad"))
    delta.append_once(bronze_rows(rows, spec, entry.name, batch, now), bronze, app_id)
    if delta.observed(counted):
        n_read, n_bad = counted.get["read"], counted.get["bad"]
    else:
        # Every column takes part, so Spark's CSV reader checks each record's field count.
        every = F.max(F.hash(*[F.col(f.name) for f in spec.fields]))
        counts = read().agg(
            F.count(F.lit(1)).alias("read"), F.count(F.col(ERROR)).alias("bad"), every).first()
        n_read, n_bad = counts["read"], counts["bad"]
    n_good = n_read - n_bad
    if n_bad:
        rejected = read().filter(F.col(ERROR).isNotNull())
        if entry.source.kind in ("files", "kafka"):
            rejected = rejected.withColumn(ERROR, explain_column(entry.source, spec.fields))
        rejected = rejected.withColumn("_rules", F.array(F.lit(WELL_FORMED)))
        delta.append_once(quarantine_rows(rejected, entry.name, bronze, "ingest", batch, now),
                          table("ops.quarantine").full_name(db), f"{app_id}/quarantine")
    stats = [(WELL_FORMED, "quarantine", "records read by the source's reader",
              n_read, n_good, 0, n_bad, 0)]
    delta.append_once(quality_rows(spark, entry.name, bronze, "ingest", batch, stats, now),
                      table("ops.quality").full_name(db), f"{app_id}/quality")
    log.info("%s: batch %s: %s, %s read = %s bronze + %s quarantined", entry.name,
             batch, what, f"{n_read:,}", f"{n_good:,}", f"{n_bad:,}")
    return n_good, n_bad
