"""Files Spark reads itself (CSV, JSON lines, Parquet, text, binary files) and tables.

Spark's readers split large files across tasks. CSV and JSON are read in PERMISSIVE
mode with a corrupt-record column, so a malformed record becomes a row naming its raw
text instead of failing the job. Spark's CSV reader compares a record's field count
with the schema only when every column is parsed, so the ingest job always reads
every column (and caches the result before splitting good from bad rows). Checks
Spark does not make are added here: a declared ``NOT NULL`` column that is empty
rejects the record. Why a record was rejected is worked out on executors, for the
rejected records only (:func:`explain_records`).

Every reader returns the data columns plus ``_record`` (increasing with the record's
position in the read), ``_error`` (null, or a marker that the record is rejected),
``_raw`` and ``_source_file``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from lakehouse.datasets import SourceSpec
from lakehouse.errors import SchemaMismatchError
from lakehouse.sources.base import ERROR, RAW, RECORD

CORRUPT = "_corrupt_record"
SOURCE_FILE = "_source_file"
MALFORMED = "malformed"
TEXT_FIELDS = [StructField("value", StringType(), True)]


def read_files(spark: SparkSession, spec: SourceSpec, fields: Sequence[StructField],
               paths: Sequence[str]) -> DataFrame:
    """Read files with Spark's own reader into the bronze columns plus status columns.

    Args:
        spark: the session.
        spec: the entry's source (format, options).
        fields: the bronze data columns.
        paths: the files to read.

    Returns:
        Data columns, ``_record``, ``_error``, ``_raw``, ``_source_file``.
    """
    names = [f.name for f in fields]
    if spec.format in ("csv", "json"):
        schema = StructType([*(StructField(f.name, f.dataType, True) for f in fields),
                             StructField(CORRUPT, StringType(), True)])
        df = (spark.read.format(spec.format).schema(schema).options(**spec.options)
              .option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT)
              .load(list(paths)))
        corrupt = F.col(CORRUPT)
    else:
        df = spark.read.format(spec.format).options(**spec.options).load(list(paths))
        if spec.format == "text":
            df = df.filter(F.length(F.trim("value")) > 0)    # blank lines are not records
        check_columns(df.schema, fields, f"files of format {spec.format}")
        corrupt = F.lit(None).cast("string")
    # input_file_name() costs less per row than _metadata.file_path (measured here).
    return with_status(df, fields, corrupt, F.input_file_name()).select(
        *names, RECORD, ERROR, RAW, SOURCE_FILE)


def read_table(spark: SparkSession, spec: SourceSpec, fields: Sequence[StructField],
               version: int | None, latest: bool = False) -> DataFrame:
    """Read an existing table (catalog name or Delta path), optionally at a version.

    With ``latest``, the current rows are read and labelled with ``version`` (the
    caller knows they are the same rows: its data version; older files may be vacuumed).
    """
    reader = spark.read.format("delta")
    if version is not None and not latest:
        reader = reader.option("versionAsOf", version)
    df = reader.load(spec.delta) if spec.delta else reader.table(spec.table)
    check_columns(df.schema, fields, f"table {spec.table or spec.delta}")
    where = spec.table or spec.delta
    label = f"{where}@v{version}" if version is not None else where
    return with_status(df, fields, F.lit(None).cast("string"), F.lit(label)).select(
        *[f.name for f in fields], RECORD, ERROR, RAW, SOURCE_FILE)


def with_status(df: DataFrame, fields: Sequence[StructField], corrupt: Column,
                source_file: Column, record: Column | None = None,
                raw: Column | None = None) -> DataFrame:
    """Add ``_record``, ``_error``, ``_raw`` and ``_source_file`` to rows as read.

    ``record``: the records' own numbers (a Kafka offset); default: increasing with
    each record's position in the read. ``raw``: each record's text as it came (a Kafka
    value); default: the corrupt record's text, else the columns as JSON.
    """
    missing = [F.when(F.col(f.name).isNull(), F.lit(f"column {f.name!r}: value is missing"))
               for f in fields if not f.nullable]
    error = F.when(corrupt.isNotNull(), F.lit(MALFORMED))
    for check in missing:
        error = F.coalesce(error, check)
    if raw is None:
        raw = F.coalesce(corrupt, F.to_json(F.struct(*[F.col(f.name) for f in fields])))
    return df.select(
        *[F.col(f.name) for f in fields],
        (F.monotonically_increasing_id() if record is None else record).alias(RECORD),
        error.alias(ERROR),
        F.when(error.isNotNull(), raw).alias(RAW),
        source_file.alias(SOURCE_FILE),
    )


def reject_unreadable_images(rows: DataFrame) -> DataFrame:
    """Reject ``binaryFile`` rows whose ``content`` is not an image Pillow can read.

    For an image data set read as files: a stray text file in the folder is quarantined
    at ingest with the reason, its raw text being the file's path, length and time.
    """
    problem = F.pandas_udf(_image_problems, StringType())(F.col("content"))
    described = F.to_json(F.struct("path", "length", "modificationTime"))
    return (rows.withColumn("_image_problem", problem)
            .withColumn(RAW, F.when(F.col(ERROR).isNull() & F.col("_image_problem").isNotNull(),
                                    described).otherwise(F.col(RAW)))
            .withColumn(ERROR, F.coalesce(F.col(ERROR), F.col("_image_problem")))
            .drop("_image_problem"))


def _image_problems(contents: pd.Series) -> pd.Series:
    """Executor side: why each file is not an image (None for the images)."""
    from PIL import Image

    def problem(data: bytes | None) -> str | None:
        if data is None:
            return None
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
            return None
        except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for bad bytes
            return f"not an image Pillow can read: {str(exc).split(' <')[0]}"

    return contents.map(problem)


def check_columns(actual: StructType, fields: Sequence[StructField], what: str) -> None:
    """Raise SchemaMismatchError unless ``actual`` has every declared column and type."""
    have = {f.name: f.dataType for f in actual.fields}
    for f in fields:
        if f.name not in have:
            raise SchemaMismatchError(f"{what}: column {f.name!r} is missing; "
                                      f"found {', '.join(have)}")
        if have[f.name] != f.dataType:
            raise SchemaMismatchError(f"{what}: column {f.name!r} is "
                                      f"{have[f.name].simpleString()}, the catalog declares "
                                      f"{f.dataType.simpleString()}")


def explain_column(spec: SourceSpec, fields: Sequence[StructField]) -> Column:
    """The quarantine reason of rejected rows, worked out on executors."""
    names = tuple(f.name for f in fields)
    kinds = tuple(f.dataType.simpleString() for f in fields)
    fmt, options = spec.format, dict(spec.options)

    def explain(raw: pd.Series, error: pd.Series, nulls: pd.Series) -> pd.Series:
        return explain_records(fmt, options, names, kinds, raw, error, nulls)

    udf = F.pandas_udf(explain, StringType())
    return udf(F.col(RAW), F.col(ERROR), F.array(*[F.col(n).isNull() for n in names]))


def explain_records(fmt: str, options: dict[str, str], names: tuple[str, ...],
                    kinds: tuple[str, ...], raw: pd.Series, error: pd.Series,
                    nulls: pd.Series) -> pd.Series:
    """Executor side: why each rejected record was rejected.

    Args:
        fmt: ``csv`` or ``json`` (others keep their marker).
        options: the reader options (delimiter, quote, escape).
        names: the declared columns.
        kinds: their types.
        raw: each record's raw text.
        error: the marker set when reading.
        nulls: per record, which columns were read as null.

    Returns:
        One reason per record.
    """
    out = []
    for text, marker, null in zip(raw, error, nulls, strict=True):
        if marker != MALFORMED:
            out.append(marker)
        elif fmt == "csv":
            out.append(_why_csv(text, options, names, kinds, null))
        elif fmt == "json":
            out.append(_why_json(text, names, kinds, null))
        else:
            out.append("malformed record")
    return pd.Series(out, dtype=object)


def _why_csv(text: str, options: dict[str, str], names, kinds, null) -> str:
    sep = options.get("sep", options.get("delimiter", ","))
    quote = options.get("quote", '"') or None
    escape = options.get("escape", "\\")
    try:
        tokens = next(csv.reader([text], delimiter=sep[:1] or ",", quotechar=quote,
                                 escapechar=escape[:1] or None, strict=True), [])
    except csv.Error as exc:
        return f"malformed CSV record: {exc}"
    if len(tokens) != len(names):
        return f"expected {len(names)} fields, found {len(tokens)}"
    empty = {"", options.get("nullValue", "")}
    for name, kind, token, is_null in zip(names, kinds, tokens, null, strict=True):
        if is_null and token.strip() not in empty:
            return f"column {name!r}: {token[:60]!r} is not a valid {kind}"
    return "record does not match the schema"


def _why_json(text: str, names, kinds, null) -> str:
    try:
        record = json.loads(text)
    except ValueError as exc:
        return f"not valid JSON: {exc}"
    if not isinstance(record, dict):
        return "a JSON line must hold an object"
    for name, kind, is_null in zip(names, kinds, null, strict=True):
        if is_null and record.get(name) is not None:
            return f"column {name!r}: {json.dumps(record[name])[:60]} is not a valid {kind}"
    return "record does not match the schema"
