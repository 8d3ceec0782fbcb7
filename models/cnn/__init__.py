"""CNN family: a small conv net over images of any size and channel count."""

import math
from typing import Any

from lakehouse.errors import ConfigError
from models.classifier.scoring import (
    CLASSIFIER_FIELDS,
    LATE_FIELDS,
    predict_classifier,
    score_classifier,
)
from models.classifier.train import KerasTrainer
from models.cnn.network import build
from models.cnn.params import CnnParams
from models.family import Family


def check(params: dict[str, Any], n_features: int) -> None:
    """The image shape must hold exactly the feature set's numbers per row."""
    shape = params["image_shape"]
    if math.prod(shape) != n_features:
        raise ConfigError(f"cnn: image_shape={list(shape)!r} holds {math.prod(shape)} numbers, "
                          f"but the feature set has {n_features} per row")


FAMILY = Family(
    name="cnn",
    kind="image",
    params=CnnParams,
    trainer=KerasTrainer("cnn", build, normalise=False, check=check),
    scorer=score_classifier,
    predictor=predict_classifier,
    prediction_fields=CLASSIFIER_FIELDS,
    prediction_late_fields=LATE_FIELDS,
)
