"""One way to report problems in a declaration: collect them all, then stop once.

Every catalog and feature check adds to a :class:`Problems`: each problem names where
it is (``datasets.orders.features.split.by``) and what was expected. A caller reads
:attr:`Problems.items` or raises them all at once with :meth:`Problems.raise_if_any`;
nobody parses another check's message text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lakehouse.errors import ConfigError, LakeforgeError


class SettingError(ConfigError):
    """A typed setting's value is wrong; raised by a settings dataclass's ``__post_init__``.

    Attributes:
        key: the setting.
        what: what is wrong with its value, or what was expected.
    """

    def __init__(self, key: str, what: str) -> None:
        super().__init__(f"{key}: {what}")
        self.key, self.what = key, what


@dataclass
class Problems:
    """The problems found so far, in the order found."""

    items: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.items)

    def add(self, where: str, what: str) -> None:
        """One problem: the key it is at and what is wrong there."""
        self.items.append(f"{where}: {what}")

    def extend(self, other: Problems) -> None:
        """Every problem of ``other``."""
        self.items.extend(other.items)

    def raise_if_any(self, error: type[LakeforgeError], header: str) -> None:
        """Raise ``error`` listing every problem under ``header`` (nothing when none)."""
        if self.items:
            raise error(header + ":\n  " + "\n  ".join(self.items))

    def mapping(self, value: Any, where: str, known: tuple[str, ...]) -> Mapping[str, Any]:
        """``value`` as a mapping of known keys (``{}`` and a problem when it is not one)."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.add(where, f"expected a mapping, got {value!r}")
            return {}
        for key in value:
            if key not in known:
                self.add(f"{where}.{key}", f"unknown key; known keys here: {', '.join(known)}")
        return value

    def text(self, value: Any, where: str) -> str:
        """``value`` as a string (empty when missing or not a scalar)."""
        if value is None:
            return ""
        if isinstance(value, Mapping | list | tuple | bool):
            self.add(where, f"expected a string, got {value!r}")
            return ""
        return str(value)

    def texts(self, value: Any, where: str) -> tuple[str, ...]:
        """``value`` as strings: one string or a list of them."""
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            self.add(where, f"expected a string or a list of strings, got {value!r}")
            return ()
        return tuple(value)
