"""Delta table helpers: create from the registry, check schemas, write idempotently."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import delta.exceptions as dx
from delta.tables import DeltaTable
from py4j.protocol import Py4JError
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.observation import Observation
from pyspark.sql.types import StructType

from lakehouse.errors import (
    CommitConflictError,
    SchemaMismatchError,
    TableNotFoundError,
    error_condition,
    java_classes,
)
from lakehouse.tables import TableSpec

log = logging.getLogger(__name__)
T = TypeVar("T")
CREATE_ATTEMPTS = 12   # waits 1 + 2 + ... + 11 s: past STALE_CREATE_SECONDS
# Error conditions of Spark and Delta when another job created the table (or its folder)
# first.
CREATE_RACES = frozenset({
    "DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION", "TABLE_OR_VIEW_ALREADY_EXISTS",
    "LOCATION_ALREADY_EXISTS",
    # Both committed version 0 of the new table's log; one of them lost.
    "DELTA_PROTOCOL_CHANGED",
})
# The one race without a condition of its own: both jobs passed Spark's check that the
# table is not in the catalog, and the Hive metastore refuses the second registration.
# Spark 4's HiveClientImpl.createTable does not convert the metastore's exception (it
# does for databases), and HiveExternalCatalog wraps any metastore client error in the
# generic _LEGACY_ERROR_TEMP_3065; the metastore's exception class says what happened.
HIVE_ALREADY_EXISTS = "org.apache.hadoop.hive.metastore.api.AlreadyExistsException"
STALE_CREATE_SECONDS = 60
# Conflicts a commit can lose to a concurrent writer; the operation is safe to retry
# (appends carry txnAppId, merges are keyed).
COMMIT_CONFLICTS = (
    dx.ConcurrentAppendException, dx.ConcurrentDeleteReadException,
    dx.ConcurrentDeleteDeleteException, dx.ConcurrentTransactionException,
    dx.ConcurrentWriteException, dx.MetadataChangedException,
    dx.DeltaConcurrentModificationException,
)


def is_commit_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is a lost Delta commit race.

    Also when py4j left it unconverted: the Python ``DeltaTable`` API raises a raw
    ``Py4JJavaError`` from ``merge().execute()``.
    """
    if isinstance(exc, COMMIT_CONFLICTS):
        return True
    java = getattr(exc, "java_exception", None)
    if java is None:
        return False
    name = java.getClass().getName()
    return name.startswith(("io.delta.exceptions.Concurrent",
                            "org.apache.spark.sql.delta.Concurrent")) \
        or name.endswith(("MetadataChangedException", "DeltaConcurrentModificationException"))


def is_create_race(exc: BaseException) -> bool:
    """Whether ``exc`` says another job created the same table (or its folder) first.

    Recognised by error condition, or for the Hive metastore's refusal by its class.
    """
    return error_condition(exc) in CREATE_RACES or HIVE_ALREADY_EXISTS in java_classes(exc)


def table_exists(spark: SparkSession, full_name: str) -> bool:
    """Whether the catalog holds the table."""
    return spark.catalog.tableExists(full_name)


def ensure_table(spark: SparkSession, spec: TableSpec, database: str) -> str:
    """Create the table from its spec if missing, else check its schema.

    Args:
        spark: the session.
        spec: the registry entry.
        database: catalog database.

    Returns:
        The table's full name.

    Raises:
        SchemaMismatchError: if the existing table's columns differ from the spec.
    """
    full_name = spec.full_name(database)
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        if table_exists(spark, full_name):
            schema = spark.table(full_name).schema
            if _add_new_columns(spark, spec, full_name, schema):
                schema = spark.table(full_name).schema
            check_schema(schema, spec.schema, full_name)
            return full_name
        _clear_failed_create(spark, database, spec.table_name)
        try:
            _create(spark, spec, full_name)
            log.info("created table %s", full_name)
            return full_name
        except Exception as exc:
            # Another job on a shared metastore is creating the same table right now
            # (Spark's errors, or a raw Py4JJavaError from DeltaTableBuilder.execute).
            if not is_create_race(exc) or attempt == CREATE_ATTEMPTS:
                raise
            log.info("%s is being created by another job; waiting (attempt %d)", full_name,
                     attempt)
            time.sleep(attempt)
    raise AssertionError("unreachable")


