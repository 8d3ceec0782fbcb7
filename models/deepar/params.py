"""Training parameters of the DeepAR family."""

from __future__ import annotations

from dataclasses import dataclass

from lakehouse.errors import ConfigError
from lakehouse.params import at_least, in_range, one_of, positive
from models.deepar.network import LIKELIHOODS

LR_SCHEDULES = ("cosine", "constant")
SCALES = ("context", "season")


@dataclass(frozen=True)
class DeepArParams:
    """One global autoregressive LSTM over a panel of series.

    Attributes:
        epochs: passes of ``steps_per_epoch`` steps.
        steps_per_epoch: steps per epoch and rank.
        batch_size: windows per step and rank.
        learning_rate: Adam's rate for one rank.
        hidden: LSTM units per layer.
        layers: LSTM layers.
        embedding_dim: size of each series' embedding.
        dropout: dropout between LSTM layers.
        likelihood: ``gaussian``, ``student_t`` (heavy tails) or ``negbin`` (counts).
        num_samples: sample paths per forecast.
        context_loss: also learn from the context part of each window.
        seasonal_lags: inputs a whole season back (1: last year's value, ...).
        recent_lags: inputs of the last periods (1: the previous value only).
        lr_schedule: ``cosine`` decay or ``constant``.
        scale: what a window's values are divided by: ``1 + mean |value|`` over its
            whole ``context`` or over the context's last ``season``.
        average_weights: the forecasts use a moving average of the weights over
            the training steps, with this momentum (0.99: about the last 100
            steps; at most a tenth of the run); 0 uses the last step's weights.
        validation: hold out each series' last ``prediction_length`` training
            periods, forecast them after every epoch, and keep the epoch whose
            (averaged) weights forecast them best (weighted quantile loss). The
            training windows that reach into them are left out.
        patience: with ``validation``, stop after this many epochs without a better
            validation forecast (0: run every epoch).
    """

    epochs: int = 30
    steps_per_epoch: int = 100
    batch_size: int = 64
    learning_rate: float = 0.001
    hidden: int = 40
    layers: int = 2
    embedding_dim: int = 8
    dropout: float = 0.0
    likelihood: str = "gaussian"
    num_samples: int = 100
    context_loss: bool = False
    seasonal_lags: int = 2
    recent_lags: int = 1
    lr_schedule: str = "cosine"
    scale: str = "context"
    average_weights: float = 0.99
    validation: bool = False
    patience: int = 0

    def __post_init__(self) -> None:
        at_least("deepar", self, 1, "epochs", "steps_per_epoch", "batch_size", "hidden",
                 "layers", "embedding_dim", "num_samples")
        at_least("deepar", self, 0, "seasonal_lags", "patience")
        at_least("deepar", self, 1, "recent_lags")
        positive("deepar", self, "learning_rate")
        in_range("deepar", self, "dropout", 0.0, 1.0)
        in_range("deepar", self, "average_weights", 0.0, 1.0)
        one_of("deepar", self, "likelihood", LIKELIHOODS)
        one_of("deepar", self, "lr_schedule", LR_SCHEDULES)
        one_of("deepar", self, "scale", SCALES)
        if self.patience and not self.validation:
            raise ConfigError(f"deepar parameter patience={self.patience}: stops on validation "
                              f"forecasts; give validation=true too, or leave patience at 0")
