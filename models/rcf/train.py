"""Driver side of Random Cut Forest training: check the shingles, plan, judge the scores.

The ranks (:mod:`models.rcf.rank`) build the forest; the driver turns the evaluation
split's scores and labels into ROC-AUC / PR-AUC (a shingle is anomalous when it holds
a labelled point; unlabelled points are scored but not judged) and a plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.config import Config
from lakehouse.errors import ConfigError
from lakehouse.featuresets.stream import (
    channels_of,
    shingles_spec,
    value_columns,
    window_labels,
)
from lakehouse.tables import layer_table
from models.family import FamilyTrainer, RunPaths, TrainPlan
from models.rcf.plot import plot_anomalies
from models.rcf.rank import RcfSpec, rcf_rank
from models.runner import snapshot_files


class RcfTrainer(FamilyTrainer):
    """Trains a forest on ``gold.shingles_<dataset>``."""

    rank_fn = staticmethod(rcf_rank)

    def table(self, cfg: Config, dataset: str) -> str:
        """``gold_shingles_<dataset>``."""
        return shingles_spec(dataset).full_name(cfg.catalog.database)

    def plan(self, spark: SparkSession, cfg: Config, dataset: str, df: DataFrame, table: str,
             version: int, params: dict[str, Any]) -> TrainPlan:
        """The shingles must have been built with the run's ``shingle_size``."""
        channels = channels_of(cfg.datasets.get(dataset))
        widths = [r[0] for r in df.select(F.size("shingle")).distinct().collect()]
        if widths and widths != [int(params["shingle_size"]) * channels]:
            raise ConfigError(f"{table} v{version} holds shingles of {widths[0] // channels} "
                              f"points, but shingle_size={params['shingle_size']}; rebuild the "
                              f"features with --param shingle_size={params['shingle_size']}")
        files = snapshot_files(df)
        if not files["train"] and not files["test"]:
            raise ConfigError(f"{table} v{version} has no shingles")
        summary = (f"{params['num_trees']} trees x {params['num_samples_per_tree']} samples, "
                   f"shingle {params['shingle_size']} x {channels} values, "
                   f"{params['transform']}, max depth {params['max_depth'] or 'none'}")
        return TrainPlan(dict(params), summary, {"files": files, "channels": channels,
                                                 "entry": cfg.datasets.get(dataset),
                                                 "dataset": dataset})

    def rank_spec(self, cfg: Config, plan: TrainPlan, run: RunPaths) -> RcfSpec:
        """Fit on the train split (or the whole stream), evaluate on test (or the same)."""
        files = plan.state["files"]
        return RcfSpec(files["train"] or files["test"], files["test"] or files["train"],
                       plan.params, run.outputs, cfg.train.seed, plan.state["channels"],
                       run.lake)

    def example(self, spark: SparkSession, cfg: Config, plan: TrainPlan,
                staged: Path) -> pd.DataFrame | None:
        """The first 20 points of silver, with the columns the roles name."""
        entry = plan.state["entry"]
        if entry is None:
            return None
        silver = layer_table(cfg.catalog.database, "silver", entry.table_name)
        if not spark.catalog.tableExists(silver):
            return None
        options = self.pyfunc_options(plan)
        columns = [c for c in (options["stream_id"], options["split"], options["order"],
                               *options["values"]) if c]
        return spark.table(silver).select(*columns).orderBy(*columns[:-len(
            options["values"])]).limit(20).toPandas()

    def pyfunc_options(self, plan: TrainPlan) -> dict[str, Any]:
        """Which silver columns are the points' stream, split, time and values (roles)."""
        entry = plan.state["entry"]
        roles = dict(entry.roles) if entry is not None else {}
        return {"order": roles.get("order", "t"),
                "values": value_columns(entry) if entry is not None else ["value"],
                "stream_id": roles.get("stream_id") or "", "split": roles.get("split") or "",
                "name": plan.state["dataset"]}

    def evaluate(self, spark: SparkSession, cfg: Config, plan: TrainPlan,
                 ranks: list[dict[str, Any]], staged: Path, name: str) -> dict[str, float]:
        """Rank 0's scores judged against the labels (:func:`evaluate`)."""
        return evaluate(next(r for r in ranks if r["rank"] == 0), staged, name)


