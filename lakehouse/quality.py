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
from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.datasets import Rule
from lakehouse.errors import QualityError
from lakehouse.sources.base import ERROR, RAW, RECORD
from lakehouse.sources.native import SOURCE_FILE
from lakehouse.tables import table

BROKEN = "_rules"


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


def count_rules(checked: DataFrame, rules: Sequence[Rule]) -> list[RuleCount]:
    """Per rule: rows checked, passed, and warned / quarantined / failed (one pass)."""
    if not rules:
        return []
    aggs = [F.count(F.lit(1)).alias("_n")]
    aggs += [F.sum(F.array_contains(BROKEN, r.name).cast("long")).alias(f"_{i}")
             for i, r in enumerate(rules)]
    row = checked.agg(*aggs).first()
    total = int(row["_n"])
    counts = []
    for i, rule in enumerate(rules):
        broke = int(row[f"_{i}"] or 0)
        counts.append(RuleCount(
            rule.name, rule.on_fail, rule.expr, total, total - broke,
            broke if rule.on_fail == "warn" else 0,
            broke if rule.on_fail == "quarantine" else 0,
            broke if rule.on_fail == "fail" else 0))
    return counts


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


def quarantine_rows(rejected: DataFrame, source: str, target: str, stage: str,
                    batch: str | Column, now: dt.datetime) -> DataFrame:
    """Shape rejected rows (``_error``, ``_raw``, ``_record``, ``_source_file``, ``_rules``).

    ``batch`` is the ingest batch: a name, or a column holding each row's own.
    """
    return rejected.select(
        F.lit(source).alias("source"), F.lit(target).alias("target_table"),
        F.lit(stage).alias("stage"),
        (batch if isinstance(batch, Column) else F.lit(batch)).alias("batch"),
        F.regexp_replace(SOURCE_FILE, "^file:(//)?", "").alias("source_file"),
        F.col(RECORD).alias("record"),
        F.col(ERROR).alias("reason"), F.col(RAW).alias("raw"),
        F.lit(now).cast("timestamp").alias("quarantined_at"),
        F.col(BROKEN).cast("array<string>").alias("rules"),
    )


def quality_rows(spark: SparkSession, dataset: str, target: str, stage: str, batch: str,
                 stats: Sequence[tuple], now: dt.datetime) -> DataFrame:
    """Rows of ``ops_quality``: one per rule, from ``RuleCount.row()``-shaped tuples."""
    rows = [(dataset, target, stage, batch, *s, now) for s in stats]
    return spark.createDataFrame(rows, table("ops.quality").schema)