def _create(spark: SparkSession, spec: TableSpec, full_name: str) -> None:
    builder = (
        DeltaTable.createIfNotExists(spark)
        .tableName(full_name)
        .addColumns(spec.schema)
        .comment(spec.comment)
    )
    if spec.partition_by:
        builder = builder.partitionedBy(*spec.partition_by)
    for key, value in spec.properties.items():
        builder = builder.property(key, value)
    builder.execute()


def _clear_failed_create(spark: SparkSession, database: str, name: str) -> None:
    """Remove what a process killed while creating a managed table left in its folder.

    Spark refuses to create a managed table over a non-empty folder. A creation killed
    before its first Delta commit, or after that commit but before the catalog knew the
    table, leaves a folder with no rows in it: no commit, or only the empty first one.
    Anything else is left alone (and the error names the folder). On a shared metastore
    the folder may also be another job's creation in progress: it is only taken for a
    leftover once it has not changed for ``STALE_CREATE_SECONDS``; with embedded Derby
    no other process can be creating it.
    """
    jvm = spark.sparkContext._jvm
    location = spark.catalog.getDatabase(database).locationUri
    hpath = jvm.org.apache.hadoop.fs.Path
    path = hpath(f"{location.rstrip('/')}/{name}")
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(path):
        return
    first = hpath(path, "_delta_log/00000000000000000000.json")
    if fs.exists(first):
        if fs.exists(hpath(path, "_delta_log/00000000000000000001.json")):
            return
        stream = fs.open(first)
        try:
            text = jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
        finally:
            stream.close()
        if '"add"' in text:
            return
    shared = not spark.conf.get("spark.hadoop.javax.jdo.option.ConnectionURL", "") \
        .startswith("jdbc:derby:")
    if shared:
        log_dir = hpath(path, "_delta_log")
        changed = max(fs.getFileStatus(p).getModificationTime()
                      for p in (path, log_dir) if fs.exists(p))
        if time.time() - changed / 1000 < STALE_CREATE_SECONDS:
            return
    log.warning("%s.%s: removing %s, left by a creation that was killed", database, name,
                path.toString())
    fs.delete(path, True)


def _add_new_columns(spark: SparkSession, spec: TableSpec, full_name: str,
                     schema: StructType) -> bool:
    """Add nullable columns the spec gained since the table was created (at the end).

    ``schema`` is the table's current one. Returns whether columns were added.
    """
    have = {f.name for f in schema.fields}
    fields = list(spec.schema.fields)
    names = [f.name for f in fields]
    new = [f for f in fields if f.name not in have]
    if not new or not all(f.nullable for f in new) \
            or names[: len(names) - len(new)] != [n for n in names if n in have]:
        return False
    columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in new)
    spark.sql(f"ALTER TABLE {full_name} ADD COLUMNS ({columns})")
    log.info("%s: added column(s) %s", full_name, columns)
    return True


def check_schema(actual: StructType, expected: StructType, full_name: str) -> None:
    """Raise SchemaMismatchError naming the first column that differs.

    Nullability is not compared: Delta may relax it when a table is created.
    """
    have = {f.name: f.dataType for f in actual.fields}
    want = {f.name: f.dataType for f in expected.fields}
    for name, dtype in want.items():
        if name not in have:
            raise SchemaMismatchError(
                f"table {full_name}: column {name!r} ({dtype.simpleString()}) is missing; "
                f"the table has {', '.join(have)}"
            )
        if have[name] != dtype:
            actual, wanted = have[name].simpleString(), dtype.simpleString()
            if actual == wanted:  # differs only in whether elements/fields may be null
                actual, wanted = have[name].json(), dtype.json()
            raise SchemaMismatchError(
                f"table {full_name}: column {name!r} is {actual}, expected {wanted}"
            )
    extra = [n for n in have if n not in want]
    if extra:
        raise SchemaMismatchError(
            f"table {full_name}: column {extra[0]!r} is not in the registry's schema"
        )


