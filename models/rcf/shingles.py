"""Shingling in Spark: consecutive windows of a stream as points for the forest.

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

import numpy as np
from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, IntegerType, LongType, StringType

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.errors import ConfigError, SchemaMismatchError, SourceError
from lakehouse.features import FeatureSet
from lakehouse.tables import TRAINING_TABLE_PROPERTIES, TableSpec, _f, layer_table, register

log = logging.getLogger(__name__)

SHINGLE_FIELDS = (
    _f("row_id", LongType(), False),
    _f("split", StringType(), False),
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


def build_shingles(spark: SparkSession, cfg: Config, stream: str,
                   params: dict) -> FeatureSet:
    """Build ``gold.shingles_<stream>`` from ``silver.streams`` (a no-op if already built).

    Args:
        spark: the session.
        cfg: configuration.
        stream: stream id in ``silver.streams`` (``mitdb``, ``kdd_tsad_135``).
        params: ``shingle_size`` (default 8).

    Returns:
        The gold table with its version and row count.

    Raises:
        ConfigError: a shingle size below 1 or larger than a part of the stream.
        SourceError: the stream is not in ``silver.streams``.
        SchemaMismatchError: the stream's values are not numeric.
    """
    from models.rcf import FAMILY

    size = int(params.get("shingle_size", FAMILY.defaults["shingle_size"]))
    if size < 1:
        raise ConfigError(f"shingle_size must be at least 1, got {size}")
    db = cfg.catalog.database
    silver_name = layer_table(db, "silver", "streams")
    pinned = delta.snapshot(spark, silver_name)
    silver_version = pinned.data_version
    silver = delta.read_version(spark, silver_name, pinned.version)
    kind = dict(silver.dtypes).get("value")
    if kind not in ("double", "float", "int", "bigint"):
        raise SchemaMismatchError(f"{silver_name}.value is {kind}, expected a numeric type")
    points = silver.filter(F.col("stream_id") == stream)
    parts = {r["split"]: r["n"] for r in points.groupBy("split").agg(F.count("*").alias("n"))
             .collect()}
    if not parts:
        raise SourceError(f"stream {stream!r} has no points in {silver_name}; ingest and "
                          f"curate it first")
    short = {p: n for p, n in parts.items() if n < size}
    if short:
        raise ConfigError(f"shingle_size {size} is larger than stream {stream!r} "
                          f"({', '.join(f'{p}: {n} points' for p, n in sorted(short.items()))})")
    window = Window.partitionBy("split").orderBy("t").rowsBetween(-(size - 1), 0)
    shingled = (points
                .withColumn("shingle", F.collect_list(F.col("value").cast("double")).over(window))
                .withColumn("t_start", F.first("t").over(window))
                .filter(F.size("shingle") == size)
                .select(F.xxhash64("stream_id", "split", "t").alias("row_id"),
                        F.when(F.col("split") == "train", "train").otherwise("test").alias("split"),
                        "stream_id", "t", "t_start", "shingle", "label"))
    spec = shingles_spec(stream)
    gold = delta.ensure_table(spark, spec, db)
    partitions = max(4, 2 * cfg.train.num_proc)
    writer = shingled.repartition(partitions, "split", "row_id").write.format("delta")
    current = spark.table(gold).select(F.size("shingle").alias("n")).first()
    if current is None or current["n"] == size:
        # Built from this silver version already (with this size): Delta skips the write.
        writer = (writer.option("txnAppId", f"lakeforge/features/shingles/{stream}")
                  .option("txnVersion", silver_version))
    else:
        log.info("%s: shingle size changes from %d to %d; rewriting", gold, current["n"], size)
    writer.mode("overwrite").save(delta.table_location(spark, gold))
    built = delta.snapshot(spark, gold)
    version = built.data_version
    rows = delta.read_version(spark, gold, built.version).count()
    log.info("%s: %s v%d holds %d shingles of size %d (from %s v%d)",
             stream, gold, version, rows, size, silver_name, silver_version)
    return FeatureSet(stream, gold, version, rows, size, 0,
                      tuple(f"lag{size - 1 - i}" for i in range(size)))
