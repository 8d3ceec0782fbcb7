"""Scoring adapter: per point its anomaly score and a flag at the model's threshold.

Shingles go through the model's stored transform (:mod:`models.rcf.transform`)
before the forest scores them, exactly as at training.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DoubleType,
    FloatType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from lakehouse.config import Config
from lakehouse.errors import SchemaMismatchError
from lakehouse.lakefs import LakeFS
from lakehouse.tables import _f
from models.rcf.forest import FOREST_FILE, codisp, load_forest
from models.rcf.rank import META
from models.rcf.transform import scaling_from_json
from models.scoring import load_once
from models.store import ModelRecord

PREDICTION_FIELDS = (
    _f("stream_id", StringType(), False), _f("t", LongType(), False),
    _f("score", DoubleType()), _f("is_anomaly", BooleanType()), _f("threshold", DoubleType()),
)
_OUT = StructType([StructField(f.name, f.dataType, True) for f in PREDICTION_FIELDS])


def cached_forest(artifact: str, loads=None,
                  lake: LakeFS | None = None) -> tuple[Any, float, Any]:
    """The forest, threshold and shingle scaling stored at ``artifact``, loaded once per process."""
    return load_once(artifact, FOREST_FILE, _load_forest, loads, lake)


def _load_forest(artifact: str) -> tuple[Any, float, Any]:

    meta = json.loads((Path(artifact) / META).read_text())
    forest = load_forest(artifact)
    return forest, float(meta["threshold"]), scaling_from_json(meta, forest.dim)


def score_frames(frames: Iterator[pd.DataFrame], artifact: str, loads,
                 lake: LakeFS | None = None) -> Iterator[pd.DataFrame]:
    """Executor side: CoDisp of every shingle of each Arrow batch (``mapInPandas``)."""
    forest, threshold, scaling = cached_forest(artifact, loads, lake)
    for frame in frames:
        if frame.empty:
            continue
        score = codisp(forest, scaling.apply(np.stack(frame["shingle"].to_numpy())))
        yield pd.DataFrame({"stream_id": frame["stream_id"], "t": frame["t"], "score": score,
                            "is_anomaly": score > threshold, "threshold": threshold})


def score_rcf(spark: SparkSession, cfg: Config, record: ModelRecord, df: DataFrame,
              loads) -> DataFrame:
    """Predictions of an RCF model over a shingles table (``Family.scorer``)."""
    types = dict(df.dtypes)
    for column in ("stream_id", "t", "shingle"):
        if column not in types:
            raise SchemaMismatchError(f"input of {record.name}: column {column!r} is missing; "
                                      f"RCF scores a shingles table (stream_id, t, shingle)")
    width = int(record.params["shingle_size"])
    numeric = (ArrayType(DoubleType()).simpleString(), ArrayType(FloatType()).simpleString())
    if types["shingle"] not in numeric:
        raise SchemaMismatchError(f"input of {record.name}: column 'shingle' is "
                                  f"{types['shingle']}, expected array<double> of {width} values")
    fn = functools.partial(score_frames, artifact=record.artifact, loads=loads,
                           lake=LakeFS.of(cfg))
    return df.select("stream_id", "t", "shingle").mapInPandas(fn, schema=_OUT)
