"""From shingle scores to point scores and alerts: one event, one alert.

Every shingle that holds an anomalous point scores high, so a spike at ``t`` makes the
``shingle_size`` shingles ending at ``t`` .. ``t + size - 1`` score high, and ranked by
shingle score the spike's own point comes after the points that follow it. Two steps
put the score where it belongs, as AWS's ThresholdedRandomCutForest does with its
attribution and ignore-near logic:

* **Point score.** The forest attributes each shingle's score to its dimensions
  (:func:`models.rcf.forest.attribution`); a dimension belongs to a point of the
  shingle (``none``: each value to its own point; ``level_diff``: the level to the
  newest point, a difference ``x[k] - x[k-1]`` half to each of its two points). A
  point's score is the part of the score of the shingle it ends that belongs to it:
  how much the newest point surprises, given the points before it. It is known the
  moment the point arrives, and shingles that merely still hold an earlier anomaly
  do not raise it.
* **Alert.** A point is over the alert threshold when its score is; if the point
  before it was over too, the difference between the two belongs wholly to that one
  (the way back from a spike is not a second event). An event is a run of points
  over the threshold with gaps shorter than the shingle: its first point raises the
  alert, the rest of it does not (a level shift of thirty points is one alert). The
  alerted point is the one that caused it, since the score is its own. The threshold adapts
  to the stream: ``exp(m + sigma * s)`` where ``m`` and ``s**2`` are a time-decayed
  mean and variance of the log point scores (CoDisp is heavy-tailed; its log is
  not), started from the fitting split's and updated with each point, clipped at the
  threshold so that anomalies do not raise it, with weight ``1 / horizon``
  (``horizon`` 0: the fitting split's threshold, fixed).

Batch scoring and the streaming scorer run the same recurrence over a stream in time
order, the streaming one carrying :class:`AlertState` across micro-batches, so both
flag the same points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.rcf.transform import Scaling

# Smallest point score taken to the log (a point the forest explains entirely).
FLOOR = 1e-9


@dataclass(frozen=True)
class AlertRule:
    """The alert threshold's parameters, stored with the model.

    Attributes:
        sigma: standard deviations of the log point scores above their mean.
        horizon: points over which the threshold adapts (0: fixed).
        log_mean: mean of the fitting split's log point scores.
        log_var: their variance.
        span: points after a point over the threshold that still belong to its
            event (the shingle size less one).
    """

    sigma: float
    horizon: int
    log_mean: float
    log_var: float
    span: int

    @staticmethod
    def from_meta(meta: dict[str, Any]) -> AlertRule | None:
        """The rule stored in a model's metadata (None: a model trained without one)."""
        if "alert_log_mean" not in meta:
            return None
        return AlertRule(float(meta["alert_sigma"]), int(meta["alert_horizon"]),
                         float(meta["alert_log_mean"]), float(meta["alert_log_var"]),
                         int(meta["alert_span"]))

    @staticmethod
    def fit(point_scores: np.ndarray, sigma: float, horizon: int, span: int) -> AlertRule:
        """The rule whose statistics are those of the fitting split's point scores."""
        logs = np.log(np.maximum(point_scores, FLOOR))
        return AlertRule(float(sigma), int(horizon), float(logs.mean()), float(logs.var()),
                         int(span))

    def to_json(self) -> dict[str, float]:
        """Plain values for the model's metadata file."""
        return {"alert_sigma": self.sigma, "alert_horizon": self.horizon,
                "alert_log_mean": self.log_mean, "alert_log_var": self.log_var,
                "alert_span": self.span}

    def start(self) -> AlertState:
        """The state before a stream's first point."""
        return AlertState(self.log_mean, self.log_var, self.span + 1)


@dataclass(frozen=True)
class AlertState:
    """Where a stream's alert threshold stands, and how many points ago one was over it.

    ``since_over`` is 1 when the last point was over the threshold, and more than the
    rule's ``span`` when no point of the current event is.
    """

    log_mean: float
    log_var: float
    since_over: int


def point_scores(attributed: np.ndarray, scaling: Scaling, size: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The newest point's share of each shingle's score (see the module docstring).

    Args:
        attributed: (n, size * channels) attribution of each shingle's score to the
            dimensions of the forest's space.
        scaling: the model's shingle transform (it decides which point a dimension
            belongs to).
        size: points per shingle.

    Returns:
        The newest point's score, and its score when the difference to the point
        before it is not counted (that point raised an alert).
    """
    channels = scaling.channels
    if scaling.kind == "none":
        own = attributed[:, -channels:].sum(axis=1)
        return own, own
    level = attributed[:, :channels].sum(axis=1)
    last_diff = attributed[:, -channels:].sum(axis=1) if size > 1 else np.zeros(len(level))
    return level + last_diff / 2, level


def alerts(own: np.ndarray, alone: np.ndarray, rule: AlertRule, state: AlertState
           ) -> tuple[np.ndarray, np.ndarray, AlertState]:
    """Which of a stream's points (in time order) raise an alert, and at what threshold.

    A point raises one when it is over the threshold and none of the ``span`` points
    before it was (see the module docstring).

    Args:
        own: each point's score (:func:`point_scores`).
        alone: its score without the difference to the point before it.
        rule: the model's alert rule.
        state: the stream's state before the first of these points.

    Returns:
        Whether each point alerts, the threshold each was held to, the state after
        the last.
    """
    alert = np.zeros(len(own), dtype=bool)
    threshold = np.empty(len(own))
    mean, var, since = state.log_mean, state.log_var, state.since_over
    rate = 1.0 / rule.horizon if rule.horizon else 0.0
    for i in range(len(own)):
        limit = mean + rule.sigma * math.sqrt(var)
        threshold[i] = math.exp(limit)
        over = (alone[i] if since == 1 else own[i]) > threshold[i]
        alert[i] = over and since > rule.span
        since = 1 if over else min(since + 1, rule.span + 1)
        if rate:
            step = min(math.log(max(float(own[i]), FLOOR)), limit) - mean
            mean += rate * step
            var = (1 - rate) * (var + rate * step * step)
    return alert, threshold, AlertState(mean, var, since)
