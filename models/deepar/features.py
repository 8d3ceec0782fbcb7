"""DeepAR gold tables: fixed-length training windows per series, built with Spark.

``gold_deepar_<dataset>`` holds one row per window of ``context_length +
prediction_length`` consecutive periods of one series of a series data set (its
catalog entry's roles and ``features:``, :mod:`lakehouse.kinds`):

* ``test``: one window per series, its last ``prediction_length`` values are the
  held-out horizon (the last periods of the series);
* ``train``: every complete window (stride ``stride``) that ends before that
  horizon, so no held-out value is ever trained on.

Leading missing values (series that start later) need no handling: silver keeps
only observed periods, and windows are cut from what is there. A window that
spans a gap in the periods is left out. A series shorter than ``context_length +
prediction_length`` stops the build with :class:`SeriesTooShortError` naming the
series and the lengths: it could not be forecast, and silently dropping it would
change what the benchmark measures.

Each row carries ``series_idx`` (dense index of ``series_id``, for the embedding),
``start`` (first period's date) and ``start_time`` (its start, for steps below a day),
``season`` (the period's index modulo the season length: month of year, quarter,
day of week, hour of day ..., from 0), ``scale`` (DeepAR's ``1 + mean |context|``),
``target`` and the silver version it was cut from (``source_version``), so baselines
can read the same history.

Covariates, when the entry declares them (:mod:`lakehouse.kinds`):

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
from dataclasses import asdict
from typing import Any

from pyspark.sql import DataFrame, SparkSession
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
from lakehouse.errors import ConfigError, LakeforgeError
from lakehouse.features import FeatureSet, entry_of, silver_rows
from lakehouse.kinds import Frequency, SeriesFeatures, period_index, series_features
from lakehouse.tables import TRAINING_TABLE_PROPERTIES, TableSpec, _f, register

log = logging.getLogger(__name__)
ROW_ID_STRIDE = 1_000_000   # row_id = series_idx * ROW_ID_STRIDE + window start


class SeriesTooShortError(LakeforgeError):
    """A series has fewer periods than one context plus one prediction window."""


FEATURE_PARAMS = ("context_length", "prediction_length", "stride", "partitions")

WINDOW_FIELDS = (
    _f("row_id", LongType(), False),
    _f("split", StringType(), False),
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


def series_of(cfg: Config, dataset: str) -> SeriesFeatures:
    """The series settings of catalog entry ``dataset`` (kind ``series``).

    Raises:
        SourceError: no such entry or one of another kind.
        ConfigError: its ``features:`` block is wrong (named).
    """
    return series_features(entry_of(cfg, dataset, "series"))


def window_params(series: SeriesFeatures, params: dict[str, Any]) -> dict[str, int]:
    """Feature parameters merged over the data set's declared lengths and checked.

    Raises:
        ConfigError: for an unknown key or a length that is not a positive integer.
    """
    unknown = sorted(set(params) - set(FEATURE_PARAMS))
    if unknown:
        raise ConfigError(f"deepar features: unknown parameter(s) {', '.join(unknown)}; "
                          f"known: {', '.join(FEATURE_PARAMS)}")
    merged = {"context_length": series.context_length,
              "prediction_length": series.prediction_length, "stride": 1, "partitions": 0,
              **params}
    for key in ("context_length", "prediction_length", "stride"):
        if not isinstance(merged[key], int) or merged[key] < 1:
            raise ConfigError(f"deepar features: {key} must be a positive integer, "
                              f"got {merged[key]!r}")
    return merged


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
    """A series data set's observed points, with their covariates.

    Columns: ``series_id``, ``period`` (TIMESTAMP), ``value``, and the declared
    covariates ``static`` and ``dynamic`` (arrays, empty when none are declared).
    """
    return _points(rows, series).filter(F.col("value").isNotNull() & ~F.isnan("value"))


def future_points(rows: DataFrame, series: SeriesFeatures) -> DataFrame:
    """The periods to forecast: rows with an empty target and every dynamic covariate.

    Columns: ``series_id``, ``period``, ``dynamic``.
    """
    known = F.forall("dynamic", lambda x: x.isNotNull() & ~F.isnan(x))
    return (_points(rows, series).filter(F.col("value").isNull() & known)
            .select("series_id", "period", "dynamic"))


def series_arrays(points: DataFrame, freq: Frequency, future: DataFrame | None = None,
                  known: dict[str, int] | None = None) -> DataFrame:
    """One row per series, its points as arrays in period order.

    Columns: ``series_id``, ``series_idx``, ``values``, ``periods``, ``t``, ``static``
    (the latest category per static role), ``dynamic`` (per point) and ``future``
    (period index and dynamic values of rows to forecast). ``t`` is the period's index
    on the frequency's calendar, so consecutive periods differ by exactly 1.

    ``series_idx`` keeps the index ``known`` gives a series (an earlier build's); the
    other series get the next free ones, in ``series_id`` order. A model trained on
    an earlier build so still finds each of its series under its own index.
    """
    pts = (points.groupBy("series_id").agg(
        F.sort_array(F.collect_list(F.struct("period", "value", "dynamic"))).alias("pts"),
        F.max_by("static", "period").alias("static")))
    known = known or {}
    if known:
        pts = pts.join(F.broadcast(points.sparkSession.createDataFrame(
            list(known.items()), "series_id string, _known int")), "series_id", "left")
    else:
        pts = pts.withColumn("_known", F.lit(None).cast("int"))
    new = F.col("_known").isNull()
    rank = F.dense_rank().over(Window.partitionBy(new).orderBy("series_id"))
    idx = F.coalesce("_known", rank + max(known.values(), default=-1))
    arrays = pts.select(
        "series_id", idx.cast("int").alias("series_idx"),
        F.transform("pts", lambda p: p["value"].cast("float")).alias("values"),
        F.transform("pts", lambda p: p["period"]).alias("periods"),
        F.transform("pts", lambda p: period_index(p["period"], freq)).alias("t"),
        F.transform("pts", lambda p: p["dynamic"]).alias("dynamic"), "static")
    if future is None:
        return arrays.withColumn("future", F.lit(None).cast("array<struct<t:int,"
                                                              "dynamic:array<double>>>"))
    ahead = (future.select("series_id", F.struct(period_index(F.col("period"), freq).alias("t"),
                                                 "dynamic").alias("p"))
             .groupBy("series_id").agg(F.sort_array(F.collect_list("p")).alias("future")))
    return arrays.join(ahead, "series_id", "left")


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


def check_lengths(series: DataFrame, dataset: str, length: int, context: int,
                  prediction: int) -> None:
    """Stop with SeriesTooShortError naming every series shorter than ``length``."""
    short = (series.select("series_id", F.size("values").alias("n"))
             .filter(F.col("n") < length).orderBy("series_id").collect())
    if short:
        names = ", ".join(f"{r['series_id']} ({r['n']} periods)" for r in short[:10])
        more = f" and {len(short) - 10} more" if len(short) > 10 else ""
        raise SeriesTooShortError(
            f"series data set {dataset}: series {names}{more} shorter than context_length "
            f"{context} + prediction_length {prediction} = {length} periods; lower the lengths or "
            f"curate longer series")


def windows(series: DataFrame, season_length: int, context: int, prediction: int,
            stride: int, source_version: int, n_dynamic: int = 0) -> DataFrame:
    """Train windows ending before each series' horizon, plus its one test window.

    ``series`` is :func:`series_arrays` with ``static_idx`` (:func:`static_indices`).
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
    first_t = F.element_at("t", s + 1)
    mean_abs = F.aggregate(F.slice(target, 1, context), F.lit(0.0).cast("double"),
                           lambda acc, x: acc + F.abs(x)) / context
    dynamic = F.transform(F.flatten(F.slice("dynamic", s + 1, length)),
                          lambda x: F.coalesce(x, F.lit(float("nan"))).cast("float"))
    # The periods right after the last observed one, each present: the test row's inputs.
    last_t = F.element_at("t", -1)
    ahead = F.slice(F.filter("future", lambda p: p["t"] > last_t), 1, prediction)
    contiguous = F.forall(F.transform(ahead, lambda p, k: p["t"] == last_t + k + 1),
                          lambda ok: ok)
    future = F.when((F.col("w.split") == "test") & F.lit(n_dynamic > 0)
                    & (F.size(ahead) == prediction) & contiguous,
                    F.transform(F.flatten(F.transform(ahead, lambda p: p["dynamic"])),
                                lambda x: x.cast("float")))
    return exploded.select(
        (F.col("series_idx").cast("long") * ROW_ID_STRIDE + s).alias("row_id"),
        F.col("w.split").alias("split"), "series_idx", "series_id",
        F.to_date(F.element_at("periods", s + 1)).alias("start"),
        F.pmod(first_t, F.lit(season_length)).cast("int").alias("season"),
        F.lit(context).cast("int").alias("context_length"),
        F.lit(prediction).cast("int").alias("prediction_length"),
        (1.0 + mean_abs).cast("float").alias("scale"), target.alias("target"),
        F.lit(source_version).cast("long").alias("source_version"),
        F.element_at("periods", s + 1).alias("start_time"), "static_idx",
        dynamic.alias("dynamic"), future.alias("future"), "static",
        (F.element_at("t", s + length) - first_t == length - 1).alias("complete"))


def build_windows(spark: SparkSession, cfg: Config, dataset: str,
                  params: dict[str, Any]) -> Any:
    """Build (or keep, if already built from the same silver version) ``gold_deepar_<dataset>``.

    Args:
        spark: the session.
        cfg: configuration.
        dataset: a catalog entry of kind ``series`` (``us_employment``,
            ``visnights`` or the user's own; :mod:`lakehouse.kinds`).
        params: ``context_length``, ``prediction_length`` (default: the declared ones),
            ``stride`` between train windows (default 1), ``partitions`` (Parquet
            files per split, default twice the Horovod ranks, at least 4).

    Returns:
        A :class:`lakehouse.features.FeatureSet` (``n_features`` = window length).

    Raises:
        SeriesTooShortError: a series has fewer periods than one window, or its
            last window spans a gap.
        TableNotFoundError: the data set's silver table does not exist.
    """
    declared = series_of(cfg, dataset)
    p = window_params(declared, params)
    context, prediction = p["context_length"], p["prediction_length"]
    rows, pinned = silver_rows(spark, cfg, cfg.datasets[dataset])
    silver_table, silver_version = pinned.table, pinned.data_version
    key = build_key(declared, silver_version, p)
    # A table an earlier release built gains the columns added since (nullable) first.
    gold = delta.ensure_table(spark, window_spec(dataset), cfg.catalog.database)
    if built_key(spark, cfg, dataset) == key:
        log.info("%s: %s is already built from %s v%d with this declaration", dataset, gold,
                 silver_table, silver_version)
    else:
        _build(spark, cfg, dataset, rows, declared, key, p["partitions"])
    built = delta.snapshot(spark, gold)
    version = built.data_version
    counts = {r["split"]: r["count"] for r in
              delta.read_version(spark, gold, built.version).groupBy("split").count().collect()}
    log.info("%s: %s v%d holds %s windows of %d+%d periods (from %s v%d)", dataset, gold,
             version, counts, context, prediction, silver_table, silver_version)
    return FeatureSet(f"deepar_{dataset}", gold, version, sum(counts.values()),
                      context + prediction, 0, ("target",))


def _build(spark: SparkSession, cfg: Config, dataset: str, rows: DataFrame,
           declared: SeriesFeatures, key: dict, partitions: int) -> None:
    context, prediction = key["context_length"], key["prediction_length"]
    future = future_points(rows, declared) if declared.dynamic else None
    known_series, known_static = given_indices(spark, cfg, dataset, declared)
    series = static_indices(series_arrays(series_points(rows, declared), declared.freq, future,
                                          known_series),
                            len(declared.static), known_static).cache()
    try:
        if not series.limit(1).count():
            raise SeriesTooShortError(f"series data set {dataset}: silver v"
                                      f"{key['silver_version']} holds no series of it")
        check_lengths(series, dataset, context + prediction, context, prediction)
        cut = windows(series, declared.season_length, context, prediction, key["stride"],
                      key["silver_version"], len(declared.dynamic)).cache()
        try:
            _check_test_windows(cut, dataset)
            _write(spark, cfg, dataset, cut.filter("complete").drop("complete"), key,
                   partitions)
        finally:
            cut.unpersist()
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
    key = built_key(spark, cfg, dataset) or {}
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


def _check_test_windows(rows: DataFrame, dataset: str) -> None:
    gapped = (rows.filter((F.col("split") == "test") & ~F.col("complete"))
              .select("series_id").orderBy("series_id").collect())
    if gapped:
        raise SeriesTooShortError(
            f"series data set {dataset}: the last window of series "
            f"{', '.join(r['series_id'] for r in gapped[:10])} spans missing periods; "
            f"their recent history is not contiguous")


def build_key(series: SeriesFeatures, silver_version: int, p: dict[str, int]) -> dict:
    """What a windows table is a function of, kept in the commit that wrote it.

    The silver data version, the declaration and the window parameters (not how many
    files hold the rows).
    """
    declared = {k: v for k, v in asdict(series).items() if k != "freq"}
    return {"silver_version": silver_version, "freq": series.freq.name,
            "declared": json.loads(json.dumps(declared)),
            **{k: p[k] for k in ("context_length", "prediction_length", "stride")}}


def _write(spark: SparkSession, cfg: Config, dataset: str, df: DataFrame, key: dict,
           partitions: int) -> str:
    """Overwrite the gold table by path, keyed on :func:`build_key` (kept in the commit).

    The caller checked the key against the table's current data version, so this is a
    deliberate change (or the first build); a run killed before the commit left nothing.
    """
    target = window_spec(dataset)
    gold = delta.ensure_table(spark, target, cfg.catalog.database)
    partitions = partitions or max(4, 2 * cfg.train.num_proc)
    # Rows in hashed order inside each file, so a file is not a run of neighbouring
    # windows of one series (Petastorm reads row groups in file order).
    (df.select(*target.schema.fieldNames()).repartition(partitions, "split", "row_id")
     .sortWithinPartitions(F.xxhash64("row_id")).write.format("delta").mode("overwrite")
     .option("userMetadata", json.dumps({"key": key}))
     # By path: an overwrite by name would go through the catalog's REPLACE TABLE.
     .save(delta.table_location(spark, gold)))
    return gold


def built_key(spark: SparkSession, cfg: Config, dataset: str) -> dict | None:
    """The :func:`build_key` the windows table's current data was written with."""
    gold = window_spec(dataset).full_name(cfg.catalog.database)
    if not delta.table_exists(spark, gold):
        return None
    return delta.commit_json(spark, gold, delta.snapshot(spark, gold).data_version).get("key")
