"""Scoring adapter: per point its anomaly score, its own share of it, and its alert.

Shingles go through the model's stored transform (:mod:`models.rcf.transform`)
before the forest scores them, exactly as at training. ``score`` is the shingle's
CoDisp and ``is_anomaly`` compares it with the model's threshold; ``point_score`` is
the newest point's share of it and ``alert`` the point's alert
(:mod:`models.rcf.alerts`), decided per stream in time order: each stream's (and
split's) scored points are gathered for it. Models trained before alert rules were stored get
point scores but no alerts. A model trained with ``updates`` learns from each stream
as it scores it (:mod:`models.rcf.learn`), from the model's own samples each run.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
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
from models.rcf.learn import Learner, LearnSpec
from models.rcf.rank import META, SAMPLES_FILE
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
# What the scoring step gives the alerting step (per Arrow batch, then per stream).
_SCORED = ("stream_id STRING, t BIGINT, score DOUBLE, is_anomaly BOOLEAN, threshold DOUBLE, "
           "point_score DOUBLE, alone DOUBLE, split STRING")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedForest:
    """What a scorer needs of a stored model."""

    forest: Forest
    threshold: float
    scaling: Scaling
    rule: AlertRule | None
    learning: LearnSpec | None = None
    samples: np.ndarray | None = None       # the trees' samples (a learning model's)

    @property
    def size(self) -> int:
        """Points per shingle."""
        return self.forest.dim // self.scaling.channels

    def learner(self, stream: str) -> Learner | None:
        """A stream's learner before its first point (None: the model does not learn)."""
        if self.learning is None:
            return None
        return Learner.start(self.learning, stream, self.forest, self.samples)

    def score(self, shingles: np.ndarray, learner: Learner | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shingle scores and the newest point's score with and without the last difference.

        With ``learner`` (a learning model) the stream's forest scores, then learns.
        """
        scaled = self.scaling.apply(shingles)
        attributed = (attribution(self.forest, scaled) if learner is None
                      else learner.attribute(scaled))
        own, alone = point_scores(attributed, self.scaling, self.size)
        return attributed.sum(axis=1), own, alone

    def scored(self, stream: Any, t: Any, shingles: np.ndarray,
               learner: Learner | None = None) -> pd.DataFrame:
        """Shingles' predictions before alerts, with ``alone`` (see :meth:`score`)."""
        score, own, alone = self.score(shingles, learner)
        return pd.DataFrame({"stream_id": stream, "t": t, "score": score,
                             "is_anomaly": score > self.threshold, "threshold": self.threshold,
                             "point_score": own, "alone": alone})

    def alerted(self, scored: pd.DataFrame, state: AlertState | None
                ) -> tuple[pd.DataFrame, AlertState | None]:
        """A stream's scored points (time order) with their alerts, and its state after.

        Args:
            scored: :meth:`scored` rows of one stream, in time order.
            state: the stream's alert state before them (None: its first points).
        """
        frame = scored.drop(columns=["alone"])
        if self.rule is None:
            return frame.assign(alert=None, alert_threshold=None), None
        alert, threshold, state = alerts(scored["point_score"].to_numpy(),
                                         scored["alone"].to_numpy(), self.rule,
                                         state or self.rule.start())
        return frame.assign(alert=alert, alert_threshold=threshold), state

    def frame(self, stream: Any, t: np.ndarray, shingles: np.ndarray,
              state: AlertState | None, learner: Learner | None = None
              ) -> tuple[pd.DataFrame, AlertState | None]:
        """A stream's predictions for its next shingles (time order), and its state after.

        Args:
            stream: the stream id.
            t: the time of each shingle's newest point.
            shingles: (n, size * channels) raw shingles.
            state: the stream's alert state before them (None: its first points).
            learner: the stream's learner (a learning model's); it learns these shingles.
        """
        return self.alerted(self.scored(stream, t, shingles, learner), state)


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
    learning = LearnSpec.from_meta(meta)
    samples = np.load(Path(artifact) / SAMPLES_FILE) if learning is not None else None
    return LoadedForest(forest, float(meta["threshold"]), scaling_from_json(meta, forest.dim),
                        rule, learning, samples)


def score_frames(frames: Iterator[pd.DataFrame], artifact: str, loads,
                 lake: LakeFS | None = None) -> Iterator[pd.DataFrame]:
    """Executor side: each Arrow batch's shingles scored (``mapInPandas``; a fixed forest)."""
    loaded = cached_forest(artifact, loads, lake)
    for frame in frames:
        if not frame.empty:
            yield loaded.scored(frame["stream_id"], frame["t"],
                                np.stack(frame["shingle"].to_numpy())).assign(split=frame["split"])


def alert_stream(frame: pd.DataFrame, artifact: str, lake: LakeFS | None = None
                 ) -> pd.DataFrame:
    """Executor side: one stream's scored points, their alerts decided in time order."""
    loaded = cached_forest(artifact, None, lake)
    return loaded.alerted(frame.drop(columns=["split"]).sort_values("t"), None)[0]


def score_stream(frame: pd.DataFrame, artifact: str, loads,
                 lake: LakeFS | None = None) -> pd.DataFrame:
    """Executor side: one stream's shingles scored and learnt in time order (a learning model)."""
    loaded = cached_forest(artifact, loads, lake)
    frame = frame.sort_values("t")
    stream = frame["stream_id"].iloc[0]
    out, _ = loaded.frame(stream, frame["t"].to_numpy(), np.stack(frame["shingle"].to_numpy()),
                          None, loaded.learner(str(stream)))
    return out


def score_rcf(spark: SparkSession, cfg: Config, record: ModelRecord, df: DataFrame,
              loads) -> DataFrame:
    """Predictions of an RCF model over a shingles table (``Family.scorer``).

    A fixed forest scores every Arrow batch where it lies; then each stream (and split)
    is gathered to decide its alerts in time order. A learning forest scores each stream
    in one piece, in time order.
    """
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
    lake = LakeFS.of(cfg)
    rows = df.select("stream_id", (F.col("split") if "split" in types else F.lit(""))
                     .cast("string").alias("split"), "t", "shingle")
    if record.params.get("updates"):
        fn = functools.partial(score_stream, artifact=record.artifact, loads=loads, lake=lake)
        return rows.groupBy("stream_id", "split").applyInPandas(
            lambda frame: fn(frame.drop(columns=["split"])), schema=_OUT)
    scored = rows.mapInPandas(functools.partial(score_frames, artifact=record.artifact,
                                                loads=loads, lake=lake), schema=_SCORED)
    return scored.groupBy("stream_id", "split").applyInPandas(
        functools.partial(alert_stream, artifact=record.artifact, lake=lake), schema=_OUT)


def predict_rcf(folder: str, rows: pd.DataFrame, order: str = "t",
                values: tuple[str, ...] | list[str] = ("value",), stream_id: str = "",
                split: str = "", name: str = "") -> pd.DataFrame:
    """A stream's points scored as ``lakeforge score`` scores their shingles, without Spark.

    Each stream (and split) is shingled in time order as its gold table is (a shingle
    ends at every point with ``shingle_size - 1`` points before it; a point with a
    missing value is left out), then scored and alerted in time order.

    Args:
        folder: the model's local artifact folder.
        rows: points shaped like the stream data set's silver table, or already
            shingled rows (``stream_id``, ``t``, ``shingle``).
        order: the column of each point's time (a number, a date or a timestamp).
        values: the value columns, in the data set's order.
        stream_id: the column naming each point's stream ("": one stream, ``name``).
        split: the column of each point's split ("": one part).
        name: the stream's id when the rows name none (the data set's name).

    Returns:
        One row per input row: ``score``, ``is_anomaly``, ``threshold``, ``point_score``,
        ``alert``, ``alert_threshold``; NULLs before a stream's first whole shingle.

    Raises:
        SchemaMismatchError: a column the points need is missing.
    """
    loaded = cached_forest(folder)
    size, channels = loaded.size, loaded.scaling.channels
    shingled = "shingle" in rows.columns
    if shingled:
        order, stream_id, split, values = "t", "stream_id", "split" if "split" in rows else "", ()
    needed = [order, *values, *([stream_id] if stream_id else [])]
    missing = [c for c in needed if c not in rows.columns]
    if missing:
        raise SchemaMismatchError(f"input points have no column(s) {', '.join(missing)}; "
                                  f"columns: {', '.join(map(str, rows.columns))}")
    frame = rows.reset_index(drop=True)
    t = frame[order]
    if pd.api.types.is_datetime64_any_dtype(t):
        t = (t - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)
    elif len(t) and hasattr(t.iloc[0], "toordinal"):         # dates: days since 1970
        t = t.map(lambda d: d.toordinal() - 719163)
    keys = pd.DataFrame({"stream": frame[stream_id].astype(str) if stream_id else name,
                         "split": frame[split].fillna("").astype(str) if split else "",
                         "t": t.astype(np.int64)}, index=frame.index)
    columns = [c.name for c in (*PREDICTION_FIELDS[2:], *LATE_FIELDS)]
    out = pd.DataFrame(index=frame.index, columns=columns, dtype=object)
    for (stream, _), part in keys.groupby(["stream", "split"], sort=False):
        part = part.sort_values("t", kind="stable")
        if shingled:
            shingles = np.stack(frame.loc[part.index, "shingle"].map(
                lambda s: np.asarray(s, dtype=float)).to_numpy())
        else:
            points = frame.loc[part.index, list(values)].to_numpy(dtype=float)
            whole = ~np.isnan(points).any(axis=1)
            part, points = part[whole], points[whole]
            if len(part) < size:
                continue
            shingles = np.lib.stride_tricks.sliding_window_view(points, size, axis=0)
            shingles = shingles.transpose(0, 2, 1).reshape(len(part) - size + 1, size * channels)
            part = part.iloc[size - 1:]
        scored, _ = loaded.frame(stream, part["t"].to_numpy(), shingles, None,
                                 loaded.learner(str(stream)))
        out.loc[part.index, columns] = scored[columns].to_numpy()
    return out.set_index(rows.index)
