"""Gold feature tables for training: fixed-length float vectors plus a label and a split.

Every gold table has the same shape (``row_id``, ``split``, ``features``,
``label``), is partitioned by ``split`` (train / val / test) and keeps deletion
vectors and column mapping off, so a Delta snapshot's Parquet files are exactly
its rows and Petastorm can read them per Horovod rank. Features are not scaled
here: scaling is fitted on the training split when a model is trained and is
stored inside the model.

Tabular and image data sets declare their features in the catalog
(:mod:`lakehouse.declared`): fill-in values, category vocabularies and string classes
are fitted on the training split and written with the table, in the commit that wrote
its rows.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, IntegerType, LongType, StringType

from lakehouse import declared, delta
from lakehouse.config import Config
from lakehouse.datasets import Dataset
from lakehouse.declared import FeatureTransform, parse_features
from lakehouse.errors import ConfigError, SourceError
from lakehouse.tables import TRAINING_TABLE_PROPERTIES, TableSpec, _f, layer_table, register

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
    ), replace=True)   # a declaration may switch between classification and regression


def declared_feature_sets(cfg: Config) -> dict[str, Dataset]:
    """Every declared (tabular or image) feature set of the catalog, by name.

    A data set's one set is named like it; named sets are ``<data set>_<set>``
    (:meth:`lakehouse.datasets.Dataset.feature_sets`).
    """
    return {name: view for entry in cfg.datasets.values()
            for name, view in entry.feature_sets().items()}


def class_names(cfg: Config, dataset: str) -> list[str] | None:
    """A feature set's class names, from its declaration's ``class_names``."""
    entry = declared_feature_sets(cfg).get(dataset)
    names = entry.features.get("class_names") if entry is not None else None
    return [str(n) for n in names] if names else None


def build_gold(spark: SparkSession, cfg: Config, name: str,
               partitions: int | None = None) -> FeatureSet:
    """Build (or keep, if already built from the same rows and declaration) a gold table.

    The model families that make their own gold tables (word2vec's corpus, DeepAR's
    windows, RCF's shingles) build them in ``models/``; ``models.features`` picks the
    builder for a name.

    Args:
        spark: the session.
        cfg: configuration.
        name: a tabular or image data set whose catalog entry declares its features
            (see :mod:`lakehouse.declared`).
        partitions: Parquet files per split (default: twice the Horovod ranks, at least
            4, so every rank gets a shard).

    Returns:
        The gold table with its current version and shape.

    Raises:
        SourceError: no data set of that name declares features.
    """
    partitions = partitions or max(4, 2 * cfg.train.num_proc)
    sets = declared_feature_sets(cfg)
    if name not in sets:
        raise SourceError(f"no feature set {name!r}; declared feature sets: "
                          f"{', '.join(sets)}")
    return _build_declared(spark, cfg, name, sets[name], partitions)


def silver_rows(spark: SparkSession, cfg: Config, entry: Dataset,
                data_version: int | None = None) -> tuple[DataFrame, delta.Snapshot]:
    """A data set's rows of its silver table, read at one pinned snapshot.

    Entries that share a silver table are told apart by ``_source`` when silver keeps
    it, else by their ``group`` role (the column holding the data set's name).

    Args:
        spark: the session.
        cfg: configuration.
        entry: the catalog entry.
        data_version: read the rows as of this data version (default: the current).

    Returns:
        (the rows, the snapshot they were read at).
    """
    silver = layer_table(cfg.catalog.database, "silver", entry.table_name)
    pinned = delta.snapshot(spark, silver)
    if data_version is None:
        rows = delta.read_version(spark, silver, pinned.version)
    else:
        rows = delta.read_data_version(spark, silver, data_version)
    sharing = sorted(n for n, e in cfg.datasets.items()
                     if e.table_name == entry.table_name and n != entry.name)
    if sharing:
        group = entry.roles.get("group")
        if "_source" in rows.columns:
            rows = rows.filter(F.col("_source") == entry.name)
        elif isinstance(group, str) and group in rows.columns:
            rows = rows.filter(F.col(group) == entry.name)
        else:
            raise ConfigError(f"data set {entry.name!r} shares {silver} with "
                              f"{', '.join(sharing)}; declare roles.group: the column whose "
                              f"value is the data set's name in each row")
    return rows, pinned


def entry_of(cfg: Config, name: str, kind: str) -> Dataset:
    """The catalog entry ``name``, which must be of ``kind``.

    Raises:
        SourceError: no such entry, or one of another kind (both are named).
    """
    entry = cfg.datasets.get(name)
    if entry is None:
        known = sorted(n for n, e in cfg.datasets.items() if e.kind == kind)
        raise SourceError(f"no data set {name!r} in the catalog; {kind} data sets: "
                          f"{', '.join(known) or 'none'}")
    if entry.kind != kind:
        raise SourceError(f"data set {name!r} is of kind {entry.kind or 'none'!r}, "
                          f"not {kind!r}")
    return entry


def feature_sets(cfg: Config) -> list[str]:
    """The declared feature sets (tabular or image), by name."""
    return list(declared_feature_sets(cfg))


def transform_of(spark: SparkSession, table: str, version: int) -> FeatureTransform | None:
    """The fitted transform a declared gold table was written with, at ``version``."""
    return _written_with(spark, table, version)[1]


def _written_with(spark: SparkSession, table: str,
                  version: int) -> tuple[dict | None, FeatureTransform | None]:
    """The build key and fitted transform stored in the commit that wrote ``version``."""
    meta = delta.commit_json(spark, table, version)
    transform = FeatureTransform.from_json(meta["transform"]) if "transform" in meta else None
    return meta.get("key"), transform


def _build_declared(spark: SparkSession, cfg: Config, name: str, entry: Dataset,
                    partitions: int) -> FeatureSet:
    """A declared feature set: fit on the training split, write, keep the transform.

    Keyed on the silver table's data version and the declaration (kept in the write's
    commit with the transform): the same rows with the same declaration are not built
    again; a changed declaration is, even back to an earlier one.
    """
    spec = parse_features(entry, entry.features_key(name))
    db = cfg.catalog.database
    rows, pinned = silver_rows(spark, cfg, entry)
    silver = pinned.table
    key = {"silver_version": pinned.data_version, "spec": spec.digest()}
    target = gold_spec(name, spec.task == "regression")
    gold = target.full_name(db)
    retype = delta.table_exists(spark, gold) and \
        spark.table(gold).schema["label"].dataType != target.schema["label"].dataType
    if retype:   # the declaration's task changed: the label column changes type
        log.info("%s: the task is now %s; %s is rewritten with a %s label (its earlier "
                 "versions keep theirs)", name, spec.task, gold,
                 target.schema["label"].dataType.simpleString())
    else:
        gold = delta.ensure_table(spark, target, db)
    current = delta.snapshot(spark, gold)
    built_key, transform = _written_with(spark, gold, current.data_version)
    prepared_rows = 0
    if built_key == key and transform is not None:
        log.info("%s: %s v%d is already built from %s v%d with this declaration",
                 name, gold, current.data_version, silver, pinned.data_version)
    else:
        prepared = declared.prepare(rows, spec)
        transform = declared.fit(prepared, spec)
        out = declared.apply(prepared, transform)
        kept = out.filter(F.col("split").isNotNull() & F.col("label").isNotNull()
                          & F.col("features").isNotNull())
        (kept.repartition(partitions, "split", "row_id").write.format("delta")
         .mode("overwrite").option("overwriteSchema", str(retype).lower())
         .option("userMetadata", json.dumps({"key": key, "transform": transform.to_json()}))
         .save(delta.table_location(spark, gold)))
        prepared_rows = prepared.count()
    built = delta.snapshot(spark, gold)
    table = delta.read_version(spark, gold, built.version)
    shape = table.agg(F.count(F.lit(1)).alias("n"), F.max("label").alias("top")).first()
    if prepared_rows > shape["n"]:   # kept rows counted in the table, not by recomputing them
        log.info("%s: %d rows have no split, no label or no readable image and are left out",
                 name, prepared_rows - shape["n"])
    version = built.data_version
    n_classes = transform.n_classes or (int(shape["top"]) + 1
                                        if spec.task == "classification" and shape["top"]
                                        is not None else 0)
    names = transform.feature_names
    log.info("%s: %s v%d holds %d rows x %d features (%s, from %s v%d)", name, gold,
             version, shape["n"], len(names), spec.task, silver, pinned.data_version)
    return FeatureSet(name, gold, version, shape["n"], len(names), n_classes,
                      tuple(names))
