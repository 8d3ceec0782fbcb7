"""The MLP network (built inside Horovod ranks; TensorFlow is imported there)."""

from __future__ import annotations

from typing import Any

import numpy as np


def build(params: dict[str, Any], n_features: int, n_classes: int,
          mean: np.ndarray | None, variance: np.ndarray | None):
    """Dense -> batch norm -> ReLU -> dropout blocks; softmax or linear head.

    Args:
        params: ``hidden`` (units per layer), ``dropout``, ``task``
            (``classification`` or ``regression``); a regression also gets the
            training split's ``target_mean`` and ``target_std``: the head predicts the
            standardised target and the model scales it back, so it outputs target units.
        n_features: input width.
        n_classes: classes (ignored for regression).
        mean: per-feature mean of the training split (scaling is part of the model).
        variance: per-feature variance of the training split.

    Returns:
        An uncompiled ``tf.keras.Model``.
    """
    import tensorflow as tf

    layers = tf.keras.layers
    inputs = tf.keras.Input((n_features,), name="features")
    x = inputs
    if mean is not None and variance is not None:
        # A feature constant in training (a category's "other" slot when every category
        # was seen) is centred, not divided by ~0: a new category at scoring stays 1.
        x = layers.Normalization(mean=mean, variance=np.where(variance > 1e-12, variance, 1.0))(x)
    for units in params["hidden"]:
        x = layers.Dense(units, use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
        x = layers.Dropout(params["dropout"])(x)
    if params.get("task", "classification") == "regression":
        scaled = layers.Dense(1, dtype="float32")(x)
        outputs = layers.Rescaling(float(params.get("target_std", 1.0)),
                                   float(params.get("target_mean", 0.0)), dtype="float32",
                                   name="value")(scaled)
    else:
        outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="probs")(x)
    return tf.keras.Model(inputs, outputs, name="mlp")
