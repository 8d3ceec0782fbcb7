"""The DeepAR network: an autoregressive LSTM with a Gaussian, Student-t or negative binomial head.

Inputs at each step are lagged values divided by the window's scale
(``1 + mean |context|``, or over the context's last season with ``scale=season``):
the last ``recent_lags`` values and the values one, two, ... seasons back
(``seasonal_lags``), a one-hot season of the step (month of year or quarter), an
embedding of the series and the log scale, and
the declared covariates: an embedding per static category and the dynamic
values of the step, standardised with the training windows' mean and standard
deviation (a missing value enters as the mean). A missing target (NaN) is an
unobserved step: it adds nothing to the loss, it does not count in the scale, and
the inputs carry the last observed value over it (the first observed one before
it). The head gives the likelihood's parameters from the LSTM output: for
``gaussian`` mean and softplus standard deviation on the scaled values; for
``student_t`` the same and degrees of freedom ``2 + softplus`` (heavier tails: an
outlier pulls the fit less); for ``negbin`` (counts) mean ``softplus * scale`` and
shape ``softplus / sqrt(scale)`` on the raw values, as in the DeepAR paper.
Training is teacher forced; the loss scores the prediction range (the whole window
with ``context_loss``); forecasts are ancestral samples, vectorised over series
and sample paths. TensorFlow is imported inside the functions (they run in
Horovod ranks and Spark executors).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from lakehouse.featuresets.series import Frequency

WEIGHTS_FILE = "deepar.weights.h5"
CONFIG_FILE = "deepar.json"
LIKELIHOODS = ("gaussian", "student_t", "negbin")
QUANTILES = (0.1, 0.5, 0.9)


def network_config(params: dict[str, Any], n_series: int, season_length: int,
                   context_length: int, prediction_length: int, freq: Frequency,
                   static_cardinalities: tuple[int, ...] = (),
                   dynamic_stats: tuple[tuple[float, float], ...] = ()) -> dict[str, Any]:
    """The plain-value description a network is rebuilt from (saved as ``deepar.json``).

    ``static_cardinalities`` is the top category index per static role (its embedding
    has one more row: index 0 is "none", and so is any index above the top at
    scoring); ``dynamic_stats`` the training windows' (mean, std) per dynamic role.
    """
    return {"n_series": int(n_series), "season_length": int(season_length),
            "context_length": int(context_length), "prediction_length": int(prediction_length),
            "freq": freq.name, "freq_months": freq.months, "freq_seconds": freq.seconds,
            "static_cardinalities": [int(c) for c in static_cardinalities],
            "dynamic_mean": [float(m) for m, _ in dynamic_stats],
            "dynamic_std": [float(sd) if sd > 0 else 1.0 for _, sd in dynamic_stats],
            "hidden": int(params["hidden"]),
            "layers": int(params["layers"]), "embedding_dim": int(params["embedding_dim"]),
            "dropout": float(params["dropout"]), "likelihood": str(params["likelihood"]),
            "num_samples": int(params["num_samples"]),
            "context_loss": bool(params.get("context_loss", False)),
            "scale_periods": scale_periods(params, season_length, context_length),
            "lags": lags(season_length, int(params.get("seasonal_lags", 0)),
                         int(params.get("recent_lags", 1)))}


def scale_periods(params: dict[str, Any], season_length: int, context_length: int) -> int:
    """The context periods a window's scale is the mean of (0: the whole context).

    ``scale`` ``context`` (the whole context) or ``season`` (its last season: a
    growing or shrinking series is scaled by its latest level, so the forecast is
    not pulled back towards an older mean).
    """
    if params.get("scale", "context") == "season" and season_length < context_length:
        return int(season_length)
    return 0


def lags(season_length: int, seasonal_lags: int, recent_lags: int = 1) -> list[int]:
    """The lags fed to the network, ascending.

    1 to ``recent_lags`` periods back, and each of ``seasonal_lags`` whole seasons back.
    """
    return sorted(set(range(1, max(recent_lags, 1) + 1))
                  | {k * season_length for k in range(1, seasonal_lags + 1)})


def covariate_sizes(config: dict[str, Any]) -> tuple[list[int], int]:
    """Static cardinalities and the dynamic count of a config (none in older models)."""
    return list(config.get("static_cardinalities", [])), len(config.get("dynamic_mean", []))


def build(config: dict[str, Any]):
    """A DeepAR network with its weights created (call it on a dummy batch first)."""
    import tensorflow as tf

    layers = tf.keras.layers
    cards, n_dynamic = covariate_sizes(config)

    class DeepAR(tf.keras.Model):
        def __init__(self) -> None:
            super().__init__(name="deepar")
            self.embed = layers.Embedding(config["n_series"], config["embedding_dim"])
            self.static = [layers.Embedding(c + 1, config["embedding_dim"]) for c in cards]
            self.lstms = [layers.LSTM(config["hidden"], return_sequences=True,
                                      return_state=True, dropout=config["dropout"])
                          for _ in range(config["layers"])]
            self.head = layers.Dense(3 if config["likelihood"] == "student_t" else 2)
            if n_dynamic:
                self.dyn_mean = tf.constant(config["dynamic_mean"], tf.float32)
                self.dyn_std = tf.constant(config["dynamic_std"], tf.float32)

        def call(self, inputs, states=None, training=False):
            numeric, season, series_idx, log_scale, static_idx, dynamic = inputs
            steps = tf.shape(numeric)[1]
            per_row = [self.embed(series_idx)]
            for i, embed in enumerate(self.static):
                idx = tf.cast(static_idx[:, i], tf.int32)
                per_row.append(embed(tf.where((idx < 0) | (idx > cards[i]), 0, idx)))
            emb = tf.tile(tf.concat(per_row, axis=-1)[:, None, :], [1, steps, 1])
            scale_in = tf.tile(log_scale[:, None, None], [1, steps, 1]) / 10.0
            parts = [numeric, tf.one_hot(season, config["season_length"]), emb, scale_in]
            if n_dynamic:
                z = (tf.cast(dynamic, tf.float32) - self.dyn_mean) / self.dyn_std
                parts.append(tf.where(tf.math.is_finite(z), z, 0.0))
            x = tf.concat(parts, axis=-1)
            new_states = []
            for i, lstm in enumerate(self.lstms):
                x, h, c = lstm(x, initial_state=None if states is None else states[i],
                               training=training)
                new_states.append([h, c])
            return self.head(x), new_states

    net = DeepAR()
    b = 2
    net((tf.zeros((b, 3, len(config.get("lags", [1])))), tf.zeros((b, 3), tf.int32),
         tf.zeros((b,), tf.int32), tf.zeros((b,)), tf.zeros((b, len(cards)), tf.int32),
         tf.zeros((b, 3, n_dynamic))))
    return net


def covariates(config: dict[str, Any], rows: int, steps: int, static_idx=None, dynamic=None):
    """The covariates as the network takes them (empty when the model has none).

    Returns:
        ``(static_idx, dynamic)``: (rows, n_static) ints, (rows, steps, n_dynamic) floats.
    """
    cards, n_dynamic = covariate_sizes(config)
    static = (np.zeros((rows, 0), np.int32) if not cards
              else np.asarray(static_idx, dtype=np.int32).reshape(rows, len(cards)))
    dyn = (np.zeros((rows, steps, 0), np.float32) if not n_dynamic
           else np.asarray(dynamic, dtype=np.float32).reshape(rows, steps, n_dynamic))
    return static, dyn


def seasons(season0, steps: int, season_length: int):
    """Season index of each of ``steps`` periods from a window's first season."""
    import tensorflow as tf

    return (season0[:, None] + tf.range(steps)[None, :]) % season_length


