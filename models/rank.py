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
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lakehouse.lakefs import LakeFS, join

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
    checkpoint_dir: str                  # lake locations
    artifact_dir: str
    lake: LakeFS = field(default_factory=LakeFS)
    mean: list[float] | None = None
    variance: list[float] | None = None
    seed: int = 7
    extra: dict[str, Any] = field(default_factory=dict)


def last_checkpoint(lake: LakeFS, checkpoint_dir: str,
                    pattern: re.Pattern = CKPT_PATTERN) -> tuple[int, str | None]:
    """The highest completed epoch with a checkpoint, and a local copy of its file.

    Args:
        lake: the lake's filesystem.
        checkpoint_dir: lake folder of a run's checkpoints.
        pattern: file names of checkpoints, the epoch number as the first group.

    Returns:
        ``(epoch, local file)``, or ``(0, None)`` when the run has no checkpoint.
    """
    best, name = 0, None
    for entry in lake.names(checkpoint_dir):
        if (m := pattern.search(entry)) and int(m.group(1)) > best:
            best, name = int(m.group(1)), entry
    return best, (lake.fetch(join(checkpoint_dir, name)) if name else None)


def save_checkpoint(lake: LakeFS, save, checkpoint_dir: str, epoch: int,
                    suffix: str = ".weights.h5") -> str:
    """Write epoch ``epoch``'s checkpoint to the lake whole or not at all.

    ``save(path)`` writes a local file, which :meth:`LakeFS.put` sends to the lake
    atomically: a rank killed mid-write leaves nothing that a restart reads.

    Returns:
        The checkpoint's lake location.
    """
    name = f"epoch-{epoch:03d}{suffix}"
    with tempfile.TemporaryDirectory(prefix="lakeforge-ckpt-") as scratch:
        local = os.path.join(scratch, name)
        save(local)
        location = join(checkpoint_dir, name)
        lake.put(local, location)
    return location


@contextmanager
def artifact_folder(lake: LakeFS, location: str) -> Iterator[str]:
    """A local folder for rank 0's artifact files, sent to ``location`` on the lake after."""
    with tempfile.TemporaryDirectory(prefix="lakeforge-artifact-") as folder:
        yield folder
        lake.put(folder, location)


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


