"""MLP family: dense layers with batch normalisation and dropout over tabular vectors."""

from models.family import Family
from models.mlp.network import build

FAMILY = Family(
    name="mlp",
    kind="tabular",
    build=build,
    defaults={"hidden": [64, 32], "dropout": 0.2, "learning_rate": 0.001, "batch_size": 64,
              "epochs": 20, "patience": 3, "task": "classification"},
    normalise=True,
    tasks=("classification", "regression"),
)
