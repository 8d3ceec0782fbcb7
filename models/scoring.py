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
import functools
import gc
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.declared import FeatureTransform, features_for_scoring
from lakehouse.errors import ConfigError, SchemaMismatchError
from lakehouse.tables import TableSpec, _f, register
from models.store import MODEL_FILE, TRANSFORM_FILE, ModelStore, load_artifact

log = logging.getLogger(__name__)

LINEAGE = (
    _f("model_name", StringType(), False), _f("model_version", IntegerType(), False),
    _f("input_table", StringType(), False), _f("input_version", LongType(), False),
    _f("run_id", StringType(), False), _f("scored_at", TimestampType(), False),
)
CLASSIFIER_FIELDS = (
    _f("row_id", LongType(), False), _f("prediction", IntegerType()),
    _f("probability", FloatType()), _f("probabilities", ArrayType(FloatType())),
)
# Added after the first release, so after the lineage (existing tables gain it at the end):
# the predicted value of a regression (prediction and probabilities are then NULL).
REGRESSION_FIELDS = (_f("value", FloatType()),)
_OUT = StructType([StructField(f.name, f.dataType, True)
                   for f in (*CLASSIFIER_FIELDS, *REGRESSION_FIELDS)])

# Executor-side cache: artifact file + mtime -> what was loaded from it, per Python worker.
_LOADED: dict[str, Any] = {}


