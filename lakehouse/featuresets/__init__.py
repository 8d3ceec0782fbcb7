"""Feature sets: how each kind of data set becomes a gold table for training.

One module per kind (``tabular``, ``image``, ``text``, ``series``, ``stream``), each a
:class:`lakehouse.featuresets.contract.Kind`: the typed settings of its ``features:``
declaration, its gold table's schema, what is fitted on the training split, and how
the table is built (always through :func:`lakehouse.featuresets.contract.build_once`).
Model families name the kind they train on and read feature sets through here.

This module holds the registry only (no Spark import): the catalog parser reads each
kind's roles from it. Adding a kind is a module ``lakehouse/featuresets/<kind>.py``
defining ``KIND`` plus its line in :data:`ROLES`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lakehouse.errors import ConfigError, SourceError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lakehouse.config import Config
    from lakehouse.datasets import Dataset
    from lakehouse.featuresets.contract import FeatureSet, Kind

# kind -> (required roles, optional roles); roles in LIST_ROLES name several columns.
ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "tabular": (("id",), ("label", "features", "timestamp")),
    "image": (("id", "image"), ("label", "split")),
    "text": (("id", "text"), ("title", "group")),
    "series": (("item_id", "timestamp", "target"), ("group", "title", "static", "dynamic")),
    "stream": (("order", "values"), ("stream_id", "label", "split", "group")),
}
KINDS = tuple(ROLES)
LIST_ROLES = frozenset({"features", "values", "static", "dynamic"})
# Kinds whose features: block declares labelled sets, possibly several named ones.
LABELLED = frozenset({"tabular", "image"})


def kind(name: str) -> Kind:
    """The kind called ``name`` (``lakehouse/featuresets/<name>.py``).

    Raises:
        ConfigError: no such kind (the kinds are listed).
    """
    if name not in ROLES:
        raise ConfigError(f"unknown kind {name!r}; kinds: {', '.join(KINDS)}")
    return importlib.import_module(f"lakehouse.featuresets.{name}").KIND


def feature_sets(cfg: Config) -> dict[str, tuple[Kind, Dataset | None]]:
    """Every feature set the catalog gives, by name, with its kind and catalog entry.

    Labelled (tabular and image) sets first, then text, series and stream data sets,
    then sets that are not one entry (``corpus``: every bundled text corpus).
    """
    found: dict[str, tuple[Kind, Dataset | None]] = {}
    for name in KINDS:
        k = kind(name)
        for set_name, entry in k.sets(cfg).items():
            found.setdefault(set_name, (k, entry))
    return found


def build_features(spark: SparkSession, cfg: Config, name: str,
                   params: dict[str, Any] | None = None,
                   partitions: int | None = None) -> FeatureSet:
    """Build (or keep, when its input and declaration did not change) a gold table.

    Args:
        spark: the session.
        cfg: configuration.
        name: a feature set (:func:`feature_sets`).
        params: settings given over the declaration (``shingle_size`` for a stream,
            ``context_length`` for a series, ...); ``partitions`` may be given here too.
        partitions: Parquet files per split (default: twice the Horovod ranks, at least 4).

    Returns:
        The gold table with its current version and shape.

    Raises:
        SourceError: no feature set of that name (the known ones are listed).
        ConfigError: a parameter the kind does not take, or a wrong value (named).
    """
    sets = feature_sets(cfg)
    if name not in sets:
        raise SourceError(f"no feature set {name!r}; known: {', '.join(sets) or 'none'} (a "
                          "tabular data set gets one by declaring features: in its catalog "
                          "entry)")
    given = dict(params or {})
    if "partitions" in given:
        value = given.pop("partitions")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"features: partitions must be a whole number, got {value!r}")
        partitions = partitions or value or None
    k, entry = sets[name]
    where = entry.features_key(name) if entry is not None else f"feature set {name}"
    settings = k.settings_of(entry, given, where)
    return k.build(spark, cfg, name, entry, settings, partitions)
