"""Bronze ingest: a data set's new files (or table version) -> bronze, bad records -> quarantine.

For each data set the job:

1. finishes any batch that an earlier run committed to bronze but did not complete (a
   run killed midway), from what that commit names;
2. lists the source's files; those no batch holds are this batch's (files ingested
   before whose size or time changed are reported, not ingested again);
3. reads them (Spark's own reader, or a parser plug-in on executors), splits rows that
   were read from records that were not, and appends the rows to ``bronze_<table>``;
4. then records the batch's files in ``ops_ingest_files``, its rejected records in
   ``ops_quarantine`` with the reason and raw text, and its counts in ``ops_quality``
   (rule ``well_formed``), which marks the batch complete.

**The bronze commit is the one decision point of a batch.** It carries Delta's
exactly-once id (``txnAppId``) of the data set and batch, and its commit metadata names
the batch's files and the run that made it (host and pid). Delta skips a second commit
with the same id, so no batch lands twice, and a batch costs one rebuild of a table's
state (an exactly-once id makes Delta rebuild it): the bookkeeping that follows is
plain appends. A batch whose bronze commit exists but whose counts do not was
interrupted: the next run of the data set finishes it (once its run is gone; a run of
another host after ``ingest.stale_batch_minutes``), taking its files from the commit,
writing only the bookkeeping that is missing, with exactly-once ids of their own.
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
from lakehouse.daemon import owner_line, run_may_be_alive
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
    committed = _committed_batches(spark, bronze, entry.name)
    done = (ingested_batches(spark, table("ops.quality").full_name(db), entry.name)
            if len(claims) or committed else set())       # a first ingest has none
    pending = _interrupted(spark, bronze, entry.name, claims, committed, done,
                           cfg.ingest.stale_batch_minutes)
    held = set(_claimed(claims)) | {f for _, files, _ in pending for f in files}
    resumed, mine = [], None
    for name, files, finish in pending:
        if name == batch:
            mine = (files, finish)
        elif finish:
            _load(spark, cfg, entry, bronze_spec, name, files, claims, resume=True)
            resumed.append(name)
    if batch in done or (mine is not None and not mine[1]):
        result = IngestResult(entry.name, bronze, batch, len(_claimed(claims, batch)), 0, 0, 0,
                              skipped=True, resumed=tuple(resumed))
        log.info(result.summary())
        return result
    if mine is not None:
        files, changed, resume = mine[0], (), True
    else:
        files, changed = _new_files(spark, plan, held)
        resume = False
    if not files:
        result = IngestResult(entry.name, bronze, batch, 0, 0, 0, 0, skipped=True,
                              changed=changed, resumed=tuple(resumed))
        log.info(result.summary())
        return result
    loaded = _load(spark, cfg, entry, bronze_spec, batch, files, claims, resume=resume)
    if loaded is None:
        log.warning("%s: batch %s was committed to %s by another run at the same time; that "
                    "run records it", entry.name, batch, bronze)
        return IngestResult(entry.name, bronze, batch, len(files), 0, 0, 0, skipped=True,
                            changed=changed, resumed=tuple(resumed))
    good, bad = loaded
    result = IngestResult(entry.name, bronze, batch, len(files), good + bad, good, bad,
                          skipped=False, changed=changed, resumed=tuple(resumed))
    log.info(result.summary())
    return result


def _claims(spark: SparkSession, cfg: Config, dataset: str) -> pd.DataFrame:
    """The files each batch of a data set holds (a file once per batch)."""
    files = table("ops.ingest_files").full_name(cfg.catalog.database)
    rows = (spark.table(files).filter(F.col("dataset") == dataset)
            .select("batch", "path", "size", "modified_at").collect())
    return pd.DataFrame([r.asDict() for r in rows],
                        columns=["batch", "path", "size", "modified_at"]
                        ).drop_duplicates(["batch", "path"])


def _claimed(claims: pd.DataFrame, batch: str | None = None) -> list[FileInfo]:
    """The files of one batch, in path order (of every batch when ``batch`` is None)."""
    mine = claims if batch is None else claims[claims.batch == batch]
    return [FileInfo(r.path, int(r.size), r.modified_at)
            for r in mine.sort_values("path").itertuples()]


def _app_id(dataset: str, batch: str) -> str:
    """The exactly-once id of a batch's bronze commit (its bookkeeping adds a suffix)."""
    return f"lakeforge/ingest/{dataset}/{batch}"