def table_location(spark: SparkSession, full_name: str) -> str:
    """The storage location of a Delta table (a ``file:`` or object-store URI)."""
    return DeltaTable.forName(spark, full_name).detail().first()["location"]


def current_version(spark: SparkSession, full_name: str) -> int:
    """The table's latest Delta version.

    Raises:
        TableNotFoundError: if the table does not exist.
    """
    if not table_exists(spark, full_name):
        raise TableNotFoundError(f"table {full_name} does not exist; run ingest/curate first")
    table = DeltaTable.forName(spark, full_name)
    try:
        # A listing of _delta_log, no Spark job: about a quarter of the time of
        # DESCRIBE HISTORY, which jobs call several times each.
        return int(_latest_snapshot(spark, table).version())
    except Py4JError:   # a Delta release without this entry point: ask the history
        return table.history(1).collect()[0]["version"]


def _latest_snapshot(spark: SparkSession, table: DeltaTable) -> Any:
    """The JVM snapshot of the table's latest version, read from its Delta log.

    Not public in Delta's Python API: callers fall back on ``Py4JError``.
    """
    none = spark._jvm.scala.Option.empty()
    return table._jdt.deltaLog().update(False, none, none)


# Commits that never change a table's rows (maintenance and schema changes).
NO_DATA_OPERATIONS = frozenset({
    "CREATE TABLE", "OPTIMIZE", "VACUUM START", "VACUUM END", "ADD COLUMNS", "CHANGE COLUMN",
    "REPLACE COLUMNS", "RENAME COLUMN", "DROP COLUMNS", "SET TBLPROPERTIES",
    "UNSET TBLPROPERTIES", "ADD CONSTRAINT", "DROP CONSTRAINT", "UPGRADE PROTOCOL",
    "REORG", "COMPUTE STATS", "ANALYZE STATS", "CLUSTER BY", "SET TABLE COMMENT",
})
# Operations whose commit changed rows only when one of these metrics is above zero (a
# MERGE whose conditions matched nothing still rewrites the files it scanned).
ROW_METRICS = {
    "MERGE": ("numTargetRowsInserted", "numTargetRowsUpdated", "numTargetRowsDeleted"),
    "UPDATE": ("numUpdatedRows",),
    "DELETE": ("numDeletedRows", "numRemovedFiles"),
}


@dataclass(frozen=True)
class Snapshot:
    """A table's latest version and the latest version that changed its rows.

    ``data_version`` is the identity of the table's content: OPTIMIZE, VACUUM, schema
    and property changes and MERGEs that changed no row commit new versions but leave
    it alone, so work keyed on it is not redone after maintenance. Both versions hold
    the same rows; read at ``version`` (older versions' files may be vacuumed).
    """

    table: str
    version: int
    data_version: int


def changes_data(operation: str, parameters: Mapping[str, str] | None,
                 metrics: Mapping[str, str] | None) -> bool:
    """Whether a commit (one ``DESCRIBE HISTORY`` row) changed the table's rows.

    Unknown operations count as changes: redoing work is safe, skipping it is not.
    """
    if operation in NO_DATA_OPERATIONS:
        return False
    metrics = metrics or {}
    if operation == "WRITE" and (parameters or {}).get("mode") == "Append":
        return int(metrics.get("numOutputRows", "1")) > 0
    names = ROW_METRICS.get(operation)
    if names is None:
        return True
    return any(int(metrics.get(n, "1")) > 0 for n in names)


def data_version_of(history: Iterable[Any]) -> int | None:
    """The newest version in ``history`` rows that changed data (None if none did)."""
    changed = [int(r["version"]) for r in history
               if changes_data(r["operation"], r["operationParameters"], r["operationMetrics"])]
    return max(changed, default=None)


