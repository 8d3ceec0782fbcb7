"""Executor side of DeepAR training: what each Horovod rank runs.

Each rank reads its own shard of the pinned snapshot's ``train`` files with
Petastorm (``cur_shard=rank, shard_count=size``), shuffles windows, and takes
``steps_per_epoch`` teacher-forced steps per epoch with
``hvd.DistributedGradientTape`` (Gloo allreduce on CPU). Initial weights and the
optimizer state are broadcast from rank 0 after the first step. Rank 0 writes a
checkpoint per epoch (a restarted run resumes after its last one), then forecasts
every ``test`` window from its context and saves weights + config. The forecasts
use a moving average of the weights (``average_weights``). With ``validation``,
the training windows reaching into each series' last training periods are left
out, rank 0 forecasts those periods after every epoch, and the best epoch's
weights are the ones kept (a resumed run keeps the best of the epochs it runs).
"""

from __future__ import annotations

import resource
import time
from typing import Any

import numpy as np

from lakehouse.lakefs import LakeFS
from models.deepar import network
from models.deepar.evaluate import forecast_metrics
from models.deepar.network import sample_paths, summarise, window_loss
from models.rank import (
    RankSpec,
    artifact_folder,
    last_checkpoint,
    pin_gpu,
    save_checkpoint,
    start_rank,
    weights_digest,
)

SHUFFLE_CAP = 100_000
COLUMNS = ["row_id", "series_idx", "series_id", "season", "scale", "target"]


def covariate_columns(config: dict[str, Any]) -> list[str]:
    """The windows' covariate columns a model reads (none for a model without)."""
    cards, n_dynamic = network.covariate_sizes(config)
    return (["static_idx"] if cards else []) + (["dynamic"] if n_dynamic else [])


def _train_dataset(lake: LakeFS, files: list[str], batch: int, shard: int, shards: int,
                   seed: int, buffer: int, config: dict[str, Any],
                   last_row: np.ndarray | None = None):
    """Shuffled, endless batches of windows from this rank's Petastorm shard.

    Consecutive rows of a file are often neighbouring windows of one series, so
    the shuffle buffer holds up to the whole shard (``buffer`` windows; a window
    is a few hundred bytes); correlated batches make the fit drift. ``last_row``
    (per series index) leaves out a series' windows with a higher ``row_id``.
    """
    import tensorflow as tf
    from petastorm import make_batch_reader
    from petastorm.tf_utils import make_petastorm_dataset

    cards, n_dynamic = network.covariate_sizes(config)
    steps = config["context_length"] + config["prediction_length"]
    reader = make_batch_reader(
        files, schema_fields=["row_id", "series_idx", "season", "scale", "target",
                              *covariate_columns(config)],
        cur_shard=shard, shard_count=shards, num_epochs=None, shuffle_row_groups=True,
        seed=seed, workers_count=2, reader_pool_type="thread",
        filesystem=lake.petastorm_filesystem(files[0]))

    def inputs(b):
        rows = tf.shape(b.target)[0]
        static = tf.cast(b.static_idx, tf.int32) if cards else tf.zeros((rows, 1), tf.int32)
        dynamic = (tf.reshape(tf.cast(b.dynamic, tf.float32), (rows, steps, n_dynamic))
                   if n_dynamic else tf.zeros((rows, 1)))
        return (tf.cast(b.row_id, tf.int64), tf.cast(b.target, tf.float32),
                tf.cast(b.season, tf.int32), tf.cast(b.series_idx, tf.int32),
                tf.cast(b.scale, tf.float32), static, dynamic)

    def trained(row_id, target, season, idx, *_):
        return row_id <= tf.gather(limit, idx)

    def without_absent(_row_id, target, season, idx, scale, static, dynamic):
        rows = tf.shape(target)[0]
        return (target, season, idx, scale,
                static if cards else tf.zeros((rows, 0), tf.int32),
                dynamic if n_dynamic else tf.zeros((rows, steps, 0)))

    # Placeholders of one zero stand in for absent covariates until batches are formed:
    # TensorFlow 2.15 crashes (SIGSEGV) shuffling elements of zero size.
    ds = make_petastorm_dataset(reader).map(inputs).unbatch()
    if last_row is not None:
        limit = tf.constant(np.asarray(last_row, dtype=np.int64))
        ds = ds.filter(trained)
    ds = ds.shuffle(buffer, seed=seed).batch(batch, drop_remainder=True)
    return reader, ds.map(without_absent).prefetch(tf.data.AUTOTUNE)


