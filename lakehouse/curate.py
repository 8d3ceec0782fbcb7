"""Silver curation: bronze -> typed, validated, deduplicated silver tables (Delta MERGE).

Each data set's catalog entry gives an optional SQL select (renames, ``try_cast``,
derived columns), the silver keys and named quality rules (:mod:`lakehouse.quality`).
Rows that break a ``quarantine`` rule go to quarantine naming every rule they broke;
the rest are deduplicated on the keys (latest ingest wins) and merged into silver.

**The declaration is the truth.** Silver always holds what a clean curation of all of
bronze under the entry's current declaration (select, keys, rules and the columns they
give) would hold. ``ops_curations`` records which ingest batches silver holds and the
fingerprint of the declaration they were curated under:

- *Incremental* (the daily case): only the batches whose ingest completed since the last
  curation under the same declaration are read from bronze (Delta skips the files of
  other batches), checked and merged. Rule counts go to ``ops_quality`` per batch.
- *Rebuild*: when the declaration changed, silver's columns no longer fit it, or
  ``--rebuild`` is asked, all of bronze is read again. Silver becomes exactly the clean
  result in one commit (rows that now pass arrive, rows that now fail leave for the
  quarantine, ``MERGE`` touches only rows that differ); a change of columns or keys
  replaces the table's rows and schema in one commit, history kept. The data set's
  curate-stage quarantine rows and its ``ops_curations`` rows are replaced to match.
  Entries that share a silver table are rebuilt together, each under its own rules.

**The quarantine commit is the one decision point of a curation of new batches.**
Silver's MERGE, idempotent by content (it changes only rows that differ), and the
quarantine append run side by side. The quarantine append commits also when no row
was rejected: it carries Delta's exactly-once id of the scope (data set, batches,
declaration, bronze version) and its commit metadata names the run (host and pid).
The counts and the ``ops_curations`` rows follow both as plain appends, so a curation
rebuilds the state of one bookkeeping table for its exactly-once id, not three. A run
that finds the quarantine commit made by a run that is gone (killed before it
recorded the batches; a run of another host after ``ingest.stale_batch_minutes``)
finishes it, writing only the rows that are missing, each write with an exactly-once
id of its own; one that finds it made by a live run leaves the batches to that run.

Every write is idempotent: a re-run after a kill at any point finishes the curation
and adds no row twice; a curation with nothing new reads no bronze at all.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.observation import Observation

from lakehouse import delta, silver
from lakehouse.config import Config
from lakehouse.daemon import owner_line, run_may_be_alive
from lakehouse.dataset_check import DatasetPlan, check_datasets, plan_dataset
from lakehouse.datasets import Dataset
from lakehouse.errors import QualityError, error_condition
from lakehouse.quality import (
    BatchCount,
    apply_rules,
    batch_count_columns,
    batch_counts_of,
    count_batches,
    quarantine_rows,
    raise_on_fail,
    total_counts,
)
from lakehouse.session import side_by_side
from lakehouse.sources.base import ERROR, RAW
from lakehouse.tables import LINEAGE_NAMES, TableSpec, table

log = logging.getLogger(__name__)
DECLARATION = "_declaration"
BRONZE_ROW = "_bronze_row"
# Conditions of a value that an ANSI-mode select cannot convert (a task fails with them).
SELECT_VALUE_ERRORS = frozenset({"CAST_INVALID_INPUT", "ARITHMETIC_OVERFLOW"})


@dataclass(frozen=True)
class CurateResult:
    """What one data set's curation did."""

    source: str
    table: str
    bronze_version: int
    batches: tuple[str, ...]    # the ingest batches read (every batch on a rebuild)
    valid: int | None           # None: already curated, nothing was read or counted
    rejected: int | None
    inserted: int
    updated: int
    deleted: int
    rows: int | None            # silver's rows afterwards
    skipped: bool
    rebuilt: str = ""           # why silver was rebuilt from all of bronze
    left_to: str = ""           # the live run (``host pid``) that is curating these batches

    def summary(self) -> str:
        """One log line."""
        if self.left_to:
            return (f"{self.source}: batch(es) {', '.join(self.batches) or '*'} are being "
                    f"curated by another run ({self.left_to}); left to that run")
        if self.skipped:
            return (f"{self.source}: {self.table} holds every ingested batch under the "
                    f"current declaration; nothing to do")
        how = f"rebuilt ({self.rebuilt})" if self.rebuilt else \
            f"{len(self.batches)} new batch(es)"
        return (f"{self.source}: {how}: {self.valid:,} valid, {self.rejected:,} quarantined "
                f"-> {self.table} +{self.inserted:,} new, {self.updated:,} updated, "
                f"{self.deleted:,} removed, {self.rows:,} rows (bronze v{self.bronze_version})")


