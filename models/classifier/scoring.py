"""Batch scoring of the Keras classifier families (MLP, CNN) on executors.

The model is loaded once per executor Python process (:func:`models.scoring.load_once`)
and applied to Arrow batches with ``mapInArrow``: features are read as one flat float
buffer and reshaped, probabilities written back as Arrow list arrays, so no row
becomes a Python object. Raw rows (a silver-shaped table) go through the feature
transform the model was trained with first.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from lakehouse.config import Config
from lakehouse.errors import SchemaMismatchError
from lakehouse.featuresets.declared import FeatureTransform, features_for_scoring
from lakehouse.lakefs import LakeFS
from lakehouse.tables import _f
from models.scoring import load_once, task_threads
from models.store import MODEL_FILE, TRANSFORM_FILE, ModelRecord, load_artifact

log = logging.getLogger(__name__)

CLASSIFIER_FIELDS = (
    _f("row_id", LongType(), False), _f("prediction", IntegerType()),
    _f("probability", FloatType()), _f("probabilities", ArrayType(FloatType())),
)
# Added after the first release, so after the lineage (existing tables gain them at the
# end): the predicted value of a regression (prediction and probabilities are then NULL),
# and the name of the predicted class (NULL when the model knows no class names).
LATE_FIELDS = (_f("value", FloatType()), _f("prediction_label", StringType()))
_OUT = StructType([StructField(f.name, f.dataType, True)
                   for f in (*CLASSIFIER_FIELDS, *LATE_FIELDS[:1])])


@dataclass(frozen=True)
class _Loaded:
    """A model as the scorer uses it: the Keras model, its compiled forward pass, input width."""

    model: Any
    forward: Callable[[np.ndarray], Any]
    width: int
    regression: bool = False



def cached_model(artifact: str, loads=None, lake: LakeFS | None = None):
    """The Keras model at ``artifact``, loaded at most once in this process."""
    return _cached(artifact, loads, lake).model


def _cached(artifact: str, loads, lake: LakeFS | None) -> _Loaded:
    return load_once(artifact, MODEL_FILE, _load, loads, lake)


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


def score_batches(batches: Iterator[pa.RecordBatch], artifact: str, loads,
                  lake: LakeFS | None = None) -> Iterator[pa.RecordBatch]:
    """Executor side: class probabilities for each Arrow batch (``mapInArrow``).

    Features are read as one flat float buffer and reshaped, and probabilities are
    written back as an Arrow list array, so no row becomes a Python object.
    """
    loaded = _cached(artifact, loads, lake)
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


def score_classifier(spark: SparkSession, cfg: Config, record: ModelRecord, df: DataFrame,
                     loads) -> DataFrame:
    """Predictions of a Keras model over ``row_id``, ``features`` (``Family.scorer``).

    A table without ``features`` whose model kept its feature transform (a declared
    tabular or image feature set) is scored from its raw columns: the transform makes
    the features exactly as in training; an image that cannot be read is skipped with
    a warning. Sets Arrow batches of about 4 MB of features for the write.

    Raises:
        SchemaMismatchError: ``row_id`` or ``features`` is missing.
    """
    table = record.name
    lake = LakeFS.of(cfg)
    transform_file = os.path.join(lake.fetch(record.artifact), TRANSFORM_FILE)
    transform = None
    if os.path.exists(transform_file):
        with open(transform_file) as fh:
            transform = FeatureTransform.from_json(fh.read())
    if "features" not in df.columns and transform is not None:
        df = features_for_scoring(df, transform)
        if transform.spec.image is not None:
            unreadable = df.filter(F.col("features").isNull()).count()
            if unreadable:
                log.warning("%s: %d image(s) cannot be read as %s; they are not scored", table,
                            unreadable, "x".join(map(str, transform.spec.image.shape)))
            df = df.filter(F.col("features").isNotNull())
    for column in ("row_id", "features"):
        if column not in df.columns:
            raise SchemaMismatchError(f"input of model {record.name}: column {column!r} is "
                                      f"missing; it needs row_id and features")
    first = df.select(F.size("features").alias("n")).first()
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch",
                   str(arrow_batch_rows(first["n"] if first else 1)))
    scorer = functools.partial(score_batches, artifact=record.artifact, loads=loads, lake=lake)
    scored = df.select("row_id", "features").mapInArrow(scorer, schema=_OUT)
    names = transform.class_names if transform is not None else ()
    label = F.element_at(F.array(*map(F.lit, names)), F.col("prediction") + 1) if names \
        else F.lit(None)
    return scored.withColumn("prediction_label", label.cast("string"))


def predict_classifier(folder: str, rows: pd.DataFrame) -> pd.DataFrame:
    """An MLP's or CNN's predictions of raw rows or ``features`` vectors.

    Raises:
        SchemaMismatchError: neither a ``features`` column nor the columns the stored
            transform reads.
    """
    path = Path(folder) / TRANSFORM_FILE
    transform = FeatureTransform.from_json(path.read_text()) if path.exists() else None
    if "features" in rows.columns:
        x = np.stack([np.asarray(v, dtype=np.float32) for v in rows["features"]]) \
            if len(rows) else np.zeros((0, 0), np.float32)
    elif transform is not None:
        x = transform.features_of(rows)
    else:
        raise SchemaMismatchError(f"input rows have no column 'features' (columns: "
                                  f"{', '.join(map(str, rows.columns))}); this model keeps "
                                  f"no feature transform")
    names = ("prediction", "probability", "probabilities", "value")
    if not len(rows):
        return pd.DataFrame({n: [] for n in (*names, "prediction_label")})
    readable = ~np.isnan(x).any(axis=1)        # an image that could not be decoded
    width = x.shape[1]
    batch = pa.RecordBatch.from_arrays(
        [pa.array(np.flatnonzero(readable).astype(np.int64)),
         pa.ListArray.from_arrays(pa.array(np.arange(0, (readable.sum() + 1) * width, width,
                                                     dtype=np.int32)),
                                  pa.array(x[readable].ravel()))], names=["row_id", "features"])
    scored = pa.Table.from_batches(list(score_batches(iter([batch]), folder, None))).to_pandas()
    out = pd.DataFrame(index=range(len(rows)), columns=list(names), dtype=object)
    for name in names:
        out.loc[scored["row_id"].to_numpy(), name] = scored[name].to_numpy()
    classes = transform.class_names if transform is not None else ()
    out["prediction_label"] = [classes[int(p)] if classes and p is not None and p == p
                               else None for p in out["prediction"]]
    return out.set_index(rows.index)
