"""Feature settings of series and text data sets, declared in the catalog.

The families that train on these kinds build their own gold tables (DeepAR's windows,
word2vec's corpus; RCF shingles streams from the roles alone), and read their settings
here, so ``lakeforge catalog check`` can check them without a family. Series::

    sales:
      kind: series
      roles: {item_id: store, timestamp: day, target: units,
              static: [region], dynamic: [price]}   # static and dynamic are optional
      features:
        freq: day                 # minute, hour, day, week, month, quarter or year,
                                  # optionally "N units": "30 minutes", "2 weeks"
        context_length: 28        # periods the model sees
        prediction_length: 14     # periods it forecasts; also the held-out horizon
        season_length: 7          # optional; default: a day's periods below a day,
                                  # else 7, 52, 12, 4, 1

``static`` columns are categories of a series (its region, its format): each gets an
embedding. ``dynamic`` columns are numbers known for every period, including the
periods to forecast (a price, a holiday flag): rows with those future periods, the
target left empty, give the forecast its inputs.

Text::

    reviews:
      kind: text
      roles: {id: review_id, text: body}
      features: {min_count: 5, max_sentence_length: 1000}

The timestamp of a series is a DATE or TIMESTAMP column; each period is identified by
its index on the frequency's calendar (minutes, hours, days or weeks since 1970-01-01
00:00 UTC; months, quarters or years), so consecutive periods differ by exactly one
and a gap is visible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column
from pyspark.sql import functions as F

from lakehouse.datasets import Dataset
from lakehouse.errors import ConfigError


@dataclass(frozen=True)
class Frequency:
    """A calendar step: a whole number of months, or of seconds."""

    name: str
    months: int          # per period, for month-based frequencies; else 0
    seconds: int         # per period, for minute- to week-based frequencies; else 0
    season_length: int   # default periods per season

    @property
    def days(self) -> int:
        """Whole days per period (0 below a day)."""
        return self.seconds // DAY


DAY = 86_400
_UNITS = {"minute": (0, 60), "hour": (0, 3600), "day": (0, DAY), "week": (0, 7 * DAY),
          "month": (1, 0), "quarter": (3, 0), "year": (12, 0)}
_SEASONS = {"week": 52, "month": 12, "quarter": 4, "year": 1}
_FREQ = re.compile(r"^\s*(\d+)?\s*(minute|hour|day|week|month|quarter|year)s?\s*$")
FREQUENCY_UNITS = tuple(_UNITS)   # each may take a whole multiple: "15 minutes"


def frequency(text: str) -> Frequency:
    """The frequency written as ``unit`` or ``N unit`` (``hour``, ``30 minutes``, ``day``).

    The default season is a day for steps below a day (24 hours, 48 half hours), a
    week for days, and a year for weeks, months and quarters.

    Raises:
        ValueError: not a unit of :data:`FREQUENCY_UNITS`, or a multiple below 1.
    """
    match = _FREQ.match(str(text))
    if not match or (match.group(1) is not None and int(match.group(1)) < 1):
        raise ValueError(f"{text!r} is not a frequency; write one of {', '.join(_UNITS)}, "
                         f"optionally after a whole number (for example '30 minutes')")
    n, unit = int(match.group(1) or 1), match.group(2)
    months, seconds = (n * x for x in _UNITS[unit])
    if seconds and seconds < DAY:
        season = DAY // seconds if DAY % seconds == 0 else 1
    elif seconds == DAY:
        season = 7
    else:
        season = _SEASONS.get(unit, 1) // n if n == 1 or _SEASONS.get(unit, 1) % n == 0 else 1
    name = unit if n == 1 else f"{n} {unit}s"
    return Frequency(name, months, seconds, max(season, 1))


def period_index(when: Column, freq: Frequency) -> Column:
    """The period's index on the frequency's calendar, of a DATE or TIMESTAMP Column.

    Periods since 1970-01-01 00:00 UTC, or months / quarters / years since year 0 for
    month-based frequencies (an int Column).
    """
    if freq.seconds:
        stamp = F.unix_seconds(when.cast("timestamp"))
        return F.floor(stamp / freq.seconds).cast("int")
    return F.floor((F.year(when) * 12 + F.month(when) - 1) / freq.months).cast("int")


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
    static: tuple[str, ...] = ()    # categorical columns, one value per series
    dynamic: tuple[str, ...] = ()   # numeric columns known for every period, future ones too


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
    try:
        freq = frequency(raw.get("freq"))
    except ValueError as exc:
        raise ConfigError(f"{where}.freq: {exc}") from None
    return SeriesFeatures(
        freq=freq, season_length=_whole(raw, "season_length", where, freq.season_length),
        context_length=_whole(raw, "context_length", where),
        prediction_length=_whole(raw, "prediction_length", where),
        item_id=str(entry.roles["item_id"]), timestamp=str(entry.roles["timestamp"]),
        target=str(entry.roles["target"]), static=tuple(entry.roles.get("static") or ()),
        dynamic=tuple(entry.roles.get("dynamic") or ()))


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
