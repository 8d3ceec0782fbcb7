"""What a catalog entry means to Spark: its schemas, its tables, and a check of both.

:func:`check_datasets` runs before any job touches a data set (and as ``lakeforge
catalog check``): every DDL parses, every select and rule parses and names existing
columns, every path matches a file, every role names a silver column. All problems
are reported at once, each naming the data set, the key and the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.errors import AnalysisException, ParseException
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BinaryType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse.config import Config
from lakehouse.datasets import Dataset
from lakehouse.errors import CatalogError, LakeforgeError, SourceError
from lakehouse.featuresets import kind
from lakehouse.featuresets.contract import first_line
from lakehouse.landing import FileInfo, list_files
from lakehouse.problems import Problems
from lakehouse.sources import PARSERS
from lakehouse.sources.native import TEXT_FIELDS
from lakehouse.tables import BRONZE_LINEAGE, LINEAGE_NAMES, TableSpec, dataset_specs

BINARY_FIELDS = [
    StructField("path", StringType(), True),
    StructField("modificationTime", TimestampType(), True),
    StructField("length", LongType(), True),
    StructField("content", BinaryType(), True),
]


def resolve_datasets(cfg: Config, names: Sequence[str]) -> list[Dataset]:
    """Entry names (or ``all``) to catalog entries, failing on unknown names."""
    if not names or list(names) == ["all"]:
        return list(cfg.datasets.values())
    unknown = [n for n in names if n not in cfg.datasets]
    if unknown:
        raise SourceError(f"unknown data set {unknown[0]!r}; the catalog has: "
                          f"{', '.join(cfg.datasets) or 'nothing'}")
    return [cfg.datasets[n] for n in names]


def parse_ddl(spark: SparkSession, ddl: str) -> list[StructField]:
    """A DDL column list (``a INT NOT NULL, b STRING``) as StructFields."""
    schema = spark.createDataFrame([], ddl).schema  # parsed by Spark's own DDL parser
    nullable = _not_null_columns(ddl)
    return [StructField(f.name, f.dataType, f.name not in nullable) for f in schema.fields]


def _not_null_columns(ddl: str) -> set[str]:
    depth, start, parts = 0, 0, []
    for i, ch in enumerate(ddl):
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(ddl[start:i])
            start = i + 1
    parts.append(ddl[start:])
    return {p.split()[0].strip("`") for p in parts
            if p.strip() and p.upper().split()[-2:] == ["NOT", "NULL"]}


def bronze_fields(spark: SparkSession, entry: Dataset,
                  files: Sequence[FileInfo] | None = None) -> list[StructField]:
    """The bronze data columns: the declared DDL, else what the format or table holds.

    ``files``: the entry's files when already listed (else they are listed here, if the
    schema has to be read from them).
    """
    spec = entry.source
    if spec.schema:
        return parse_ddl(spark, spec.schema)
    if spec.format == "text":
        return list(TEXT_FIELDS)
    if spec.format == "binaryFile":
        return list(BINARY_FIELDS)
    if spec.kind == "table":
        reader = spark.read.format("delta")
        if spec.version is not None:
            reader = reader.option("versionAsOf", spec.version)
        df = reader.load(spec.delta) if spec.delta else reader.table(spec.table)
        return list(df.schema.fields)
    paths = [f.path for f in (files if files is not None else list_files(spark, entry))]
    return list(spark.read.format(spec.format).options(**spec.options).load(paths).schema)


def silver_fields(spark: SparkSession, entry: Dataset,
                  bronze: Sequence[StructField]) -> list[StructField]:
    """The silver columns: the entry's select over bronze (bronze's columns without one).

    The select sees bronze's lineage columns too, so a silver column may be derived from
    them (``_source_file AS path``); a lineage column itself is carried beside the data
    and is not a silver column under its own name.
    """
    if not entry.silver.select:
        return list(bronze)
    empty = spark.createDataFrame([], StructType([*bronze, *BRONZE_LINEAGE]))
    return [f for f in empty.selectExpr(*entry.silver.select).schema.fields
            if f.name not in LINEAGE_NAMES]


def dataset_tables(spark: SparkSession, entry: Dataset) -> tuple[TableSpec, TableSpec]:
    """The bronze and silver specs of an entry (schemas resolved with Spark)."""
    bronze = bronze_fields(spark, entry)
    return dataset_specs(entry, bronze, silver_fields(spark, entry, bronze))


@dataclass(frozen=True)
class DatasetPlan:
    """A data set as Spark sees it, worked out once per job by the catalog check.

    Ingest and curate take it from :func:`check_datasets` instead of listing files and
    resolving schemas again.

    Attributes:
        entry: the catalog entry.
        files: its files as listed when it was checked (None for a table source).
        bronze: the bronze table's spec.
        silver: the silver table's spec.
    """

    entry: Dataset
    files: tuple[FileInfo, ...] | None
    bronze: TableSpec
    silver: TableSpec


def plan_dataset(spark: SparkSession, entry: Dataset) -> DatasetPlan:
    """Check one entry and return its plan.

    Raises:
        CatalogError: listing every problem of the entry.
    """
    problems = Problems()
    plan = _check_entry(spark, entry, problems)
    problems.raise_if_any(CatalogError, "the data catalog has problems")
    assert plan is not None
    return plan


def check_dataset(spark: SparkSession, entry: Dataset, problems: Problems | None = None
                  ) -> list[str]:
    """Every problem of one entry that needs Spark to see; empty when it is usable.

    Args:
        spark: the session.
        entry: the catalog entry.
        problems: where to add them (default: a new collection).

    Returns:
        The entry's problems, each naming the key and what was expected.
    """
    found = Problems()
    _check_entry(spark, entry, found)
    if problems is not None:
        problems.extend(found)
    return found.items


def _check_entry(spark: SparkSession, entry: Dataset,
                 problems: Problems) -> DatasetPlan | None:
    """Add the entry's problems; its plan when it has none."""
    before = len(problems.items)
    where = f"datasets.{entry.name}"
    spec = entry.source
    files = None
    if spec.parser and spec.parser not in PARSERS:
        problems.add(f"{where}.source.parser", f"{spec.parser!r} is not a parser; known: "
                                               f"{', '.join(PARSERS)}")
    if spec.kind in ("files", "parser"):
        try:
            files = tuple(list_files(spark, entry))
        except LakeforgeError as exc:
            problems.add(f"{where}.source.files", str(exc))
            if not spec.schema:
                return None
    try:
        bronze = bronze_fields(spark, entry, files)
    except (ParseException, AnalysisException, LakeforgeError) as exc:
        key = "schema" if spec.schema else ("table" if spec.kind == "table" else "files")
        value = spec.schema or spec.table or spec.delta
        problems.add(f"{where}.source.{key}", f"{value!r} cannot be used: {first_line(exc)}")
        return None
    try:
        silver = silver_fields(spark, entry, bronze)
    except (ParseException, AnalysisException) as exc:
        problems.add(f"{where}.silver.select", f"{list(entry.silver.select)!r} does not fit "
                                               f"the bronze columns: {first_line(exc)}")
        return None
    columns = {f.name for f in silver}
    for key in entry.silver.keys:
        if key not in columns:
            problems.add(f"{where}.silver.keys", f"{key!r} is not a silver column; "
                                                 f"columns: {', '.join(sorted(columns))}")
    empty = spark.createDataFrame([], StructType(silver))
    for i, rule in enumerate(entry.silver.rules):
        try:
            empty.select(F.expr(rule.expr).cast("boolean")).schema  # noqa: B018 - analyses
        except (ParseException, AnalysisException) as exc:
            problems.add(f"{where}.silver.rules[{i}].expr",
                         f"{rule.expr!r} (rule {rule.name!r}) is not a SQL boolean over the "
                         f"silver columns: {first_line(exc)}")
    for role, column in entry.role_columns():
        if column not in columns:
            problems.add(f"{where}.roles.{role}", f"{column!r} is not a silver column; "
                                                  f"columns: {', '.join(sorted(columns))}")
    if entry.kind:
        kind(entry.kind).check(entry, empty, problems)
    if len(problems.items) > before:
        return None
    return DatasetPlan(entry, files, *dataset_specs(entry, bronze, silver))


def check_datasets(spark: SparkSession, cfg: Config,
                   names: Sequence[str]) -> list[DatasetPlan]:
    """Resolve and check the named entries (or ``all``) before a job touches them.

    Returns:
        Each entry's plan (its files and tables), in order.

    Raises:
        CatalogError: listing every problem, each naming data set, key and value.
    """
    entries = resolve_datasets(cfg, names)
    problems = Problems()
    plans = [_check_entry(spark, entry, problems) for entry in entries]
    problems.raise_if_any(CatalogError, "the data catalog has problems")
    return [p for p in plans if p is not None]