def curate(spark: SparkSession, cfg: Config, names: Sequence[str],
           batch: str | None = None, rebuild: bool = False) -> list[CurateResult]:
    """Curate sources from bronze into silver.

    Args:
        spark: the session.
        cfg: configuration.
        names: data set names, or ``["all"]``.
        batch: only this ingest batch, if it is not curated yet (default: every batch
            not curated yet). A rebuild reads every batch.
        rebuild: rebuild silver from all of bronze even if the declaration is unchanged.

    Returns:
        One result per data set.

    Raises:
        CatalogError: when an entry cannot be used (checked before anything is written).
        QualityError: when a rule with ``on_fail: fail`` is broken (nothing is written).
    """
    plans = check_datasets(spark, cfg, names)
    return [curate_dataset(spark, cfg, p.entry, batch, rebuild, p) for p in plans]


def declaration(entry: Dataset, spec: TableSpec) -> str:
    """The fingerprint of an entry's silver declaration: select, keys, rules and columns."""
    body = {"select": list(entry.silver.select), "keys": list(entry.silver.keys),
            "rules": [[r.name, r.expr, r.on_fail] for r in entry.silver.rules],
            "columns": spec.data_schema.simpleString()}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def to_silver(rows: DataFrame, entry: Dataset, bronze: TableSpec) -> DataFrame:
    """Bronze rows in the silver shape (the entry's select), with lineage and the bronze row.

    The select sees bronze's lineage columns too (``_source_file``, ``_ingest_batch``,
    ``_ingested_at``, ...), so a silver column can be derived from them. The bronze
    row rides along as a struct (``_bronze_row``) until :func:`raw_of_rejected` turns
    it into ``_raw`` for the rows that need it.
    """
    carried = [*LINEAGE_NAMES, BRONZE_ROW]
    with_row = rows.withColumn(BRONZE_ROW, F.struct(*[f.name for f in bronze.fields]))
    if not entry.silver.select:
        return with_row
    shaped = with_row.selectExpr(*entry.silver.select)
    missing = [c for c in carried if c not in shaped.columns]   # a "*" keeps them already
    return with_row.selectExpr(*entry.silver.select, *missing) if missing else shaped


def raw_of_rejected(checked: DataFrame) -> DataFrame:
    """``_raw`` (the bronze row as JSON) on rejected rows only, in place of the struct.

    Only the quarantine keeps it, so the rows that go on to silver skip the JSON.
    """
    raw = F.when(F.col(ERROR).isNotNull(), F.to_json(BRONZE_ROW))
    return checked.withColumn(RAW, raw).drop(BRONZE_ROW)


def latest_per_key(df: DataFrame, spec: TableSpec) -> DataFrame:
    """Keep one row per key: the most recently ingested (within a file, the last record)."""
    order = Window.partitionBy(*spec.keys).orderBy(
        F.col("_ingested_at").desc(), F.col("_ingest_batch").desc(), F.col("_record").desc())
    return df.withColumn("_n", F.row_number().over(order)).filter("_n = 1").drop("_n")


@dataclass(frozen=True)
class _Tables:
    bronze: delta.Snapshot
    silver: str
    quarantine: str
    quality: str
    curations: str


@dataclass(frozen=True)
class _Scope:
    """What one curation reads and how it writes silver."""

    entries: tuple[Dataset, ...]      # whose bronze rows are read
    batches: tuple[str, ...] | None   # None: all their rows
    rebuild: str = ""                 # why silver is rebuilt ("": a merge of new rows)
    columns_changed: bool = False     # the rebuild must replace silver's schema too
    counted: frozenset[str] = frozenset()   # batches whose curate counts are written already


@dataclass(frozen=True)
class _Books:
    """What the bookkeeping tables hold of one data set's batches."""

    ingested: frozenset[str]        # ingest complete (its counts are its last write)
    curated: dict[str, set[str]]    # by declaration: the batches silver holds
    counted: dict[str, set[str]]    # by declaration: the batches with curate counts


