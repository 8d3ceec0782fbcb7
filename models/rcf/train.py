"""Training a Random Cut Forest across Horovod ranks.

Each rank reads its shard of the fitting split's shingles through Petastorm, keeps
one reservoir sample per tree it owns (its share of ``num_trees``) and the moments
of the shingles' representation (``transform``, :mod:`models.rcf.transform`); the
ranks merge their moments into one scaling, build their trees on the scaled samples
(vectorised, :mod:`models.rcf.forest`) and the trees of all ranks are gathered into
one forest on rank 0. Rank 0 then scores the fitting split (to set
the anomaly threshold, mean + ``threshold_sigma`` standard deviations of those
scores, stored with the model) and the evaluation split, whose scores and labels
the driver turns into ROC-AUC / PR-AUC (a shingle is anomalous when it holds a
labelled point) and a plot.
"""

from __future__ import annotations

import json
import logging
import resource
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse.config import Config
from lakehouse.errors import ConfigError
from models.rcf.shingles import channels_of, shingles_spec, window_labels
from models.runner import (
    TrainResult,
    default_run_id,
    pin_table,
    registered_run,
    run_ranks,
    snapshot_files,
    staging_dir,
)
from models.store import ModelStore

log = logging.getLogger(__name__)
META = "rcf.json"


@dataclass(frozen=True)
class RcfSpec:
    """What each rank needs, as plain values."""

    fit_files: list[str]
    eval_files: list[str]
    params: dict[str, Any]
    artifact_dir: str
    seed: int
    channels: int = 1


def _shingles(files: list[str], shard: int | None, shards: int | None):
    """(stream_id, t, shingle, label) batches of a split's Parquet files, read with Petastorm.

    ``label`` is a float array, NaN where the stream has no label.
    """
    from petastorm import make_batch_reader

    with make_batch_reader(files, schema_fields=["stream_id", "t", "shingle", "label"],
                           cur_shard=shard, shard_count=shards, num_epochs=1,
                           shuffle_row_groups=False, workers_count=1,
                           reader_pool_type="dummy") as reader:
        for batch in reader:
            if len(batch.t):
                yield (np.asarray(batch.stream_id).astype(str), np.asarray(batch.t),
                       np.stack(batch.shingle).astype(np.float64),
                       np.asarray(batch.label, dtype=np.float64))


def _score_split(forest, scaling, files: list[str]) -> dict[str, np.ndarray]:
    """Scores of a split's shingles, ordered by stream then time."""
    from models.rcf.forest import codisp

    parts = list(_shingles(files, None, None))
    if not parts:
        return {k: np.empty(0) for k in ("stream_id", "t", "value", "score", "label")}
    stream, t, x, label = (np.concatenate(p) for p in zip(*parts, strict=True))
    order = np.lexsort((t, stream))
    return {"stream_id": stream[order], "t": t[order], "value": x[order, -1],
            "label": label[order], "score": codisp(forest, scaling.apply(x[order]))}


def _scaled_samples(spec: RcfSpec, hvd, trees: int, rng: np.random.Generator):
    """Reservoir samples of this rank, scaled by the transform fitted over every shard.

    Returns:
        (samples in the forest's space, the scaling, shingles this rank read).
    """
    from models.rcf.forest import reservoir_samples
    from models.rcf.transform import Moments, fit_scaling, shape_features

    kind = spec.params["transform"]
    width = int(spec.params["shingle_size"]) * spec.channels
    moments = [Moments(0, np.zeros(width), np.zeros(width))]

    def counted():
        for _, _, x, _ in _shingles(spec.fit_files, hvd.rank(), hvd.size()):
            moments[0] += Moments.of(shape_features(x, kind, spec.channels))
            yield x

    samples = reservoir_samples(counted(), trees, int(spec.params["num_samples_per_tree"]), rng)
    scaling = fit_scaling(kind, hvd.allgather_object(moments[0]), spec.channels)
    scaled = scaling.apply(samples.reshape(-1, width)).reshape(samples.shape)
    return scaled, scaling, moments[0].n


def rcf_rank(spec: RcfSpec) -> dict[str, Any]:
    """Build this rank's trees from reservoir samples of its shard; rank 0 merges and scores.

    The samples are scaled by the transform fitted to the moments of every rank's
    shard, so all trees live in the same space.

    Returns:
        ``rank``, ``size``, ``trees``, ``points_seen``, ``build_seconds``,
        ``peak_rss_mb``; on rank 0 also the threshold, the evaluation split's ``t``,
        ``score`` and ``label`` lists, ``shingle_size`` and ``points_per_second`` of
        scoring.
    """
    from models.rank import start_rank
    from models.rcf.forest import build_forest, merge

    hvd = start_rank()
    warnings.filterwarnings("ignore", message="schema_fields behavior")   # "t" vs "t_start"
    rank, size = hvd.rank(), hvd.size()
    total = int(spec.params["num_trees"])
    mine = total // size + (rank < total % size)
    rng = np.random.default_rng([spec.seed, rank])
    start = time.monotonic()
    samples, scaling, seen = _scaled_samples(spec, hvd, mine, rng)
    forest = build_forest(samples, rng, int(spec.params["max_depth"])) if mine else None
    build_seconds = time.monotonic() - start
    forests = hvd.allgather_object(forest)
    result: dict[str, Any] = {"rank": rank, "size": size, "trees": mine, "points_seen": seen,
                              "build_seconds": build_seconds,
                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                              / 1024}
    if rank == 0:
        result.update(_finish(merge([f for f in forests if f is not None]), scaling, spec))
    return result