def _committed_batches(spark: SparkSession, bronze: str, dataset: str) -> set[str]:
    """The batches whose bronze commit exists (from the exactly-once ids bronze holds)."""
    prefix = _app_id(dataset, "")
    ids = delta.committed_ids(spark, bronze, prefix)
    return {i[len(prefix):] for i in ids or ()}


def _interrupted(spark: SparkSession, bronze: str, dataset: str, claims: pd.DataFrame,
                 committed: set[str], done: set[str], stale_minutes: float
                 ) -> list[tuple[str, list[FileInfo], bool]]:
    """Batches committed to bronze or claimed, not complete: (batch, files, finish here).

    ``committed`` holds the batches whose bronze commit exists, ``done`` the complete
    ones. A batch's files come from its claims (which earlier releases wrote before
    bronze) or from its bronze commit's metadata. A batch is finished here unless its
    run may still be alive: a live process of this host, or one of another host whose
    commit is younger than ``stale_minutes``. A bronze commit without files (a Kafka
    micro-batch, which its query replays) is left out.
    """
    committed = committed - done
    pending = committed | (set(claims.batch) - done)
    if not pending:
        return []
    commits = {}
    if committed:
        for c in delta.commits_metadata(spark, bronze, '"lakeforge_ingest"'):
            info = c.get("lakeforge_ingest")
            if isinstance(info, dict):
                commits[info.get("batch")] = {**info, "_timestamp": c["_timestamp"]}
    out = []
    for batch in sorted(pending):
        commit = commits.get(batch) or {}
        files = _claimed(claims, batch) or [
            FileInfo(p, int(size), dt.datetime.fromisoformat(t) if t else None)
            for p, size, t in commit.get("files", [])]
        if not files:
            continue
        owner = commit.get("owner", "")
        alive = bool(commit) and run_may_be_alive(owner, commit["_timestamp"], stale_minutes)
        if alive:
            log.info("%s: batch %s is being ingested by %s; leaving it to that run",
                     dataset, batch, owner)
        out.append((batch, files, not alive))
    return out


