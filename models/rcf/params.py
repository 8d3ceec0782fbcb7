"""Training parameters of the Random Cut Forest family."""

from __future__ import annotations

from dataclasses import dataclass

from lakehouse.params import at_least, one_of
from models.rcf.transform import TRANSFORMS


@dataclass(frozen=True)
class RcfParams:
    """A forest of random cut trees over shingles.

    Attributes:
        num_trees: trees, split over the ranks.
        num_samples_per_tree: reservoir sample of each tree.
        shingle_size: points per shingle (the features must be built with it).
        threshold_sigma: the anomaly threshold, in standard deviations of the fitting
            split's scores above their mean.
        transform: ``level_diff`` (last level + differences, scaled) or ``none``.
        max_depth: deepest cut of a tree (0: no limit).
        alert_sigma: the alert threshold on point scores, in standard deviations of
            their logs above the mean (:mod:`models.rcf.alerts`).
        alert_horizon: points over which the alert threshold adapts to a stream
            (0: the fitting split's threshold, fixed).
        updates: the forest keeps learning while it scores (:mod:`models.rcf.learn`),
            in batch scoring and the streaming scorer alike.
        time_decay: with updates, how fast old points leave the samples, per point
            (0: ``1 / (10 * num_samples_per_tree)``, AWS's default).
        update_block: with updates, points learnt together (the trees are rebuilt
            after each block; 1 rebuilds after every point).
    """

    num_trees: int = 100
    num_samples_per_tree: int = 256
    shingle_size: int = 8
    threshold_sigma: float = 3.0
    transform: str = "level_diff"
    max_depth: int = 0
    alert_sigma: float = 4.0
    alert_horizon: int = 1000
    updates: bool = False
    time_decay: float = 0.0
    update_block: int = 128

    def __post_init__(self) -> None:
        at_least("rcf", self, 1, "num_trees", "num_samples_per_tree", "shingle_size",
                 "update_block")
        at_least("rcf", self, 0, "max_depth", "alert_sigma", "alert_horizon", "time_decay")
        one_of("rcf", self, "transform", TRANSFORMS)
