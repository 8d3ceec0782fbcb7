"""Executor side of Random Cut Forest training: what each Horovod rank runs.

Each rank reads its shard of the fitting split's shingles through Petastorm, keeps
one reservoir sample per tree it owns (its share of ``num_trees``) and the moments
of the shingles' representation (``transform``, :mod:`models.rcf.transform`); the
ranks merge their moments into one scaling, build their trees on the scaled samples
(vectorised, :mod:`models.rcf.forest`) and the trees of all ranks are gathered into
one forest on rank 0. Rank 0 then scores the fitting split (to set the anomaly
threshold, mean + ``threshold_sigma`` standard deviations of those scores, stored with
the model) and the evaluation split, whose scores, point scores, alerts (:mod:`models.rcf.alerts`,
whose rule is fitted to the fitting split's point scores and stored with the model)
and labels the driver judges.
"""

from __future__ import annotations

import json
import resource
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lakehouse.lakefs import LakeFS
from models.rank import artifact_folder, start_rank
from models.rcf.alerts import AlertRule, alerts, point_scores
from models.rcf.forest import attribution, build_forest, merge, reservoir_samples
from models.rcf.learn import Learner, LearnSpec
from models.rcf.transform import Moments, fit_scaling, shape_features

META = "rcf.json"
SAMPLES_FILE = "samples.npy"


@dataclass(frozen=True)
class RcfSpec:
    """What each rank needs, as plain values."""

    fit_files: list[str]
    eval_files: list[str]
    params: dict[str, Any]
    artifact_dir: str                    # a lake location
    seed: int
    channels: int = 1
    lake: LakeFS = field(default_factory=LakeFS)


def _shingles(lake: LakeFS, files: list[str], shard: int | None, shards: int | None):
    """(stream_id, t, shingle, label) batches of a split's Parquet files, read with Petastorm.

    ``label`` is a float array, NaN where the stream has no label.
    """
    from petastorm import make_batch_reader

    with make_batch_reader(files, schema_fields=["stream_id", "t", "shingle", "label"],
                           cur_shard=shard, shard_count=shards, num_epochs=1,
                           shuffle_row_groups=False, workers_count=1,
                           reader_pool_type="dummy",
                           filesystem=lake.petastorm_filesystem(files[0])) as reader:
        for batch in reader:
            if len(batch.t):
                yield (np.asarray(batch.stream_id).astype(str), np.asarray(batch.t),
                       np.stack(batch.shingle).astype(np.float64),
                       np.asarray(batch.label, dtype=np.float64))


