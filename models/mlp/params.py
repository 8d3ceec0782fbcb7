"""Training parameters of the MLP family."""

from __future__ import annotations

from dataclasses import dataclass, field

from lakehouse.params import at_least, in_range, one_of, positive, whole_numbers

TASKS = ("classification", "regression")


@dataclass(frozen=True)
class MlpParams:
    """Dense layers over a tabular feature vector.

    Attributes:
        hidden: units of each hidden layer.
        dropout: dropout after each hidden layer.
        learning_rate: Adam's rate for one rank (scaled by the number of ranks).
        batch_size: rows per step and rank.
        epochs: most passes over the training split.
        patience: epochs without a better validation loss before stopping.
        task: ``classification`` or ``regression``; by default the feature set's
            declared task (giving another one stops the run).
    """

    hidden: list[int] = field(default_factory=lambda: [64, 32])
    dropout: float = 0.2
    learning_rate: float = 0.001
    batch_size: int = 64
    epochs: int = 20
    patience: int = 3
    task: str | None = None

    def __post_init__(self) -> None:
        whole_numbers("mlp", self, "hidden")
        in_range("mlp", self, "dropout", 0.0, 1.0)
        positive("mlp", self, "learning_rate")
        at_least("mlp", self, 1, "batch_size", "epochs", "patience")
        one_of("mlp", self, "task", (None, *TASKS))
