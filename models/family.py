"""What a model family provides to the shared runner and scorer."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lakehouse.errors import ConfigError

FAMILY_NAMES = ("mlp", "cnn", "word2vec", "deepar", "rcf")


@dataclass(frozen=True)
class Family:
    """A model family.

    Attributes:
        name: family name (the folder under ``models/``).
        build: ``build(params, n_features, n_classes, mean, variance)`` -> Keras model;
            runs inside Horovod ranks.
        defaults: default training parameters.
        normalise: whether the runner fits per-feature mean/variance on the
            training split and hands them to ``build``.
        trainer: for families that are not Keras classifiers over ``features``:
            ``trainer(spark, cfg, dataset, version, run_id, params, name)`` ->
            :class:`models.runner.TrainResult`, replacing the shared Keras path.
        scorer: ``scorer(spark, cfg, record, df, loads)`` -> DataFrame with the
            columns ``prediction_fields`` (``df``: the pinned input; ``loads``: an
            accumulator to add 1 to per model load on an executor); the shared
            scorer adds lineage and writes exactly once. Default: the classifier.
        features: ``features(spark, cfg, dataset, params)`` ->
            :class:`lakehouse.features.FeatureSet`, building the family's gold table.
        datasets: the feature sets ``features`` builds (``lakeforge features NAME``).
        prediction_fields: StructFields of ``predictions_<name>`` before lineage.
        prediction_keys: columns that identify a prediction within one run.
        tasks: what the family learns from a tabular feature set (``classification``,
            ``regression``); training another task stops on the driver.
        check: ``check(params, n_features)`` raising ConfigError when the parameters
            do not fit the feature set (run on the driver before any rank starts).
    """

    name: str
    build: Callable[..., Any] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    normalise: bool = True
    trainer: Callable[..., Any] | None = None
    scorer: Callable[..., Any] | None = None
    features: Callable[..., Any] | None = None
    datasets: tuple[str, ...] = ()
    prediction_fields: tuple[Any, ...] = ()
    prediction_keys: tuple[str, ...] = ("row_id",)
    tasks: tuple[str, ...] = ("classification",)
    check: Callable[[dict[str, Any], int], None] | None = None


def family_for_dataset(dataset: str) -> Family | None:
    """The family whose own feature builder makes ``dataset``, if any."""
    for name in FAMILY_NAMES:
        family = get_family(name)
        if dataset in family.datasets:
            return family
    return None


def get_family(name: str) -> Family:
    """The family called ``name`` (``models/<name>/``), or ConfigError listing them."""
    if name not in FAMILY_NAMES:
        raise ConfigError(f"unknown model family {name!r}; families: {', '.join(FAMILY_NAMES)}")
    return importlib.import_module(f"models.{name}").FAMILY
