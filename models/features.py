"""Which builder makes a gold feature table: the lakehouse's or a model family's own."""

from __future__ import annotations

from typing import Any

from pyspark.sql import SparkSession

from lakehouse.config import Config
from lakehouse.errors import ConfigError, SourceError
from lakehouse.features import FeatureSet, build_gold, feature_sets
from models.family import FAMILY_NAMES, family_for_dataset, get_family


def feature_set_names(cfg: Config) -> list[str]:
    """Every feature set a builder knows.

    Declared tabular and image data sets first, then text, series and stream data
    sets and the families' own (``corpus``).
    """
    own = [n for n, e in cfg.datasets.items()
           if n not in feature_sets(cfg) and family_for_dataset(cfg, n) is not None]
    extra = [d for f in FAMILY_NAMES for d in get_family(f).datasets if d not in own]
    return [*feature_sets(cfg), *own, *extra]


def build_features(spark: SparkSession, cfg: Config, name: str, partitions: int | None = None,
                   params: dict[str, Any] | None = None) -> FeatureSet:
    """Build (or keep, when its input did not change) the gold table ``name``.

    Args:
        spark: the session.
        cfg: configuration.
        name: feature set: a tabular data set that declares ``features:`` in its
            catalog entry, or one of the built-in builders (``lakeforge features --help``).
        partitions: Parquet files per split of a lakehouse-built table (default: twice
            the Horovod ranks, at least 4).
        params: parameters of a family's own builder, e.g. ``shingle_size`` for RCF.

    Returns:
        The gold table with its current version and shape.

    Raises:
        SourceError: no builder of that name (the known ones are listed).
        ConfigError: parameters given to a builder that takes none.
    """
    family = family_for_dataset(cfg, name)
    if family is not None:
        return family.features(spark, cfg, name, dict(params or {}))
    if name not in feature_sets(cfg):
        raise SourceError(f"no feature set {name!r}; known: {', '.join(feature_set_names(cfg))} "
                          "(a tabular data set gets one by declaring features: in its catalog "
                          "entry)")
    if params:
        raise ConfigError(f"feature set {name!r} takes no parameters; got {', '.join(params)}")
    return build_gold(spark, cfg, name, partitions)
