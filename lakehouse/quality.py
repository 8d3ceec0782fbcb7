"""Named quality rules: evaluate them, count them, and shape quarantine and quality rows.

A rule is a name, a SQL boolean and an action (:class:`lakehouse.datasets.Rule`). A row
breaks a rule when the expression is false or null. ``warn`` keeps the row and counts
it; ``quarantine`` moves the row to ``ops_quarantine`` naming every rule it broke;
``fail`` stops the job naming the rule, the batch and a sample row. Counts per batch and
rule go to ``ops_quality``, so ``SELECT rule, sum(quarantined) FROM ops_quality WHERE
checked_at > now() - INTERVAL 7 DAYS GROUP BY rule`` says which rule failed most.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from lakehouse.datasets import Rule
from lakehouse.errors import QualityError
from lakehouse.sources.base import ERROR, RAW, RECORD
from lakehouse.sources.native import SOURCE_FILE
from lakehouse.tables import table

BROKEN = "_rules"
BATCH = "_ingest_batch"


@dataclass(frozen=True)
class RuleCount:
    """How one rule fared on one batch."""

    rule: str
    action: str
    expr: str
    checked: int
    passed: int
    warned: int
    quarantined: int
    failed: int

    def row(self) -> tuple:
        """The counts as a ``quality_rows`` stat."""
        return (self.rule, self.action, self.expr, self.checked, self.passed, self.warned,
                self.quarantined, self.failed)


def _broke(rule: Rule) -> F.Column:
    return ~F.coalesce(F.expr(rule.expr).cast("boolean"), F.lit(False))


def apply_rules(df: DataFrame, rules: Sequence[Rule]) -> DataFrame:
    """Add ``_rules`` (every rule the row broke) and ``_error`` (the quarantine reason).

    ``_error`` is set only when the row broke a ``quarantine`` or ``fail`` rule; a row
    that broke only ``warn`` rules is kept.
    """
    broken = F.array_compact(F.array(*[F.when(_broke(r), F.lit(r.name)) for r in rules])) \
        if rules else F.array().cast("array<string>")
    blocking = [r.name for r in rules if r.on_fail != "warn"]
    out = df.withColumn(BROKEN, broken)
    stops = F.filter(F.col(BROKEN), lambda n: n.isin(blocking)) if blocking else None
    reason = (F.when(F.size(stops) > 0, F.concat(F.lit("broke rule(s): "),
                                                  F.array_join(F.col(BROKEN), ", ")))
              if stops is not None else F.lit(None))
    return out.withColumn(ERROR, reason.cast("string"))


@dataclass(frozen=True)
class BatchCount:
    """How one ingest batch fared: rows checked, rows quarantined, and each rule's counts."""

    batch: str
    rows: int
    rejected: int
    rules: tuple[RuleCount, ...]


def count_batches(checked: DataFrame, rules: Sequence[Rule]) -> list[BatchCount]:
    """Per ingest batch: rows, rows rejected, and per rule the counts (one pass).

    Args:
        checked: rows from :func:`apply_rules` with their ``_ingest_batch``.
        rules: the rules they were checked against.

    Returns:
        One count per batch that has rows, in batch order.
    """
    rows = checked.groupBy(BATCH).agg(*_count_columns(rules)).collect()
    return [_batch_count(row[BATCH], row, rules, "")
            for row in sorted(rows, key=lambda r: r[BATCH])]


def batch_count_columns(rules: Sequence[Rule], batches: Sequence[str]) -> list[Column]:
    """Aggregates of :func:`count_batches` for known batches, in one row (an observation).

    Read them back with :func:`batch_counts_of`.
    """
    return [c for i, b in enumerate(batches)
            for c in _count_columns(rules, F.col(BATCH) == b, f"b{i}")]


def batch_counts_of(row: Mapping[str, Any], rules: Sequence[Rule], batches: Sequence[str]
                    ) -> list[BatchCount]:
    """The counts of :func:`batch_count_columns`' row, one per batch that has rows."""
    counts = [_batch_count(b, row, rules, f"b{i}") for i, b in enumerate(batches)]
    return [c for c in counts if c.rows]


