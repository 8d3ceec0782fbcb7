"""Executor side of training, shared by every family: what each Horovod rank starts with.

A family's rank function (``models/<family>/rank.py``) receives plain, picklable
values (:class:`RankSpec` or the family's own spec), calls :func:`start_rank`, pins
its GPU when there is one and resumes from :func:`last_checkpoint`. TensorFlow,
Horovod and Petastorm are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CKPT_PATTERN = re.compile(r"^epoch-(\d+)\.weights\.h5$")


@dataclass(frozen=True)
class RankSpec:
    """Everything a rank needs, as plain values."""

    family: str
    params: dict[str, Any]
    files: dict[str, list[str]]          # split -> Parquet file URLs of the pinned snapshot
    rows: dict[str, int]                 # split -> rows
    n_features: int
    n_classes: int
    checkpoint_dir: str
    artifact_dir: str
    mean: list[float] | None = None
    variance: list[float] | None = None
    seed: int = 7
    extra: dict[str, Any] = field(default_factory=dict)


def last_checkpoint(checkpoint_dir: str,
                    pattern: re.Pattern = CKPT_PATTERN) -> tuple[int, str | None]:
    """The highest completed epoch with a checkpoint, and its file (0, None if none).

    Args:
        checkpoint_dir: folder of a run's checkpoints.
        pattern: file names of checkpoints, the epoch number as the first group.
    """
    best, path = 0, None
    if os.path.isdir(checkpoint_dir):
        for name in os.listdir(checkpoint_dir):
            if (m := pattern.search(name)) and int(m.group(1)) > best:
                best, path = int(m.group(1)), os.path.join(checkpoint_dir, name)
    return best, path


def save_checkpoint(save, checkpoint_dir: str, epoch: int) -> str:
    """Write epoch ``epoch``'s checkpoint whole or not at all.

    ``save(path)`` writes a file under a name :func:`last_checkpoint` does not match,
    which then replaces the epoch's name in one rename: a rank killed mid-write leaves
    a partial file that no restart reads.

    Returns:
        The checkpoint's path.
    """
    os.makedirs(checkpoint_dir, exist_ok=True)
    path = os.path.join(checkpoint_dir, f"epoch-{epoch:03d}.weights.h5")
    partial = os.path.join(checkpoint_dir, f"partial-{epoch:03d}.weights.h5")
    save(partial)
    os.replace(partial, path)
    return path


def start_rank():
    """What every rank does first: quiet TensorFlow and Petastorm, initialise Horovod.

    Returns:
        The ``horovod.tensorflow`` module, initialised.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", category=FutureWarning)   # petastorm on pyarrow 12
    import horovod.tensorflow as hvd
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    hvd.init()
    return hvd


def pin_gpu() -> bool:
    """One GPU per rank (by local rank) with memory growth; mixed precision on GPU."""
    import horovod.tensorflow.keras as hvd
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return False
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    tf.config.set_visible_devices(gpus[hvd.local_rank()], "GPU")
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    return True


def weights_digest(weights) -> str:
    """A short hash of a list of weights (arrays or variables)."""
    h = hashlib.sha256()
    for w in weights:
        h.update(np.ascontiguousarray(np.asarray(w)).tobytes())
    return h.hexdigest()[:16]


