"""A forest that keeps learning while it scores: time-decayed samples, trees rebuilt in blocks.

A stream drifts (a pump wears, a season turns), and a forest fixed at training keeps
measuring it against the past. With updates on, each tree keeps a time-decayed
reservoir sample, as AWS's ThresholdedRandomCutForest does: the ``k``-th point seen
gets the key ``log(-log u) - decay * k`` (``u`` uniform, drawn per tree), and a tree's
sample is the ``num_samples_per_tree`` points with the smallest keys, so a recent
point is more likely kept than an old one, and a point is forgotten after about
``1 / decay`` points on average (weighted reservoir sampling, Efraimidis and Spirakis).

AWS's forest inserts each point into its trees and deletes the one it evicts. Here
trees live in flat arrays built all at once (:func:`models.rcf.forest.build_forest`),
so points are scored and learnt in blocks of ``block`` points: a block is scored by
the forest as it stood before it, then its points enter the samples and the trees are
rebuilt from them. A block of 1 is AWS's score-then-update; larger blocks cost fewer
rebuilds, and a point is then judged against a forest up to ``block - 1`` points
older. Blocks are counted from a stream's first point, and each block's random draws
are seeded by the model's seed, the stream and the block, so batch scoring and the
streaming scorer (whatever its micro-batches) learn and score alike.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.rcf.forest import Forest, attribution, build_forest


@dataclass(frozen=True)
class LearnSpec:
    """How a model's forest learns while it scores (stored with the model).

    Attributes:
        decay: the time decay per point.
        block: points learnt together (the trees are rebuilt after each block).
        max_depth: the trees' depth cap (0: none).
        seed: the model's seed; with the stream's id and the points learnt it seeds
            each block's keys and cuts, so a stream learns the same wherever and in
            whatever micro-batches its points are scored.
    """

    decay: float
    block: int
    max_depth: int
    seed: int

    @staticmethod
    def from_meta(meta: dict[str, Any]) -> LearnSpec | None:
        """The spec stored in a model's metadata (None: the model does not learn)."""
        if not meta.get("updates"):
            return None
        return LearnSpec(float(meta["time_decay"]), int(meta["update_block"]),
                         int(meta["max_depth"]), int(meta["seed"]))

    def rng(self, stream: str, seen: int, purpose: int) -> np.random.Generator:
        """The generator of a stream's block that ends at ``seen`` (0: keys, 1: cuts)."""
        return np.random.default_rng([self.seed, zlib.crc32(stream.encode()), seen, purpose])


@dataclass
class Learner:
    """One stream's learning forest: the samples, their keys and the trees built on them.

    Attributes:
        spec: how it learns.
        stream: the stream's id.
        samples: (trees, sample size, d) points of each tree, in the forest's space.
        keys: (trees, sample size) their keys (the smallest are kept).
        seen: points learnt so far.
        pending: (k < block, d) points scored since the last block, not yet learnt.
        forest: the trees built on ``samples``.
    """

    spec: LearnSpec
    stream: str
    samples: np.ndarray
    keys: np.ndarray
    seen: int
    pending: np.ndarray
    forest: Forest

    @staticmethod
    def start(spec: LearnSpec, stream: str, forest: Forest, samples: np.ndarray) -> Learner:
        """A stream's learner before its first point: the model's trees and samples."""
        samples = np.asarray(samples, dtype=np.float64)
        keys = _keys(spec.rng(stream, 0, 0), samples.shape[:2], np.zeros(samples.shape[1]),
                     spec.decay)
        return Learner(spec, stream, samples, keys, 0, np.zeros((0, samples.shape[2])), forest)

    @staticmethod
    def restore(spec: LearnSpec, stream: str, forest: Forest, samples: np.ndarray,
                keys: np.ndarray, seen: int, pending: np.ndarray) -> Learner:
        """A learner from its state; its trees are rebuilt as its last block built them."""
        trees = forest if seen == 0 else build_forest(samples, spec.rng(stream, seen, 1),
                                                      spec.max_depth or None)
        return Learner(spec, stream, samples, keys, seen, pending, trees)

    def attribute(self, points: np.ndarray) -> np.ndarray:
        """Score-then-learn a stream's next shingles (time order), block by block.

        Args:
            points: (n, d) shingles in the forest's space.

        Returns:
            (n, d) attribution of each shingle's score (:func:`attribution`), each by
            the forest as it stood before the shingle's block.
        """
        out = np.empty(points.shape)
        start = 0
        while start < len(points):
            part = points[start:start + self.spec.block - len(self.pending)]
            out[start:start + len(part)] = attribution(self.forest, part)
            self.pending = np.concatenate([self.pending, part])
            if len(self.pending) == self.spec.block:
                self.learn(self.pending)
                self.pending = self.pending[:0]
            start += len(part)
        return out

    def learn(self, points: np.ndarray) -> None:
        """Offer points to every tree's sample, then rebuild the trees."""
        trees, size, _ = self.samples.shape
        times = self.seen + 1 + np.arange(len(points))
        self.seen += len(points)
        keys = np.concatenate([self.keys, _keys(self.spec.rng(self.stream, self.seen, 0),
                                                (trees, len(points)), times, self.spec.decay)],
                              axis=1)
        kept = np.argpartition(keys, size - 1, axis=1)[:, :size]
        offered = np.concatenate([self.samples, np.broadcast_to(
            points, (trees, *points.shape))], axis=1)
        self.samples = np.take_along_axis(offered, kept[:, :, None], axis=1)
        self.keys = np.take_along_axis(keys, kept, axis=1)
        self.forest = build_forest(self.samples, self.spec.rng(self.stream, self.seen, 1),
                                   self.spec.max_depth or None)


def _keys(rng: np.random.Generator, shape: tuple[int, int], times: np.ndarray,
          decay: float) -> np.ndarray:
    """``log(-log u) - decay * time``: the smaller, the likelier a point is kept."""
    u = rng.random(shape)
    return np.log(-np.log(np.clip(u, 1e-300, 1.0 - 1e-16))) - decay * times[None, :]
