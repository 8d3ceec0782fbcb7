"""Driver side of the Keras classifier families: check, plan, evaluate.

The trainer checks the gold table's columns and task against the family, fits the
per-feature scaling on the training split with Spark aggregates (no rows reach the
driver) for families that normalise, standardises a regression target, and copies
the table's fitted feature transform into the model. After the ranks it computes
test metrics and plots (a confusion matrix, or predicted against true values).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, IntegerType

from lakehouse.config import Config
from lakehouse.errors import ConfigError, SchemaMismatchError, TableNotFoundError
from lakehouse.featuresets.declared import class_names, transform_of
from lakehouse.tables import layer_table
from models.classifier.rank import train_rank
from models.evaluate import (
    classification_metrics,
    confusion,
    plot_confusion,
    plot_history,
    plot_predicted,
    regression_metrics,
)
from models.family import FamilyTrainer, RunPaths, TrainPlan
from models.rank import RankSpec
from models.runner import snapshot_files
from models.store import TRANSFORM_FILE

EXPECTED = {"features": ArrayType(FloatType()), "label": IntegerType()}


def check_features(df: DataFrame, table: str, regression: bool = False) -> None:
    """Stop with SchemaMismatchError if ``features``/``label`` are missing or mistyped."""
    types = {f.name: f.dataType for f in df.schema.fields}
    expected_types = {**EXPECTED, "label": FloatType()} if regression else EXPECTED
    for column, expected in expected_types.items():
        actual = types.get(column)
        if actual is None:
            raise SchemaMismatchError(f"table {table}: feature column {column!r} is missing")
        same = (actual == expected or
                (isinstance(actual, ArrayType) and actual.elementType == FloatType()
                 and isinstance(expected, ArrayType)))
        if not same:
            raise SchemaMismatchError(
                f"table {table}: column {column!r} is {actual.simpleString()}, "
                f"expected {expected.simpleString()}")


def scaling(df: DataFrame, n_features: int) -> tuple[list[float], list[float]]:
    """Per-feature mean and variance over the training split (Spark aggregates)."""
    exploded = df.filter(F.col("split") == "train").select(F.posexplode("features"))
    stats = exploded.groupBy("pos").agg(F.avg("col").alias("m"), F.var_pop("col").alias("v"))
    rows = {r["pos"]: (r["m"], r["v"]) for r in stats.collect()}
    mean = [float(rows.get(i, (0.0, 1.0))[0]) for i in range(n_features)]
    var = [float(rows.get(i, (0.0, 1.0))[1] or 0.0) for i in range(n_features)]
    return mean, var


class KerasTrainer(FamilyTrainer):
    """The trainer of a Keras family (``mlp``, ``cnn``) over a gold feature table."""

    rank_fn = staticmethod(train_rank)

    def __init__(self, family: str, build: Callable[..., Any], *, normalise: bool = True,
                 tasks: tuple[str, ...] = ("classification",),
                 check: Callable[[dict[str, Any], int], None] | None = None) -> None:
        """A trainer for the family called ``family``.

        Args:
            family: the family's name.
            build: ``build(params, n_features, n_classes, mean, variance)`` -> Keras
                model; runs inside Horovod ranks (module-level, so it pickles).
            normalise: fit per-feature mean and variance on the training split and hand
                them to ``build``.
            tasks: what the family learns (``classification``, ``regression``);
                another task stops on the driver.
            check: ``check(params, n_features)`` raising ConfigError when the
                parameters do not fit the feature set (on the driver).
        """
        self.family, self.build, self.normalise = family, build, normalise
        self.tasks, self.check = tasks, check

    def table(self, cfg: Config, dataset: str) -> str:
        """``gold_<dataset>``."""
        return layer_table(cfg.catalog.database, "gold", dataset)

    def plan(self, spark: SparkSession, cfg: Config, dataset: str, df: DataFrame, table: str,
             version: int, params: dict[str, Any]) -> TrainPlan:
        """Task and image shape from the table's declaration; columns and shapes checked."""
        merged = dict(params)
        transform = transform_of(spark, table, version)
        task = transform.spec.task if transform is not None else "classification"
        if task not in self.tasks:
            raise ConfigError(f"{self.family} trains {' and '.join(self.tasks)} models; "
                              f"feature set {dataset!r} is a {task}")
        if merged.get("task") not in (None, task):
            raise ConfigError(f"{self.family}: task={merged['task']!r}, but feature set "
                              f"{dataset!r} is a {task} (features.task in its catalog entry)")
        merged["task"] = task
        if "image_shape" in merged and merged["image_shape"] is None:
            if transform is None or transform.spec.image is None:
                raise ConfigError(f"{self.family}: feature set {dataset!r} declares no image; "
                                  f"give --param image_shape=[height,width,channels]")
            merged["image_shape"] = transform.spec.image.shape   # as declared in the catalog
        check_features(df, table, regression=task == "regression")
        shape = df.groupBy("split").agg(F.count("*").alias("n"), F.max("label").alias("top"),
                                        F.max(F.size("features")).alias("width")).collect()
        rows = {r["split"]: r["n"] for r in shape}
        n_features = max((r["width"] or 0 for r in shape), default=0)
        n_classes = 0 if task == "regression" else \
            int(max((r["top"] or 0 for r in shape), default=0)) + 1
        if self.check is not None:
            self.check(merged, n_features)
        state = {"df": df, "rows": rows, "task": task, "transform": transform,
                 "dataset": dataset, "n_features": n_features, "n_classes": n_classes}
        summary = f"{rows} rows, {n_features} features, {n_classes} classes"
        return TrainPlan(merged, summary, state)

    def ready(self, plan: TrainPlan, table: str, version: int) -> None:
        """A table without training rows cannot be trained."""
        if not plan.state["rows"].get("train"):
            raise TableNotFoundError(f"training table {table} v{version} has no training rows")

    def rank_spec(self, cfg: Config, plan: TrainPlan, run: RunPaths) -> RankSpec:
        """Scaling and target statistics fitted on the training split; the transform kept."""
        state, params = plan.state, plan.params
        df, task = state["df"], state["task"]
        n_features, n_classes = state["n_features"], state["n_classes"]
        mean, var = scaling(df, n_features) if self.normalise else (None, None)
        extra: dict[str, Any] = {}
        if task == "regression":
            target = df.filter(F.col("split") == "train").agg(
                F.avg("label").alias("m"), F.stddev_pop("label").alias("s")).first()
            extra = {"target_mean": float(target["m"]), "target_std": float(target["s"] or 1.0)}
        if state["transform"] is not None:
            (run.staged / TRANSFORM_FILE).write_text(state["transform"].to_json())
        return RankSpec(
            family=self.family, params=params, files=snapshot_files(df), rows=state["rows"],
            n_features=n_features, n_classes=n_classes,
            checkpoint_dir=run.checkpoints, artifact_dir=run.outputs, lake=run.lake, mean=mean,
            variance=var, seed=cfg.train.seed, extra=extra)

    def example(self, spark: SparkSession, cfg: Config, plan: TrainPlan,
                staged: Path) -> pd.DataFrame | None:
        """Five silver rows with the columns the features' declaration reads.

        ``features`` vectors of the gold table when the model keeps no transform.
        """
        transform = plan.state["transform"]
        entry = cfg.datasets.get(transform.spec.dataset) if transform is not None else None
        silver = layer_table(cfg.catalog.database, "silver", entry.table_name) if entry else ""
        if not silver or not spark.catalog.tableExists(silver):
            return plan.state["df"].select("features").limit(5).toPandas()
        rows, spec = spark.table(silver), transform.spec
        if spec.where:
            rows = rows.filter(F.expr(spec.where))
        if spec.image is not None:
            return rows.select(spec.image.column).limit(5).toPandas()
        named = set()   # every name the features' SQL mentions: its columns, and more
        for feature in (*spec.numeric, *spec.categorical):
            named.update(a or b for a, b in re.findall(r"`([^`]+)`|([A-Za-z_]\w*)", feature.expr))
        return rows.select([c for c in rows.columns if c in named]).limit(5).toPandas()

    def evaluate(self, spark: SparkSession, cfg: Config, plan: TrainPlan,
                 ranks: list[dict[str, Any]], staged: Path, name: str) -> dict[str, float]:
        """Test metrics of rank 0's predictions, the training curves and the test plot."""
        rank0 = next(r for r in ranks if r["rank"] == 0)
        transform = plan.state["transform"]
        names = list(transform.classes) if transform is not None and transform.classes else \
            class_names(cfg, plan.state["dataset"])
        history = rank0["history"]
        metrics: dict[str, float] = {"epochs": float(rank0["initial_epoch"]
                                                     + rank0["epochs_run"])}
        if history:
            plot_history(history, staged / "training_curves.png", f"{name}: training")
        if rank0.get("predictions") is None:
            return metrics
        actual = np.asarray(rank0["labels"])
        if plan.state["task"] == "regression":
            predicted = np.asarray(rank0["predictions"]).reshape(-1)
            metrics.update(regression_metrics(predicted, actual.reshape(-1)))
            plot_predicted(predicted, actual.reshape(-1), staged / "predicted_vs_actual.png",
                           f"{name}: test predictions")
        else:
            probs = np.asarray(rank0["predictions"])
            metrics.update(classification_metrics(probs, actual))
            plot_confusion(confusion(probs, actual), staged / "confusion_matrix.png",
                           f"{name}: test confusion matrix", names)
        return metrics
