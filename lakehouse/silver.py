"""Writing a silver table: merge new rows, make it equal to a full curation, or replace it.

Curation (:mod:`lakehouse.curate`) decides which rows silver should hold; this module
writes them with as little churn as Delta allows. Rows equal to what silver holds
(same keys, same 64-bit hash of every column) are never rewritten, so a write that
would change nothing commits nothing and downstream tables keyed on silver's data
version (:class:`lakehouse.delta.Snapshot`) are not rebuilt for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from lakehouse import delta
from lakehouse.tables import TableSpec


@dataclass(frozen=True)
class Written:
    """What one write did to silver's rows."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0


def schema_change(actual: StructType, spec: TableSpec) -> str:
    """How a table's columns differ from its spec, in words ("" when they do not).

    Nullability and column order are not compared.
    """
    have = {f.name: f.dataType for f in actual.fields}
    want = {f.name: f.dataType for f in spec.fields}
    changes = [f"column {n!r} added" for n in want if n not in have]
    changes += [f"column {n!r} dropped" for n in have if n not in want]
    changes += [f"column {n!r} is now {want[n].simpleString()} (was {have[n].simpleString()})"
                for n in want if n in have and have[n].simpleString() != want[n].simpleString()]
    return ", ".join(changes)


def has_duplicate_keys(spark: SparkSession, silver: str, keys: tuple[str, ...]) -> bool:
    """Whether two rows of the table share a key (as after a change of the declared keys)."""
    return not spark.table(silver).groupBy(*keys).count().filter("count > 1").isEmpty()


def upsert(spark: SparkSession, silver: str, spec: TableSpec, updates: DataFrame) -> Written:
    """MERGE the rows that differ from silver (one per key), inserting or updating.

    Idempotent by content: a retry, or a run that lost a commit conflict and plans its
    MERGE again, finds no row that differs and commits nothing. (No ``txnAppId``: with
    one, Delta commits even a MERGE that changes nothing, to record the id.)
    """
    data_cols = [f.name for f in spec.fields]
    digest = F.xxhash64(*data_cols).alias("_digest")
    source = updates.select(*data_cols, digest)
    held = spark.table(silver).select(*spec.keys, digest)
    same = [source[k].eqNullSafe(held[k]) for k in spec.keys]
    # Only rows that differ reach the MERGE: Delta rewrites every file holding a
    # matched key, even where an update's condition leaves the row as it was. With no
    # such row the MERGE commits nothing (Delta skips an empty MERGE's commit), so no
    # separate check for changes runs first.
    changes = source.join(held, [*same, source["_digest"] == held["_digest"]],
                          "left_anti").drop("_digest")
    assignments = {f"`{c}`": f"s.`{c}`" for c in data_cols}
    return _merge(spark, silver, spec, lambda m: m
                  .whenMatchedUpdate(set=assignments)
                  .whenNotMatchedInsert(values=assignments), changes)


def sync(spark: SparkSession, silver: str, spec: TableSpec, rows: DataFrame) -> Written:
    """Make silver hold exactly ``rows`` (one per key): insert, update and delete, one commit.

    Args:
        spark: the session.
        silver: the table, whose columns are the spec's.
        spec: its spec (keys and columns).
        rows: what it should hold.

    Returns:
        What changed; nothing is committed when silver already holds ``rows``.
    """
    data_cols = [f.name for f in spec.fields]
    source = rows.select(*data_cols)
    held = spark.table(silver).select(*data_cols)
    keys = list(spec.keys)
    ours, theirs = (df.withColumn("_d", F.xxhash64(*data_cols)) for df in (source, held))
    differ = ours.join(theirs, [*(ours[k].eqNullSafe(theirs[k]) for k in keys),
                                ours["_d"] == theirs["_d"]], "left_anti")
    gone = held.join(source, [held[k].eqNullSafe(source[k]) for k in keys], "left_anti")
    if differ.isEmpty() and gone.isEmpty():
        return Written()
    t_hash = ", ".join(f"t.`{c}`" for c in data_cols)
    s_hash = ", ".join(f"s.`{c}`" for c in data_cols)
    assignments = {f"`{c}`": f"s.`{c}`" for c in data_cols}
    return _merge(spark, silver, spec, lambda m: m
                  .whenMatchedUpdate(condition=f"xxhash64({t_hash}) <> xxhash64({s_hash})",
                                     set=assignments)
                  .whenNotMatchedInsert(values=assignments)
                  .whenNotMatchedBySourceDelete(), source)


def replace(spark: SparkSession, silver: str, spec: TableSpec, rows: DataFrame) -> Written:
    """Replace silver's rows and columns with ``rows`` in one commit (history is kept).

    For a declaration whose columns or keys changed: the table's properties and comment
    stay, its schema becomes the spec's.
    """
    before = spark.table(silver).count()
    out = rows.select(*[f.name for f in spec.fields])
    delta.with_retries(
        lambda: out.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        .saveAsTable(silver), what=f"rebuild of {silver}")
    return Written(inserted=spark.table(silver).count(), deleted=before)


def _merge(spark: SparkSession, silver: str, spec: TableSpec, clauses, source: DataFrame
           ) -> Written:
    on = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in spec.keys)
    # The MERGE's own result holds its row counts (one row).
    [result] = delta.with_retries(
        lambda: clauses(DeltaTable.forName(spark, silver).alias("t")
                        .merge(source.alias("s"), on)).execute().collect(),
        what=f"merge into {silver}")
    return Written(int(result["num_inserted_rows"]), int(result["num_updated_rows"]),
                   int(result["num_deleted_rows"]))
