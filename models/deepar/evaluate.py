"""Forecast accuracy on the held-out horizon, and the fan chart.

All metrics pool every series and future step of the horizon:

* ND (normalised deviation) = sum |y - median| / sum |y|;
* NRMSE = sqrt(mean (y - point)^2) / mean |y|, point = the mean forecast;
* wQL = mean over q in (0.1, 0.5, 0.9) of 2 * sum pinball_q(y, q-quantile) / sum |y|.

A missing held-out value (NaN) is left out of every sum and mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

QUANTILE_KEYS = {0.1: "q10", 0.5: "q50", 0.9: "q90"}


def forecast_metrics(actual: np.ndarray, forecast: dict[str, np.ndarray],
                     prefix: str) -> dict[str, float]:
    """ND, NRMSE and mean weighted quantile loss of one method.

    Args:
        actual: (series, horizon) held-out values.
        forecast: ``mean``, ``q10``, ``q50``, ``q90`` arrays of the same shape.
        prefix: metric name prefix, e.g. ``deepar`` -> ``deepar_nd``.

    Returns:
        ``<prefix>_nd``, ``<prefix>_nrmse``, ``<prefix>_wql``.
    """
    y = np.asarray(actual, dtype=np.float64)
    seen = np.isfinite(y)
    y = y[seen]
    denom = np.abs(y).sum()
    if denom == 0:
        raise ValueError("held-out horizon is all zeros or missing; ND and wQL are undefined")
    point = np.asarray(forecast["mean"], dtype=np.float64)[seen]
    nd = np.abs(y - np.asarray(forecast["q50"], dtype=np.float64)[seen]).sum() / denom
    nrmse = np.sqrt(np.mean((y - point) ** 2)) / np.abs(y).mean()
    losses = []
    for q, key in QUANTILE_KEYS.items():
        pred = np.asarray(forecast[key], dtype=np.float64)[seen]
        diff = y - pred
        losses.append(2 * np.sum(np.maximum(q * diff, (q - 1) * diff)) / denom)
    return {f"{prefix}_nd": float(nd), f"{prefix}_nrmse": float(nrmse),
            f"{prefix}_wql": float(np.mean(losses))}


def coverage(actual: np.ndarray, forecast: dict[str, np.ndarray]) -> float:
    """Share of the observed held-out values inside the 10-90 band."""
    y = np.asarray(actual, dtype=np.float64)
    seen = np.isfinite(y)
    inside = (y >= forecast["q10"]) & (y <= forecast["q90"])
    return float(inside[seen].mean()) if seen.any() else float("nan")


def plot_fan(path: Path, title: str, names: list[str], history: np.ndarray,
             actual: np.ndarray, forecast: dict[str, np.ndarray], count: int = 4) -> Path:
    """Write a fan chart PNG: history, 10-90 band, median and actuals of a few series.

    Args:
        path: PNG to write.
        title: figure title.
        names: series names (rows of the arrays).
        history: (series, context) values before the horizon.
        actual: (series, horizon) held-out values.
        forecast: ``q10``, ``q50``, ``q90`` of shape (series, horizon).
        count: how many series to draw (the first ``count``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(count, len(names))
    cols = 2 if count > 1 else 1
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.2 * rows), dpi=110, squeeze=False)
    c, h = history.shape[1], actual.shape[1]
    past, future = np.arange(c), np.arange(c, c + h)
    for i, ax in enumerate(axes.ravel()):
        if i >= count:
            ax.axis("off")
            continue
        ax.plot(past, history[i], color="black", lw=1, label="history")
        ax.fill_between(future, forecast["q10"][i], forecast["q90"][i], color="tab:blue",
                        alpha=0.25, label="10-90% band")
        ax.plot(future, forecast["q50"][i], color="tab:blue", lw=1.5, label="median")
        ax.plot(future, actual[i], color="tab:red", lw=1, marker=".", label="actual")
        ax.axvline(c - 0.5, color="grey", ls=":", lw=1)
        ax.set_title(names[i], fontsize=9)
        ax.set_xlabel("period in window")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
