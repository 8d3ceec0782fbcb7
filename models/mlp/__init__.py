"""MLP family: dense layers with batch normalisation and dropout over tabular vectors."""

from models.classifier.scoring import (
    CLASSIFIER_FIELDS,
    LATE_FIELDS,
    predict_classifier,
    score_classifier,
)
from models.classifier.train import KerasTrainer
from models.family import Family
from models.mlp.network import build
from models.mlp.params import MlpParams

FAMILY = Family(
    name="mlp",
    kind="tabular",
    params=MlpParams,
    trainer=KerasTrainer("mlp", build, normalise=True,
                         tasks=("classification", "regression")),
    scorer=score_classifier,
    predictor=predict_classifier,
    prediction_fields=CLASSIFIER_FIELDS,
    prediction_late_fields=LATE_FIELDS,
)
