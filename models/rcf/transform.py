"""How a shingle is represented before the forest cuts it.

Cuts pick a dimension in proportion to its range, so the representation decides
what the forest pays attention to. A raw shingle (``none``) is ``s`` copies of the
stream's level: nearly every cut is a cut on level, and a change of shape at a
usual level (a spike inside the normal range, a slope that turns early) is found
late. ``level_diff`` feeds the last value and the ``s - 1`` first differences
instead, each standardised by its mean and standard deviation over the fitting
split, so level and shape both get cuts (as streaming RCF services normalise and
difference their input). The map is linear and invertible: no information is lost,
only the cut distribution changes.

Statistics are gathered as moments (count, sum, sum of squares) so each Horovod rank
can add up its own shard and the ranks' moments merge into one scaling; the scaling
is stored with the model and applied again at batch scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

TRANSFORMS = ("level_diff", "none")


def shape_features(x: np.ndarray, kind: str, channels: int = 1) -> np.ndarray:
    """The unscaled representation of shingles.

    Args:
        x: (n, s * channels) shingles, oldest point first, a point's values together.
        kind: one of :data:`TRANSFORMS`.
        channels: values per point (a stream's value columns).

    Returns:
        (n, s * channels) array: ``x`` itself for ``none``; for ``level_diff`` the last
        point's values followed by the ``s - 1`` first differences of each value.

    Raises:
        ValueError: an unknown ``kind``.
    """
    x = np.asarray(x, dtype=np.float64)
    if kind == "none":
        return x
    if kind == "level_diff":
        points = x.reshape(len(x), -1, channels)
        return np.concatenate([points[:, -1, :], np.diff(points, axis=1).reshape(len(x), -1)],
                              axis=1)
    raise ValueError(f"unknown shingle transform {kind!r}; expected one of {TRANSFORMS}")


@dataclass(frozen=True)
class Moments:
    """Count, sum and sum of squares of each feature, mergeable across shards."""

    n: int
    total: np.ndarray
    squares: np.ndarray

    @staticmethod
    def of(features: np.ndarray) -> Moments:
        """Moments of a (rows, d) array."""
        return Moments(len(features), features.sum(axis=0), (features ** 2).sum(axis=0))

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.total + other.total, self.squares + other.squares)


@dataclass(frozen=True)
class Scaling:
    """A transform kind with the per-feature mean and scale fitted to it."""

    kind: str
    mean: np.ndarray
    scale: np.ndarray
    channels: int = 1

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Shingles (n, s * channels) in the space the forest was built in."""
        return (shape_features(x, self.kind, self.channels) - self.mean) / self.scale

    def to_json(self) -> dict[str, Any]:
        """Plain values for the model's metadata file."""
        return {"transform": self.kind, "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "channels": self.channels}


def identity(dim: int) -> Scaling:
    """The ``none`` transform: raw shingles, unscaled."""
    return Scaling("none", np.zeros(dim), np.ones(dim))


def fit_scaling(kind: str, moments: Moments | list[Moments], channels: int = 1) -> Scaling:
    """The scaling of ``kind`` from (possibly per-shard) moments of its features.

    Args:
        kind: one of :data:`TRANSFORMS`.
        moments: moments of ``shape_features(x, kind)`` over the fitting split, or a
            list of them (one per shard) to merge.
        channels: values per point.

    Returns:
        The scaling; a constant feature keeps scale 1. ``none`` is never scaled.

    Raises:
        ValueError: an unknown ``kind``, or no points.
    """
    if kind not in TRANSFORMS:
        raise ValueError(f"unknown shingle transform {kind!r}; expected one of {TRANSFORMS}")
    parts = moments if isinstance(moments, list) else [moments]
    merged = sum(parts[1:], parts[0])
    if merged.n == 0:
        raise ValueError("no points to fit the shingle transform on")
    if kind == "none":
        return identity(len(merged.total))
    mean = merged.total / merged.n
    sd = np.sqrt(np.maximum(merged.squares / merged.n - mean ** 2, 0.0))
    return Scaling(kind, mean, np.where(sd > 1e-12 * (1 + np.abs(mean)), sd, 1.0), channels)


def scaling_from_json(meta: dict[str, Any], dim: int) -> Scaling:
    """The scaling stored in a model's metadata (models without one used raw shingles)."""
    if "transform" not in meta:
        return identity(dim)
    return Scaling(meta["transform"], np.asarray(meta["mean"], dtype=np.float64),
                   np.asarray(meta["scale"], dtype=np.float64), int(meta.get("channels", 1)))