def curate_dataset(spark: SparkSession, cfg: Config, entry: Dataset,
                   batch: str | None = None, rebuild: bool = False,
                   plan: DatasetPlan | None = None) -> CurateResult:
    """Curate one data set (see :func:`curate` and the module docstring).

    ``plan``: the entry's tables as the catalog check worked them out; without it the
    entry is checked here.
    """
    db = cfg.catalog.database
    plan = plan or plan_dataset(spark, entry)
    bronze_spec, silver_spec = plan.bronze, plan.silver
    tables = _Tables(delta.snapshot(spark, bronze_spec.full_name(db)),
                     silver_spec.full_name(db),
                     *(delta.ensure_table(spark, table(k), db)
                       for k in ("ops.quarantine", "ops.quality", "ops.curations")))
    scope = _scope(spark, cfg, entry, silver_spec, tables, batch, rebuild)
    if scope is None:
        result = CurateResult(entry.name, tables.silver, tables.bronze.data_version, (),
                              None, None, 0, 0, 0, None, skipped=True)
        log.info(result.summary())
        return result
    if scope.rebuild:
        log.info("%s: rebuilding %s from all of bronze: %s", entry.name, tables.silver,
                 scope.rebuild)
        if batch is not None:
            log.info("%s: --batch %s is ignored by a rebuild, which reads every batch",
                     entry.name, batch)
    if not delta.table_exists(spark, tables.silver):
        delta.ensure_table(spark, silver_spec, db)
    return _curate(spark, entry, scope, tables, bronze_spec, silver_spec,
                   cfg.ingest.stale_batch_minutes)


def _scope(spark: SparkSession, cfg: Config, entry: Dataset, spec: TableSpec,
           tables: _Tables, batch: str | None, rebuild: bool) -> _Scope | None:
    """Whether to rebuild, which batches to read, or None when there is nothing to do."""
    declared = declaration(entry, spec)
    books = _books(spark, tables, entry.name)
    held = books.curated
    reason = "asked (--rebuild)" if rebuild else ""
    change = ""
    if delta.table_exists(spark, tables.silver):
        change = silver.schema_change(spark.table(tables.silver).schema, spec)
        if change:
            reason = f"its columns changed: {change}"
        elif set(held) - {declared}:
            reason = reason or "its silver declaration changed"
    elif held:
        reason = f"{tables.silver} is missing"
    if reason:
        sharing = tuple(e for e in cfg.datasets.values() if e.table_name == entry.table_name)
        return _Scope(sharing if entry in sharing else (entry,), None, reason, bool(change))
    counted = frozenset(books.counted.get(declared, ()))
    if not held:    # the first curation: every row bronze holds
        return _Scope((entry,), None, counted=counted)
    pending = books.ingested - held[declared]
    if batch is not None:
        pending &= {batch}
    return _Scope((entry,), tuple(sorted(pending)), counted=counted) if pending else None


def _books(spark: SparkSession, tables: _Tables, dataset: str) -> _Books:
    """A data set's batches as ``ops_quality`` and ``ops_curations`` hold them.

    The two tables are read side by side: most of a small read is Delta working out
    the table's state.
    """
    quality = (spark.table(tables.quality)
               .filter((F.col("dataset") == dataset) & F.col("stage").isin("ingest", "curate"))
               .select("stage", "declaration", "batch"))
    curated = (spark.table(tables.curations).filter(F.col("dataset") == dataset)
               .select(F.lit("silver").alias("stage"), "declaration", "batch"))
    ingested: set[str] = set()
    held: dict[str, set[str]] = {}
    counted: dict[str, set[str]] = {}
    found = side_by_side(spark, lambda: quality.distinct().collect(),
                         lambda: curated.distinct().collect())
    for r in found[0] + found[1]:
        if r.stage == "ingest":
            ingested.add(r.batch)
        else:
            (held if r.stage == "silver" else counted).setdefault(r.declaration, set()
                                                                  ).add(r.batch)
    return _Books(frozenset(ingested), held, counted)


def _read(spark: SparkSession, scope: _Scope, tables: _Tables, bronze_spec: TableSpec,
          silver_spec: TableSpec) -> DataFrame:
    """The scope's bronze rows, shaped and checked by each entry's own declaration."""
    rows = delta.read_version(spark, tables.bronze.table, tables.bronze.version)
    if scope.batches is not None:
        rows = rows.filter(F.col("_ingest_batch").isin(list(scope.batches)))
    parts = [raw_of_rejected(apply_rules(
        to_silver(rows.filter(F.col("_source") == e.name), e, bronze_spec), e.silver.rules))
             .withColumn(DECLARATION, F.lit(declaration(e, silver_spec)))
             for e in scope.entries]
    return functools.reduce(DataFrame.unionByName, parts)


