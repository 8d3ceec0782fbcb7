"""CNN family: a small conv net over images of any size and channel count."""

import math
from typing import Any

from lakehouse.errors import ConfigError
from models.cnn.network import build
from models.family import Family


def check(params: dict[str, Any], n_features: int) -> None:
    """The image shape must hold exactly the feature set's numbers per row."""
    shape = params["image_shape"]
    if not (isinstance(shape, list | tuple) and len(shape) == 3
            and all(isinstance(d, int) and d > 0 for d in shape)):
        raise ConfigError(f"cnn: image_shape={shape!r} is not [height, width, channels]")
    if math.prod(shape) != n_features:
        raise ConfigError(f"cnn: image_shape={list(shape)!r} holds {math.prod(shape)} numbers, "
                          f"but the feature set has {n_features} per row")


FAMILY = Family(
    name="cnn",
    kind="image",
    build=build,
    defaults={"filters": [32, 64], "dense": 128, "dropout": 0.3, "learning_rate": 0.001,
              "batch_size": 128, "epochs": 5, "patience": 2, "task": "classification",
              "image_shape": [28, 28, 1]},
    normalise=False,
    check=check,
)
