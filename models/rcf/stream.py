"""Streaming RCF scoring: every new point of a stream data set scored as it arrives.

``lakeforge stream score rcf --model NAME`` runs a Structured Streaming query over the
data set's bronze table (append-only, so a Delta stream source; each new row shaped by
the entry's ``silver.select`` and kept only if it passes its quarantine rules, as
curation does). Points are grouped by ``stream_id`` (and split) and scored with
``applyInPandasWithState``: each stream's state in Spark's state store holds the last
``shingle_size - 1`` points and the last time scored, so a point's shingle is the same
one the batch path (``features`` + ``score rcf``) builds from silver, and its score is
the batch score of the same model. The forest is loaded once per executor Python
worker. A point whose time is not after its stream's last scored time (a late or
re-sent record) is not scored again.

**One event, one alert.** Each point also gets its own share of its shingle's score
(``point_score``) and its alert against a threshold that adapts to the stream, as
batch scoring does (:mod:`models.rcf.alerts`); the state carries the threshold's
statistics and how far back its last point over the threshold was across
micro-batches. An alert's row goes to ``ops_alerts`` (its ``score`` and ``threshold``
there are the point score and the alert threshold it crossed), a small table a SQL
client or a dashboard polls.

Results are appended to ``predictions_rcf_stream`` and ``ops_alerts`` exactly once
across restarts (a kill -9 included): the checkpoint (offsets and state) is on the lake
under ``streams/<database>/<model>/score``, and each micro-batch's writes carry Delta's
``txnAppId`` (the query's id) and ``txnVersion`` (the micro-batch number), so a
replayed micro-batch's committed writes are skipped. With
``available_now`` the query scores what bronze holds and stops; the state carries over
to the next run.

A model trained with ``updates`` keeps learning from each stream
(:mod:`models.rcf.learn`): the stream's samples, their keys and the points since its
last block are part of its state (``trees x samples x d`` values per stream), and its
trees are rebuilt from them at the start of each micro-batch. Blocks count from the
stream's first point, so its scores are still batch scoring's. A stream data set with
a ``split`` role keeps one state per stream and split, as the batch path shingles and
alerts each split on its own (a split's times may start again from 0).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming.state import GroupState, GroupStateTimeout
from pyspark.sql.types import (
    BooleanType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    TimestampType,
)

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.curate import to_silver
from lakehouse.dataset_check import plan_dataset
from lakehouse.errors import ConfigError
from lakehouse.featuresets.stream import channels_of, stream_points
from lakehouse.lakefs import LakeFS
from lakehouse.quality import apply_rules
from lakehouse.sources.base import ERROR
from lakehouse.stream import StreamQuery, checkpoint_location, run_queries, stream_id
from lakehouse.tables import TableSpec, _f, register, table
from models.rcf.alerts import AlertState
from models.rcf.learn import Learner
from models.rcf.scoring import LoadedForest, cached_forest
from models.store import ModelStore

log = logging.getLogger(__name__)
TABLE = "predictions_rcf_stream"
OUTPUT = ("stream_id STRING, split STRING, t BIGINT, score DOUBLE, is_anomaly BOOLEAN, "
          "threshold DOUBLE, point_score DOUBLE, alert BOOLEAN, alert_threshold DOUBLE, "
          "scored_at TIMESTAMP")
_COLUMNS = [part.split()[0] for part in OUTPUT.split(", ")]
# The last shingle_size - 1 points' values, the last point's time, the alert state
# (null for a model without an alert rule) and a learning model's learner (its samples,
# their keys, the points learnt and those scored since its last block; null otherwise).
STATE = ("tail ARRAY<DOUBLE>, last_t BIGINT, alert_log_mean DOUBLE, alert_log_var DOUBLE, "
         "since_over INT, samples ARRAY<DOUBLE>, sample_keys ARRAY<DOUBLE>, learnt BIGINT, "
         "pending ARRAY<DOUBLE>")
PREDICTIONS = register(TableSpec(
    "predictions", "rcf_stream",
    (_f("model_name", StringType(), False), _f("model_version", IntegerType(), False),
     _f("stream_id", StringType(), False), _f("t", LongType(), False),
     _f("score", DoubleType()), _f("is_anomaly", BooleanType()), _f("alert", BooleanType()),
     _f("threshold", DoubleType()), _f("input_table", StringType()),
     _f("scored_at", TimestampType()), _f("point_score", DoubleType()),
     _f("alert_threshold", DoubleType()), _f("split", StringType())),
    ("model_name", "model_version", "stream_id", "split", "t"), partition_by=("model_name",),
    catalog_name=TABLE, comment="RCF scores of stream points as they arrived"))


def stream_score_rcf(spark: SparkSession, cfg: Config, model: str,
                     model_version: int | str = "latest", available_now: bool = False,
                     stop: threading.Event | None = None, dataset: str | None = None) -> str:
    """Score a stream data set's new points with an RCF model (see the module docstring).

    Args:
        spark: the session.
        cfg: configuration.
        model: the stored RCF model's name.
        model_version: its version, or ``latest``.
        available_now: score what bronze holds now, then stop.
        stop: when set, the query stops (also set by SIGINT and SIGTERM when called
            from the main thread); a micro-batch it cuts short is scored again, exactly
            once, on the next start.
        dataset: the stream data set whose points to score (default: the one the model
            was trained on).

    Returns:
        The predictions table.

    Raises:
        ConfigError: the model is not an RCF model, or its data set is not in the catalog.
        ModelNotFoundError: no such model.
    """
    query = score_query(spark, cfg, model, model_version, dataset)
    run_queries([query], cfg, available_now, stop)
    return PREDICTIONS.full_name(cfg.catalog.database)


def score_query(spark: SparkSession, cfg: Config, model: str,
                model_version: int | str = "latest", dataset: str | None = None
                ) -> StreamQuery:
    """The scoring query of an RCF model, ready to run (see :func:`stream_score_rcf`).

    Args:
        spark: the session.
        cfg: configuration.
        model: the stored RCF model's name.
        model_version: its version, or ``latest``.
        dataset: the stream data set whose points to score (default: the one the model
            was trained on); its points must have as many values as the model's.

    Raises:
        ConfigError: the model is not an RCF model, or the data set is not in the
            catalog, is not a stream or its points do not fit the model.
        ModelNotFoundError: no such model.
    """
    record = ModelStore(spark, cfg).get(model, model_version)
    if record.family != "rcf":
        raise ConfigError(f"model {model!r} v{record.version} is a {record.family} model, "
                          f"not rcf")
    trained_on = record.training_table.rsplit(".", 1)[-1].removeprefix("gold_shingles_")
    dataset = dataset or trained_on
    if dataset not in cfg.datasets:
        raise ConfigError(f"model {model!r}: stream data set {dataset!r} is not in the catalog")
    entry = cfg.datasets[dataset]
    if entry.kind != "stream":
        raise ConfigError(f"model {model!r} scores stream points; data set {dataset!r} is a "
                          f"{entry.kind} data set")
    channels = cached_forest(record.artifact, None, LakeFS.of(cfg)).scaling.channels
    if channels_of(entry) != channels:
        raise ConfigError(f"model {model!r} scores points of {channels} value(s); data set "
                          f"{dataset!r}'s points have {channels_of(entry)}")
    plan = plan_dataset(spark, entry)
    entry = plan.entry
    db = cfg.catalog.database
    bronze = plan.bronze.full_name(db)
    reader = spark.readStream.format("delta")
    if cfg.stream.max_files_per_batch:
        reader = reader.option("maxFilesPerTrigger", cfg.stream.max_files_per_batch)
    rows = reader.table(bronze).filter(F.col("_source") == entry.name)
    checked = apply_rules(to_silver(rows, entry, plan.bronze), entry.silver.rules)
    points = (stream_points(checked.filter(F.col(ERROR).isNull()), entry)
              .filter(F.forall("values", lambda v: v.isNotNull() & ~F.isnan(v)))
              .select("stream_id", "split", "t", "values"))
    score = functools.partial(score_points, artifact=record.artifact, lake=LakeFS.of(cfg))
    scored = points.groupBy("stream_id", "split").applyInPandasWithState(
        score, OUTPUT, STATE, "append", GroupStateTimeout.NoTimeout)
    out = scored.select(F.lit(record.name).alias("model_name"),
                        F.lit(record.version).cast("int").alias("model_version"),
                        "stream_id", "t", "score", "is_anomaly", "alert", "threshold",
                        F.lit(bronze).alias("input_table"), "scored_at", "point_score",
                        "alert_threshold", "split")
    checkpoint = checkpoint_location(
        cfg, record.name, "score" if dataset == trained_on else f"score-{dataset}")
    target = delta.ensure_table(spark, PREDICTIONS, db)
    alerts = delta.ensure_table(spark, table("ops.alerts"), db)
    stream = stream_id(LakeFS.of(cfg), checkpoint)

    def write(batch: DataFrame, epoch: int) -> None:
        app_id = f"lakeforge/stream-score/{record.name}/{stream}"
        batch = batch.persist()
        try:
            start = time.monotonic()
            counts = batch.agg(F.count(F.lit(1)).alias("points"),
                               F.count(F.when(F.col("alert"), 1)).alias("alerts")).first()
            if not counts.points:
                return
            scored = time.monotonic()
            delta.append_once(batch, target, app_id, epoch)
            if counts.alerts:      # a replayed micro-batch finds the same alerts
                alerted = batch.filter("alert").select(
                    F.lit(dataset).alias("dataset"), "stream_id", "t",
                    F.col("point_score").alias("score"),
                    F.col("alert_threshold").alias("threshold"), "model_name", "model_version",
                    F.col("scored_at").alias("alerted_at"), "split")
                delta.append_once(alerted, alerts, f"{app_id}/alerts", epoch)
            log.info("%s: micro-batch %d: %s point(s) scored, %s alert(s) (scoring %.1f s, "
                     "writing %.1f s)", record.name, epoch, f"{counts.points:,}",
                     f"{counts.alerts:,}", scored - start, time.monotonic() - scored)
        finally:
            batch.unpersist()

    writer = (out.writeStream.foreachBatch(write).option("checkpointLocation", checkpoint)
              .queryName(f"lakeforge_score_{record.name}"))
    return StreamQuery(
        f"scoring with {record.name}", writer,
        f"scoring {dataset}'s new points with {record.name} v{record.version} into {target}; "
        f"checkpoint {checkpoint}", checkpoint=checkpoint)


def score_points(key: tuple, frames: Iterator[pd.DataFrame], state: GroupState, *,
                 artifact: str, lake: LakeFS) -> Iterator[pd.DataFrame]:
    """Executor side: one stream's new points scored, its tail kept in ``state``.

    Args:
        key: ``(stream_id, split)``.
        frames: the stream's new points (``t``, ``values``) of this micro-batch.
        state: see ``STATE``: the last ``size - 1`` points' values (flattened), the time
            of the last point seen, the stream's :class:`~models.rcf.alerts.AlertState`
            and, for a learning model, its :class:`~models.rcf.learn.Learner`.
        artifact: the model's folder.
        lake: the lake, to fetch the artifact.
    """
    loaded = cached_forest(artifact, None, lake)
    size, channels = loaded.size, loaded.scaling.channels
    points = pd.concat(list(frames), ignore_index=True)
    tail, last_t, alert_state, saved = np.zeros(0), None, None, None
    if state.exists:
        saved = state.get
        tail, last_t = np.asarray(saved[0], dtype=np.float64), int(saved[1])
        if saved[2] is not None:
            alert_state = AlertState(saved[2], saved[3], int(saved[4]))
    if last_t is not None:
        points = points[points["t"] > last_t]
    # One point per time (the last record of a time wins, as silver's MERGE has it).
    points = points.drop_duplicates("t", keep="last").sort_values("t")
    if points.empty:
        return
    learner = _learner(loaded, str(key[0]), saved) if saved is not None else None
    new = np.stack(points["values"].to_numpy()).astype(np.float64).reshape(-1, channels)
    seq = np.concatenate([tail.reshape(-1, channels), new])
    before = len(seq) - len(new)
    keep = [float(v) for v in seq[-(size - 1):].ravel()] if size > 1 else []
    last = int(points["t"].iloc[-1])
    if len(seq) < size:
        state.update((keep, last, *_alert_fields(alert_state), *_learner_fields(learner)))
        return
    windows = np.lib.stride_tricks.sliding_window_view(seq, (size, channels))[:, 0]
    shingles = windows.reshape(len(windows), size * channels)
    first = max(0, before - (size - 1))          # the first window that ends at a new point
    shingles = shingles[first:]
    ends = points["t"].to_numpy()[len(points) - len(shingles):]
    learner = learner or loaded.learner(str(key[0]))
    frame, alert_state = loaded.frame(key[0], ends, shingles, alert_state, learner)
    state.update((keep, last, *_alert_fields(alert_state), *_learner_fields(learner)))
    now = pd.Timestamp(dt.datetime.now(dt.UTC).replace(tzinfo=None))
    yield frame.assign(split=key[1], scored_at=now)[_COLUMNS]


def _learner(loaded: LoadedForest, stream: str, saved: tuple) -> Learner | None:
    """A learning model's learner of a stream, from its saved state (None: none saved)."""
    if loaded.learning is None or saved[7] is None:
        return None
    trees, size, d = loaded.samples.shape
    return Learner.restore(loaded.learning, stream, loaded.forest,
                           np.asarray(saved[5]).reshape(trees, size, d),
                           np.asarray(saved[6]).reshape(trees, size), int(saved[7]),
                           np.asarray(saved[8], dtype=np.float64).reshape(-1, d))


def _learner_fields(learner: Learner | None) -> tuple:
    if learner is None:
        return None, None, None, None
    return (learner.samples.ravel().tolist(), learner.keys.ravel().tolist(), learner.seen,
            learner.pending.ravel().tolist())


def _alert_fields(state: AlertState | None) -> tuple:
    return (None, None, None) if state is None else (state.log_mean, state.log_var,
                                                     state.since_over)
