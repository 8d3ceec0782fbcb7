"""The series kind: a panel of time series cut into fixed-length windows with Spark.

A series data set's catalog entry::

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
        fill: none                # missing targets: none (masked), previous, linear, zero
        ends: own                 # own: forecast from each series' last observation;
                                  # aligned: from the panel's last period
        min_length: 15            # shortest series kept (default prediction_length + 1)

``static`` columns are categories of a series (its region, its format): each gets an
embedding. ``dynamic`` columns are numbers known for every period, including the
periods to forecast (a price, a holiday flag): rows with those future periods, the
target left empty, give the forecast its inputs.

The timestamp of a series is a DATE or TIMESTAMP column; each period is identified by
its index on the frequency's calendar (minutes, hours, days or weeks since 1970-01-01
00:00 UTC; months, quarters or years), so consecutive periods differ by exactly one
and a gap is visible.

``gold_deepar_<dataset>`` holds one row per window of ``context_length +
prediction_length`` consecutive periods of one series of a series data set (its
catalog entry's roles and ``features:``):

* ``test``: one window per series, its last ``prediction_length`` values are the
  held-out horizon (the last periods of the series);
* ``train``: every complete window (stride ``stride``) that ends before that
  horizon, so no held-out value is ever trained on.

Missing values and ragged ends, as DeepAR treats them. A series runs on the
frequency's calendar from its first observed period to its last; a period inside
that span that silver lacks, or whose target is empty, is a *missing target*: it
stays in the window as NaN, the loss skips it and the network's inputs carry the
last observed value over it (``fill: none``, the default). ``fill: previous``,
``linear`` or ``zero`` fills such gaps in the build instead. Series that start
later simply have fewer windows. A series that ends before the others is, with
``ends: own`` (the default), forecast from its own last observed period; with
``ends: aligned`` it runs to the panel's last period, its missing tail as missing
targets, so every series' forecast starts at the same period. A series shorter than
one window plus a horizon is padded in front with missing targets (so it still
gets a test window, and training windows where its history allows), down to
``min_length`` periods (default ``prediction_length + 1``); a shorter one stops the
build with :class:`SeriesTooShortError` naming it. A training window is kept when
its context and its prediction range each hold an observed value.

Each row carries ``series_idx`` (dense index of ``series_id``, for the embedding),
``start`` (first period's date) and ``start_time`` (its start, for steps below a day),
``season`` (the period's index modulo the season length: month of year, quarter,
day of week, hour of day ..., from 0), ``scale`` (DeepAR's ``1 + mean |context|``),
``target`` and the silver version it was cut from (``source_version``), so baselines
can read the same history.

Covariates, when the entry declares them:

* ``static_idx``: per ``static`` role, the series' category as an index from 1 (0:
  none), dense over every series of the table; a series' category is its latest;
* ``dynamic``: per period of the window, the ``dynamic`` roles' values (period-major,
  ``(context + prediction) x n`` numbers; NaN where silver has none);
* ``future``: on ``test`` rows, the ``dynamic`` values of the ``prediction_length``
  periods after the series' last observed one, from silver rows of those periods
  whose target is empty; NULL when silver holds fewer (scoring then stops, naming
  the series: a forecast needs its inputs).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DateType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    TimestampType,
)
from pyspark.sql.window import Window

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.datasets import Dataset
from lakehouse.errors import LakeforgeError
from lakehouse.featuresets.contract import (
    ROW_FIELDS,
    FeatureSet,
    Kind,
    build_once,
    built_meta,
    entry_of,
    silver_rows,
)
from lakehouse.problems import SettingError
from lakehouse.tables import TRAINING_TABLE_PROPERTIES, TableSpec, _f, register


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
FILLS = ("none", "previous", "linear", "zero")
ENDS = ("own", "aligned")


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
class SeriesSettings:
    """How a series data set is cut into windows (``features:`` of a series entry).

    Attributes:
        freq: the calendar step (:func:`frequency`): ``month``, ``30 minutes``, ...
        context_length: periods a model sees.
        prediction_length: periods it forecasts; also the held-out horizon.
        season_length: periods per season (default: the frequency's).
        stride: periods between the starts of two training windows.
        fill: how missing targets inside a series are filled (:data:`FILLS`).
        ends: where each series' forecast starts (:data:`ENDS`).
        min_length: the shortest series kept, padded to a window (0: prediction + 1).
    """

    freq: str = ""
    context_length: int = 0
    prediction_length: int = 0
    season_length: int = 0
    stride: int = 1
    fill: str = "none"
    ends: str = "own"
    min_length: int = 0

    def __post_init__(self) -> None:
        try:
            frequency(self.freq)
        except ValueError as exc:
            raise SettingError("freq", str(exc)) from None
        for key in ("context_length", "prediction_length"):
            if getattr(self, key) < 1:
                raise SettingError(key, "missing; a whole number >= 1")
        for key, choices in (("fill", FILLS), ("ends", ENDS)):
            if getattr(self, key) not in choices:
                raise SettingError(key, f"{getattr(self, key)!r} is not one of "
                                        f"{', '.join(choices)}")
        if self.min_length and self.min_length <= self.prediction_length:
            raise SettingError("min_length", f"{self.min_length} leaves no context; above "
                                             f"prediction_length {self.prediction_length}")


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
    fill: str = "none"              # missing targets inside a series (FILLS)
    ends: str = "own"               # own or aligned forecast starts (ENDS)
    min_length: int = 0             # shortest series kept; 0: prediction_length + 1

    @property
    def shortest(self) -> int:
        """The fewest periods a series may have (it is padded to a window)."""
        return self.min_length or self.prediction_length + 1


def series_features(entry: Dataset, settings: SeriesSettings) -> SeriesFeatures:
    """A series entry's settings resolved with its roles and its frequency."""
    freq = frequency(settings.freq)
    return SeriesFeatures(
        freq=freq, season_length=settings.season_length or freq.season_length,
        context_length=settings.context_length, prediction_length=settings.prediction_length,
        item_id=str(entry.roles["item_id"]), timestamp=str(entry.roles["timestamp"]),
        target=str(entry.roles["target"]), static=tuple(entry.roles.get("static") or ()),
        dynamic=tuple(entry.roles.get("dynamic") or ()), fill=settings.fill,
        ends=settings.ends, min_length=settings.min_length)


def series_of(cfg: Config, dataset: str) -> SeriesFeatures:
    """The declared series settings of catalog entry ``dataset`` (kind ``series``).

    Raises:
        SourceError: no such entry or one of another kind.
        ConfigError: its ``features:`` block is wrong (named).
    """
    entry = entry_of(cfg, dataset, "series")
    return series_features(entry, KIND.settings_of(entry))


log = logging.getLogger(__name__)
ROW_ID_STRIDE = 1_000_000   # row_id = series_idx * ROW_ID_STRIDE + window start


class SeriesTooShortError(LakeforgeError):
    """A series has fewer periods than its data set's ``min_length``."""


WINDOW_FIELDS = (
    *ROW_FIELDS,
    _f("series_idx", IntegerType(), False),
    _f("series_id", StringType(), False),
    _f("start", DateType(), False),
    _f("season", IntegerType(), False),
    _f("context_length", IntegerType(), False),
    _f("prediction_length", IntegerType(), False),
    _f("scale", FloatType(), False),
    _f("target", ArrayType(FloatType())),
    _f("source_version", LongType(), False),
    # Added after the first release: nullable, so existing tables gain them.
    _f("start_time", TimestampType()),
    _f("static_idx", ArrayType(IntegerType())),
    _f("dynamic", ArrayType(FloatType())),
    _f("future", ArrayType(FloatType())),
    # The categories static_idx indexes, so a rebuild keeps every index it gave.
    _f("static", ArrayType(StringType())),
)


def window_spec(dataset: str) -> TableSpec:
    """The registry entry of ``gold_deepar_<dataset>`` (registered on first use)."""
    return register(TableSpec(
        "gold", f"deepar_{dataset}", WINDOW_FIELDS, ("row_id",), partition_by=("split",),
        properties=TRAINING_TABLE_PROPERTIES,
        comment=f"{dataset} DeepAR windows (context + prediction) per series"))


def _covariates(series: SeriesFeatures) -> list:
    static = [F.col(c).cast("string") for c in series.static]
    dynamic = [F.col(c).cast("double") for c in series.dynamic]
    return [F.array(*static).cast("array<string>").alias("static"),
            F.array(*dynamic).cast("array<double>").alias("dynamic")]


def _points(rows: DataFrame, series: SeriesFeatures) -> DataFrame:
    return (rows.select(F.col(series.item_id).cast("string").alias("series_id"),
                        F.col(series.timestamp).cast("timestamp").alias("period"),
                        F.col(series.target).cast("double").alias("value"),
                        *_covariates(series))
            .filter(F.col("series_id").isNotNull() & F.col("period").isNotNull()))


def series_points(rows: DataFrame, series: SeriesFeatures) -> DataFrame:
    """A series data set's points, with their covariates; a missing target is NULL.

    Columns: ``series_id``, ``period`` (TIMESTAMP), ``value`` (NULL where the target
    is empty or NaN), and the declared covariates ``static`` and ``dynamic`` (arrays,
    empty when none are declared).
    """
    points = _points(rows, series)
    return points.withColumn("value", F.when(~F.isnan("value"), F.col("value")))


def future_points(rows: DataFrame, series: SeriesFeatures) -> DataFrame:
    """The periods to forecast: rows with an empty target and every dynamic covariate.

    Columns: ``series_id``, ``period``, ``dynamic``.
    """
    known = F.forall("dynamic", lambda x: x.isNotNull() & ~F.isnan(x))
    return (_points(rows, series).filter(F.col("value").isNull() & known)
            .select("series_id", "period", "dynamic"))


def series_arrays(points: DataFrame, freq: Frequency, future: DataFrame | None = None,
                  known: dict[str, int] | None = None, aligned: bool = False,
                  n_dynamic: int = 0) -> DataFrame:
    """One row per series, its values on the frequency's calendar (NaN: missing).

    A series runs from its first observed period to its last (``aligned``: to the
    panel's last observed period); every period between has its place, so the
    arrays' positions are consecutive periods. Columns: ``series_id``,
    ``series_idx``, ``values``, ``dynamic`` (per position, NaN where silver has
    none), ``t0`` (the first position's index on the calendar), ``p0`` (its period),
    ``static`` (the latest category per static role) and ``future`` (period index and
    dynamic values of rows to forecast). Two rows of one period keep the later one.

    ``series_idx`` keeps the index ``known`` gives a series (an earlier build's); the
    other series get the next free ones, in ``series_id`` order. A model trained on
    an earlier build so still finds each of its series under its own index.
    """
    nan = F.lit(float("nan"))
    by_period = (points.withColumn("t", period_index(F.col("period"), freq))
                 .groupBy("series_id", "t")
                 .agg(F.max_by(F.struct("period", "value", "dynamic", "static"),
                               "period").alias("p")))
    observed = F.col("p.value").isNotNull()
    pts = (by_period.groupBy("series_id").agg(
        F.min(F.when(observed, F.col("t"))).alias("t0"),
        F.max(F.when(observed, F.col("t"))).alias("t1"),
        F.min(F.when(observed, F.col("p.period"))).alias("p0"),
        F.map_from_entries(F.collect_list(F.struct("t", "p.value"))).alias("_values"),
        F.map_from_entries(F.collect_list(F.struct("t", "p.dynamic"))).alias("_dynamic"),
        F.max_by("p.static", "t").alias("static"))
        .filter(F.col("t0").isNotNull()))
    end = F.max("t1").over(Window.partitionBy()) if aligned else F.col("t1")
    pts = pts.withColumn("_t", F.sequence("t0", end))
    known = known or {}
    if known:
        pts = pts.join(F.broadcast(points.sparkSession.createDataFrame(
            list(known.items()), "series_id string, _known int")), "series_id", "left")
    else:
        pts = pts.withColumn("_known", F.lit(None).cast("int"))
    new = F.col("_known").isNull()
    rank = F.dense_rank().over(Window.partitionBy(new).orderBy("series_id"))
    idx = F.coalesce("_known", rank + max(known.values(), default=-1))
    none = F.array_repeat(nan.cast("double"), n_dynamic)
    arrays = pts.select(
        "series_id", idx.cast("int").alias("series_idx"),
        F.transform("_t", lambda k: F.coalesce(F.try_element_at("_values", k), nan)
                    .cast("float")).alias("values"),
        F.transform("_t", lambda k: F.coalesce(F.try_element_at("_dynamic", k), none))
        .alias("dynamic"), "t0", "p0", "static")
    if future is None:
        return arrays.withColumn("future", F.lit(None).cast("array<struct<t:int,"
                                                              "dynamic:array<double>>>"))
    ahead = (future.select("series_id", F.struct(period_index(F.col("period"), freq).alias("t"),
                                                 "dynamic").alias("p"))
             .groupBy("series_id").agg(F.sort_array(F.collect_list("p")).alias("future")))
    return arrays.join(ahead, "series_id", "left")


def fill_gaps(values: np.ndarray, how: str) -> np.ndarray:
    """Fill the missing values (NaN) between a series' first and last observed ones.

    ``how``: ``none`` (left missing), ``previous`` (the last observed value),
    ``linear`` (interpolated between the observed neighbours) or ``zero``. Missing
    values before the first or after the last observed one stay missing.
    """
    v = np.array(values, dtype=np.float32)
    seen = np.flatnonzero(np.isfinite(v))
    if how == "none" or len(seen) < 2:
        return v
    lo, hi = seen[0], seen[-1]
    inner = np.arange(lo, hi + 1)
    gaps = inner[~np.isfinite(v[lo:hi + 1])]
    if how == "zero":
        v[gaps] = 0.0
    elif how == "previous":
        v[gaps] = v[seen[np.searchsorted(seen, gaps) - 1]]
    elif how == "linear":
        v[gaps] = np.interp(gaps, seen, v[seen])
    else:
        raise ValueError(f"fill {how!r} is not one of {', '.join(FILLS)}")
    return v


def filled(series: DataFrame, how: str) -> DataFrame:
    """``series_arrays`` with the gaps of ``values`` filled (:func:`fill_gaps`)."""
    if how == "none":
        return series

    @F.pandas_udf("array<float>")
    def fill(values: pd.Series) -> pd.Series:
        return values.map(lambda v: fill_gaps(v, how))

    return series.withColumn("values", fill("values"))


def padded(series: DataFrame, length: int) -> DataFrame:
    """Series shorter than ``length`` periods, padded in front with missing targets.

    Adds ``offset``: the periods the series' first position lies before ``p0``
    (0 when not padded); ``t0`` moves back with it.
    """
    pad = F.greatest(F.lit(length) - F.size("values"), F.lit(0))
    nan = F.lit(float("nan"))
    n_dynamic = F.size(F.element_at("dynamic", 1))
    return series.select(
        *[c for c in series.columns if c not in ("values", "dynamic", "t0")],
        F.concat(F.array_repeat(nan.cast("float"), pad), "values").alias("values"),
        F.concat(F.array_repeat(F.array_repeat(nan.cast("double"), n_dynamic), pad),
                 "dynamic").alias("dynamic"),
        (F.col("t0") - pad).alias("t0"), (-pad).alias("offset"))


def calendar_series(rows: DataFrame, series: SeriesFeatures, future: DataFrame | None = None,
                    known: dict[str, int] | None = None) -> DataFrame:
    """:func:`series_arrays` of a data set's silver rows, as declared (ends, fill)."""
    arrays = series_arrays(series_points(rows, series), series.freq, future, known,
                           aligned=series.ends == "aligned", n_dynamic=len(series.dynamic))
    return filled(arrays, series.fill)


def dense_series(rows: DataFrame, series: SeriesFeatures) -> DataFrame:
    """Each series' ``series_id`` and ``values`` on the calendar, filled as declared.

    The values the windows are cut from (before padding): for peers fitted on the
    same history and horizon.
    """
    return calendar_series(rows, series).select("series_id", "values")


def static_indices(series: DataFrame, n_static: int,
                   known: list[dict[str, int]] | None = None) -> DataFrame:
    """Add ``static_idx``: each static category as an index from 1; 0 is "none".

    A category keeps the index ``known[i]`` gives it (an earlier build's, per role); the
    other categories get the next free ones, in their order.
    """
    if not n_static:
        return series.withColumn("static_idx", F.array().cast("array<int>"))
    ranked = series
    for i in range(n_static):
        value = F.col("static")[i]
        mapping = (known or [{}] * n_static)[i]
        given = (F.element_at(F.create_map(*[F.lit(x) for kv in mapping.items() for x in kv]),
                              value) if mapping else F.lit(None).cast("int"))
        new = given.isNull()
        rank = F.dense_rank().over(Window.partitionBy(new, value.isNull()).orderBy(value))
        ranked = ranked.withColumn(f"_static_{i}", F.when(value.isNull(), 0).otherwise(
            F.coalesce(given, rank + max(mapping.values(), default=0))).cast("int"))
    cols = [F.col(f"_static_{i}") for i in range(n_static)]
    return ranked.withColumn("static_idx", F.array(*cols)).drop(*[f"_static_{i}"
                                                                  for i in range(n_static)])


def check_lengths(series: DataFrame, dataset: str, shortest: int) -> None:
    """Stop with SeriesTooShortError naming every series shorter than ``shortest``."""
    short = (series.select("series_id", F.size("values").alias("n"))
             .filter(F.col("n") < shortest).orderBy("series_id").collect())
    if short:
        names = ", ".join(f"{r['series_id']} ({r['n']} periods)" for r in short[:10])
        more = f" and {len(short) - 10} more" if len(short) > 10 else ""
        raise SeriesTooShortError(
            f"series data set {dataset}: series {names}{more} shorter than min_length "
            f"{shortest} periods (first to last observed); lower features.min_length (above "
            f"prediction_length) or curate longer series")


def windows(series: DataFrame, season_length: int, context: int, prediction: int,
             stride: int, source_version: int, freq: Frequency, n_dynamic: int = 0
             ) -> DataFrame:
    """Train windows ending before each series' horizon, plus its one test window.

    ``series`` is :func:`padded` :func:`series_arrays` with ``static_idx``
    (:func:`static_indices`). Adds ``keep``: the test window, and train windows whose
    context and prediction range each hold an observed value.
    """
    length = context + prediction
    n = F.size("values")
    last_train = n - length - prediction
    train_starts = F.when(last_train >= 0, F.sequence(F.lit(0), last_train, F.lit(stride))) \
        .otherwise(F.array().cast("array<int>"))
    starts = F.concat(
        F.transform(train_starts, lambda s: F.struct(s.alias("s"), F.lit("train").alias("split"))),
        F.array(F.struct((n - length).alias("s"), F.lit("test").alias("split"))))
    exploded = series.select("*", F.explode(starts).alias("w"))
    s = F.col("w.s")
    target = F.slice("values", s + 1, length)
    seen = lambda x: ~F.isnan(x)   # noqa: E731 - local shorthand
    context_seen = F.filter(F.slice(target, 1, context), seen)
    mean_abs = F.aggregate(context_seen, F.lit(0.0).cast("double"),
                           lambda acc, x: acc + F.abs(x)) / F.greatest(F.size(context_seen),
                                                                       F.lit(1))
    keep = (F.col("w.split") == "test") | (
        (F.size(context_seen) > 0)
        & (F.size(F.filter(F.slice(target, context + 1, prediction), seen)) > 0))
    dynamic = F.transform(F.flatten(F.slice("dynamic", s + 1, length)),
                          lambda x: F.coalesce(x, F.lit(float("nan"))).cast("float"))
    # The periods right after the series' last position, each present: the test row's inputs.
    last_t = F.col("t0") + n - 1
    ahead = F.slice(F.filter("future", lambda p: p["t"] > last_t), 1, prediction)
    contiguous = F.forall(F.transform(ahead, lambda p, k: p["t"] == last_t + k + 1),
                          lambda ok: ok)
    future = F.when((F.col("w.split") == "test") & F.lit(n_dynamic > 0)
                    & (F.size(ahead) == prediction) & contiguous,
                    F.transform(F.flatten(F.transform(ahead, lambda p: p["dynamic"])),
                                lambda x: x.cast("float")))
    start_time = shift_periods(F.col("p0"), s + F.col("offset"), freq)
    return exploded.select(
        (F.col("series_idx").cast("long") * ROW_ID_STRIDE + s).alias("row_id"),
        F.col("w.split").alias("split"), "series_idx", "series_id",
        F.to_date(start_time).alias("start"),
        F.pmod(F.col("t0") + s, F.lit(season_length)).cast("int").alias("season"),
        F.lit(context).cast("int").alias("context_length"),
        F.lit(prediction).cast("int").alias("prediction_length"),
        (1.0 + mean_abs).cast("float").alias("scale"), target.alias("target"),
        F.lit(source_version).cast("long").alias("source_version"),
        start_time.alias("start_time"), "static_idx",
        dynamic.alias("dynamic"), future.alias("future"), "static", keep.alias("keep"))


def shift_periods(period: Column, steps: Column, freq: Frequency) -> Column:
    """The period ``steps`` periods after ``period`` (before, when negative), a TIMESTAMP."""
    if freq.seconds:
        return F.timestamp_seconds(F.unix_seconds(period.cast("timestamp"))
                                   + steps.cast("long") * freq.seconds)
    return F.add_months(period.cast("date"), (steps * freq.months).cast("int")) \
        .cast("timestamp")


def _windows(spark: SparkSession, cfg: Config, dataset: str, rows: DataFrame,
             declared: SeriesFeatures, key: dict) -> DataFrame:
    """Every complete window of the data set's series (cached; the caller unpersists)."""
    context, prediction = key["context_length"], key["prediction_length"]
    future = future_points(rows, declared) if declared.dynamic else None
    known_series, known_static = given_indices(spark, cfg, dataset, declared)
    series = static_indices(calendar_series(rows, declared, future, known_series),
                            len(declared.static), known_static).cache()
    try:
        if not series.limit(1).count():
            raise SeriesTooShortError(f"series data set {dataset}: silver v"
                                      f"{key['silver_version']} holds no series of it")
        check_lengths(series, dataset, declared.shortest)
        cut = windows(padded(series, context + 2 * prediction), declared.season_length, context,
                      prediction, key["stride"], key["silver_version"], declared.freq,
                      len(declared.dynamic))
        return cut.filter("keep").drop("keep").cache()
    finally:
        series.unpersist()


def given_indices(spark: SparkSession, cfg: Config, dataset: str, declared: SeriesFeatures
                  ) -> tuple[dict[str, int], list[dict[str, int]] | None]:
    """The series and static-category indices the current windows table gave.

    Static categories count only when the table was built with the same static roles
    in the same order (else their indices start afresh, and so does any model).
    """
    gold = window_spec(dataset).full_name(cfg.catalog.database)
    if not delta.table_exists(spark, gold):
        return {}, None
    current = delta.snapshot(spark, gold)
    test = delta.read_version(spark, gold, current.version).filter(F.col("split") == "test")
    key = built_meta(spark, gold, current.data_version).get("key") or {}
    same_static = (bool(declared.static) and "static" in test.columns
                   and key.get("declared", {}).get("static") == list(declared.static))
    # One test window per series: its row holds the series' indices and categories.
    columns = ["series_id", "series_idx", *(["static", "static_idx"] if same_static else [])]
    rows = test.select(*columns).collect()
    series = {r["series_id"]: r["series_idx"] for r in rows}
    if not same_static:
        return series, None
    static: list[dict[str, int]] = [{} for _ in declared.static]
    for r in rows:
        for i, (value, idx) in enumerate(zip(r["static"] or [], r["static_idx"] or [],
                                             strict=False)):
            if value is not None:
                static[i][value] = idx
    return series, static


def build_key(series: SeriesFeatures, silver_version: int, stride: int) -> dict:
    """What a windows table is a function of, kept in the commit that wrote it.

    The silver data version, the declaration and the window lengths (not how many
    files hold the rows).
    """
    declared = {k: v for k, v in asdict(series).items() if k != "freq"}
    return {"silver_version": silver_version, "freq": series.freq.name,
            "declared": json.loads(json.dumps(declared)), "stride": stride,
            "context_length": series.context_length,
            "prediction_length": series.prediction_length}


class SeriesKind(Kind):
    """Series data sets: one value per period per series, with optional covariates.

    Fitted on the training part (each series' periods before its held-out horizon):
    nothing but each window's scale, DeepAR's ``1 + mean |context|``, from the window's
    own context. Indices of series and static categories are kept from the previous
    build. The gold table is ``gold_deepar_<data set>`` (:data:`WINDOW_FIELDS`).
    """

    name = "series"
    settings = SeriesSettings
    params = ("context_length", "prediction_length", "stride", "fill", "ends", "min_length")

    def gold_spec(self, name: str, settings: SeriesSettings) -> TableSpec:
        """``gold_deepar_<data set>``."""
        return window_spec(name)

    def build(self, spark: SparkSession, cfg: Config, name: str, entry: Dataset | None,
              settings: SeriesSettings, partitions: int | None) -> FeatureSet:
        """Cut every series into windows; the last one of each is its test window.

        Returns:
            The windows table (``n_features``: the window length).

        Raises:
            SeriesTooShortError: a series has fewer periods than ``min_length``.
            TableNotFoundError: the data set's silver table does not exist.
        """
        declared = series_features(entry, settings)
        context, prediction = declared.context_length, declared.prediction_length
        rows, pinned = silver_rows(spark, cfg, entry)
        key = build_key(declared, pinned.data_version, settings.stride)
        cut: list[DataFrame] = []

        def gold_rows() -> DataFrame:
            cut.append(_windows(spark, cfg, name, rows, declared, key))
            return cut[-1]

        try:
            # Rows in hashed order inside each file, so a file is not a run of neighbouring
            # windows of one series (Petastorm reads row groups in file order).
            build = build_once(spark, cfg, window_spec(name), key, gold_rows,
                               partitions=partitions, order=F.xxhash64("row_id"))
        finally:
            for df in cut:
                df.unpersist()
        counts = {r["split"]: r["count"] for r in
                  build.rows(spark).groupBy("split").count().collect()}
        log.info("%s: %s v%d holds %s windows of %d+%d periods (from %s v%d)", name,
                 build.table, build.snapshot.data_version, counts, context, prediction,
                 pinned.table, pinned.data_version)
        return FeatureSet(f"deepar_{name}", build.table, build.snapshot.data_version,
                          sum(counts.values()), context + prediction, 0, ("target",))


KIND = SeriesKind()
