"""Streams: a Kafka topic or a landing folder read by Structured Streaming into bronze, then silver.

A data set whose ``source`` names a ``kafka`` topic (record values in ``json`` or
``csv``, columns as the ``schema`` declares) is ingested by :func:`stream_ingest`
(``lakeforge stream ingest NAME``): a Structured Streaming query on the topic whose
every micro-batch goes through the same steps as a batch ingest and curate:

1. each record's value is parsed against the schema; a record that does not parse, or
   leaves a ``NOT NULL`` column empty, goes to ``ops_quarantine`` with the reason and
   its raw text; the rest are appended to ``bronze_<table>`` with their lineage
   (``_source_file`` is ``kafka://topic/partition``, ``_record`` the offset);
2. ``ops_quality`` records the micro-batch's counts, which marks its ingest complete;
3. the data set is curated (:mod:`lakehouse.curate`): the new batches' rows are checked
   by the silver rules and merged into silver. A MERGE takes most of a micro-batch's
   time, so a running stream curates at most every ``stream.curate_seconds`` (its
   first micro-batch and the end of each run always do; any run curates what an
   earlier one left); the scoring query reads bronze, so scores do not wait for it.

**Exactly once.** The query's checkpoint (source offsets) is on the lake, under
``streams/<database>/<data set>/ingest``. Each micro-batch is an ingest batch named by
the stream's id and the micro-batch number (``s<id>-000042``); every write carries a
Delta ``txnAppId`` derived from it. A query killed at any point replays its last
micro-batch with the same offsets and the same name on restart, so the writes that
were committed are skipped and the rest are made: no record lost, none twice.
Records with the same silver key should carry the same Kafka message key, so that they
land in one partition and their order is kept (the latest record wins in silver).

**Landing folders.** A data set whose source is files is streamed the same way: the
query watches the entry's folders (Spark's file source, new files only, recursively),
and each micro-batch in which files arrived is a batch ingest of the files no batch
has claimed yet (:func:`lakehouse.ingest.ingest_dataset`: the same parsers, quarantine
with reasons and ``ops_ingest_files`` claims as ``lakeforge ingest``), named by the
stream and micro-batch, then a curate. Exactly once comes from each batch's bronze
commit: a micro-batch replayed after a kill resumes or skips its batch by name, and a
file a batch of ``lakeforge ingest`` holds is not ingested again by the stream.

``available_now`` takes what the topic holds when the query starts (in micro-batches
of at most ``stream.max_records_per_batch`` records) and stops: for schedulers.
Otherwise the query runs until stopped (Ctrl-C or SIGTERM), a micro-batch every
``stream.trigger_seconds``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from py4j.protocol import Py4JError
from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import DataStreamWriter, StreamingQuery
from pyspark.sql.types import StringType, StructField, StructType

from lakehouse import delta, kafka
from lakehouse.config import Config
from lakehouse.curate import curate_dataset
from lakehouse.dataset_check import DatasetPlan, check_datasets, resolve_datasets
from lakehouse.datasets import Dataset, SourceSpec
from lakehouse.errors import ConfigError, DriverGoneError, SourceError, error_condition
from lakehouse.featuresets.contract import silver_rows
from lakehouse.ingest import IngestResult, ingest, ingest_dataset, load_batch
from lakehouse.lakefs import LakeFS
from lakehouse.landing import source_patterns
from lakehouse.sources.native import CORRUPT, with_status
from lakehouse.tables import table

log = logging.getLogger(__name__)
# A query's state in its checkpoint no longer fits it (a stateful query changed shape).
STATE_SCHEMA_CHANGED = ("STATE_STORE_KEY_SCHEMA_NOT_COMPATIBLE",
                        "STATE_STORE_VALUE_SCHEMA_NOT_COMPATIBLE")
# Spark's binaryFile source's columns (a streaming source needs them declared).
BINARY_FILE = "path STRING, modificationTime TIMESTAMP, length BIGINT, content BINARY"


@dataclass
class StreamResult:
    """What one run of a stream's query did (micro-batches with records only)."""

    dataset: str
    checkpoint: str
    batches: list[str] = field(default_factory=list)
    read: int = 0
    bronze: int = 0
    quarantined: int = 0
    silver_new: int = 0
    silver_updated: int = 0
    rule_quarantined: int = 0     # rows silver's quarantine rules moved out
    curated_at: float | None = None   # time.monotonic() of the run's last curate
    uncurated: bool = False           # micro-batches ingested since then

    def summary(self) -> str:
        """One log line."""
        if not self.batches:
            return f"{self.dataset}: no new records on the topic"
        return (f"{self.dataset}: {len(self.batches)} micro-batch(es), {self.read:,} records "
                f"read = {self.bronze:,} bronze + {self.quarantined:,} quarantined; silver "
                f"+{self.silver_new:,} new, {self.silver_updated:,} updated, "
                f"{self.rule_quarantined:,} quarantined by its rules")


