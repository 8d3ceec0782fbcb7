"""Range checks shared by typed settings: training parameters and feature settings.

Each model family declares its parameters (``models/<family>/params.py``), and each
kind of data set its feature settings (:mod:`lakehouse.featuresets`), as a frozen
dataclass whose defaults are the defaults, built with the configuration's typed
loader (types checked, unknown keys named); the dataclass's ``__post_init__`` checks
ranges with these helpers, on the driver, before anything
starts. Every message names the family (or the settings), the parameter and the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lakehouse.errors import ConfigError


def at_least(family: str, params: Any, least: int | float, *names: str) -> None:
    """Each named parameter must be ``>= least``."""
    for name in names:
        value = getattr(params, name)
        if value < least:
            raise ConfigError(f"{family} parameter {name}={value!r}: must be >= {least}")


def positive(family: str, params: Any, *names: str) -> None:
    """Each named parameter must be > 0."""
    for name in names:
        value = getattr(params, name)
        if not value > 0:
            raise ConfigError(f"{family} parameter {name}={value!r}: must be > 0")


def one_of(family: str, params: Any, name: str, choices: Sequence[Any]) -> None:
    """The named parameter must be one of ``choices``."""
    value = getattr(params, name)
    if value not in choices:
        raise ConfigError(f"{family} parameter {name}={value!r}: must be one of "
                          f"{', '.join(str(c) for c in choices if c is not None)}")


def in_range(family: str, params: Any, name: str, low: float, high: float) -> None:
    """The named parameter must lie in ``[low, high)``."""
    value = getattr(params, name)
    if not low <= value < high:
        raise ConfigError(f"{family} parameter {name}={value!r}: must be >= {low} and < {high}")


def whole_numbers(family: str, params: Any, name: str, length: int | None = None) -> None:
    """The named parameter must be a list of whole numbers >= 1 (of ``length`` if given)."""
    value = getattr(params, name)
    ok = isinstance(value, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    if not ok or (length is not None and len(value) != length) or not value:
        shape = f"{length} whole numbers" if length else "a list of whole numbers"
        raise ConfigError(f"{family} parameter {name}={value!r}: must be {shape} >= 1")