def _curate(spark: SparkSession, entry: Dataset, scope: _Scope, tables: _Tables,
            bronze_spec: TableSpec, silver_spec: TableSpec, stale_minutes: float
            ) -> CurateResult:
    """Check, count and write one scope (see the module docstring for the order).

    Rule counts come first when a ``fail`` rule must be able to stop the curation
    before anything is written, or when the batches are not known in advance (a
    first curation, a rebuild): then the checked rows are cached and counted in a pass
    of their own. Otherwise (the daily case) the quarantine append counts them on its
    way, with no cache and no extra pass.

    Silver's MERGE and the quarantine append touch different tables and neither waits
    for the other, so they run at the same time (Spark takes jobs from two threads);
    so do the count of silver's rows and the bookkeeping after them. The counts and
    ``ops_curations`` follow both: a kill in between leaves a curation the next run
    finishes, which MERGEs again (a no-op) before it looks at the quarantine commit.
    """
    checked = _read(spark, scope, tables, bronze_spec, silver_spec)
    on_the_way = (not scope.rebuild and scope.batches is not None
                  and all(r.on_fail != "fail" for r in entry.silver.rules))
    if not on_the_way:
        checked = checked.persist()
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    try:
        with _named_value_errors(entry, scope):
            if on_the_way:
                counts, seen = None, Observation(f"curate_{uuid.uuid4().hex}")
                watched = checked.observe(
                    seen, *batch_count_columns(entry.silver.rules, scope.batches or ()))
            else:
                counts, watched = _checked_counts(checked, scope), checked
            good = latest_per_key(checked.filter(F.col(ERROR).isNull()), silver_spec)
            rejected = watched.filter(F.col(ERROR).isNotNull())
            n_bad = None if counts is None else \
                sum(b.rejected for batches in counts.values() for b in batches)
            written, decided = side_by_side(
                spark, lambda: _write_silver(spark, scope, tables, silver_spec, good),
                lambda: _write_quarantine(spark, scope, tables, silver_spec, rejected, n_bad,
                                          now))
            if counts is None:
                rules, batches = entry.silver.rules, scope.batches or ()
                counts = {entry.name: batch_counts_of(seen.get, rules, batches)
                          if delta.observed(seen) else count_batches(checked, rules)}
        rows_after, left_to = side_by_side(
            spark, lambda: spark.table(tables.silver).count(),
            lambda: _record(spark, scope, tables, silver_spec, counts, now, decided,
                            stale_minutes))
    finally:
        checked.unpersist()
    if left_to:
        result = CurateResult(entry.name, tables.silver, tables.bronze.data_version,
                              scope.batches or (), None, None, 0, 0, 0, None, skipped=True,
                              left_to=left_to)
        log.info(result.summary())
        return result
    mine = counts[entry.name]
    for e in scope.entries:
        _log_counts(e, counts[e.name])
    result = CurateResult(
        entry.name, tables.silver, tables.bronze.data_version,
        tuple(b.batch for b in mine) if scope.batches is None else scope.batches,
        sum(b.rows - b.rejected for b in mine), sum(b.rejected for b in mine),
        written.inserted, written.updated, written.deleted, rows_after,
        skipped=False, rebuilt=scope.rebuild)
    log.info(result.summary())
    return result


def _record(spark: SparkSession, scope: _Scope, tables: _Tables, spec: TableSpec,
            counts: dict[str, list[BatchCount]], now: dt.datetime, decided: bool,
            stale_minutes: float) -> str:
    """Write the counts and ``ops_curations`` after the quarantine commit, unless its run lives.

    Returns:
        The owner line of the live run that made the quarantine commit ("" when this
        run wrote the records).
    """
    left_to = "" if decided else _live_run(spark, scope, tables, spec, stale_minutes)
    if not left_to:
        _write_counts(spark, scope, tables, spec, counts, now,
                      plain=decided and not scope.rebuild)
    return left_to