@dataclass(frozen=True)
class _Loaded:
    """A model as the scorer uses it: the Keras model, its compiled forward pass, input width."""

    model: Any
    forward: Callable[[np.ndarray], Any]
    width: int
    regression: bool = False


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
    from models.family import get_family

    fam = get_family(family)
    fields, keys, late = ((fam.prediction_fields, fam.prediction_keys, ())
                          if fam.scorer is not None
                          else (CLASSIFIER_FIELDS, ("row_id",), REGRESSION_FIELDS))
    return register(TableSpec(
        "predictions", family, (*fields, *LINEAGE, *late),
        ("model_name", "model_version", "input_table", "input_version", *keys),
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


def load_once(artifact: str, filename: str, loader: Callable[[str], Any], loads=None) -> Any:
    """``loader(artifact)``, called at most once in this process per version of the artifact.

    Every family's scorer keeps what it loads here (a Keras model, a forest, embeddings,
    a DeepAR network). The cache key is ``filename`` inside ``artifact`` with its
    modification time, so an artifact folder that was replaced is loaded again rather
    than served stale. Inside a Spark task the heap is frozen after the load
    (``gc.freeze``): PySpark's daemon runs a full ``gc.collect()`` after every task of a
    reused worker, which would walk every loaded object (about 0.17 s per task with
    TensorFlow on a small machine) although the cache lives as long as the worker.

    Args:
        artifact: the model's artifact folder.
        filename: the file in it whose modification time versions the cache entry.
        loader: loads from the folder.
        loads: accumulator, +1 per load (None: not counted).
    """
    path = os.path.join(artifact, filename)
    key = f"{path}@{os.path.getmtime(path) if os.path.exists(path) else 0}"
    if key not in _LOADED:
        _LOADED[key] = loader(artifact)
        if loads is not None:
            loads.add(1)
        if task_threads():
            gc.collect()
            gc.freeze()
    return _LOADED[key]


def cached_model(artifact: str, loads=None):
    """The Keras model at ``artifact``, loaded at most once in this process."""
    return _cached(artifact, loads).model


def _cached(artifact: str, loads) -> _Loaded:
    return load_once(artifact, MODEL_FILE, _load, loads)


def _load(artifact: str) -> _Loaded:
    """Load a model in a worker: TF threads capped to the task's cores, a compiled forward pass."""
    import tensorflow as tf

    threads = task_threads()
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:   # TF already ran in this worker (another family's code)
            log.debug("TensorFlow threads already fixed in this worker; keeping them")
    model = load_artifact(artifact)
    width = int(model.input_shape[-1])
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                          input_signature=[tf.TensorSpec([None, width], tf.float32)])
    return _Loaded(model, forward, width, regression=model.layers[-1].name == "value")


def score_batches(batches: Iterator[pa.RecordBatch], artifact: str,
                  loads) -> Iterator[pa.RecordBatch]:
    """Executor side: class probabilities for each Arrow batch (``mapInArrow``).

    Features are read as one flat float buffer and reshaped, and probabilities are
    written back as an Arrow list array, so no row becomes a Python object.
    """
    loaded = _cached(artifact, loads)
    width = loaded.width
    names = [f.name for f in _OUT.fields]
    for batch in batches:
        if batch.num_rows == 0:
            continue
        row_ids = batch.column(batch.schema.get_field_index("row_id"))
        features = batch.column(batch.schema.get_field_index("features"))
        lengths = pc.list_value_length(features).to_numpy(zero_copy_only=False)
        if features.null_count or (lengths != width).any():
            bad = int(np.flatnonzero(lengths != width)[0]) if (lengths != width).any() else 0
            raise ValueError(f"row_id {row_ids[bad].as_py()}: features have length "
                             f"{lengths[bad]}, the model expects {width}")
        x = np.asarray(features.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        probs = np.asarray(loaded.forward(x.reshape(batch.num_rows, width)), dtype=np.float32)
        if loaded.regression:
            empty = pa.nulls(batch.num_rows)
            yield pa.RecordBatch.from_arrays(
                [row_ids, empty.cast(pa.int32()), empty.cast(pa.float32()),
                 empty.cast(pa.list_(pa.float32())), pa.array(probs[:, 0])], names=names)
            continue
        best = probs.argmax(axis=1)
        k = probs.shape[1]
        offsets = pa.array(np.arange(0, (len(best) + 1) * k, k, dtype=np.int32))
        yield pa.RecordBatch.from_arrays(
            [row_ids, pa.array(best.astype(np.int32)), pa.array(probs.max(axis=1)),
             pa.ListArray.from_arrays(offsets, pa.array(probs.ravel())),
             pa.nulls(batch.num_rows, pa.float32())], names=names)


def arrow_batch_rows(width: int, floats_per_batch: int = 1_000_000) -> int:
    """Rows per Arrow batch for features of this width.

    About 4 MB of features (1,000 to 100,000 rows): a call of the compiled forward pass
    costs little, and smaller batches let Spark convert the next batch while the
    worker scores this one (on the flights table 20,000 to 50,000 rows beat 100,000).
    """
    return max(1_000, min(100_000, floats_per_batch // max(width, 1)))


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
        model_name: stored model name.
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
    from models.family import get_family

    start = time.monotonic()
    fam = get_family(family)
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
    transform_file = os.path.join(record.artifact, TRANSFORM_FILE)
    if fam.scorer is None and "features" not in df.columns and os.path.exists(transform_file):
        # Raw rows (a silver-shaped table): the transform fitted at training makes features.
        with open(transform_file) as fh:
            transform = FeatureTransform.from_json(fh.read())
        df = features_for_scoring(df, transform)
        if transform.spec.image is not None:
            unreadable = df.filter(F.col("features").isNull()).count()
            if unreadable:
                log.warning("%s: %d image(s) cannot be read as %s; they are not scored", table,
                            unreadable, "x".join(map(str, transform.spec.image.shape)))
            df = df.filter(F.col("features").isNotNull())
    if fam.scorer is None:
        for column in ("row_id", "features"):
            if column not in df.columns:
                raise SchemaMismatchError(f"input table {table}: column {column!r} is missing; "
                                          f"model {model_name} needs row_id and features")
    run_id = run_id or default_run_id(model_name, record.version, table, version)
    target = delta.ensure_table(spark, predictions_spec(family), cfg.catalog.database)
    if spark.table(target).filter(F.col("run_id") == run_id).limit(1).count():
        log.info("scoring run %s is already in %s; nothing to do", run_id, target)
        return ScoreResult(target, run_id, 0, True, 0, time.monotonic() - start)

    loads = spark.sparkContext.accumulator(0)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    if fam.scorer is not None:
        predictions = fam.scorer(spark, cfg, record, df, loads)
        batch_rows = None
    else:
        scorer = functools.partial(score_batches, artifact=record.artifact, loads=loads)
        predictions = df.select("row_id", "features").mapInArrow(scorer, schema=_OUT)
        first = df.select(F.size("features").alias("n")).first()
        batch_rows = arrow_batch_rows(first["n"] if first else 1)
    out = predictions.select(
        "*", F.lit(model_name).alias("model_name"),
        F.lit(record.version).cast("int").alias("model_version"),
        F.lit(table).alias("input_table"), F.lit(version).cast("long").alias("input_version"),
        F.lit(run_id).alias("run_id"), F.lit(now).cast("timestamp").alias("scored_at"))
    batch_key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(batch_key)
    if batch_rows:
        spark.conf.set(batch_key, str(batch_rows))
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
