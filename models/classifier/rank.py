"""Executor side of the Keras classifier families (MLP, CNN): what each Horovod rank runs.

Each rank reads its own shard of the pinned snapshot's Parquet files through
Petastorm, builds the family's network (``models/<family>/network.py``) and trains it;
gradients are averaged with Horovod (Gloo on CPU, NCCL on GPUs when built with it).
Rank 0 checkpoints every epoch, predicts the test split and saves the model.
"""

from __future__ import annotations

import json
import os
import resource
import time
from typing import Any

import numpy as np

from lakehouse.lakefs import LakeFS
from models.family import get_family
from models.rank import (
    RankSpec,
    artifact_folder,
    last_checkpoint,
    pin_gpu,
    save_checkpoint,
    start_rank,
    weights_digest,
)


def _dataset(lake: LakeFS, files: list[str], batch_size: int, shard: int | None,
             shards: int | None, epochs: int | None, shuffle: bool, seed: int,
             regression: bool = False):
    """A tf.data pipeline of (features, label) batches from Petastorm.

    The label is a class index (int32), or the target value (float32) of a regression.
    """
    import tensorflow as tf
    from petastorm import make_batch_reader
    from petastorm.tf_utils import make_petastorm_dataset

    reader = make_batch_reader(
        files, schema_fields=["features", "label"], cur_shard=shard, shard_count=shards,
        num_epochs=epochs, shuffle_row_groups=shuffle, seed=seed, workers_count=2,
        reader_pool_type="thread", filesystem=lake.petastorm_filesystem(files[0]))
    ds = make_petastorm_dataset(reader).map(
        lambda b: (tf.cast(b.features, tf.float32),
                   tf.reshape(tf.cast(b.label, tf.float32), [-1, 1]) if regression
                   else tf.cast(b.label, tf.int32)))
    if shuffle:  # row groups arrive shuffled; shuffle rows within each as well
        def permute(x, y):
            order = tf.random.shuffle(tf.range(tf.shape(y)[0]), seed=seed)
            return tf.gather(x, order), tf.gather(y, order)

        ds = ds.map(permute)
    return reader, ds.rebatch(batch_size).prefetch(tf.data.AUTOTUNE)


def _regression(spec: RankSpec) -> bool:
    return spec.params.get("task", "classification") == "regression"


def _compile(model, spec: RankSpec, hvd) -> None:
    import tensorflow as tf

    lr = float(spec.params["learning_rate"]) * hvd.size()
    opt = hvd.DistributedOptimizer(tf.keras.optimizers.Adam(lr))
    if _regression(spec):
        model.compile(opt, loss="mse", metrics=["mae"], experimental_run_tf_function=False)
    else:
        model.compile(opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                      experimental_run_tf_function=False)


def _progress(size: int, total_epochs: int):
    """A Keras callback printing one line per epoch (used on rank 0)."""
    import tensorflow as tf

    class Progress(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            shown = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()))
            print(f"[lakeforge train] epoch {epoch + 1}/{total_epochs} ({size} ranks, "
                  f"{time.monotonic() - self.start:.1f}s): {shown}", flush=True)

    return Progress()


