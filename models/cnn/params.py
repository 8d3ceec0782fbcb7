"""Training parameters of the CNN family."""

from __future__ import annotations

from dataclasses import dataclass, field

from lakehouse.params import at_least, in_range, one_of, positive, whole_numbers


@dataclass(frozen=True)
class CnnParams:
    """A small conv net over images.

    Attributes:
        filters: filters of each conv block (3x3 conv, pooling).
        dense: units of the dense layer after the blocks.
        dropout: dropout before the output.
        learning_rate: Adam's rate for one rank (scaled by the number of ranks).
        batch_size: images per step and rank.
        epochs: most passes over the training split.
        patience: epochs without a better validation loss before stopping.
        task: ``classification`` (the only task of the family; by default the feature
            set's, which must be one).
        image_shape: height, width, channels; by default the data set's image
            declaration.
    """

    filters: list[int] = field(default_factory=lambda: [32, 64])
    dense: int = 128
    dropout: float = 0.3
    learning_rate: float = 0.001
    batch_size: int = 128
    epochs: int = 5
    patience: int = 2
    task: str | None = None
    image_shape: list[int] | None = None

    def __post_init__(self) -> None:
        whole_numbers("cnn", self, "filters")
        if self.image_shape is not None:
            whole_numbers("cnn", self, "image_shape", 3)
        in_range("cnn", self, "dropout", 0.0, 1.0)
        positive("cnn", self, "learning_rate")
        at_least("cnn", self, 1, "dense", "batch_size", "epochs", "patience")
        one_of("cnn", self, "task", (None, "classification"))