def checkpoint_location(cfg: Config, name: str, query: str) -> str:
    """Where a stream query keeps its checkpoint, on the lake.

    ``name`` is a data set's (``query`` ``ingest``) or a model's (``query`` ``score``).
    """
    return "/".join([cfg.stream_dir, cfg.catalog.database, name, query])


@dataclass
class StreamQuery:
    """A streaming query ready to start: what :func:`run_queries` runs.

    Attributes:
        name: for logs (``ingest pumps``, ``scoring with pumps_rcf``).
        writer: the query's writer, its checkpoint and sink set; no trigger yet.
        started: a log line saying what the query reads and writes.
        finished: called once the query has ended without error (logs its summary).
        checkpoint: where its checkpoint is (named when the checkpoint cannot be used).
    """

    name: str
    writer: DataStreamWriter
    started: str
    finished: Callable[[], None] = lambda: None
    checkpoint: str = ""


def stream_ingest(spark: SparkSession, cfg: Config, name: str, available_now: bool = False,
                  stop: threading.Event | None = None) -> StreamResult:
    """Run a data set's stream query: Kafka -> bronze -> silver (see the module docstring).

    Args:
        spark: the session.
        cfg: configuration (``stream`` section, the data catalog).
        name: the data set; its source must be a Kafka topic or files.
        available_now: take what the topic holds now, then stop.
        stop: when set, the query stops (also set by SIGINT and SIGTERM when called
            from the main thread); a micro-batch it cuts short is done again, exactly
            once, when the stream starts again.

    Returns:
        What the run did.

    Raises:
        CatalogError: the entry cannot be used.
        SourceError: the data set's source is a table, or no Kafka broker answers.
    """
    query, result = ingest_query(spark, cfg, name)
    run_queries([query], cfg, available_now, stop)
    return result


def ingest_query(spark: SparkSession, cfg: Config, name: str
                 ) -> tuple[StreamQuery, StreamResult]:
    """A data set's stream query, ready to run, and the result its micro-batches fill.

    Raises:
        CatalogError: the entry cannot be used.
        SourceError: the data set's source is a table, or no Kafka broker answers.
    """
    plan = check_datasets(spark, cfg, [name])[0]
    entry = plan.entry
    if entry.source.kind not in ("kafka", "files"):
        raise SourceError(f"data set {name!r} reads {entry.source.describe()}, not a Kafka "
                          f"topic or a landing folder: ingest it with `lakeforge ingest {name}`")
    db = cfg.catalog.database
    delta.ensure_table(spark, plan.bronze, db)
    for key in ("ops.quarantine", "ops.quality", "ops.ingest_files"):
        delta.ensure_table(spark, table(key), db)
    checkpoint = checkpoint_location(cfg, name, "ingest")
    stream = stream_id(LakeFS.of(cfg), checkpoint)
    result = StreamResult(name, checkpoint)
    if entry.source.kind == "kafka":
        _check_brokers(name, _bootstrap(cfg, entry.source))
        source, step = _read_topic(spark, cfg, entry.source), _micro_batch
        what = f"Kafka topic {entry.source.kafka['topic']} ({_bootstrap(cfg, entry.source)})"
    else:
        source, step = _watch_files(spark, entry), _file_batch
        what = "files landing in " + ", ".join(source_patterns(entry))

    def process(rows: DataFrame, epoch: int) -> None:
        step(rows.sparkSession, cfg, plan, f"s{stream[:8]}-{epoch:06d}", rows, result)

    writer = (source.writeStream.foreachBatch(process).option("checkpointLocation", checkpoint)
              .queryName(f"lakeforge_ingest_{name}"))
    started = (f"{name}: stream from {what} into {plan.bronze.full_name(db)}; "
               f"checkpoint {checkpoint}")

    def finished() -> None:
        if result.uncurated:
            curate_rest(spark, cfg, plan, result)
        log.info(result.summary())

    return StreamQuery(f"ingest {name}", writer, started, finished, checkpoint), result