def _checked_counts(checked: DataFrame, scope: _Scope) -> dict[str, list[BatchCount]]:
    """Each entry's counts per batch, in a pass of their own; stops on a broken ``fail`` rule."""
    counts = {}
    for e in scope.entries:
        mine = checked.filter(F.col("_source") == e.name)
        counts[e.name] = count_batches(mine, e.silver.rules)
        failed = [b.batch for b in counts[e.name] if any(c.failed for c in b.rules)]
        raise_on_fail(mine, total_counts(counts[e.name]), e.name, ", ".join(failed))
    return counts


@contextlib.contextmanager
def _named_value_errors(entry: Dataset, scope: _Scope) -> Iterator[None]:
    """A value the entry's select cannot convert stops the curation with a named error."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - Spark raises JVM errors of many classes
        if error_condition(exc) in SELECT_VALUE_ERRORS:
            where = "*" if scope.batches is None else ", ".join(scope.batches)
            raise QualityError(
                f"data set {entry.name!r}, batch {where}: silver.select failed on a "
                f"value (ANSI mode: a bad CAST throws; use try_cast): "
                f"{str(exc).splitlines()[0]}") from exc
        raise


def _write_silver(spark: SparkSession, scope: _Scope, tables: _Tables, spec: TableSpec,
                  rows: DataFrame) -> silver.Written:
    """Merge new rows; on a rebuild make silver equal ``rows`` (replace it if it must)."""
    target = tables.silver
    if not scope.rebuild:
        return silver.upsert(spark, target, spec, rows)
    if scope.columns_changed:
        return silver.replace(spark, target, spec, rows)
    if silver.has_duplicate_keys(spark, target, spec.keys):
        log.info("%s: rows share keys under the declared keys; replacing its rows", target)
        return silver.replace(spark, target, spec, rows)
    return silver.sync(spark, target, spec, rows)


def _digest(scope: _Scope, spec: TableSpec, bronze: delta.Snapshot) -> str:
    """Names this scope's logical writes (Delta's ``txnAppId``).

    The same batches of the same bronze version under the same declarations: a retry
    of a killed curate, or the same curate twice at once.
    """
    body = [[(e.name, declaration(e, spec)) for e in scope.entries], scope.batches,
            scope.rebuild, bronze.version]
    return hashlib.sha256(json.dumps(body).encode()).hexdigest()[:16]


def _app_id(scope: _Scope, spec: TableSpec, bronze: delta.Snapshot) -> str:
    """The exactly-once id of this scope's quarantine write (its other writes add a suffix)."""
    names = "+".join(e.name for e in scope.entries)
    return f"lakeforge/curate/{names}/{_digest(scope, spec, bronze)}"


def _write_quarantine(spark: SparkSession, scope: _Scope, tables: _Tables, spec: TableSpec,
                      rejected: DataFrame, n_rejected: int | None, now: dt.datetime) -> bool:
    """The rejected rows: the decision point of a curation of new batches.

    The append carries the scope's exactly-once id and names this run in its commit
    metadata; it commits even without rows. ``n_rejected``: how many rows ``rejected``
    holds, None when not counted yet. A rebuild replaces the data sets' curate-stage
    rows instead.

    Returns:
        Whether this call decided: False when a run with the same scope (earlier or at
        the same moment) committed the quarantine rows already.
    """
    rows = quarantine_rows(rejected, F.col("_source"), tables.silver, "curate",
                           F.col("_ingest_batch"), now, F.col(DECLARATION))
    names = [e.name for e in scope.entries]
    if scope.rebuild:
        owned = f"source IN ({_sql_list(names)}) AND stage = 'curate'"
        _replace_rows(spark, tables.quarantine, rows, owned)
        return True
    app_id = _app_id(scope, spec, tables.bronze)
    meta = {"lakeforge_curate": {"run": app_id, "owner": owner_line(),
                                 "batches": list(scope.batches or ["*"])}}
    if n_rejected == 0:
        return delta.append_once(rows, tables.quarantine, app_id, metadata=meta)
    # Rows of these batches a run with another scope quarantined (it was killed before
    # it recorded the batches as curated) are not added twice.
    held = (spark.table(tables.quarantine)
            .filter(F.col("source").isin(names) & (F.col("stage") == "curate"))
            .select("source", "batch", "source_file", "record"))
    on = [rows["source"] == held["source"], rows["batch"] == held["batch"],
          rows["source_file"].eqNullSafe(held["source_file"]),
          rows["record"].eqNullSafe(held["record"])]
    return delta.append_once(rows.join(held, on, "left_anti"), tables.quarantine, app_id,
                             metadata=meta)