def snapshot(spark: SparkSession, full_name: str) -> Snapshot:
    """The table's :class:`Snapshot` (reads its recent history).

    Raises:
        TableNotFoundError: if the table does not exist.
    """
    if not table_exists(spark, full_name):
        raise TableNotFoundError(f"table {full_name} does not exist; run ingest/curate first")
    return history_snapshot(DeltaTable.forName(spark, full_name), full_name)


def history_snapshot(table: DeltaTable, name: str) -> Snapshot:
    """:func:`snapshot` of a Delta table handle (also one given by path)."""
    columns = ("version", "operation", "operationParameters", "operationMetrics")
    recent = table.history(50).select(*columns).collect()
    version = max(int(r["version"]) for r in recent)
    data = data_version_of(recent)
    if data is None and len(recent) == 50:
        recent = table.history().select(*columns).collect()
        data = data_version_of(recent)
    if data is None:  # no commit changed rows (an empty table): its first version stands
        data = min(int(r["version"]) for r in recent)
    return Snapshot(name, version, data)


def commit_metadata(spark: SparkSession, full_name: str, version: int) -> str | None:
    """The ``userMetadata`` of the newest commit at or before ``version`` that has one.

    Writers that describe their rows (a gold table's fitted feature transform) attach it
    to the commit that wrote them, so it is read at exactly the version a model pins.
    """
    history = (DeltaTable.forName(spark, full_name).history()
               .filter((F.col("version") <= int(version)) & F.col("userMetadata").isNotNull())
               .orderBy(F.desc("version")).select("userMetadata").limit(1).collect())
    return history[0]["userMetadata"] if history else None


def commit_json(spark: SparkSession, full_name: str, version: int) -> dict:
    """:func:`commit_metadata` as the JSON object writers store there.

    ``{}`` when there is none, or when it is not a JSON object (plain text an earlier
    release wrote).
    """
    raw = commit_metadata(spark, full_name, version)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def read_data_version(spark: SparkSession, full_name: str, data_version: int) -> DataFrame:
    """The table's rows as of a data version (see :class:`Snapshot`).

    The current version when nothing changed the rows since (its files outlive VACUUM),
    else ``VERSION AS OF data_version``.
    """
    pinned = snapshot(spark, full_name)
    version = pinned.version if pinned.data_version == data_version else data_version
    return read_version(spark, full_name, version)


def check_files_exist(spark: SparkSession, df: DataFrame, what: str) -> None:
    """Stop with a clear message when a pinned snapshot's data files were vacuumed.

    Raises:
        TableNotFoundError: naming the snapshot and the first missing file.
    """
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    for uri in df.inputFiles():
        path = jvm.org.apache.hadoop.fs.Path(uri)
        if not path.getFileSystem(conf).exists(path):
            raise TableNotFoundError(
                f"{what}: its data files were removed by VACUUM (first missing: {uri}); "
                f"this snapshot can no longer be read, train on the current version instead")


def committed_ids(spark: SparkSession, full_name: str, prefix: str) -> set[str] | None:
    """Every :func:`append_once` id starting with ``prefix`` committed to a table.

    One look at the table's latest snapshot (Delta rebuilds its state once, a few small
    Spark jobs); the ids cross from the JVM as one string. None, with a warning, when
    this Delta release lacks the entry point.
    """
    try:
        known = _latest_snapshot(spark, DeltaTable.forName(spark, full_name)).transactions()
        ids = str(known.keys().mkString("\n")).split("\n")
    except Py4JError as exc:
        log.warning("%s: committed write ids not readable (%s)", full_name,
                    str(exc).splitlines()[0][:200])
        return None
    return {i for i in ids if i.startswith(prefix)}


