"""The anomaly plot: a stream, its labelled anomalies and alerts, its scores and the threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_anomalies(t: np.ndarray, value: np.ndarray, score: np.ndarray, label: np.ndarray,
                   threshold: float, path: Path, alert: np.ndarray | None = None,
                   title: str = "") -> Path:
    """Write a two-panel PNG: the stream with labelled anomalies, and the scores.

    Args:
        t: time of each point.
        value: the stream's value at ``t``.
        score: anomaly score at ``t``.
        label: 1 where the point is a labelled anomaly.
        threshold: the model's flagging threshold.
        path: PNG to write.
        alert: True where the point raised an alert (None: none shown).
        title: figure title.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 5), dpi=110, sharex=True)
    top.plot(t, value, lw=0.6, color="0.3")
    marked = np.asarray(label) == 1
    if marked.any():
        top.scatter(t[marked], value[marked], s=6, color="tab:red", label="labelled anomaly",
                    zorder=3)
    if alert is not None and np.asarray(alert).any():
        raised = np.asarray(alert, dtype=bool)
        top.scatter(t[raised], value[raised], s=40, facecolors="none", edgecolors="tab:orange",
                    label="alert", zorder=4)
    if marked.any() or (alert is not None and np.asarray(alert).any()):
        top.legend(loc="upper left", fontsize=8)
    top.set_ylabel("value")
    top.set_title(title)
    bottom.plot(t, score, lw=0.6, color="tab:blue", label="CoDisp")
    bottom.axhline(threshold, color="tab:orange", ls="--", lw=1, label=f"threshold {threshold:.1f}")
    flagged = score > threshold
    if flagged.any():
        bottom.scatter(t[flagged], score[flagged], s=6, color="tab:orange", zorder=3)
    bottom.set_ylabel("anomaly score")
    bottom.set_xlabel("t")
    bottom.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