def evaluate(rank0: dict[str, Any], folder: Path, name: str) -> dict[str, float]:
    """ROC-AUC and PR-AUC of the evaluation split's scores, its alerts, and the anomaly plot.

    A shingle counts as anomalous when it holds a labelled point (:func:`window_labels`,
    per stream). Shingles without a label (an unlabelled stream) are scored and
    counted but not judged: without any label there are no ROC/PR figures. Point
    scores are judged point by point (``point_roc_auc``, ``point_pr_auc``: a point is
    anomalous when it is labelled) and the alerts by event (:func:`event_metrics`).
    The plot shows the first stream and marks its labelled points and alerts.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score


    stream = np.asarray(rank0["stream_id"], dtype=str)
    t, score = np.asarray(rank0["t"]), np.asarray(rank0["score"])
    raw = np.asarray(rank0["label"], dtype=np.float64)
    known = ~np.isnan(raw)
    point_label = np.where(known, raw, 0).astype(int)
    size = int(rank0["shingle_size"]) // int(rank0.get("channels", 1))
    label = np.zeros(len(t), dtype=int)
    for s in np.unique(stream):
        rows = stream == s
        label[rows] = window_labels(t[rows], point_label[rows], size)
    threshold = rank0["threshold"]
    flagged = score > threshold
    metrics = {"threshold": threshold, "num_trees": float(rank0["n_trees"]),
               "eval_points": float(len(score)), "flagged": float(flagged.sum()),
               "points_per_second": float(rank0["points_per_second"]),
               "labelled_points": float(known.sum())}
    judged, label = flagged[known], label[known]
    if 0 < label.sum() < len(label):
        metrics["roc_auc"] = float(roc_auc_score(label, score[known]))
        metrics["pr_auc"] = float(average_precision_score(label, score[known]))
        metrics["recall_at_threshold"] = float(judged[label == 1].mean())
        metrics["precision_at_threshold"] = float(label[judged].mean()) if judged.any() else 0.0
    points = np.asarray(rank0["point_score"], dtype=np.float64)
    alert = np.asarray(rank0["alert"], dtype=bool)
    metrics["alerts"] = float(alert.sum())
    own = point_label[known]
    if 0 < own.sum() < len(own):
        metrics["point_roc_auc"] = float(roc_auc_score(own, points[known]))
        metrics["point_pr_auc"] = float(average_precision_score(own, points[known]))
        metrics.update(event_metrics(stream[known], own, alert[known], size))
    first = stream == stream[0] if len(stream) else np.zeros(0, dtype=bool)
    plot_anomalies(t[first], np.asarray(rank0["value"])[first], score[first],
                   point_label[first], threshold, folder / "anomaly_scores.png",
                   alert[first],
                   f"{name}: anomaly scores" + (f" ({stream[0]})" if len(set(stream)) > 1
                                                else ""))
    return metrics


def event_metrics(stream: np.ndarray, label: np.ndarray, alert: np.ndarray, size: int
                  ) -> dict[str, float]:
    """How the alerts meet the labelled events (rows in stream, then time, order).

    An event is a run of consecutive labelled points of one stream; an alert belongs
    to it when it is raised on one of its points or on the ``size - 1`` points after
    it (whose shingles still hold it).

    Returns:
        ``events``, ``events_alerted``, ``alerts_per_event`` (alerts inside events per
        event alerted) and ``false_alerts`` (alerts outside every event).
    """
    inside = np.zeros(len(label), dtype=bool)
    events = alerted = 0
    for s in np.unique(stream):
        rows = np.flatnonzero(stream == s)
        marked = label[rows] == 1
        starts = np.flatnonzero(marked & ~np.r_[False, marked[:-1]])
        ends = np.flatnonzero(marked & ~np.r_[marked[1:], False])
        for b, e in zip(starts, ends, strict=True):
            window = rows[b:min(e + size, len(rows))]
            inside[window] = True
            events += 1
            alerted += bool(alert[window].any())
    within = float((alert & inside).sum())
    return {"events": float(events), "events_alerted": float(alerted),
            "alerts_per_event": within / alerted if alerted else 0.0,
            "false_alerts": float((alert & ~inside).sum())}