def _checkpoints(lake: LakeFS, checkpoint_dir: str):
    """A Keras callback writing each epoch's weights whole (used on rank 0)."""
    import tensorflow as tf

    class Checkpoints(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            save_checkpoint(lake, self.model.save_weights, checkpoint_dir, epoch + 1)

    return Checkpoints()


def _clock():
    """A Keras callback noting when each epoch began and ended (every rank).

    Used last, so an epoch's end includes the other callbacks' work (the checkpoint);
    what ``fit`` spends outside its epochs is then set-up and tear-down.
    """
    import tensorflow as tf

    class Clock(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs: list[list[float]] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append([time.monotonic(), time.monotonic()])

        def on_epoch_end(self, epoch, logs=None):
            self.epochs[-1][1] = time.monotonic()

    return Clock()


def _stop_at_end(*readers):
    """A Keras callback stopping the Petastorm readers as soon as training ends.

    The readers read epochs without end; stopped before ``fit`` tears its input
    pipeline down, they no longer keep it busy (every rank spent about 30 s there
    after the last epoch of a Fashion-MNIST run).
    """
    import tensorflow as tf

    class StopReaders(tf.keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            for reader in readers:
                reader.stop()

    return StopReaders()


def train_rank(spec: RankSpec) -> dict[str, Any]:
    """Train on this rank's shard; rank 0 checkpoints, evaluates and saves the model.

    Returns:
        ``rank``, ``size``, ``gpu``, ``weights`` digest, ``epochs_run``,
        ``initial_epoch``, ``steps_per_epoch``, ``history``, ``fit_seconds`` split into
        ``epoch_seconds``, ``before_epochs_seconds`` and ``after_epochs_seconds``, and,
        on rank 0, the test ``predictions`` (probabilities) and ``labels``.
    """
    hvd_tf = start_rank()
    import horovod.tensorflow.keras as hvd
    import tensorflow as tf


    gpu = pin_gpu()
    tf.keras.utils.set_random_seed(spec.seed + hvd.rank())
    trainer = get_family(spec.family).trainer
    mean = np.asarray(spec.mean, dtype=np.float32) if spec.mean is not None else None
    var = np.asarray(spec.variance, dtype=np.float32) if spec.variance is not None else None
    model = trainer.build({**spec.params, **spec.extra}, spec.n_features, spec.n_classes,
                         mean, var)
    _compile(model, spec, hvd)

    initial_epoch, ckpt = last_checkpoint(spec.lake, spec.checkpoint_dir)
    if ckpt is not None:
        model.load_weights(ckpt)   # every rank reads the same file; broadcast keeps them equal
    batch, epochs = int(spec.params["batch_size"]), int(spec.params["epochs"])
    steps = max(1, spec.rows["train"] // (batch * hvd.size()))
    val_steps = max(1, spec.rows.get("val", 0) // (batch * hvd.size()))
    callbacks = [
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),
        hvd.callbacks.MetricAverageCallback(),
        tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(spec.params["patience"]),
                                         restore_best_weights=True),
    ]
    if hvd.rank() == 0:
        callbacks.append(_checkpoints(spec.lake, spec.checkpoint_dir))
        callbacks.append(_progress(hvd.size(), epochs))
    clock = _clock()
    callbacks.append(clock)

    history: dict[str, list[float]] = {}
    fit_start = fit_end = time.monotonic()     # equal when there is nothing left to fit
    if initial_epoch < epochs:
        train_reader, train_ds = _dataset(spec.lake, spec.files["train"], batch, hvd.rank(),
                                          hvd.size(), None, True, spec.seed + hvd.rank(),
                                          _regression(spec))
        val_reader, val_ds = _dataset(spec.lake, spec.files.get("val") or spec.files["train"],
                                      batch, hvd.rank(), hvd.size(), None, False, spec.seed,
                                      _regression(spec))
        fit_start = time.monotonic()
        try:
            fit = model.fit(train_ds, steps_per_epoch=steps, epochs=epochs,
                            initial_epoch=initial_epoch, validation_data=val_ds,
                            validation_steps=val_steps,
                            callbacks=[*callbacks, _stop_at_end(train_reader, val_reader)],
                            verbose=0)
            history = {k: [float(v) for v in vs] for k, vs in fit.history.items()}
            fit_end = time.monotonic()
        finally:
            train_reader.stop(), val_reader.stop()
            train_reader.join(), val_reader.join()

    # Gradients are averaged, so trainable weights agree on every rank; batch-norm
    # moving statistics are per rank, so rank 0's state is broadcast to all at the end.
    trainable = weights_digest(model.trainable_weights)
    hvd_tf.broadcast_variables(model.variables, root_rank=0)
    result: dict[str, Any] = {
        "rank": hvd.rank(), "size": hvd.size(), "gpu": gpu, "trainable_weights": trainable,
        "weights": weights_digest(model.get_weights()),
        "initial_epoch": initial_epoch, "epochs_run": len(history.get("loss", [])),
        "steps_per_epoch": steps, "history": history, "fit_seconds": fit_end - fit_start,
        "epoch_seconds": [end - begin for begin, end in clock.epochs],
        "before_epochs_seconds": clock.epochs[0][0] - fit_start if clock.epochs else 0.0,
        "after_epochs_seconds": fit_end - clock.epochs[-1][1] if clock.epochs else 0.0,
        "train_samples": steps * batch * len(history.get("loss", [])),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if hvd.rank() == 0:
        result.update(_evaluate(model, spec, batch))
        with artifact_folder(spec.lake, spec.artifact_dir) as folder:
            model.save(os.path.join(folder, "model.keras"))
            with open(os.path.join(folder, "history.json"), "w") as fh:
                json.dump(history, fh)
    return result


def _evaluate(model, spec: RankSpec, batch: int) -> dict[str, Any]:
    """Predict the whole test split (rank 0, unsharded)."""
    files = spec.files.get("test") or []
    if not files:
        return {"predictions": None, "labels": None}
    reader, ds = _dataset(spec.lake, files, batch, None, None, 1, False, spec.seed,
                          _regression(spec))
    preds, labels = [], []
    try:
        for x, y in ds:
            preds.append(model(x, training=False).numpy())
            labels.append(y.numpy())
    finally:
        reader.stop(), reader.join()
    return {"predictions": np.concatenate(preds).tolist(),
            "labels": np.concatenate(labels).tolist()}