def ingest_sources(spark: SparkSession, cfg: Config, names: Sequence[str], batch: str
                   ) -> tuple[list[IngestResult], list[StreamResult]]:
    """Ingest data sets whatever their source, as a pipeline's ingest step does.

    Files and tables are ingested as batch ``batch`` (:func:`lakehouse.ingest.ingest`);
    a Kafka topic by its stream, run until the topic is read (which curates it too; its
    micro-batches are named by the stream, not by ``batch``). So pipelines, Airflow
    tasks and spark-submit jobs take a topic as they take a landing folder.

    Args:
        spark: the session.
        cfg: configuration.
        names: data set names, or ``["all"]``.
        batch: the batch id of files and tables.

    Returns:
        The batch ingests' results and the streams' results.
    """
    entries = resolve_datasets(cfg, names)
    others = [e.name for e in entries if e.source.kind != "kafka"]
    batches = ingest(spark, cfg, others, batch) if others else []
    streams = []
    for entry in entries:
        if entry.source.kind == "kafka":
            log.info("%s reads a Kafka topic: its stream runs until the topic is read (its "
                     "micro-batches are named by the stream, not by batch %s)", entry.name,
                     batch)
            streams.append(stream_ingest(spark, cfg, entry.name, available_now=True))
    return batches, streams


def replay(spark: SparkSession, cfg: Config, name: str, topic: str, rate: float = 0,
           limit: int | None = None) -> int:
    """Send a data set's silver rows to a Kafka topic in event-time order, one JSON record each.

    A live source for trying streams: a stored stream data set (a bundled one, say)
    replayed into the topic a Kafka data set reads. The order is the ``order`` role's
    column (then ``stream_id``) for a stream data set, else silver's keys; each record's
    message key is its ``stream_id``, so each stream keeps its order in the topic.

    Args:
        spark: the session.
        cfg: configuration (``stream.kafka_bootstrap`` names the brokers).
        name: the data set to replay.
        topic: the topic to send to.
        rate: at most this many records a second (0: as fast as the broker takes them).
        limit: send only the first this many records.

    Returns:
        How many records were sent.
    """
    plan = check_datasets(spark, cfg, [name])[0]
    entry = plan.entry
    rows, _ = silver_rows(spark, cfg, entry)
    columns = [f.name for f in plan.silver.fields]
    stream_column = entry.roles.get("stream_id")
    order = [entry.roles["order"], *([stream_column] if stream_column else [])] \
        if entry.roles.get("order") else list(plan.silver.keys) or columns[:1]
    ordered = rows.select(*columns).orderBy(*order)
    if limit is not None:
        ordered = ordered.limit(limit)

    def records() -> Iterator[tuple[bytes | None, str]]:
        for row in ordered.toLocalIterator():
            values = row.asDict()
            key = str(values[stream_column]).encode() if stream_column else None
            yield key, json.dumps(values, default=str)

    log.info("%s: replaying %s into Kafka topic %s on %s%s", name, plan.silver.full_name(
        cfg.catalog.database), topic, cfg.stream.bootstrap,
        f", {rate:g} records/s" if rate else "")
    return kafka.send_records(cfg.stream.bootstrap, topic, records(), rate)


def run_queries(queries: Sequence[StreamQuery], cfg: Config, available_now: bool,
                stop: threading.Event | None = None) -> None:
    """Run streaming queries in this session until they end, or until ``stop`` is set.

    With ``available_now`` each query takes what its source holds and ends, one after
    the other in the order given (so a query reading another's sink sees all it wrote).
    Otherwise they all run at once, each taking a micro-batch every
    ``stream.trigger_seconds``, until stopped; if one fails, the others are stopped.

    SIGINT and SIGTERM set ``stop`` while the queries run (from the main thread). A
    micro-batch cut short by the stop is done again from the checkpoint on the next
    start; its writes are idempotent, so nothing is written twice.

    Raises:
        StreamingQueryException: a query failed.
    """
    stop = stop or threading.Event()
    every = f"a micro-batch every {cfg.stream.trigger_seconds:g} s until stopped"
    with _stopping_on_signals(stop):
        if available_now:
            for query in queries:
                if not stop.is_set():
                    log.info("%s, until what is there is read", query.started)
                    _wait([(query, query.writer.trigger(availableNow=True).start())], stop)
            return
        trigger = f"{round(cfg.stream.trigger_seconds * 1000)} milliseconds"
        running = []
        try:
            for query in queries:
                log.info("%s, %s", query.started, every)
                running.append((query, query.writer.trigger(processingTime=trigger).start()))
        except BaseException:
            for _, active in running:
                active.stop()
            raise
        _wait(running, stop)


