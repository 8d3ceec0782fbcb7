"""Feature settings of series and text data sets, declared in the catalog.

The families that train on these kinds build their own gold tables (DeepAR's windows,
word2vec's corpus; RCF shingles streams from the roles alone), and read their settings
here, so ``lakeforge catalog check`` can check them without a family. Series::

    sales:
      kind: series
      roles: {item_id: store, timestamp: day, target: units}
      features:
        freq: day                 # day, week, month, quarter or year
        context_length: 28        # periods the model sees
        prediction_length: 14     # periods it forecasts; also the held-out horizon
        season_length: 7          # optional; default by freq (7, 52, 12, 4, 1)

Text::

    reviews:
      kind: text
      roles: {id: review_id, text: body}
      features: {min_count: 5, max_sentence_length: 1000}

The timestamp of a series is a DATE or TIMESTAMP column; each period is identified by
its index on the frequency's calendar (days or weeks since 1970-01-01, months, quarters
or years), so consecutive periods differ by exactly one and a gap is visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column
from pyspark.sql import functions as F

from lakehouse.datasets import Dataset
from lakehouse.errors import ConfigError


@dataclass(frozen=True)
class Frequency:
    """A calendar step: a whole number of months, or of days."""

    name: str
    months: int          # per period, for month-based frequencies; else 0
    days: int            # per period, for day-based frequencies; else 0
    season_length: int   # default periods per season


FREQUENCIES = {f.name: f for f in (
    Frequency("day", 0, 1, 7), Frequency("week", 0, 7, 52), Frequency("month", 1, 0, 12),
    Frequency("quarter", 3, 0, 4), Frequency("year", 12, 0, 1))}


def period_index(date: Column, freq: Frequency) -> Column:
    """The period's index on the frequency's calendar (an int Column of a DATE Column)."""
    if freq.days:
        return F.floor(F.unix_date(date) / freq.days).cast("int")
    return F.floor((F.year(date) * 12 + F.month(date) - 1) / freq.months).cast("int")


@dataclass(frozen=True)
class SeriesFeatures:
    """How a series data set is cut into DeepAR windows."""

    freq: Frequency
    season_length: int
    context_length: int
    prediction_length: int
    item_id: str
    timestamp: str
    target: str


@dataclass(frozen=True)
class TextFeatures:
    """How a text data set becomes a vocabulary and sentences of word ids."""

    min_count: int = 5
    max_sentence_length: int = 1000


_SERIES_KEYS = ("freq", "context_length", "prediction_length", "season_length")
_TEXT_KEYS = ("min_count", "max_sentence_length")


def _whole(raw: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = raw.get(key, default)
    if value is None:
        raise ConfigError(f"{where}.{key}: missing; a whole number >= 1")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}.{key}: {value!r} is not a whole number >= 1")
    return value


def _block(entry: Dataset, kind: str, known: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    where = f"datasets.{entry.name}.features"
    raw = dict(entry.features or {})
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; {kind} features "
                          f"take {', '.join(known)}")
    return raw, where


def series_features(entry: Dataset) -> SeriesFeatures:
    """The series settings of a catalog entry of kind ``series``.

    Raises:
        ConfigError: an unknown key, frequency or a length that is not a whole number
            >= 1, each named with the data set.
    """
    raw, where = _block(entry, "series", _SERIES_KEYS)
    name = raw.get("freq")
    if name not in FREQUENCIES:
        raise ConfigError(f"{where}.freq: {name!r} is not one of {', '.join(FREQUENCIES)}")
    freq = FREQUENCIES[name]
    return SeriesFeatures(
        freq=freq, season_length=_whole(raw, "season_length", where, freq.season_length),
        context_length=_whole(raw, "context_length", where),
        prediction_length=_whole(raw, "prediction_length", where),
        item_id=str(entry.roles["item_id"]), timestamp=str(entry.roles["timestamp"]),
        target=str(entry.roles["target"]))


def text_features(entry: Dataset) -> TextFeatures:
    """The text settings of a catalog entry of kind ``text`` (defaults when not given).

    Raises:
        ConfigError: an unknown key or a value that is not a whole number >= 1.
    """
    raw, where = _block(entry, "text", _TEXT_KEYS)
    defaults = TextFeatures()
    return TextFeatures(
        min_count=_whole(raw, "min_count", where, defaults.min_count),
        max_sentence_length=_whole(raw, "max_sentence_length", where,
                                   defaults.max_sentence_length))