def lag_features(z, t0: int, steps: int, lag_list=(1,)):
    """Numeric inputs for predicting positions ``t0 .. t0 + steps - 1`` of scaled ``z``.

    The scaled value ``lag`` positions back for each lag (DeepAR's autoregressive
    inputs), shape (rows, steps, len(lag_list)). A lag reaching before the window's
    start reads 0; it only happens in context steps, whose loss is not scored unless
    ``context_loss`` is set.
    """
    import tensorflow as tf

    t = tf.range(t0, t0 + steps)
    cols = []
    for lag in lag_list:
        back = t - lag
        valid = tf.cast(back >= 0, z.dtype)
        cols.append(tf.gather(z, tf.maximum(back, 0), axis=1) * valid[None, :])
    return tf.stack(cols, axis=-1)


def nll(out, target, scale, likelihood: str):
    """Mean negative log-likelihood of raw ``target`` under the head's ``out``.

    Missing targets (NaN) are masked out: the mean runs over the observed steps only.
    """
    import tensorflow as tf

    seen = tf.math.is_finite(target)
    target = tf.where(seen, target, 0.0)
    if likelihood == "negbin":
        mu, alpha = _negbin_params(out, scale[:, None])
        r = 1.0 / alpha
        logp = (tf.math.lgamma(target + r) - tf.math.lgamma(target + 1.0) - tf.math.lgamma(r)
                + r * tf.math.log(r / (r + mu)) + target * tf.math.log(mu / (r + mu)))
    elif likelihood == "student_t":
        mu, sigma, nu = _student_t_params(out)
        u = (target / scale[:, None] - mu) / sigma
        logp = (tf.math.lgamma((nu + 1.0) / 2.0) - tf.math.lgamma(nu / 2.0)
                - 0.5 * tf.math.log(math.pi * nu) - tf.math.log(sigma)
                - (nu + 1.0) / 2.0 * tf.math.log1p(tf.square(u) / nu))
    else:
        z = target / scale[:, None]
        mu, sigma = out[..., 0], tf.math.softplus(out[..., 1]) + 1e-4
        logp = (-0.5 * math.log(2 * math.pi) - tf.math.log(sigma)
                - 0.5 * tf.square((z - mu) / sigma))
    weight = tf.cast(seen, logp.dtype)
    return -tf.reduce_sum(logp * weight) / tf.maximum(tf.reduce_sum(weight), 1.0)