def _wait(running: list[tuple[StreamQuery, StreamingQuery]], stop: threading.Event,
          grace: float = 60) -> None:
    """Wait while every query runs and ``stop`` is not set; then stop them all.

    A query in the middle of a micro-batch is let finish it first (for up to ``grace``
    seconds): stopping one mid-batch is safe (it is done again on the next start) but
    interrupts its Spark jobs, which log errors that are not.
    """
    try:
        try:
            while all(q.isActive for _, q in running) and not stop.is_set():
                running[0][1].awaitTermination(0.5)
        except StreamingQueryException:
            pass                              # raised below, with its query named
        finally:
            for query, active in running:
                if active.isActive:
                    log.info("%s: stopping the stream", query.name)
                    deadline = time.monotonic() + grace
                    while (active.isActive and active.status["isTriggerActive"]
                           and time.monotonic() < deadline):
                        time.sleep(0.1)
                    active.stop()
    except (Py4JError, OSError) as exc:
        if _answers(running[0][1]):
            raise
        raise DriverGoneError(
            f"{', '.join(q.name for q, _ in running)}: the Spark driver is gone (a signal sent "
            f"to the whole process group reaches its JVM too; send SIGINT or SIGTERM to "
            f"lakeforge's own process to stop after the micro-batch under way); the streams "
            f"go on from their checkpoints at the next start") from exc
    for query, active in running:
        if (exc := active.exception()) is not None:
            if changed := [c for c in STATE_SCHEMA_CHANGED
                           if c == error_condition(exc) or c in str(exc)]:
                raise ConfigError(
                    f"{query.name}: its checkpoint {query.checkpoint} holds state an earlier "
                    f"lakeforge made, of another shape ({changed[0]}); to start it "
                    f"over, delete that folder (and, for a scoring query, its model's rows "
                    f"in predictions_rcf_stream and ops_alerts)") from exc
            raise exc
    for query, _ in running:
        query.finished()