def _finish(forest, scaling, spec: RcfSpec) -> dict[str, Any]:
    """Rank 0: threshold from the fitting split, scores of the evaluation split, artifact."""
    fit = _score_split(forest, scaling, spec.fit_files)
    threshold = float(fit["score"].mean() + float(spec.params["threshold_sigma"])
                      * fit["score"].std())
    start = time.monotonic()
    scored = _score_split(forest, scaling, spec.eval_files)
    seconds = time.monotonic() - start
    Path(spec.artifact_dir).mkdir(parents=True, exist_ok=True)
    forest.save(spec.artifact_dir)
    (Path(spec.artifact_dir) / META).write_text(json.dumps(
        {"threshold": threshold, "shingle_size": forest.dim, "num_trees": forest.n_trees,
         "seed": spec.seed, **scaling.to_json()}))
    return {"threshold": threshold, **{k: v.tolist() for k, v in scored.items()},
            "channels": spec.channels,
            "shingle_size": forest.dim,
            "n_trees": forest.n_trees, "points_per_second": len(scored["t"]) / max(seconds, 1e-9)}


def train_rcf(spark: SparkSession, cfg: Config, dataset: str, version: int | None,
              run_id: str | None, params: dict[str, Any], name: str | None) -> TrainResult:
    """Train a forest on ``gold.shingles_<dataset>`` and register it (``Family.trainer``)."""
    start = time.monotonic()
    table = shingles_spec(dataset).full_name(cfg.catalog.database)
    df, version = pin_table(spark, table, version)
    channels = channels_of(cfg.datasets.get(dataset))
    widths = [r[0] for r in df.select(F.size("shingle")).distinct().collect()]
    if widths and widths != [int(params["shingle_size"]) * channels]:
        raise ConfigError(f"{table} v{version} holds shingles of {widths[0] // channels} "
                          f"points, but shingle_size={params['shingle_size']}; rebuild the "
                          f"features with --param shingle_size={params['shingle_size']}")
    files = snapshot_files(df)
    if not files["train"] and not files["test"]:
        raise ConfigError(f"{table} v{version} has no shingles")
    name = name or f"{dataset}_rcf"
    run_id = run_id or default_run_id(name, "rcf", table, version, params)
    done = registered_run(spark, cfg, name, run_id, start)
    if done is not None:
        return done
    store = ModelStore(spark, cfg)
    staged = staging_dir(cfg, run_id)
    spec = RcfSpec(files["train"] or files["test"], files["test"] or files["train"], params,
                   str(staged), cfg.train.seed, channels)
    log.info("training %s (rcf, %d trees x %d samples, shingle %d, %s, max depth %s) on %s v%d, "
             "%d ranks", name, params["num_trees"], params["num_samples_per_tree"],
             params["shingle_size"], params["transform"], params["max_depth"] or "none", table,
             version, cfg.train.num_proc)
    ranks = run_ranks(spec, cfg, rcf_rank)
    rank0 = next(r for r in ranks if r["rank"] == 0)
    metrics = evaluate(rank0, staged, name)
    record = store.register(name, "rcf", staged, params, metrics, table, version, run_id)
    seconds = time.monotonic() - start
    log.info("registered %s v%d in %.0fs: %s", name, record.version, seconds,
             ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    return TrainResult(record, {}, ranks, seconds)


def evaluate(rank0: dict[str, Any], folder: Path, name: str) -> dict[str, float]:
    """ROC-AUC and PR-AUC of the evaluation split's scores, and the anomaly plot.

    A shingle counts as anomalous when it holds a labelled point (:func:`window_labels`,
    per stream). Shingles without a label (an unlabelled stream) are scored and
    counted but not judged: without any label there are no ROC/PR figures. The plot
    shows the first stream and marks its labelled points.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    from models.rcf.plot import plot_anomalies

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
    first = stream == stream[0] if len(stream) else np.zeros(0, dtype=bool)
    plot_anomalies(t[first], np.asarray(rank0["value"])[first], score[first],
                   point_label[first], threshold, folder / "anomaly_scores.png",
                   f"{name}: anomaly scores" + (f" ({stream[0]})" if len(set(stream)) > 1
                                                else ""))
    return metrics