def _new_files(spark: SparkSession, plan: DatasetPlan, held: set[FileInfo]
               ) -> tuple[list[FileInfo], tuple[str, ...]]:
    """Files no batch holds, and files a batch holds that changed since."""
    entry = plan.entry
    if entry.source.kind == "table":
        version = _table_version(spark, entry)
        label = f"{entry.source.table or entry.source.delta}@v{version}"
        current = [FileInfo(label, -1, None)]
    else:
        current = list(plan.files) if plan.files is not None else list_files(spark, entry)
    seen = {f.path: (int(f.size), f.modified_at) for f in held}
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
          files: list[FileInfo], claims: pd.DataFrame, resume: bool
          ) -> tuple[int, int] | None:
    """Read a batch's files and write bronze, then its files, quarantine and counts."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    listed = [[f.path, f.size, f.modified_at.isoformat() if f.modified_at else None]
              for f in files]
    spec_files = table("ops.ingest_files")
    rows = [(entry.name, batch, f.path, f.size, f.modified_at, now) for f in files]
    held = set(claims.path[claims.batch == batch])
    missing = [r for r in rows if r[2] not in held]
    record_files = (lambda: spark.createDataFrame(missing, spec_files.schema)) if missing \
        else None
    return load_batch(spark, cfg, entry, spec, batch,
                      lambda: read_dataset(spark, cfg, entry, spec, files),
                      f"{len(files)} file(s)", resume=resume, files=listed,
                      record_files=record_files)


def load_batch(spark: SparkSession, cfg: Config, entry: Dataset, spec: TableSpec, batch: str,
               read: Callable[[], DataFrame], what: str, resume: bool = True,
               files: list | None = None,
               record_files: Callable[[], DataFrame] | None = None) -> tuple[int, int] | None:
    """Write one batch's records to bronze, then its files, quarantine and counts.

    The bronze append decides (see the module docstring): its commit carries the batch's
    exactly-once id and names ``files`` and this run. The rows are read once for
    bronze, counted on the way (an observation, so no cache and no extra pass);
    rejected records are read again for the quarantine only when there are any.

    When this call made the bronze commit, the bookkeeping follows as plain appends
    (nobody else writes it). When bronze held the batch already, a resumed batch
    (``resume``; a micro-batch replayed after a kill, a batch an earlier run left) that
    ``ops_quality`` counts is complete and writes nothing; otherwise it counts its rows
    in a pass of their own and writes only the bookkeeping that is missing, each write
    with an exactly-once id of its own. Without ``resume``, another run committed the
    batch at the same moment, and it is left to that run.

    Args:
        spark: the session.
        cfg: configuration.
        entry: the data set.
        spec: its bronze table.
        batch: the batch id (``_ingest_batch``; the unit of idempotency).
        read: gives the batch's records as :func:`read_dataset` does (data columns and
            status columns); called once, or again for counts and rejected records.
        what: what was read, for the log line (``3 file(s)``, ``a micro-batch``).
        resume: finish the batch if bronze already holds it.
        files: the batch's files (path, size, time), named in the bronze commit.
        record_files: gives the batch's ``ops_ingest_files`` rows not yet written.

    Returns:
        Records written to bronze and records quarantined; None when another run
        committed the batch and ``resume`` is false.
    """
    db = cfg.catalog.database
    bronze = spec.full_name(db)
    app_id = _app_id(entry.name, batch)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    counted = Observation(f"ingest_{uuid.uuid4().hex}")
    rows = read().observe(
        counted, F.count(F.lit(1)).alias("read"), F.count(F.col(ERROR)).alias("bad"))
    meta = {"lakeforge_ingest": {"batch": batch, "owner": owner_line(), "files": files or []}}
    delta.append_once(bronze_rows(rows, spec, entry.name, batch, now), bronze, app_id,
                      metadata=meta)
    decided = delta.observed(counted)
    if not decided and not resume:
        return None
    if not decided:
        recorded = _recorded(spark, db, entry.name, batch)
        if recorded is not None:        # complete: its counts are the batch's last write
            return recorded
    if decided:
        n_read, n_bad = counted.get["read"], counted.get["bad"]
    else:
        # Every column takes part, so Spark's CSV reader checks each record's field count.
        every = F.max(F.hash(*[F.col(f.name) for f in spec.fields]))
        counts = read().agg(
            F.count(F.lit(1)).alias("read"), F.count(F.col(ERROR)).alias("bad"), every).first()
        n_read, n_bad = counts["read"], counts["bad"]
    n_good = n_read - n_bad

    def write(df: DataFrame, key: str, suffix: str) -> None:
        target = table(key).full_name(db)
        if decided:
            delta.append(df, target)
        else:
            delta.append_once(df, target, f"{app_id}/{suffix}")

    if record_files is not None:
        write(record_files(), "ops.ingest_files", "files")
    if n_bad and (decided or not _quarantined(spark, db, entry.name, batch)):
        rejected = read().filter(F.col(ERROR).isNotNull())
        if entry.source.kind in ("files", "kafka"):
            rejected = rejected.withColumn(ERROR, explain_column(entry.source, spec.fields))
        rejected = rejected.withColumn("_rules", F.array(F.lit(WELL_FORMED)))
        write(quarantine_rows(rejected, entry.name, bronze, "ingest", batch, now),
              "ops.quarantine", "quarantine")
    stats = [(WELL_FORMED, "quarantine", "records read by the source's reader",
              n_read, n_good, 0, n_bad, 0)]
    write(quality_rows(spark, entry.name, bronze, "ingest", batch, stats, now),
          "ops.quality", "quality")
    log.info("%s: batch %s: %s, %s read = %s bronze + %s quarantined%s", entry.name,
             batch, what, f"{n_read:,}", f"{n_good:,}", f"{n_bad:,}",
             "" if decided else " (finished an interrupted batch)")
    return n_good, n_bad


def _recorded(spark: SparkSession, db: str, dataset: str, batch: str) -> tuple[int, int] | None:
    """A batch's ingest counts (bronze rows, quarantined) if ``ops_quality`` holds them."""
    quality = table("ops.quality").full_name(db)
    row = (spark.table(quality)
           .filter((F.col("dataset") == dataset) & (F.col("batch") == batch)
                   & (F.col("stage") == "ingest") & (F.col("rule") == WELL_FORMED))
           .select("passed", "quarantined").first())
    return None if row is None else (int(row["passed"]), int(row["quarantined"]))


def _quarantined(spark: SparkSession, db: str, dataset: str, batch: str) -> bool:
    """Whether the quarantine holds a batch's rejected records (a resumed batch's check)."""
    quarantine = table("ops.quarantine").full_name(db)
    return bool(spark.table(quarantine).filter(
        (F.col("source") == dataset) & (F.col("batch") == batch)
        & (F.col("stage") == "ingest")).limit(1).count())
