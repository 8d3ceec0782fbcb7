"""The CNN network (built inside Horovod ranks; TensorFlow is imported there)."""

from __future__ import annotations

from typing import Any

import numpy as np


def build(params: dict[str, Any], n_features: int, n_classes: int,
          mean: np.ndarray | None = None, variance: np.ndarray | None = None):
    """Conv -> batch norm -> ReLU -> max-pool blocks, then dense + dropout + softmax.

    Args:
        params: ``filters`` per conv block, ``dense`` units, ``dropout``,
            ``image_shape`` (height, width, channels) whose product is ``n_features``.
        n_features: flat input width.
        n_classes: classes.
        mean: unused (pixels arrive in [0, 1]).
        variance: unused.

    Returns:
        An uncompiled ``tf.keras.Model``.
    """
    import tensorflow as tf

    layers = tf.keras.layers
    shape = tuple(params["image_shape"])
    if int(np.prod(shape)) != n_features:
        raise ValueError(f"image_shape {shape} does not hold {n_features} features")
    inputs = tf.keras.Input((n_features,), name="features")
    x = layers.Reshape(shape)(inputs)
    for filters in params["filters"]:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(padding="same")(x)   # small images keep at least 1x1
    x = layers.Dropout(params["dropout"])(x)
    x = layers.Flatten()(x)
    x = layers.Dense(params["dense"], activation="relu")(x)
    x = layers.Dropout(params["dropout"])(x)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="probs")(x)
    return tf.keras.Model(inputs, outputs, name="cnn")