def parse_records(records: DataFrame, source: SourceSpec,
                  fields: Sequence[StructField]) -> DataFrame:
    """Kafka records as bronze rows plus status columns, as :func:`read_dataset` gives them.

    Args:
        records: rows of Spark's Kafka source (``value``, ``topic``, ``partition``,
            ``offset``, ...).
        source: the entry's source (``json`` or ``csv`` values; reader options).
        fields: the bronze data columns.
    """
    schema = StructType([*(StructField(f.name, f.dataType, True) for f in fields),
                         StructField(CORRUPT, StringType(), True)])
    options = {**source.options, "mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
    text = F.col("value").cast("string")
    parse = F.from_json if source.format == "json" else F.from_csv
    parsed = parse(text, schema.simpleString() if source.format == "csv" else schema, options)
    # Kafka's columns under names no declared column has.
    rows = records.select(parsed.alias("_r"), text.alias("_k_text"),
                          F.format_string("kafka://%s/%d", "topic", "partition")
                          .alias("_k_source"), F.col("offset").alias("_k_offset"))
    # A record whose value is empty (null) is malformed, with an empty raw text.
    corrupt = F.when(F.col("_k_text").isNull(), F.lit("")).otherwise(F.col(CORRUPT))
    return with_status(rows.select("_r.*", "_k_text", "_k_source", "_k_offset"), fields,
                       corrupt, F.col("_k_source"), record=F.col("_k_offset"),
                       raw=F.coalesce(F.col("_k_text"), F.lit("")))


def _micro_batch(spark: SparkSession, cfg: Config, plan: DatasetPlan, batch: str,
                 records: DataFrame, result: StreamResult) -> None:
    """One micro-batch: ingest it as a batch, then curate the data set."""
    entry = plan.entry
    rows = parse_records(records, entry.source, plan.bronze.fields).persist()
    try:
        if rows.isEmpty():
            return
        good, bad = load_batch(spark, cfg, entry, plan.bronze, batch, lambda: rows,
                               "a micro-batch")
    finally:
        rows.unpersist()
    _curate(spark, cfg, plan, batch, good, bad, result)


def _curate(spark: SparkSession, cfg: Config, plan: DatasetPlan, batch: str, good: int,
            bad: int, result: StreamResult) -> None:
    """Count a micro-batch's ingest (``good`` rows to bronze, ``bad`` quarantined); curate.

    The curate is left to a later micro-batch, or to the end of the run, when the run
    curated less than ``stream.curate_seconds`` ago.
    """
    result.batches.append(batch)
    result.read += good + bad
    result.bronze += good
    result.quarantined += bad
    result.uncurated = True
    every = cfg.stream.curate_seconds
    if result.curated_at is None or time.monotonic() - result.curated_at >= every:
        curate_rest(spark, cfg, plan, result)


def curate_rest(spark: SparkSession, cfg: Config, plan: DatasetPlan, result: StreamResult
                ) -> None:
    """Curate the batches a stream has ingested and not curated yet (any run's)."""
    curated = curate_dataset(spark, cfg, plan.entry, plan=plan)
    result.curated_at, result.uncurated = time.monotonic(), False
    result.silver_new += curated.inserted or 0
    result.silver_updated += curated.updated or 0
    result.rule_quarantined += curated.rejected or 0


def _file_batch(spark: SparkSession, cfg: Config, plan: DatasetPlan, batch: str,
                files: DataFrame, result: StreamResult) -> None:
    """One micro-batch of a landing folder: the unclaimed files ingested as a batch, curated.

    The micro-batch counts (and curates, now or later) even when its batch was already
    ingested: one replayed after a kill between its ingest and its curate is the run's
    first, which always curates.
    """
    if files.isEmpty():
        return
    ingested = ingest_dataset(spark, cfg, plan.entry, batch, dataclasses.replace(plan, files=None))
    _curate(spark, cfg, plan, batch, ingested.bronze, ingested.quarantined, result)


def _watch_files(spark: SparkSession, entry: Dataset) -> DataFrame:
    """New files under the entry's paths, as Spark's file source finds them (paths only)."""
    watched = [spark.readStream.format("binaryFile").schema(BINARY_FILE)
               .option("recursiveFileLookup", "true").load(pattern).select("path")
               for pattern in source_patterns(entry)]
    return functools.reduce(DataFrame.union, watched)


def _read_topic(spark: SparkSession, cfg: Config, source: SourceSpec) -> DataFrame:
    reader = (spark.readStream.format("kafka")
              .option("kafka.bootstrap.servers", _bootstrap(cfg, source))
              .option("subscribe", source.kafka["topic"])
              .option("startingOffsets", source.kafka.get("starting_offsets", "earliest")))
    if cfg.stream.max_records_per_batch:
        reader = reader.option("maxOffsetsPerTrigger", cfg.stream.max_records_per_batch)
    return reader.load()


def _bootstrap(cfg: Config, source: SourceSpec) -> str:
    return source.kafka.get("bootstrap") or cfg.stream.bootstrap


def _check_brokers(name: str, bootstrap: str, seconds: float = 5) -> None:
    """Stop at once when no broker answers.

    Spark's Kafka source would wait about three minutes, then fail with "Timed out
    waiting for a node assignment".
    """
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), seconds).close()
            return
        except (OSError, ValueError):
            continue
    raise SourceError(f"data set {name!r}: no Kafka broker answers at {bootstrap} (the entry's "
                      f"source.kafka.bootstrap, else stream.kafka_bootstrap); start the local "
                      f"one with `lakeforge kafka start`, or name brokers that run")


def stream_id(lake: LakeFS, checkpoint: str) -> str:
    """The stream's id, kept in its checkpoint (Spark's own query id, set here first).

    Spark reads a query's id from ``<checkpoint>/metadata`` and writes one there only
    when there is none; writing it first lets the micro-batches be named by it. A new
    checkpoint (a stream started over) gets a new id, so its batch names are new too.
    """
    location = checkpoint + "/metadata"
    if not lake.exists(location):
        lake.write_text(location, json.dumps({"id": str(uuid.uuid4())}))
    return json.loads(lake.read_text(location))["id"].replace("-", "")


def _answers(query: StreamingQuery) -> bool:
    """Whether the query's JVM still answers (it does not after it got a signal too)."""
    try:
        query.isActive                                    # noqa: B018 (a call to the JVM)
    except (Py4JError, OSError):
        return False
    return True


@contextmanager
def _stopping_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT and SIGTERM while inside (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, lambda *_: stop.set())
             for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
