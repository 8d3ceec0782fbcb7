"""Gold feature tables for training: fixed-length float vectors plus a label and a split.

Every gold table has the same shape (``row_id``, ``split``, ``features``,
``label``), is partitioned by ``split`` (train / val / test) and keeps deletion
vectors and column mapping off, so a Delta snapshot's Parquet files are exactly
its rows and Petastorm can read them per Horovod rank. Features are not scaled
here: scaling is fitted on the training split when a model is trained and is
stored inside the model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, IntegerType, LongType, StringType

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.errors import SourceError
from lakehouse.tables import TRAINING_TABLE_PROPERTIES, TableSpec, _f, layer_table, register

log = logging.getLogger(__name__)
TAU = 2 * math.pi

GOLD_FIELDS = (
    _f("row_id", LongType(), False),
    _f("split", StringType(), False),
    _f("features", ArrayType(FloatType())),
    _f("label", IntegerType()),
)


@dataclass(frozen=True)
class FeatureSet:
    """A gold feature table as built."""

    name: str
    table: str
    version: int
    rows: int
    n_features: int
    n_classes: int
    feature_names: tuple[str, ...]


def gold_spec(name: str) -> TableSpec:
    """The registry entry of a gold feature table (registered on first use)."""
    return register(TableSpec(
        "gold", name, GOLD_FIELDS, ("row_id",), partition_by=("split",),
        properties=TRAINING_TABLE_PROPERTIES, comment=f"{name} features for training",
    ))


def assign_split(key: Column, val_pct: int = 15, test_pct: int = 15) -> Column:
    """A stable train/val/test split from a hash of the row key."""
    bucket = F.pmod(F.xxhash64(key, F.lit("lakeforge-split")), F.lit(100))
    return (F.when(bucket < test_pct, "test")
            .when(bucket < test_pct + val_pct, "val").otherwise("train"))


def _tabular(dataset: str) -> Callable[[SparkSession, Config], tuple[DataFrame, list[str], int]]:
    def build(spark: SparkSession, cfg: Config) -> tuple[DataFrame, list[str], int]:
        silver = spark.table(layer_table(cfg.catalog.database, "silver", dataset))
        df = silver.select(
            F.col("row_id"), assign_split(F.col("row_id")).alias("split"),
            F.col("features").cast(ArrayType(FloatType())).alias("features"),
            F.col("label"))
        first = silver.select(F.size("features").alias("n")).first()
        n = first["n"] if first else 0
        n_classes = silver.agg(F.max("label")).first()[0] + 1 if first else 0
        return df, [f"x{i}" for i in range(n)], n_classes

    return build


def _flights(spark: SparkSession, cfg: Config) -> tuple[DataFrame, list[str], int]:
    """Arrival delay > 15 min from schedule, calendar, carrier, origin and distance.

    Cancelled or diverted flights (no arrival delay) have no label and are left out;
    the build logs how many.
    """
    silver = spark.table(layer_table(cfg.catalog.database, "silver", "flights"))
    carriers = [r[0] for r in silver.select("carrier").distinct().orderBy("carrier").collect()]
    origins = [r[0] for r in silver.select("origin").distinct().orderBy("origin").collect()]
    date = F.make_date("year", "month", "day")
    dep = F.floor(F.col("sched_dep_time") / 100) + (F.col("sched_dep_time") % 100) / 60
    arr = F.floor(F.col("sched_arr_time") / 100) + (F.col("sched_arr_time") % 100) / 60
    numeric = {
        "dep_hour": dep / 24, "arr_hour": arr / 24,
        "dep_sin": F.sin(TAU * dep / 24), "dep_cos": F.cos(TAU * dep / 24),
        "month_sin": F.sin(TAU * F.col("month") / 12),
        "month_cos": F.cos(TAU * F.col("month") / 12),
        "day_of_week": (F.dayofweek(date) - 1) / 6, "day_of_month": F.col("day") / 31,
        "log_distance": F.log1p("distance") / 8,
    }
    onehot = {f"carrier_{c}": F.col("carrier") == c for c in carriers}
    onehot.update({f"origin_{o}": F.col("origin") == o for o in origins})
    columns = [c.cast("float") for c in numeric.values()]
    columns += [F.when(c, 1.0).otherwise(0.0).cast("float") for c in onehot.values()]
    labelled = silver.filter(F.col("arr_delay").isNotNull())
    skipped = silver.filter(F.col("arr_delay").isNull()).count()
    log.info("flights: %d cancelled or diverted flights have no arrival delay; left out", skipped)
    df = labelled.select(
        F.col("row_id"), assign_split(F.col("row_id")).alias("split"),
        F.array(*columns).alias("features"),
        (F.col("arr_delay") > 15).cast("int").alias("label"))
    return df, [*numeric, *onehot], 2


@F.pandas_udf(ArrayType(FloatType()))
def _pixels_to_floats(pixels: pd.Series) -> pd.Series:
    """Executor side: raw 8-bit pixels to floats in [0, 1]."""
    return pixels.map(lambda b: np.frombuffer(b, dtype=np.uint8).astype(np.float32) / 255.0)


def _fashion_mnist(spark: SparkSession, cfg: Config) -> tuple[DataFrame, list[str], int]:
    """28x28 grey images as 784 floats in [0, 1]; the original test split is kept."""
    silver = spark.table(layer_table(cfg.catalog.database, "silver", "fashion_mnist"))
    pixels = _pixels_to_floats("pixels")
    offset = F.when(F.col("split") == "test", 1_000_000).otherwise(0)
    row_id = F.col("image_id").cast("long") + offset
    split = F.when(F.col("split") == "test", "test").otherwise(
        F.when(F.pmod(F.xxhash64("image_id"), F.lit(100)) < 10, "val").otherwise("train"))
    df = silver.select(row_id.alias("row_id"), split.alias("split"),
                       pixels.cast(ArrayType(FloatType())).alias("features"),
                       F.col("label"))
    return df, [f"p{i}" for i in range(784)], 10


def class_names(cfg: Config, dataset: str) -> list[str] | None:
    """A data set's class names, from its catalog entry's ``features.class_names``."""
    entry = cfg.datasets.get(dataset)
    names = entry.features.get("class_names") if entry is not None else None
    return [str(n) for n in names] if names else None


BUILDERS: dict[str, Callable[[SparkSession, Config], tuple[DataFrame, list[str], int]]] = {
    "breast_cancer": _tabular("breast_cancer"),
    "wine": _tabular("wine"),
    "flights": _flights,
    "fashion_mnist": _fashion_mnist,
}


def build_gold(spark: SparkSession, cfg: Config, name: str,
               partitions: int | None = None) -> FeatureSet:
    """Build (or keep, if already built from the same silver version) a gold table.

    The model families that make their own gold tables (word2vec's corpus, DeepAR's
    windows, RCF's shingles) build them in ``models/``; ``models.features`` picks the
    builder for a name.

    Args:
        spark: the session.
        cfg: configuration.
        name: feature set name (one of :data:`BUILDERS`).
        partitions: Parquet files per split (default: twice the Horovod ranks, at least
            4, so every rank gets a shard).

    Returns:
        The gold table with its current version and shape.

    Raises:
        SourceError: no builder of that name.
    """
    if name not in BUILDERS:
        raise SourceError(f"no feature builder {name!r}; known: {', '.join(BUILDERS)}")
    partitions = partitions or max(4, 2 * cfg.train.num_proc)
    db = cfg.catalog.database
    silver = layer_table(db, "silver", name)
    silver_version = delta.snapshot(spark, silver).data_version
    spec = gold_spec(name)
    gold = delta.ensure_table(spark, spec, db)
    df, feature_names, n_classes = BUILDERS[name](spark, cfg)
    # By path: an overwrite by name would go through the catalog's REPLACE TABLE.
    (df.repartition(partitions, "split", "row_id").write.format("delta").mode("overwrite")
     .option("txnAppId", f"lakeforge/features/{name}").option("txnVersion", silver_version)
     .save(delta.table_location(spark, gold)))
    version = delta.snapshot(spark, gold).data_version
    rows = spark.table(gold).count()
    log.info("%s: %s v%d holds %d rows x %d features (from %s v%d)",
             name, gold, version, rows, len(feature_names), silver, silver_version)
    return FeatureSet(name, gold, version, rows, len(feature_names), n_classes,
                      tuple(feature_names))
