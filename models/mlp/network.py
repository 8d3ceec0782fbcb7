"""The MLP network (built inside Horovod ranks; TensorFlow is imported there)."""

from __future__ import annotations

from typing import Any

import numpy as np


def build(params: dict[str, Any], n_features: int, n_classes: int,
          mean: np.ndarray | None, variance: np.ndarray | None):
    """Dense -> batch norm -> ReLU -> dropout blocks; softmax or linear head.

    Args:
        params: ``hidden`` (units per layer), ``dropout``, ``task``
            (``classification`` or ``regression``).
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
        x = layers.Normalization(mean=mean, variance=np.maximum(variance, 1e-12))(x)
    for units in params["hidden"]:
        x = layers.Dense(units, use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
        x = layers.Dropout(params["dropout"])(x)
    if params.get("task", "classification") == "regression":
        outputs = layers.Dense(1, dtype="float32", name="value")(x)
    else:
        outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="probs")(x)
    return tf.keras.Model(inputs, outputs, name="mlp")