def _live_run(spark: SparkSession, scope: _Scope, tables: _Tables, spec: TableSpec,
              stale_minutes: float) -> str:
    """The run that committed this scope's quarantine rows, if it may still be running.

    "" when it is gone (killed before it recorded its counts): this run finishes it.
    """
    app_id = _app_id(scope, spec, tables.bronze)
    for commit in reversed(delta.commits_metadata(spark, tables.quarantine, f'"{app_id}"')):
        info = commit.get("lakeforge_curate")
        if isinstance(info, dict) and info.get("run") == app_id:
            owner = str(info.get("owner", ""))
            return owner if run_may_be_alive(owner, commit["_timestamp"], stale_minutes) \
                else ""
    return ""


def _write_counts(spark: SparkSession, scope: _Scope, tables: _Tables, spec: TableSpec,
                  counts: dict[str, list[BatchCount]], now: dt.datetime, plain: bool) -> None:
    """Rule counts per batch to ``ops_quality``, then the batches to ``ops_curations``.

    ``ops_curations`` is written last: once a batch is there, its curation is complete.
    ``plain``: this run made the scope's quarantine commit (the decision point), so
    nobody else writes these rows and they are plain appends, leaving out the batches
    whose counts an interrupted run wrote (``scope.counted``). Otherwise (a rebuild, or
    finishing a curation a killed run decided) each write drops the rows that are there
    already and carries an exactly-once id of its own.
    """
    quality, curated = [], []
    for e in scope.entries:
        declared = declaration(e, spec)
        found = {b.batch: b for b in counts[e.name]}
        batches = scope.batches if scope.batches is not None else sorted(found)
        for name in batches:
            b = found.get(name, BatchCount(name, 0, 0, ()))
            quality += [(e.name, tables.silver, "curate", name, *c.row(), now, declared)
                        for c in b.rules]
            curated.append((e.name, tables.silver, name, declared,
                            tables.bronze.version, b.rows, b.rows - b.rejected, b.rejected, now))
    names = [e.name for e in scope.entries]
    app_id = _app_id(scope, spec, tables.bronze)
    if plain:
        quality = [q for q in quality if q[3] not in scope.counted]
        if quality:
            delta.append(spark.createDataFrame(quality, table("ops.quality").schema),
                         tables.quality)
        if curated:
            delta.append(spark.createDataFrame(curated, table("ops.curations").schema),
                         tables.curations)
        return
    if quality:
        rows = spark.createDataFrame(quality, table("ops.quality").schema)
        held = spark.table(tables.quality).filter(
            F.col("dataset").isin(names) & (F.col("stage") == "curate"))
        keys = ["dataset", "batch", "rule", "declaration"]
        fresh = rows.join(held.select(*keys), [rows[k].eqNullSafe(held[k]) for k in keys],
                          "left_anti")
        delta.append_once(fresh, tables.quality, f"{app_id}/quality")
    if not curated and not scope.rebuild:
        return
    rows = spark.createDataFrame(curated, table("ops.curations").schema)
    if scope.rebuild:
        _replace_rows(spark, tables.curations, rows, f"dataset IN ({_sql_list(names)})")
        return
    held = spark.table(tables.curations).filter(F.col("dataset").isin(names))
    keys = ["dataset", "batch", "declaration"]
    delta.append_once(rows.join(held.select(*keys), keys, "left_anti"), tables.curations,
                      f"{app_id}/curations")


def _replace_rows(spark: SparkSession, target: str, rows: DataFrame, owned: str) -> None:
    """Replace the rows of ``target`` that meet ``owned`` (SQL) with ``rows``, one commit."""
    if rows.isEmpty() and spark.table(target).filter(owned).isEmpty():
        return
    delta.with_retries(
        lambda: rows.write.format("delta").mode("overwrite").option("replaceWhere", owned)
        .saveAsTable(target), what=f"replace rows of {target} where {owned}")


def _sql_list(values: Sequence[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def _log_counts(entry: Dataset, counts: list[BatchCount]) -> None:
    for c in total_counts(counts):
        if c.warned:
            log.warning("%s: rule %s (%s) warned on %s of %s rows", entry.name, c.rule, c.expr,
                        f"{c.warned:,}", f"{c.checked:,}")