def carried(z):
    """``z`` with each missing value (NaN) replaced by the last observed one before it.

    Missing values before a row's first observation take that first observation (0
    when the row has none): the inputs the network sees over unobserved steps.
    """
    import tensorflow as tf

    seen = tf.math.is_finite(z)
    steps = tf.shape(z)[1]
    positions = tf.broadcast_to(tf.range(steps)[None, :], tf.shape(z))
    last = tf.where(seen, positions, -1)
    last = tf.transpose(tf.scan(tf.maximum, tf.transpose(last)))   # running max per row
    first = tf.reduce_min(tf.where(seen, positions, steps), axis=1, keepdims=True)
    source = tf.where(last >= 0, last, tf.minimum(first, steps - 1))
    value = tf.gather(z, source, axis=1, batch_dims=1)
    return tf.where(tf.math.is_finite(value), value, tf.zeros_like(value))


def context_scale(context, periods: int = 0):
    """DeepAR's scale of each row of raw ``context``: ``1 + mean |observed values|``.

    The mean runs over the last ``periods`` of the context (0: all of it); a row with
    no observed value there falls back to its whole context. Works on NumPy arrays and
    tensors alike; returns a float32 tensor of one scale per row.
    """
    import tensorflow as tf

    ctx = tf.convert_to_tensor(context, tf.float32)

    def mean_abs(part):
        seen = tf.math.is_finite(part)
        total = tf.reduce_sum(tf.where(seen, tf.abs(part), 0.0), axis=1)
        count = tf.reduce_sum(tf.cast(seen, tf.float32), axis=1)
        return total / tf.maximum(count, 1.0), count

    whole, _ = mean_abs(ctx)
    if periods and (ctx.shape[1] is None or periods < ctx.shape[1]):
        recent, count = mean_abs(ctx[:, -periods:])
        whole = tf.where(count > 0, recent, whole)
    return 1.0 + whole


def _student_t_params(out):
    """Location, scale and degrees of freedom (above 2: the variance exists)."""
    import tensorflow as tf

    return (out[..., 0], tf.math.softplus(out[..., 1]) + 1e-4,
            2.0 + tf.math.softplus(out[..., 2]))


def _negbin_params(out, scale):
    import tensorflow as tf

    mu = (tf.math.softplus(out[..., 0]) + 1e-6) * scale
    alpha = (tf.math.softplus(out[..., 1]) + 1e-6) / tf.sqrt(scale)
    return mu, alpha


def window_loss(net, target, season0, series_idx, scale, static_idx, dynamic, likelihood: str,
                season_length: int, training: bool = True, skip: int = 0, lag_list=(1,)):
    """Teacher-forced loss over a batch of windows.

    The network runs over every step after the first; the loss counts the steps
    from ``skip + 1`` on. With ``skip = context_length - 1`` only the prediction
    range is scored: the context only conditions the state, as at forecast time.
    ``dynamic`` holds every step's covariates, (rows, steps, n_dynamic).
    (Scored context steps teach a pull towards the window's own mean, because the
    scale is that mean; forecasts then drift back towards it.)
    """
    import tensorflow as tf

    steps = tf.shape(target)[1]
    z = carried(target / scale[:, None])
    season = seasons(season0, steps, season_length)
    numeric = lag_features(z, 1, steps - 1, lag_list)
    out, _ = net((numeric, season[:, 1:], series_idx, tf.math.log(scale), static_idx,
                  dynamic[:, 1:]), training=training)
    return nll(out[:, skip:], target[:, 1 + skip:], scale, likelihood)


