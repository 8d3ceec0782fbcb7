"""MLP family: dense layers with batch normalisation and dropout over tabular vectors."""

from models.family import Family
from models.mlp.network import build
from models.mlp.params import MlpParams

FAMILY = Family(
    name="mlp",
    kind="tabular",
    build=build,
    params=MlpParams,
    normalise=True,
    tasks=("classification", "regression"),
)
