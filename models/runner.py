"""Driver side of training: pin a gold table version, run Horovod ranks, store the model.

The runner resolves the Parquet files of one Delta snapshot of a gold table (so a
run reads exactly that version, whatever is appended later), fits the scaling on
the training split with Spark aggregates (no rows reach the driver), runs
:func:`models.rank.train_rank` on ``num_proc`` ranks through ``horovod.spark.run``,
then registers the model with its test metrics and plots in the model store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, IntegerType

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.errors import ConfigError, SchemaMismatchError, TableNotFoundError
from lakehouse.features import class_names, transform_of
from lakehouse.tables import layer_table
from models.evaluate import (
    classification_metrics,
    confusion,
    plot_confusion,
    plot_history,
    plot_predicted,
    regression_metrics,
)
from models.family import check_kind, get_family
from models.rank import RankSpec, train_rank
from models.store import TRANSFORM_FILE, ModelRecord, ModelStore

log = logging.getLogger(__name__)
EXPECTED = {"features": ArrayType(FloatType()), "label": IntegerType()}


@dataclass(frozen=True)
class TrainResult:
    """A finished training run."""

    model: ModelRecord
    history: dict[str, list[float]]
    ranks: list[dict[str, Any]]
    seconds: float


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


def snapshot_files(df: DataFrame) -> dict[str, list[str]]:
    """Parquet files of a pinned snapshot per split (partition-pruned file lists)."""
    files = {}
    for split in ("train", "val", "test"):
        uris = df.filter(F.col("split") == split).inputFiles()
        files[split] = sorted(u.replace("file:/", "file:///", 1) if u.startswith("file:/")
                              and not u.startswith("file:///") else u for u in uris)
    return files


def scaling(df: DataFrame, n_features: int) -> tuple[list[float], list[float]]:
    """Per-feature mean and variance over the training split (Spark aggregates)."""
    exploded = df.filter(F.col("split") == "train").select(F.posexplode("features"))
    stats = exploded.groupBy("pos").agg(F.avg("col").alias("m"), F.var_pop("col").alias("v"))
    rows = {r["pos"]: (r["m"], r["v"]) for r in stats.collect()}
    mean = [float(rows.get(i, (0.0, 1.0))[0]) for i in range(n_features)]
    var = [float(rows.get(i, (0.0, 1.0))[1] or 0.0) for i in range(n_features)]
    return mean, var


def default_run_id(name: str, family: str, table: str, version: int,
                   params: dict[str, Any]) -> str:
    """A run id derived from what is trained on what, so a re-run resumes it."""
    digest = hashlib.sha256(repr((family, table, version, sorted(params.items()))).encode())
    return f"{name}-v{version}-{digest.hexdigest()[:8]}"


def train(spark: SparkSession, cfg: Config, family_name: str, dataset: str,
          version: int | None = None, run_id: str | None = None,
          params: dict[str, Any] | None = None, name: str | None = None) -> TrainResult:
    """Train a model family on a gold feature table with Horovod ranks.

    Args:
        spark: the session.
        cfg: configuration (``train.num_proc``, model store under ``cfg.home``).
        family_name: ``mlp``, ``cnn``, ``word2vec``, ``deepar`` or ``rcf``.
        dataset: gold feature table name (``breast_cancer``, ``flights``, ...).
        version: Delta version to train on (default: the current one, recorded).
        run_id: training run id; a run started again with the same id resumes
            from its last checkpoint (default: derived from family, table, version
            and params).
        params: overrides of the family's default parameters.
        name: model name (default ``<dataset>_<family>``).

    Returns:
        The registered model, the history and each rank's report.
    """
    start = time.monotonic()
    family = get_family(family_name)
    check_kind(family, cfg, dataset)
    merged = family.check_params(params)
    if family.trainer is not None:
        return family.trainer(spark, cfg, dataset, version, run_id, merged, name)
    table = layer_table(cfg.catalog.database, "gold", dataset)
    df, version = pin_table(spark, table, version)
    transform = transform_of(spark, table, version)
    task = transform.spec.task if transform is not None else "classification"
    if task not in family.tasks:
        raise ConfigError(f"{family_name} trains {' and '.join(family.tasks)} models; feature "
                          f"set {dataset!r} is a {task}")
    if "task" in family.defaults:
        if params and params.get("task") not in (None, task):
            raise ConfigError(f"{family_name}: task={params['task']!r}, but feature set "
                              f"{dataset!r} is a {task} (features.task in its catalog entry)")
        merged["task"] = task
    if transform is not None and transform.spec.image is not None \
            and "image_shape" in family.defaults and "image_shape" not in (params or {}):
        merged["image_shape"] = transform.spec.image.shape   # as declared in the catalog
    check_features(df, table, regression=task == "regression")
    shape = df.groupBy("split").agg(F.count("*").alias("n"), F.max("label").alias("top"),
                                    F.max(F.size("features")).alias("width")).collect()
    rows = {r["split"]: r["n"] for r in shape}
    name = name or f"{dataset}_{family_name}"
    run_id = run_id or default_run_id(name, family_name, table, version, merged)
    done = registered_run(spark, cfg, name, run_id, start)
    if done is not None:
        return done
    if not rows.get("train"):
        raise TableNotFoundError(f"training table {table} v{version} has no training rows")
    n_features = max(r["width"] for r in shape)
    n_classes = 0 if task == "regression" else int(max(r["top"] for r in shape)) + 1
    if family.check is not None:
        family.check(merged, n_features)
    mean, var = scaling(df, n_features) if family.normalise else (None, None)
    extra: dict[str, Any] = {}
    if task == "regression":
        target = df.filter(F.col("split") == "train").agg(
            F.avg("label").alias("m"), F.stddev_pop("label").alias("s")).first()
        extra = {"target_mean": float(target["m"]), "target_std": float(target["s"] or 1.0)}
    store = ModelStore(spark, cfg)
    staged = staging_dir(cfg, run_id)
    spec = RankSpec(
        family=family_name, params=merged, files=snapshot_files(df), rows=rows,
        n_features=n_features, n_classes=n_classes,
        checkpoint_dir=str(cfg.checkpoint_dir / "train" / run_id), artifact_dir=str(staged),
        mean=mean, variance=var, seed=cfg.train.seed, extra=extra)
    log.info("training %s (%s) on %s v%d: %s rows, %d features, %d classes, %d ranks, run %s",
             name, family_name, table, version, rows, n_features, n_classes,
             cfg.train.num_proc, run_id)
    if transform is not None:
        (staged / TRANSFORM_FILE).write_text(transform.to_json())
    ranks = run_ranks(spec, cfg)
    rank0 = next(r for r in ranks if r["rank"] == 0)
    names = list(transform.classes) if transform is not None and transform.classes else \
        class_names(cfg, dataset)
    metrics = _metrics(rank0, staged, name, names, task)
    record = store.register(name, family_name, staged, merged, metrics, table, version, run_id)
    seconds = time.monotonic() - start
    log.info("registered %s v%d in %.0fs: %s", name, record.version, seconds,
             ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
    return TrainResult(record, rank0["history"], ranks, seconds)


def pin_table(spark: SparkSession, table: str, version: int | None) -> tuple[DataFrame, int]:
    """A training table read at one Delta version, and the version recorded for it.

    By default the current rows, recorded as the table's data version (the newest
    commit that changed rows), so OPTIMIZE or VACUUM of the table is not a new training
    input and does not start a new run.

    Raises:
        TableNotFoundError: the table does not exist (build its features first).
    """
    if not delta.table_exists(spark, table):
        raise TableNotFoundError(f"training table {table} does not exist; build features first")
    if version is not None:
        df = delta.read_version(spark, table, int(version))
        delta.check_files_exist(spark, df, f"training table {table} v{version}")
        return df, int(version)
    pinned = delta.snapshot(spark, table)
    return delta.read_version(spark, table, pinned.version), pinned.data_version


def staging_dir(cfg: Config, run_id: str) -> Path:
    """A fresh folder for a run's artifact, under ``LAKEFORGE_HOME/staging/<run id>``.

    The process that owns it is written beside it (``<run id>.owner``: host and pid)
    before it exists; folders of processes that are gone (killed runs) are removed
    here, so a killed training leaves nothing behind once any training starts again.
    """
    root = cfg.home / "staging"
    root.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for folder in root.iterdir():
        if folder.suffix == ".owner" or folder.name == run_id:
            continue
        owner = root / f"{folder.name}.owner"
        if not owner.exists() or _gone(owner.read_text(), host):
            shutil.rmtree(folder, ignore_errors=True)
            owner.unlink(missing_ok=True)
    for owner in root.glob("*.owner"):
        if not owner.with_suffix("").exists() and _gone(owner.read_text(), host):
            owner.unlink(missing_ok=True)
    path = root / run_id
    (root / f"{run_id}.owner").write_text(f"{host} {os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def _gone(owner: str, host: str) -> bool:
    """Whether an owner line (``host pid``) names a process of this host that has ended."""
    try:
        their_host, pid = owner.split()
        if their_host != host:
            return False
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):
        return False
    return False


def registered_run(spark: SparkSession, cfg: Config, name: str, run_id: str,
                   start: float) -> TrainResult | None:
    """The result of a run that already registered its model (no Horovod job), or None."""
    done = ModelStore(spark, cfg).find_run(name, run_id)
    if done is None:
        return None
    log.info("run %s already registered %s v%d; nothing to train", run_id, name, done.version)
    return TrainResult(done, {}, [], time.monotonic() - start)


def run_ranks(spec: Any, cfg: Config, fn: Any = None) -> list[dict[str, Any]]:
    """Run ``fn(spec)`` (default ``train_rank``) on ``cfg.train.num_proc`` Horovod ranks.

    Each rank is a Spark task; the list holds every rank's return value.
    """
    import horovod.spark

    return horovod.spark.run(fn or train_rank, args=(spec,), num_proc=cfg.train.num_proc,
                             start_timeout=cfg.train.start_timeout, use_gloo=True,
                             verbose=cfg.train.verbose)


def _metrics(rank0: dict[str, Any], staged: Path, name: str,
             class_names: list[str] | None, task: str = "classification") -> dict[str, float]:
    history = rank0["history"]
    metrics: dict[str, float] = {"epochs": float(rank0["initial_epoch"] + rank0["epochs_run"])}
    if history:
        plot_history(history, staged / "training_curves.png", f"{name}: training")
    if rank0.get("predictions") is not None and task == "regression":
        predicted = np.asarray(rank0["predictions"]).reshape(-1)
        actual = np.asarray(rank0["labels"]).reshape(-1)
        metrics.update(regression_metrics(predicted, actual))
        plot_predicted(predicted, actual, staged / "predicted_vs_actual.png",
                       f"{name}: test predictions")
    elif rank0.get("predictions") is not None:
        probs, labels = np.asarray(rank0["predictions"]), np.asarray(rank0["labels"])
        metrics.update(classification_metrics(probs, labels))
        plot_confusion(confusion(probs, labels), staged / "confusion_matrix.png",
                       f"{name}: test confusion matrix", class_names)
    return metrics