def sample_paths(net, config: dict[str, Any], context: np.ndarray, season0: np.ndarray,
                 series_idx: np.ndarray, num_samples: int, seed: int = 0, static_idx=None,
                 dynamic=None) -> np.ndarray:
    """Ancestral samples of the next ``prediction_length`` values after each context.

    Args:
        net: the network from :func:`build` with trained weights.
        config: its :func:`network_config`.
        context: (series, context_length) raw values; NaN where missing.
        season0: (series,) season index of each context's first period.
        series_idx: (series,) embedding index of each series.
        num_samples: sample paths per series.
        seed: random seed of the sampling.
        static_idx: (series, n_static) category indices (models with static roles).
        dynamic: (series, context_length + prediction_length, n_dynamic) covariates
            of the context and the forecast periods (models with dynamic roles).

    Returns:
        (series, num_samples, prediction_length) raw sample values.
    """
    import tensorflow as tf

    tf.random.set_seed(seed)
    ctx = tf.constant(np.asarray(context, dtype=np.float32))
    n, c = ctx.shape
    season_length = config["season_length"]
    s0 = tf.constant(np.asarray(season0, dtype=np.int32))
    idx = tf.constant(np.asarray(series_idx, dtype=np.int32))
    scale = context_scale(ctx, int(config.get("scale_periods", 0)))
    z = carried(ctx / scale[:, None])
    season = seasons(s0, c + config["prediction_length"], season_length)
    lag_list = config.get("lags", [1])
    static, dyn = covariates(config, n, c + config["prediction_length"], static_idx, dynamic)
    static, dyn = tf.constant(static), tf.constant(dyn)
    warm = lag_features(z, 1, c - 1, lag_list)
    _, states = net((warm, season[:, 1:c], idx, tf.math.log(scale), static, dyn[:, 1:c]))
    rep = lambda t: tf.repeat(t, num_samples, axis=0)   # noqa: E731 - local shorthand
    states = [[rep(h), rep(cell)] for h, cell in states]
    idx_r, scale_r, season_r, path = rep(idx), rep(scale), rep(season), rep(z)
    static_r, dyn_r = rep(static), rep(dyn)
    step = tf.function(lambda x, st: net(x, states=st), reduce_retracing=True)
    # One random stream per series, from (seed, series index): a series' paths do not
    # depend on which other series share its batch (Spark's partitions, a pyfunc call).
    rngs = [np.random.default_rng([seed, int(i)]) for i in np.asarray(series_idx)]
    draws = []
    for k in range(config["prediction_length"]):
        numeric = lag_features(path, c + k, 1, lag_list)
        out, states = step((numeric, season_r[:, c + k:c + k + 1], idx_r,
                            tf.math.log(scale_r), static_r, dyn_r[:, c + k:c + k + 1]), states)
        raw = _draw(out[:, 0], scale_r, config["likelihood"], rngs, num_samples)
        draws.append(raw)
        path = tf.concat([path, (raw / scale_r)[:, None]], axis=1)
    paths = tf.stack(draws, axis=1).numpy()
    return paths.reshape(n, num_samples, config["prediction_length"])


def _draw(out, scale, likelihood: str, rngs: list[np.random.Generator], num_samples: int):
    """One value per sample path, each series' from its own generator.

    Rows ``i * num_samples`` to ``(i + 1) * num_samples - 1`` are series ``i``'s.
    """
    import tensorflow as tf

    def per_series(draw) -> np.ndarray:
        return np.concatenate([draw(rng, slice(i * num_samples, (i + 1) * num_samples))
                               for i, rng in enumerate(rngs)])

    if likelihood == "negbin":
        mu, alpha = (np.asarray(v, dtype=np.float64) for v in _negbin_params(out, scale))
        r = 1.0 / alpha
        lam = per_series(lambda rng, rows: rng.gamma(r[rows], mu[rows] / r[rows]))
        return tf.constant(per_series(lambda rng, rows: rng.poisson(lam[rows])), tf.float32)
    if likelihood == "student_t":
        mu, sigma, nu = _student_t_params(out)
        df = np.asarray(nu, dtype=np.float64)
        noise = per_series(lambda rng, rows: rng.standard_t(df[rows]))
    else:
        mu, sigma = out[:, 0], tf.math.softplus(out[:, 1]) + 1e-4
        noise = per_series(lambda rng, rows: rng.standard_normal(rows.stop - rows.start))
    return (mu + sigma * tf.constant(noise, tf.float32)) * scale


def summarise(paths: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and the 0.1 / 0.5 / 0.9 quantiles over sample paths (axis 1)."""
    q = np.quantile(paths, QUANTILES, axis=1)
    return {"mean": paths.mean(axis=1), "q10": q[0], "q50": q[1], "q90": q[2]}


def save(net, config: dict[str, Any], folder: str) -> None:
    """Write the weights and the config into an artifact folder."""
    os.makedirs(folder, exist_ok=True)
    net.save_weights(os.path.join(folder, WEIGHTS_FILE))
    with open(os.path.join(folder, CONFIG_FILE), "w") as fh:
        json.dump(config, fh, indent=2)


def load_config(folder: str) -> dict[str, Any]:
    """The :func:`network_config` saved in an artifact folder."""
    with open(os.path.join(folder, CONFIG_FILE)) as fh:
        return json.load(fh)


def load(folder: str):
    """Rebuild a saved network; returns ``(net, config)``."""
    config = load_config(folder)
    net = build(config)
    net.load_weights(os.path.join(folder, WEIGHTS_FILE))
    return net, config
