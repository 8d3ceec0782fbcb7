"""Gold feature tables for training: fixed-length float vectors plus a label and a split.

Every gold table has the same shape (``row_id``, ``split``, ``features``,
``label``), is partitioned by ``split`` (train / val / test) and keeps deletion
vectors and column mapping off, so a Delta snapshot's Parquet files are exactly
its rows and Petastorm can read them per Horovod rank. Features are not scaled
here: scaling is fitted on the training split when a model is trained and is
stored inside the model.

Tabular data sets declare their features in the catalog (:mod:`lakehouse.tabular`):
fill-in values, category vocabularies and string classes are fitted on the training
split and written with the table, in the commit that wrote its rows. Fashion-MNIST's
images still have a builder of their own (:data:`BUILDERS`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, IntegerType, LongType, StringType

from lakehouse import delta, tabular
from lakehouse.config import Config
from lakehouse.datasets import Dataset
from lakehouse.errors import SourceError
from lakehouse.tables import TRAINING_TABLE_PROPERTIES, TableSpec, _f, layer_table, register
from lakehouse.tabular import TabularTransform, is_declared, parse_tabular

log = logging.getLogger(__name__)

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


def gold_spec(name: str, regression: bool = False) -> TableSpec:
    """The registry entry of a gold feature table (registered on first use).

    A regression's ``label`` is the target value (FLOAT), a classification's the class
    index (INT).
    """
    fields = GOLD_FIELDS if not regression else (*GOLD_FIELDS[:3], _f("label", FloatType()))
    return register(TableSpec(
        "gold", name, fields, ("row_id",), partition_by=("split",),
        properties=TRAINING_TABLE_PROPERTIES, comment=f"{name} features for training",
    ))


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
        name: feature set name: a tabular data set whose catalog entry declares its
            features (see :mod:`lakehouse.tabular`), or one of :data:`BUILDERS`.
        partitions: Parquet files per split (default: twice the Horovod ranks, at least
            4, so every rank gets a shard).

    Returns:
        The gold table with its current version and shape.

    Raises:
        SourceError: no builder of that name.
    """
    partitions = partitions or max(4, 2 * cfg.train.num_proc)
    if is_declared(cfg.datasets.get(name)):
        return _build_declared(spark, cfg, cfg.datasets[name], partitions)
    if name not in BUILDERS:
        raise SourceError(f"no feature builder {name!r}; known: {', '.join(feature_sets(cfg))}")
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


def feature_sets(cfg: Config) -> list[str]:
    """The feature sets built here: declared tabular data sets, then :data:`BUILDERS`."""
    declared = [name for name, entry in cfg.datasets.items() if is_declared(entry)]
    return [*declared, *(b for b in BUILDERS if b not in declared)]


def transform_of(spark: SparkSession, table: str, version: int) -> TabularTransform | None:
    """The fitted transform a declared gold table was written with, at ``version``."""
    raw = delta.commit_metadata(spark, table, version)
    if not raw:
        return None
    meta = json.loads(raw)
    return TabularTransform.from_json(meta["transform"]) if "transform" in meta else None


def _build_declared(spark: SparkSession, cfg: Config, entry: Dataset,
                    partitions: int) -> FeatureSet:
    """A declared tabular feature set: fit on the training split, write, keep the transform.

    Keyed on the silver table's data version and the declaration (kept in the write's
    commit with the transform): the same rows with the same declaration are not built
    again; a changed declaration is, even back to an earlier one.
    """
    spec = parse_tabular(entry)
    db = cfg.catalog.database
    silver = layer_table(db, "silver", entry.table_name)
    pinned = delta.snapshot(spark, silver)
    key = {"silver_version": pinned.data_version, "spec": spec.digest()}
    gold = delta.ensure_table(spark, gold_spec(entry.name, spec.task == "regression"), db)
    current = delta.snapshot(spark, gold)
    raw = delta.commit_metadata(spark, gold, current.data_version)
    if raw and json.loads(raw).get("key") == key:
        transform = TabularTransform.from_json(json.loads(raw)["transform"])
        log.info("%s: %s v%d is already built from %s v%d with this declaration",
                 entry.name, gold, current.data_version, silver, pinned.data_version)
    else:
        rows = delta.read_version(spark, silver, pinned.version)
        if entry.table_name != entry.name and "_source" in rows.columns:
            rows = rows.filter(F.col("_source") == entry.name)
        prepared = tabular.prepare(rows, spec)
        transform = tabular.fit(prepared, spec)
        out = tabular.apply(prepared, transform)
        kept = out.filter(F.col("split").isNotNull() & F.col("label").isNotNull())
        (kept.repartition(partitions, "split", "row_id").write.format("delta")
         .mode("overwrite")
         .option("userMetadata", json.dumps({"key": key, "transform": transform.to_json()}))
         .save(delta.table_location(spark, gold)))
        left_out = prepared.count() - kept.count()
        if left_out:
            log.info("%s: %d rows have no split or no label and are left out", entry.name,
                     left_out)
    version = delta.snapshot(spark, gold).data_version
    table = delta.read_version(spark, gold, delta.snapshot(spark, gold).version)
    shape = table.agg(F.count(F.lit(1)).alias("n"), F.max("label").alias("top")).first()
    n_classes = transform.n_classes or (int(shape["top"]) + 1
                                        if spec.task == "classification" and shape["top"]
                                        is not None else 0)
    names = transform.feature_names
    log.info("%s: %s v%d holds %d rows x %d features (%s, from %s v%d)", entry.name, gold,
             version, shape["n"], len(names), spec.task, silver, pinned.data_version)
    return FeatureSet(entry.name, gold, version, shape["n"], len(names), n_classes,
                      tuple(names))
