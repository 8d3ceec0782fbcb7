"""What a model family provides to the shared runner and scorer."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lakehouse.errors import ConfigError

FAMILY_NAMES = ("mlp", "cnn")


@dataclass(frozen=True)
class Family:
    """A model family.

    Attributes:
        name: family name (the folder under ``models/``).
        build: ``build(params, n_features, n_classes, mean, variance)`` -> Keras model;
            runs inside Horovod ranks.
        defaults: default training parameters.
        normalise: whether the runner fits per-feature mean/variance on the
            training split and hands them to ``build``.
    """

    name: str
    build: Callable[..., Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    normalise: bool = True


def get_family(name: str) -> Family:
    """The family called ``name`` (``models/<name>/``), or ConfigError listing them."""
    if name not in FAMILY_NAMES:
        raise ConfigError(f"unknown model family {name!r}; families: {', '.join(FAMILY_NAMES)}")
    return importlib.import_module(f"models.{name}").FAMILY
