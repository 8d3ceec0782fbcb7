"""The stream kind: shingling in Spark, consecutive windows of a stream as points.

A shingle of size ``s`` ending at time ``t`` holds the stream's values at the
``s`` consecutive positions up to ``t``; each keeps its stream, split, start and
end time and the label of its last point (:func:`window_labels` turns those into
"the shingle holds a labelled point", what detectors are judged on). The gold table
``gold.shingles_<stream>`` is partitioned by split (``train`` from a stream's
training part, ``test`` from its test part or the whole stream when it has no
parts) so Horovod ranks can read shards of it through Petastorm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, IntegerType, LongType, StringType

from lakehouse.config import Config
from lakehouse.datasets import Dataset
from lakehouse.errors import ConfigError, SchemaMismatchError, SourceError
from lakehouse.featuresets.contract import (
    ROW_FIELDS,
    FeatureSet,
    Kind,
    build_once,
    silver_rows,
)
from lakehouse.problems import SettingError
from lakehouse.tables import TRAINING_TABLE_PROPERTIES, TableSpec, _f, register

log = logging.getLogger(__name__)
_NUMERIC = ("double", "float", "int", "bigint", "smallint", "tinyint")

SHINGLE_FIELDS = (
    *ROW_FIELDS,
    _f("stream_id", StringType(), False),
    _f("t", LongType(), False),
    _f("t_start", LongType(), False),
    _f("shingle", ArrayType(DoubleType())),
    _f("label", IntegerType()),
)


def window_labels(t: np.ndarray, label: np.ndarray, size: int) -> np.ndarray:
    """1 where a shingle holds a labelled point, from the labels of shingles' last points.

    A spike at ``u`` lies in the ``size`` shingles ending at ``u .. u + size - 1``, and
    a detector sees it in each of them, so each counts as anomalous. The label of
    point ``u`` is that of the shingle ending at ``u``; points before a split's first
    shingle have none and count as normal.

    Args:
        t: end times of one split's shingles, ascending.
        label: label of each shingle's last point.
        size: shingle size.

    Returns:
        (n,) int array of 0/1.
    """
    t, label = np.asarray(t), np.asarray(label)
    last = np.maximum.accumulate(np.where(label > 0, np.arange(len(t)), -1))
    return ((last >= 0) & (t[np.maximum(last, 0)] > t - size)).astype(int)


def shingles_spec(stream: str) -> TableSpec:
    """The registry entry of ``gold.shingles_<stream>`` (registered on first use)."""
    return register(TableSpec(
        "gold", f"shingles_{stream}", SHINGLE_FIELDS, ("stream_id", "split", "t"),
        partition_by=("split",), properties=TRAINING_TABLE_PROPERTIES,
        comment=f"{stream} stream as shingles for Random Cut Forest"))


def stream_points(rows: DataFrame, entry: Dataset) -> DataFrame:
    """A stream data set's silver rows as ``stream_id``, ``split``, ``t``, ``values``, ``label``.

    The roles of the catalog entry say which column is which: ``order`` (a number, a
    date or a timestamp: ``t`` is the number itself, days since 1970 or seconds since
    1970), ``values`` (one or more numeric columns), and the optional ``stream_id``
    (default: the data set's name), ``split`` (``train`` rows fit the forest; without
    one the whole stream does) and ``label`` (1 marks an anomaly; evaluation only).

    Raises:
        SchemaMismatchError: a role names a missing column or one of the wrong type.
    """
    types = dict(rows.dtypes)
    roles = dict(entry.roles)
    values = value_columns(entry)
    named = [("order", roles["order"]), *(("values", v) for v in values),
             *((r, roles[r]) for r in ("stream_id", "split", "label") if roles.get(r))]
    for role, column in named:
        if column not in types:
            raise SchemaMismatchError(f"data set {entry.name!r}: role {role} names column "
                                      f"{column!r}, which silver does not have; columns: "
                                      f"{', '.join(sorted(types))}")
    for column in values:
        if types[column] not in _NUMERIC and not types[column].startswith("decimal"):
            raise SchemaMismatchError(f"data set {entry.name!r}: value column {column!r} is "
                                      f"{types[column]}, expected a number")
    order = F.col(roles["order"])
    t = {"timestamp": F.unix_seconds(order),
         "timestamp_ntz": F.unix_seconds(order.cast("timestamp")),
         "date": F.unix_date(order)}.get(types[roles["order"]], order).cast("long")
    split = F.col(roles["split"]).cast("string") if roles.get("split") else F.lit("test")
    return rows.select(
        (F.col(roles["stream_id"]).cast("string") if roles.get("stream_id")
         else F.lit(entry.name)).alias("stream_id"),
        F.when(split == "train", "train").otherwise("test").alias("split"),
        t.alias("t"),
        F.array(*(F.col(v).cast("double") for v in values)).alias("values"),
        (F.col(roles["label"]).cast("int") if roles.get("label")
         else F.lit(None).cast("int")).alias("label"))


@dataclass(frozen=True)
class StreamSettings:
    """How a stream data set is shingled (``features:`` of a stream entry).

    Attributes:
        shingle_size: consecutive points per shingle (a model must be trained with it).
    """

    shingle_size: int = 8

    def __post_init__(self) -> None:
        if self.shingle_size < 1:
            raise SettingError("shingle_size", f"{self.shingle_size} is not a whole number >= 1")


class StreamKind(Kind):
    """Stream data sets: ordered points of one or more values per ``stream_id``.

    Nothing is fitted: a shingle is the stream's raw values. The gold table
    ``gold_shingles_<stream>`` holds ``row_id``, ``split``, ``stream_id``, ``t``,
    ``t_start``, ``shingle`` (ARRAY<DOUBLE>) and ``label``, partitioned by ``split``.
    """

    name = "stream"
    settings = StreamSettings
    params = ("shingle_size",)

    def gold_spec(self, name: str, settings: StreamSettings) -> TableSpec:
        """``gold_shingles_<stream>``."""
        return shingles_spec(name)

    def build(self, spark: SparkSession, cfg: Config, name: str, entry: Dataset | None,
              settings: StreamSettings, partitions: int | None) -> FeatureSet:
        """Shingle every stream (``stream_id``) and split on its own.

        With several value columns a shingle holds ``shingle_size`` points of all of
        them, oldest first (``[v1(t-s+1), v2(t-s+1), ..., v1(t), v2(t)]``).

        Raises:
            ConfigError: a shingle size larger than a part of the stream.
            SourceError: no points in silver yet.
            SchemaMismatchError: a role names a missing or non-numeric column.
        """
        size = settings.shingle_size
        rows, pinned = silver_rows(spark, cfg, entry)
        points = stream_points(rows, entry).filter(
            F.forall("values", lambda v: v.isNotNull() & ~F.isnan(v)))
        key = {"silver_version": pinned.data_version, "shingle_size": size,
               "roles": {r: entry.roles[r] for r in sorted(entry.roles)}}

        def shingles() -> DataFrame:
            parts = {(r["stream_id"], r["split"]): r["n"] for r in
                     points.groupBy("stream_id", "split").agg(F.count("*").alias("n")).collect()}
            if not parts:
                raise SourceError(f"stream data set {name!r} has no points in {pinned.table}; "
                                  f"ingest and curate it first")
            short = {p: n for p, n in parts.items() if n < size}
            if short:
                shown = ", ".join(f"{s} {p}: {n} points" for (s, p), n in sorted(short.items()))
                raise ConfigError(f"shingle_size {size} is larger than stream data set "
                                  f"{name!r} ({shown})")
            window = Window.partitionBy("stream_id", "split").orderBy("t") \
                .rowsBetween(-(size - 1), 0)
            return (points
                    .withColumn("shingle", F.flatten(F.collect_list("values").over(window)))
                    .withColumn("t_start", F.first("t").over(window))
                    .withColumn("n", F.count("t").over(window))
                    .filter(F.col("n") == size)
                    .select(F.xxhash64("stream_id", "split", "t").alias("row_id"), "split",
                            "stream_id", "t", "t_start", "shingle", "label"))

        build = build_once(spark, cfg, shingles_spec(name), key, shingles,
                           partitions=partitions)
        n_rows = build.rows(spark).count()
        log.info("%s: %s v%d holds %d shingles of %d points x %d values (from %s v%d)",
                 name, build.table, build.snapshot.data_version, n_rows, size,
                 channels_of(entry), pinned.table, pinned.data_version)
        return FeatureSet(name, build.table, build.snapshot.data_version, n_rows,
                          size * channels_of(entry), 0, shingle_names(entry, size))


def value_columns(entry: Dataset) -> list[str]:
    """The value columns a stream data set shingles (its ``values`` role)."""
    values = entry.roles["values"]
    return [values] if isinstance(values, str) else list(values)


def channels_of(entry: Dataset | None) -> int:
    """How many value columns a stream data set shingles (1 without a catalog entry)."""
    return 1 if entry is None else len(value_columns(entry))


def shingle_names(entry: Dataset, size: int) -> tuple[str, ...]:
    """Names of a shingle's positions, oldest first (``value_lag7`` .. ``value_lag0``)."""
    return tuple(f"{v}_lag{size - 1 - i}" for i in range(size) for v in value_columns(entry))


KIND = StreamKind()
