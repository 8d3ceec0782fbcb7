"""Batch scoring: a stored model over a Delta table, predictions back into Delta.

The model is loaded once per executor Python process (a module-level cache in the
worker, which Spark reuses across tasks) and applied to Arrow batches with
``mapInArrow``. Every prediction row carries its lineage: model name and version,
input table and Delta version, run id and scoring time. A run writes its rows in
one Delta commit marked with the run id, so a re-run with the same run id (by
default derived from model version and input version) changes nothing and a run
that fails midway leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    IntegerType,
    LongType,
    StringType,
    TimestampType,
)

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.errors import ConfigError
from lakehouse.lakefs import LakeFS
from lakehouse.tables import TableSpec, _f, register
from models.family import get_family
from models.store import ModelStore
from models.tracking import model_ref

log = logging.getLogger(__name__)

LINEAGE = (
    _f("model_name", StringType(), False), _f("model_version", IntegerType(), False),
    _f("input_table", StringType(), False), _f("input_version", LongType(), False),
    _f("run_id", StringType(), False), _f("scored_at", TimestampType(), False),
)
# Executor-side cache: artifact file + mtime -> what was loaded from it, per Python worker.
_LOADED: dict[str, Any] = {}


@dataclass(frozen=True)
class ScoreResult:
    """What a scoring run did."""

    table: str
    run_id: str
    rows: int
    skipped: bool
    model_loads: int
    seconds: float


def predictions_spec(family: str) -> TableSpec:
    """The registry entry of ``predictions_<family>`` (registered on first use)."""
    fam = get_family(family)
    return register(TableSpec(
        "predictions", family, (*fam.prediction_fields, *LINEAGE, *fam.prediction_late_fields),
        ("model_name", "model_version", "input_table", "input_version", *fam.prediction_keys),
        partition_by=("model_name",), catalog_name=f"predictions_{family}",
        comment=f"{family} predictions with model and input lineage",
    ))


def task_threads() -> int:
    """CPU threads the current Spark task may use (``spark.task.cpus``); 0 outside a task.

    Spark runs as many tasks at once per executor as it has cores divided by
    ``spark.task.cpus``, so a scoring task that keeps to its ``cpus()`` never
    oversubscribes the executor, on a laptop or on a many-core node alike. Raise
    ``spark.task.cpus`` (``spark.conf`` in the config) to give each task more threads.
    """
    from pyspark import TaskContext

    context = TaskContext.get()
    return int(context.cpus()) if context is not None else 0


def load_once(artifact: str, filename: str, loader: Callable[[str], Any], loads=None,
              lake: LakeFS | None = None) -> Any:
    """``loader(folder)``, called at most once in this process per version of the artifact.

    Every family's scorer keeps what it loads here (a Keras model, a forest, embeddings,
    a DeepAR network). The cache key is ``filename`` inside ``artifact`` with its
    modification time, so an artifact folder that was replaced is loaded again rather
    than served stale. Inside a Spark task the heap is frozen after the load
    (``gc.freeze``): PySpark's daemon runs a full ``gc.collect()`` after every task of a
    reused worker, which would walk every loaded object (about 0.17 s per task with
    TensorFlow on a small machine) although the cache lives as long as the worker.

    An artifact on a remote lake is fetched to a local copy first (once per host,
    :meth:`LakeFS.fetch`); ``loader`` always reads a local folder.

    Args:
        artifact: the model's artifact folder (a lake location).
        filename: the file in it whose modification time versions the cache entry.
        loader: loads from the local folder.
        loads: accumulator, +1 per load (None: not counted).
        lake: the lake's filesystem (None: a local lake).
    """
    folder = (lake or LakeFS()).fetch(artifact)
    path = os.path.join(folder, filename)
    key = f"{path}@{os.path.getmtime(path) if os.path.exists(path) else 0}"
    if key not in _LOADED:
        _LOADED[key] = loader(folder)
        if loads is not None:
            loads.add(1)
        if task_threads():
            gc.collect()
            gc.freeze()
    return _LOADED[key]


def default_run_id(model: str, version: int, table: str, input_version: int) -> str:
    """Run id of scoring one model version on one input version (the idempotency key)."""
    return f"{model}-v{version}@{table}-v{input_version}"


def score(spark: SparkSession, cfg: Config, family: str, model_name: str,
          model_version: int | str = "latest", input_table: str | None = None,
          input_version: int | None = None, run_id: str | None = None) -> ScoreResult:
    """Score a table with a stored model into ``predictions_<family>``.

    Args:
        spark: the session.
        cfg: configuration.
        family: model family (``mlp``, ``cnn``, ``word2vec``, ``deepar``, ``rcf``).
        model_name: stored model name, or ``NAME@ALIAS`` for the version an MLflow
            alias points at.
        model_version: version number or ``latest``.
        input_table: table to score (default: the model's training table); for the
            classifier families it needs ``row_id`` and ``features``, or, for a model
            trained on a declared tabular feature set, the raw columns (the stored
            transform computes the features, as in training).
        input_version: Delta version of the input (default: current).
        run_id: idempotency key (default: model version + input version).

    Returns:
        The predictions table, run id, rows written, whether the run was already
        done, and how many times executors loaded the model.
    """
    start = time.monotonic()
    fam = get_family(family)
    model_name, model_version = model_ref(cfg, model_name, model_version)
    store = ModelStore(spark, cfg)
    record = store.get(model_name, model_version)
    if record.family != family:
        raise ConfigError(f"model {model_name!r} v{record.version} is a {record.family} model, "
                          f"not {family}")
    table = input_table or record.training_table
    if input_version is None:   # current rows, keyed on the data version (not maintenance)
        pinned = delta.snapshot(spark, table)
        df, version = delta.read_version(spark, table, pinned.version), pinned.data_version
    else:
        df, version = delta.read_version(spark, table, input_version), input_version
    if fam.scorer is None:
        raise ConfigError(f"{family} has no scorer")
    run_id = run_id or default_run_id(model_name, record.version, table, version)
    target = delta.ensure_table(spark, predictions_spec(family), cfg.catalog.database)
    if spark.table(target).filter(F.col("run_id") == run_id).limit(1).count():
        log.info("scoring run %s is already in %s; nothing to do", run_id, target)
        return ScoreResult(target, run_id, 0, True, 0, time.monotonic() - start)

    loads = spark.sparkContext.accumulator(0)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    batch_key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(batch_key)      # a scorer may size its Arrow batches
    predictions = fam.scorer(spark, cfg, record, df, loads)
    out = predictions.select(
        "*", F.lit(model_name).alias("model_name"),
        F.lit(record.version).cast("int").alias("model_version"),
        F.lit(table).alias("input_table"), F.lit(version).cast("long").alias("input_version"),
        F.lit(run_id).alias("run_id"), F.lit(now).cast("timestamp").alias("scored_at"))
    try:
        delta.append_once(out, target, f"lakeforge/score/{run_id}")
    finally:
        spark.conf.set(batch_key, previous)
    rows = spark.table(target).filter(F.col("run_id") == run_id).count()
    result = ScoreResult(target, run_id, rows, False, loads.value, time.monotonic() - start)
    log.info("scored %s v%d on %s v%d: %d rows -> %s (run %s, model loaded %d times, %.0f s)",
             model_name, record.version, table, version, rows, target, run_id, loads.value,
             result.seconds)
    return result