def _count_columns(rules: Sequence[Rule], where: Column | None = None,
                   prefix: str = "") -> list[Column]:
    def only(value: Column) -> Column:
        return value if where is None else F.when(where, value)

    aggs = [F.count(only(F.lit(1))).alias(f"{prefix}_n"),
            F.count(only(F.col(ERROR))).alias(f"{prefix}_bad")]
    return aggs + [F.sum(only(F.array_contains(BROKEN, r.name).cast("long")))
                   .alias(f"{prefix}_{i}") for i, r in enumerate(rules)]


def _batch_count(batch: str, row: Mapping[str, Any] | Row, rules: Sequence[Rule],
                 prefix: str) -> BatchCount:
    total = int(row[f"{prefix}_n"])
    per_rule = []
    for i, rule in enumerate(rules):
        broke = int(row[f"{prefix}_{i}"] or 0)
        per_rule.append(RuleCount(
            rule.name, rule.on_fail, rule.expr, total, total - broke,
            broke if rule.on_fail == "warn" else 0,
            broke if rule.on_fail == "quarantine" else 0,
            broke if rule.on_fail == "fail" else 0))
    return BatchCount(batch, total, int(row[f"{prefix}_bad"]), tuple(per_rule))


def total_counts(batches: Sequence[BatchCount]) -> list[RuleCount]:
    """Each rule's counts summed over the batches."""
    totals: dict[str, RuleCount] = {}
    for batch in batches:
        for c in batch.rules:
            seen = totals.get(c.rule)
            totals[c.rule] = c if seen is None else RuleCount(
                c.rule, c.action, c.expr, seen.checked + c.checked, seen.passed + c.passed,
                seen.warned + c.warned, seen.quarantined + c.quarantined,
                seen.failed + c.failed)
    return list(totals.values())


def ingested_batches(spark: SparkSession, quality: str, dataset: str) -> set[str]:
    """The batches whose ingest completed (their ``ingest`` counts are its last write)."""
    rows = (spark.table(quality)
            .filter((F.col("dataset") == dataset) & (F.col("stage") == "ingest"))
            .select("batch").distinct().collect())
    return {r.batch for r in rows}


def raise_on_fail(checked: DataFrame, counts: Sequence[RuleCount], dataset: str,
                  batch: str) -> None:
    """Stop with QualityError if a ``fail`` rule was broken, naming rule, batch and a row."""
    for c in counts:
        if c.failed:
            sample = checked.filter(F.array_contains(BROKEN, c.rule)).select(RAW).first()
            raise QualityError(
                f"data set {dataset!r}, batch {batch!r}: rule {c.rule!r} ({c.expr}) failed on "
                f"{c.failed:,} of {c.checked:,} rows (on_fail: fail); for example "
                f"{sample[RAW] if sample else '?'}")


def _value(value: str | Column) -> Column:
    return value if isinstance(value, Column) else F.lit(value)


def quarantine_rows(rejected: DataFrame, source: str | Column, target: str, stage: str,
                    batch: str | Column, now: dt.datetime,
                    declaration: str | Column | None = None) -> DataFrame:
    """Shape rejected rows (``_error``, ``_raw``, ``_record``, ``_source_file``, ``_rules``).

    ``source`` and ``batch`` are the data set and the ingest batch: names, or columns
    holding each row's own. ``declaration`` is the fingerprint of the silver declaration
    whose rules rejected the rows (None at ingest).
    """
    return rejected.select(
        _value(source).alias("source"), F.lit(target).alias("target_table"),
        F.lit(stage).alias("stage"), _value(batch).alias("batch"),
        F.regexp_replace(SOURCE_FILE, "^file:(//)?", "").alias("source_file"),
        F.col(RECORD).alias("record"),
        F.col(ERROR).alias("reason"), F.col(RAW).alias("raw"),
        F.lit(now).cast("timestamp").alias("quarantined_at"),
        F.col(BROKEN).cast("array<string>").alias("rules"),
        _value(declaration).cast("string").alias("declaration"),
    )


def quality_rows(spark: SparkSession, dataset: str, target: str, stage: str, batch: str,
                 stats: Sequence[tuple], now: dt.datetime,
                 declaration: str | None = None) -> DataFrame:
    """Rows of ``ops_quality``: one per rule, from ``RuleCount.row()``-shaped tuples."""
    rows = [(dataset, target, stage, batch, *s, now, declaration) for s in stats]
    return spark.createDataFrame(rows, table("ops.quality").schema)
