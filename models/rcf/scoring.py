"""Scoring adapter: per point its anomaly score, its own share of it, and its alert.

Shingles go through the model's stored transform (:mod:`models.rcf.transform`)
before the forest scores them, exactly as at training. ``score`` is the shingle's
CoDisp and ``is_anomaly`` compares it with the model's threshold; ``point_score`` is
the newest point's share of it and ``alert`` the point's alert
(:mod:`models.rcf.alerts`), decided per stream in time order: each stream (and
split) is scored as one group. Models trained before alert rules were stored get
point scores but no alerts.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
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
from models.rcf.alerts import AlertRule, AlertState, alerts, point_scores
from models.rcf.forest import FOREST_FILE, Forest, attribution, load_forest
from models.rcf.rank import META
from models.rcf.transform import Scaling, scaling_from_json
from models.scoring import load_once
from models.store import ModelRecord

PREDICTION_FIELDS = (
    _f("stream_id", StringType(), False), _f("t", LongType(), False),
    _f("score", DoubleType()), _f("is_anomaly", BooleanType()), _f("threshold", DoubleType()),
)
# Columns added with point scores and alerts (tables made before them gain them).
LATE_FIELDS = (
    _f("point_score", DoubleType()), _f("alert", BooleanType()),
    _f("alert_threshold", DoubleType()),
)
_OUT = StructType([StructField(f.name, f.dataType, True)
                   for f in (*PREDICTION_FIELDS, *LATE_FIELDS)])
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedForest:
    """What a scorer needs of a stored model."""

    forest: Forest
    threshold: float
    scaling: Scaling
    rule: AlertRule | None

    @property
    def size(self) -> int:
        """Points per shingle."""
        return self.forest.dim // self.scaling.channels

    def score(self, shingles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shingle scores and the newest point's score with and without the last difference."""
        attributed = attribution(self.forest, self.scaling.apply(shingles))
        own, alone = point_scores(attributed, self.scaling, self.size)
        return attributed.sum(axis=1), own, alone

    def frame(self, stream: Any, t: np.ndarray, shingles: np.ndarray,
              state: AlertState | None) -> tuple[pd.DataFrame, AlertState | None]:
        """A stream's predictions for its next shingles (time order), and its state after.

        Args:
            stream: the stream id.
            t: the time of each shingle's newest point.
            shingles: (n, size * channels) raw shingles.
            state: the stream's alert state before them (None: its first points).
        """
        score, own, alone = self.score(shingles)
        frame = pd.DataFrame({"stream_id": stream, "t": t, "score": score,
                              "is_anomaly": score > self.threshold, "threshold": self.threshold,
                              "point_score": own})
        if self.rule is None:
            return frame.assign(alert=None, alert_threshold=None), None
        alert, threshold, state = alerts(own, alone, self.rule, state or self.rule.start())
        return frame.assign(alert=alert, alert_threshold=threshold), state


def cached_forest(artifact: str, loads=None, lake: LakeFS | None = None) -> LoadedForest:
    """The stored forest, thresholds and shingle scaling, loaded once per process."""
    return load_once(artifact, FOREST_FILE, _load_forest, loads, lake)


def _load_forest(artifact: str) -> LoadedForest:
    meta = json.loads((Path(artifact) / META).read_text())
    forest = load_forest(artifact)
    rule = AlertRule.from_meta(meta)
    if rule is None:
        log.warning("the RCF model at %s was trained before alert rules were stored: its "
                    "points get scores but no alerts; train it again for alerts", artifact)
    return LoadedForest(forest, float(meta["threshold"]), scaling_from_json(meta, forest.dim),
                        rule)


def score_stream(frame: pd.DataFrame, artifact: str, loads,
                 lake: LakeFS | None = None) -> pd.DataFrame:
    """Executor side: one stream's shingles scored in time order (``applyInPandas``)."""
    loaded = cached_forest(artifact, loads, lake)
    frame = frame.sort_values("t")
    out, _ = loaded.frame(frame["stream_id"].iloc[0], frame["t"].to_numpy(),
                          np.stack(frame["shingle"].to_numpy()), None)
    return out


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
    fn = functools.partial(score_stream, artifact=record.artifact, loads=loads,
                           lake=LakeFS.of(cfg))
    streams = ["stream_id", *(["split"] if "split" in types else [])]
    return (df.select(*streams, "t", "shingle").groupBy(*streams)
            .applyInPandas(lambda frame: fn(frame.drop(columns=streams[1:])), schema=_OUT))
