"""Test metrics and the plots written next to a model artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, log loss and ROC-AUC (binary, or macro one-vs-rest) of predictions.

    Args:
        probs: (n, classes) predicted probabilities.
        labels: (n,) true class indices.

    Returns:
        Metric name to value; ``roc_auc`` is left out when the test set has one class.
    """
    from sklearn.metrics import log_loss, roc_auc_score

    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    n_classes = probs.shape[1]
    out = {
        "accuracy": float((probs.argmax(axis=1) == labels).mean()),
        "log_loss": float(log_loss(labels, _normalised(probs), labels=range(n_classes))),
        "test_rows": float(len(labels)),
    }
    present = np.unique(labels)
    if len(present) > 1:
        if n_classes == 2:
            out["roc_auc"] = float(roc_auc_score(labels, probs[:, 1]))
        elif len(present) == n_classes:
            out["roc_auc"] = float(roc_auc_score(labels, _normalised(probs), multi_class="ovr"))
    return out


def regression_metrics(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² of predicted target values.

    Args:
        predicted: (n,) predictions.
        actual: (n,) true values.

    Returns:
        Metric name to value (``r2`` is left out when the true values are constant).
    """
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1)
    actual = np.asarray(actual, dtype=np.float64).reshape(-1)
    error = predicted - actual
    out = {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error))),
           "test_rows": float(len(actual))}
    spread = float(np.sum((actual - actual.mean()) ** 2))
    if spread > 0:
        out["r2"] = 1.0 - float(np.sum(error ** 2)) / spread
    return out


def plot_predicted(predicted: np.ndarray, actual: np.ndarray, path: Path, title: str) -> Path:
    """Write a predicted-against-true scatter PNG with the diagonal of perfect predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predicted, actual = np.asarray(predicted).reshape(-1), np.asarray(actual).reshape(-1)
    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=110)
    ax.scatter(actual, predicted, s=8, alpha=0.5)
    low = float(min(actual.min(), predicted.min())) if len(actual) else 0.0
    high = float(max(actual.max(), predicted.max())) if len(actual) else 1.0
    ax.plot([low, high], [low, high], color="grey", linewidth=1, label="perfect")
    ax.set_xlabel("true value")
    ax.set_ylabel("predicted")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _normalised(probs: np.ndarray) -> np.ndarray:
    """Probabilities clipped away from 0 and rescaled to sum to one per row."""
    clipped = np.clip(probs, 1e-7, 1.0)
    return clipped / clipped.sum(axis=1, keepdims=True)


def confusion(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Confusion counts, rows = true class, columns = predicted class."""
    n = np.asarray(probs).shape[1]
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(probs).argmax(axis=1)), 1)
    return matrix


def plot_confusion(matrix: np.ndarray, path: Path, title: str,
                   class_names: list[str] | None = None) -> Path:
    """Write a confusion-matrix heat map PNG with counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = matrix.shape[0]
    names = class_names if class_names and len(class_names) == n else [str(i) for i in range(n)]
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1.0 + 0.55 * n), dpi=110)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    high = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] > high else "black")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_history(history: dict[str, Any], path: Path, title: str) -> Path:
    """Write training curves (loss and each metric, train vs validation) as a PNG.

    A ``val_<name>`` without a ``<name>`` of training gets a panel of its own.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics = [k for k in history if not k.startswith("val_")]
    metrics += [k[4:] for k in history if k.startswith("val_") and k[4:] not in history]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4.5 * max(1, len(metrics)), 3.4),
                             dpi=110, squeeze=False)
    for ax, name in zip(axes[0], metrics, strict=False):
        if name in history:
            ax.plot(range(1, len(history[name]) + 1), history[name], marker="o",
                    label="train")
        if f"val_{name}" in history:
            epochs = range(1, len(history[f"val_{name}"]) + 1)
            ax.plot(epochs, history[f"val_{name}"], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
