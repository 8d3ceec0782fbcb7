"""What a catalog entry means to Spark: its schemas, its tables, and a check of both.

:func:`check_datasets` runs before any job touches a data set (and as ``lakeforge
catalog check``): every DDL parses, every select and rule parses and names existing
columns, every path matches a file, every role names a silver column. All problems
are reported at once, each naming the data set, the key and the value.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.errors import AnalysisException, ParseException
from pyspark.sql import DataFrame, SparkSession
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
from lakehouse.declared import is_declared, parse_features
from lakehouse.errors import CatalogError, ConfigError, LakeforgeError, SourceError
from lakehouse.kinds import series_features, text_features
from lakehouse.landing import list_files
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


def bronze_fields(spark: SparkSession, entry: Dataset) -> list[StructField]:
    """The bronze data columns: the declared DDL, else what the format or table holds."""
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
    files = [f.path for f in list_files(spark, entry)]
    return list(spark.read.format(spec.format).options(**spec.options).load(files).schema)


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


KIND_SETTINGS = {"series": series_features, "text": text_features}


def check_dataset(spark: SparkSession, entry: Dataset) -> list[str]:
    """Every problem of one entry that needs Spark to see; empty when it is usable."""
    where = f"datasets.{entry.name}"
    spec = entry.source
    problems: list[str] = []
    if spec.parser and spec.parser not in PARSERS:
        problems.append(f"{where}.source.parser: {spec.parser!r} is not a parser; known: "
                        f"{', '.join(PARSERS)}")
    if spec.kind in ("files", "parser"):
        try:
            list_files(spark, entry)
        except LakeforgeError as exc:
            problems.append(f"{where}.source.files: {exc}")
            if not spec.schema:
                return problems
    try:
        bronze = bronze_fields(spark, entry)
    except (ParseException, AnalysisException, LakeforgeError) as exc:
        key = "schema" if spec.schema else ("table" if spec.kind == "table" else "files")
        value = spec.schema or spec.table or spec.delta
        problems.append(f"{where}.source.{key}: {value!r} cannot be used: {_first_line(exc)}")
        return problems
    silver = _check_select(spark, entry, bronze, problems)
    if silver is None:
        return problems
    columns = {f.name for f in silver}
    for key in entry.silver.keys:
        if key not in columns:
            problems.append(f"{where}.silver.keys: {key!r} is not a silver column; "
                            f"columns: {', '.join(sorted(columns))}")
    empty = spark.createDataFrame([], StructType(silver))
    for i, rule in enumerate(entry.silver.rules):
        try:
            empty.select(F.expr(rule.expr).cast("boolean")).schema  # noqa: B018 - analyses
        except (ParseException, AnalysisException) as exc:
            problems.append(f"{where}.silver.rules[{i}].expr: {rule.expr!r} (rule "
                            f"{rule.name!r}) is not a SQL boolean over the silver columns: "
                            f"{_first_line(exc)}")
    for role, column in entry.role_columns():
        if column not in columns:
            problems.append(f"{where}.roles.{role}: {column!r} is not a silver column; "
                            f"columns: {', '.join(sorted(columns))}")
    if is_declared(entry):
        for name, view in entry.feature_sets().items():
            problems += _check_features(view, empty, entry.features_key(name))
    elif entry.kind in KIND_SETTINGS:
        try:
            KIND_SETTINGS[entry.kind](entry)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def _check_features(entry: Dataset, empty: DataFrame, where: str) -> list[str]:
    """A declared tabular feature set: its keys, and its SQL over the silver columns."""
    try:
        spec = parse_features(entry, where)
    except ConfigError as exc:
        return str(exc).split("\n  ")[1:]
    problems = []
    checks = [("label", spec.label), *((f"numeric.{f.name}", f.expr) for f in spec.numeric),
              *((f"categorical.{f.name}", f.expr) for f in spec.categorical)]
    if spec.where:
        checks.append(("where", f"CAST(({spec.where}) AS BOOLEAN)"))
    if spec.split.by in ("column", "time"):
        checks.append(("split.column", f"`{spec.split.column}`"))
    for key, expr in checks:
        try:
            empty.select(F.expr(expr)).schema  # noqa: B018 - analyses
        except (ParseException, AnalysisException) as exc:
            problems.append(f"{where}.{key}: {expr!r} is not SQL over the silver columns: "
                            f"{_first_line(exc)}")
    return problems


def _check_select(spark: SparkSession, entry: Dataset, bronze: list[StructField],
                  problems: list[str]) -> list[StructField] | None:
    try:
        return silver_fields(spark, entry, bronze)
    except (ParseException, AnalysisException) as exc:
        problems.append(f"datasets.{entry.name}.silver.select: {list(entry.silver.select)!r} "
                        f"does not fit the bronze columns: {_first_line(exc)}")
        return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def check_datasets(spark: SparkSession, cfg: Config, names: Sequence[str]) -> list[Dataset]:
    """Resolve and check the named entries (or ``all``) before a job touches them.

    Returns:
        The entries, in order.

    Raises:
        CatalogError: listing every problem, each naming data set, key and value.
    """
    entries = resolve_datasets(cfg, names)
    problems = [p for e in entries for p in check_dataset(spark, e)]
    if problems:
        raise CatalogError("the data catalog has problems:\n  " + "\n  ".join(problems))
    return entries