def _score_split(forest, scaling, lake: LakeFS, files: list[str], size: int,
                 rule: AlertRule | None = None, learning: LearnSpec | None = None,
                 samples: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Scores of a split's shingles, ordered by stream then time.

    Besides each shingle's ``score``: the newest point's ``point_score`` and its score
    without the difference to the point before (``alone``); with ``rule``, each
    stream's ``alert`` flags, decided in time order; with ``learning``, each stream
    scored by a forest that learns from it (starting from ``samples``).
    """
    keys = ("stream_id", "t", "value", "score", "label", "point_score", "alone", "alert")
    parts = list(_shingles(lake, files, None, None)) if files else []
    if not parts:
        return {k: np.empty(0) for k in keys}
    stream, t, x, label = (np.concatenate(p) for p in zip(*parts, strict=True))
    order = np.lexsort((t, stream))
    stream, t, x, label = stream[order], t[order], x[order], label[order]
    scaled = scaling.apply(x)
    attributed = attribution(forest, scaled) if learning is None else np.empty(scaled.shape)
    if learning is not None:
        for s in np.unique(stream):
            rows = stream == s
            learner = Learner.start(learning, str(s), forest, samples)
            attributed[rows] = learner.attribute(scaled[rows])
    own, alone = point_scores(attributed, scaling, size)
    alert = np.zeros(len(t), dtype=bool)
    if rule is not None:
        for s in np.unique(stream):
            rows = stream == s
            alert[rows] = alerts(own[rows], alone[rows], rule, rule.start())[0]
    return {"stream_id": stream, "t": t, "value": x[:, -1], "label": label,
            "score": attributed.sum(axis=1), "point_score": own, "alone": alone,
            "alert": alert}


def _scaled_samples(spec: RcfSpec, hvd, trees: int, rng: np.random.Generator):
    """Reservoir samples of this rank, scaled by the transform fitted over every shard.

    Returns:
        (samples in the forest's space, the scaling, shingles this rank read).
    """
    kind = spec.params["transform"]
    width = int(spec.params["shingle_size"]) * spec.channels
    moments = [Moments(0, np.zeros(width), np.zeros(width))]

    def counted():
        for _, _, x, _ in _shingles(spec.lake, spec.fit_files, hvd.rank(), hvd.size()):
            moments[0] += Moments.of(shape_features(x, kind, spec.channels))
            yield x

    samples = reservoir_samples(counted(), trees, int(spec.params["num_samples_per_tree"]), rng)
    scaling = fit_scaling(kind, hvd.allgather_object(moments[0]), spec.channels)
    scaled = scaling.apply(samples.reshape(-1, width)).reshape(samples.shape)
    return scaled, scaling, moments[0].n


def learning_json(params: dict[str, Any]) -> dict[str, Any]:
    """How the model learns while it scores, for its metadata (``updates`` false: not)."""
    if not params.get("updates"):
        return {"updates": False}
    decay = float(params["time_decay"]) or 1 / (10 * int(params["num_samples_per_tree"]))
    return {"updates": True, "time_decay": decay, "update_block": int(params["update_block"]),
            "max_depth": int(params["max_depth"])}


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
    sampled = hvd.allgather_object(samples if mine else None)
    result: dict[str, Any] = {"rank": rank, "size": size, "trees": mine, "points_seen": seen,
                              "build_seconds": build_seconds,
                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                              / 1024}
    if rank == 0:
        result.update(_finish(merge([f for f in forests if f is not None]), scaling, spec,
                              np.concatenate([s for s in sampled if s is not None])))
    return result


def _finish(forest, scaling, spec: RcfSpec, samples: np.ndarray) -> dict[str, Any]:
    """Rank 0: threshold from the fitting split, scores of the evaluation split, artifact.

    ``samples`` are the trees' samples (in the merged forest's tree order), stored for
    a forest that keeps learning (:mod:`models.rcf.learn`).
    """
    size = forest.dim // spec.channels
    fit = _score_split(forest, scaling, spec.lake, spec.fit_files, size)
    threshold = float(fit["score"].mean() + float(spec.params["threshold_sigma"])
                      * fit["score"].std())
    rule = AlertRule.fit(fit["point_score"], float(spec.params["alert_sigma"]),
                         int(spec.params["alert_horizon"]), size - 1)
    start = time.monotonic()
    learning = LearnSpec.from_meta({**learning_json(spec.params), "seed": spec.seed})
    scored = _score_split(forest, scaling, spec.lake, spec.eval_files, size, rule, learning,
                          samples)
    seconds = time.monotonic() - start
    with artifact_folder(spec.lake, spec.artifact_dir) as folder:
        forest.save(folder)
        np.save(Path(folder) / SAMPLES_FILE, samples)
        (Path(folder) / META).write_text(json.dumps(
            {"threshold": threshold, "shingle_size": forest.dim, "num_trees": forest.n_trees,
             "seed": spec.seed, **scaling.to_json(), **rule.to_json(),
             **learning_json(spec.params)}))
    del scored["alone"]
    return {"threshold": threshold, **{k: v.tolist() for k, v in scored.items()},
            "channels": spec.channels,
            "shingle_size": forest.dim,
            "n_trees": forest.n_trees, "points_per_second": len(scored["t"]) / max(seconds, 1e-9)}