def commits_metadata(spark: SparkSession, full_name: str, marker: str) -> list[dict]:
    """The JSON ``userMetadata`` objects of a table's commits that hold ``marker``, oldest first.

    Reads the whole history the log keeps (every commit's JSON file, no Spark job per
    commit): for recovery paths, not for every run.
    """
    rows = (DeltaTable.forName(spark, full_name).history()
            .filter(F.col("userMetadata").contains(marker))
            .orderBy("version").select("version", "timestamp", "userMetadata").collect())
    found = []
    for r in rows:
        try:
            value = json.loads(r["userMetadata"])
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append({**value, "_version": int(r["version"]), "_timestamp": r["timestamp"]})
    return found


def append_once(df: DataFrame, full_name: str, app_id: str, version: int = 0,
                metadata: dict | None = None) -> bool:
    """Append ``df`` unless a write with this ``app_id`` was already committed.

    Uses Delta's idempotent writes (``txnAppId``/``txnVersion``): the commit
    records the id atomically with the rows, and a later write with the same id is
    skipped by Delta, so a retried or concurrent run cannot add the rows twice.
    A writer of many writes (a streaming query) names itself once in ``app_id`` and
    numbers its writes with ``version`` (its micro-batches): Delta then keeps one
    entry for it, and skips a write whose version is not above the last committed.

    Args:
        df: rows to append.
        full_name: target table.
        app_id: identifies this logical write (e.g. ``ingest/flights/batch-7``), or the
            writer of numbered writes.
        version: the write's number, increasing from one write to the next.
        metadata: a JSON object kept as the commit's ``userMetadata`` (what the write
            was; see :func:`commits_metadata`).

    Returns:
        Whether this call committed the rows; False when a write with this id had
        been committed before (by an earlier run, or by a concurrent one that won).
    """
    def attempt() -> Observation:
        # Delta skips a write whose id it has seen before running its query, so the
        # observation completes only when this attempt wrote the rows; an attempt that
        # lost a commit conflict is retried with an observation of its own.
        ran = Observation(f"append_{uuid.uuid4().hex}")
        writer = (df.observe(ran, F.count(F.lit(1)).alias("rows")).write.format("delta")
                  .mode("append").option("txnAppId", app_id).option("txnVersion", version))
        if metadata is not None:
            writer = writer.option("userMetadata", json.dumps(metadata, separators=(",", ":")))
        writer.saveAsTable(full_name)
        return ran

    return observed(with_retries(attempt, what=f"append to {full_name}"))


def append(df: DataFrame, full_name: str) -> None:
    """A plain append: no exactly-once id, so Delta does not rebuild the table's state.

    For writes that follow a decision already committed elsewhere (an ingest batch's
    bookkeeping after its bronze commit), whose recovery checks what is there.
    """
    with_retries(lambda: df.write.format("delta").mode("append").saveAsTable(full_name),
                 what=f"append to {full_name}")


def observed(observation: Observation) -> bool:
    """Whether the plan an observation watches ran (a write Delta skipped never runs it).

    PySpark has no non-blocking check, so this asks the JVM observation's future. Spark
    also completes it, with no metrics, when a plan holding it ended without running it.
    """
    if observation._jo is None or not observation._jo.future().isCompleted():
        return False
    return bool(observation.get)


def with_retries(action: Callable[[], T], what: str, attempts: int = 5,
                 backoff: float = 0.5) -> T:
    """Run a Delta commit, retrying on concurrent-commit conflicts with backoff.

    Raises:
        CommitConflictError: when every attempt lost to a concurrent writer.
    """
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            if not is_commit_conflict(exc):
                raise
            if attempt == attempts:
                raise CommitConflictError(f"{what}: lost {attempts} commit conflicts") from exc
            log.warning("%s: commit conflict (attempt %d), retrying", what, attempt)
            time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")


def read_version(spark: SparkSession, full_name: str, version: int | None = None) -> DataFrame:
    """Read a table, optionally at a Delta version, with a clear error if missing."""
    if version is None:
        current_version(spark, full_name)
        return spark.table(full_name)
    current_version(spark, full_name)
    try:
        return spark.sql(f"SELECT * FROM {full_name} VERSION AS OF {int(version)}")
    except AnalysisException as exc:
        raise TableNotFoundError(f"table {full_name} has no version {version}: {exc}") from exc
