"""CNN family: a small conv net over 28x28 grey images."""

from models.cnn.network import build
from models.family import Family

FAMILY = Family(
    name="cnn",
    build=build,
    defaults={"filters": [32, 64], "dense": 128, "dropout": 0.3, "learning_rate": 0.001,
              "batch_size": 128, "epochs": 5, "patience": 2, "task": "classification",
              "image_shape": [28, 28, 1]},
    normalise=False,
)