def read_windows(lake: LakeFS, files: list[str],
                 extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every window of ``files`` (unsharded, one pass), ordered by ``row_id``.

    ``extra`` names covariate columns to read too (arrays, stacked like ``target``).
    """
    from petastorm import make_batch_reader

    columns = [*COLUMNS, *extra]
    parts: dict[str, list] = {c: [] for c in columns}
    if not files:
        return {c: np.array([]) for c in columns}
    with make_batch_reader(files, schema_fields=columns, num_epochs=1,
                           shuffle_row_groups=False, workers_count=1,
                           filesystem=lake.petastorm_filesystem(files[0])) as reader:
        for batch in reader:
            for c in columns:
                parts[c].append(np.asarray(getattr(batch, c)))
    out = {c: np.concatenate(v) for c, v in parts.items()}
    out["series_id"] = np.array([s.decode() if isinstance(s, bytes) else str(s)
                                 for s in out["series_id"]])
    order = np.argsort(out["row_id"])
    out = {c: v[order] for c, v in out.items()}
    for c in ("target", *extra):
        out[c] = np.stack(out[c]).astype(np.float32)
    return out


def optimizer(net, params: dict[str, Any], total_steps: int, done_steps: int):
    """Adam with the run's learning-rate schedule, positioned after ``done_steps``.

    ``lr_schedule=cosine`` (default) decays the rate to 1% of ``learning_rate``
    over the run: at a constant rate the held-out forecasts' level swings from one
    epoch to the next; the decay lets the last epochs settle. A resumed run continues
    the schedule where its checkpoint left it.

    ``average_weights`` > 0 keeps a moving average of the weights beside them
    (``finalize_variable_values`` puts it in the network after the last step). The
    forecasts' level still swings late in a run (ND on us_employment's held-out
    horizon from 0.013 to 0.024 between epochs 20 and 25); averaged weights forecast
    from the middle of those swings. A resumed run starts its average afresh from
    the checkpoint's weights. The momentum is capped at ``1 - 10 / total_steps``.
    """
    import tensorflow as tf

    rate = float(params["learning_rate"])
    if params.get("lr_schedule", "cosine") == "cosine":
        rate = tf.keras.optimizers.schedules.CosineDecay(rate, max(total_steps, 1), alpha=0.01)
    # The average spans at most a tenth of the run: a short run's average would
    # otherwise still hold its first, untrained weights.
    momentum = min(float(params.get("average_weights", 0.0)), 1 - 10 / max(total_steps, 1))
    opt = tf.keras.optimizers.Adam(rate, use_ema=momentum > 0, ema_momentum=max(momentum, 0.0))
    if done_steps:
        opt.build(net.trainable_variables)
        opt.iterations.assign(done_steps)
    return opt


def _step_fn(net, opt, config: dict[str, Any], hvd):
    import tensorflow as tf

    skip = 0 if config.get("context_loss") else config["context_length"] - 1
    context, periods = config["context_length"], int(config.get("scale_periods", 0))

    @tf.function
    def step(target, season, idx, scale, static, dynamic):
        if periods:   # the windows table holds the whole context's scale
            scale = network.context_scale(target[:, :context], periods)
        with tf.GradientTape() as tape:
            loss = window_loss(net, target, season, idx, scale, static, dynamic,
                               config["likelihood"], config["season_length"], skip=skip,
                               lag_list=config.get("lags", [1]))
        tape = hvd.DistributedGradientTape(tape)
        grads = tape.gradient(loss, net.trainable_variables)
        grads, _ = tf.clip_by_global_norm(grads, 10.0)
        opt.apply_gradients(zip(grads, net.trainable_variables, strict=True))
        return loss

    return step


def train_rank(spec: RankSpec) -> dict[str, Any]:
    """Train on this rank's shard; rank 0 checkpoints, forecasts the test windows, saves.

    Returns:
        ``rank``, ``size``, ``gpu``, ``weights`` digest, ``initial_epoch``,
        ``epochs_run``, ``steps_per_epoch``, ``history`` (``loss`` per epoch, averaged
        over ranks; with validation, ``val_nd`` and ``val_wql``), ``best_epoch`` (the
        epoch kept by validation, else 0), ``fit_seconds`` and, on rank 0,
        ``forecast`` (test windows with their sampled mean and quantiles).
    """
    hvd = start_rank()
    import tensorflow as tf

    gpu = pin_gpu()
    tf.keras.utils.set_random_seed(spec.seed + hvd.rank())
    config, params = spec.extra["network"], spec.params
    net = network.build(config)
    initial_epoch, ckpt = last_checkpoint(spec.lake, spec.checkpoint_dir)
    if ckpt is not None:
        net.load_weights(ckpt)   # every rank reads the same file
    epochs, batch = int(params["epochs"]), int(params["batch_size"])
    steps = int(params["steps_per_epoch"]) or max(1, spec.rows["train"] // (batch * hvd.size()))
    opt = optimizer(net, params, epochs * steps, initial_epoch * steps)
    history: dict[str, list[float]] = {"loss": []}
    best_epoch, fit_start = 0, time.monotonic()
    held = spec.extra.get("validation")
    if initial_epoch < epochs:
        buffer = min(SHUFFLE_CAP, spec.rows["train"] // hvd.size() + 1)
        reader, ds = _train_dataset(spec.lake, spec.files["train"], batch, hvd.rank(), hvd.size(),
                                    spec.seed + hvd.rank(), buffer, config,
                                    held["last_train_row"] if held else None)
        try:
            history, best_epoch = _fit(net, opt, config, ds, steps, initial_epoch, epochs,
                                       spec, hvd, held["windows"] if held else None)
            if not held:   # with validation, rank 0 holds the best epoch's averaged weights
                opt.finalize_variable_values(net.trainable_variables)
        finally:
            reader.stop()
            reader.join()
    fit_seconds = time.monotonic() - fit_start
    hvd.broadcast_variables(net.variables, root_rank=0)
    result: dict[str, Any] = {
        "rank": hvd.rank(), "size": hvd.size(), "gpu": gpu,
        "weights": weights_digest(net.get_weights()), "initial_epoch": initial_epoch,
        "epochs_run": len(history["loss"]), "steps_per_epoch": steps, "history": history,
        "best_epoch": best_epoch, "fit_seconds": fit_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if hvd.rank() == 0:
        result["forecast"] = forecast_windows(net, config, spec.lake,
                                              spec.files.get("test") or [], spec.seed)
        with artifact_folder(spec.lake, spec.artifact_dir) as folder:
            network.save(net, config, folder)
    return result


def _fit(net, opt, config, ds, steps: int, initial_epoch: int, epochs: int, spec: RankSpec,
         hvd, held: dict[str, np.ndarray] | None = None) -> tuple[dict[str, list[float]], int]:
    """The epoch loop.

    With ``held`` (validation windows, on every rank), rank 0 forecasts them with
    the averaged weights after each epoch and keeps the weights of the best epoch;
    the network ends with those (on rank 0; the caller broadcasts them).

    Returns:
        The history (``loss`` per epoch run, averaged over ranks; with ``held``,
        ``val_nd`` and ``val_wql``) and the best epoch (0 without ``held``).
    """
    import tensorflow as tf

    step = _step_fn(net, opt, config, hvd)
    batches = iter(ds)
    history: dict[str, list[float]] = {"loss": [], **({"val_nd": [], "val_wql": []}
                                                       if held else {})}
    patience = int(spec.params.get("patience", 0))
    best, best_epoch, best_weights = float("inf"), 0, None
    for epoch in range(initial_epoch, epochs):
        start, total = time.monotonic(), 0.0
        for i in range(steps):
            total += float(step(*next(batches)))
            if epoch == initial_epoch and i == 0:   # same start everywhere
                hvd.broadcast_variables(net.variables, root_rank=0)
                hvd.broadcast_variables(opt.variables(), root_rank=0)
        loss = float(hvd.allreduce(np.float32(total / steps), op=hvd.Average))
        history["loss"].append(loss)
        note, stop = "", 0
        if held and hvd.rank() == 0:
            raw = [v.numpy() for v in net.trainable_variables]
            opt.finalize_variable_values(net.trainable_variables)
            scores = validation_scores(net, config, held, spec.seed)
            history["val_nd"].append(scores["nd"])
            history["val_wql"].append(scores["wql"])
            if scores["wql"] < best:
                best, best_epoch = scores["wql"], epoch + 1
                best_weights = [v.numpy() for v in net.trainable_variables]
            for v, r in zip(net.trainable_variables, raw, strict=True):
                v.assign(r)
            stop = int(bool(patience) and epoch + 1 - best_epoch >= patience)
            note = (f" validation nd={scores['nd']:.4f} wql={scores['wql']:.4f}"
                    f" (best: epoch {best_epoch})")
        if hvd.rank() == 0:
            save_checkpoint(spec.lake, net.save_weights, spec.checkpoint_dir, epoch + 1)
            print(f"[lakeforge train] deepar epoch {epoch + 1}/{epochs} ({hvd.size()} ranks, "
                  f"{steps} steps, {time.monotonic() - start:.1f}s): loss={loss:.4f}{note}",
                  flush=True)
        if held and int(hvd.broadcast(tf.constant(stop), root_rank=0, name=f"stop{epoch}")):
            if hvd.rank() == 0:
                print(f"[lakeforge train] deepar: no better validation forecast for "
                      f"{patience} epochs; stopping", flush=True)
            break
    if best_weights is not None:
        for v, w in zip(net.trainable_variables, best_weights, strict=True):
            v.assign(w)
    return history, best_epoch


def validation_scores(net, config: dict[str, Any], held: dict[str, np.ndarray],
                      seed: int) -> dict[str, float]:
    """ND and wQL of the network's forecasts of the validation windows' last periods."""
    c = config["context_length"]
    paths = sample_paths(net, config, held["target"][:, :c], held["season"],
                         held["series_idx"], min(50, config["num_samples"]), seed,
                         held.get("static_idx"), held.get("dynamic"))
    m = forecast_metrics(held["target"][:, c:], summarise(paths), "v")
    return {"nd": m["v_nd"], "wql": m["v_wql"]}


def forecast_windows(net, config: dict[str, Any], lake: LakeFS, files: list[str],
                     seed: int) -> dict[str, list]:
    """Forecast each test window's last ``prediction_length`` values from its context.

    Returns:
        Plain lists: ``series_id``, ``series_idx``, ``season``, ``target`` (whole
        window), and ``mean``, ``q10``, ``q50``, ``q90`` per future step.
    """
    w = read_windows(lake, files, tuple(covariate_columns(config)))
    if not len(w["row_id"]):
        return {}
    c = config["context_length"]
    paths = sample_paths(net, config, w["target"][:, :c], w["season"], w["series_idx"],
                         config["num_samples"], seed, w.get("static_idx"), w.get("dynamic"))
    out = {k: v.tolist() for k, v in summarise(paths).items()}
    out.update({"series_id": w["series_id"].tolist(),
                "series_idx": w["series_idx"].astype(int).tolist(),
                "season": w["season"].astype(int).tolist(), "target": w["target"].tolist()})
    return out
