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
``start`` (first period), ``season`` (the period's index modulo the season length:
month of year, quarter, day of week ..., from 0),
``scale`` (DeepAR's ``1 + mean |context|``), ``target`` and the silver version
it was cut from (``source_version``), so baselines can read the same history.
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DateType, FloatType, IntegerType, LongType, StringType
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


def series_points(rows: DataFrame, series: SeriesFeatures) -> DataFrame:
    """A series data set's observed points: ``series_id``, ``period`` (DATE), ``value``."""
    return (rows.select(F.col(series.item_id).cast("string").alias("series_id"),
                        F.to_date(series.timestamp).alias("period"),
                        F.col(series.target).cast("double").alias("value"))
            .filter(F.col("series_id").isNotNull() & F.col("period").isNotNull()
                    & F.col("value").isNotNull() & ~F.isnan("value")))


def series_arrays(points: DataFrame, freq: Frequency) -> DataFrame:
    """One row per series: ``series_id``, ``series_idx``, sorted ``values``, ``periods``, ``t``.

    ``t`` is the period's index on the frequency's calendar, so consecutive periods
    differ by exactly 1.
    """
    pts = (points.groupBy("series_id")
           .agg(F.sort_array(F.collect_list(F.struct("period", "value"))).alias("pts")))
    idx = F.dense_rank().over(Window.orderBy("series_id")) - 1
    return pts.select(
        "series_id", idx.cast("int").alias("series_idx"),
        F.transform("pts", lambda p: p["value"].cast("float")).alias("values"),
        F.transform("pts", lambda p: p["period"]).alias("periods"),
        F.transform("pts", lambda p: period_index(p["period"], freq)).alias("t"))


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
            stride: int, source_version: int) -> DataFrame:
    """Train windows ending before each series' horizon, plus its one test window."""
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
    return exploded.select(
        (F.col("series_idx").cast("long") * ROW_ID_STRIDE + s).alias("row_id"),
        F.col("w.split").alias("split"), "series_idx", "series_id",
        F.element_at("periods", s + 1).alias("start"),
        F.pmod(first_t, F.lit(season_length)).cast("int").alias("season"),
        F.lit(context).cast("int").alias("context_length"),
        F.lit(prediction).cast("int").alias("prediction_length"),
        (1.0 + mean_abs).cast("float").alias("scale"), target.alias("target"),
        F.lit(source_version).cast("long").alias("source_version"),
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
    series = series_arrays(series_points(rows, declared), declared.freq).cache()
    try:
        if not series.limit(1).count():
            raise SeriesTooShortError(f"series data set {dataset}: {silver_table} "
                                      f"v{silver_version} holds no series of it")
        check_lengths(series, dataset, context + prediction, context, prediction)
        rows = windows(series, declared.season_length, context, prediction, p["stride"],
                       silver_version).cache()
        _check_test_windows(rows, dataset)
        gold = _write(spark, cfg, dataset, rows.filter("complete").drop("complete"),
                      silver_version, context, prediction, p["partitions"])
        rows.unpersist()
    finally:
        series.unpersist()
    built = delta.snapshot(spark, gold)
    version = built.data_version
    counts = {r["split"]: r["count"] for r in
              delta.read_version(spark, gold, built.version).groupBy("split").count().collect()}
    log.info("%s: %s v%d holds %s windows of %d+%d periods (from %s v%d)", dataset, gold,
             version, counts, context, prediction, silver_table, silver_version)
    return FeatureSet(f"deepar_{dataset}", gold, version, sum(counts.values()),
                      context + prediction, 0, ("target",))


def _check_test_windows(rows: DataFrame, dataset: str) -> None:
    gapped = (rows.filter((F.col("split") == "test") & ~F.col("complete"))
              .select("series_id").orderBy("series_id").collect())
    if gapped:
        raise SeriesTooShortError(
            f"series data set {dataset}: the last window of series "
            f"{', '.join(r['series_id'] for r in gapped[:10])} spans missing periods; "
            f"their recent history is not contiguous")


def _write(spark: SparkSession, cfg: Config, dataset: str, df: DataFrame, silver_version: int,
           context: int, prediction: int, partitions: int) -> str:
    """Overwrite the gold table by path, exactly once per silver version and lengths.

    With the same lengths as the table holds, the write carries txnAppId/txnVersion =
    silver version, so a rebuild from the same silver version is a no-op. Other
    lengths are a deliberate change and always rewrite the table.
    """
    gold = delta.ensure_table(spark, window_spec(dataset), cfg.catalog.database)
    held = spark.table(gold).select("context_length", "prediction_length").limit(1).collect()
    same = not held or (held[0][0], held[0][1]) == (context, prediction)
    partitions = partitions or max(4, 2 * cfg.train.num_proc)
    # Rows in hashed order inside each file, so a file is not a run of neighbouring
    # windows of one series (Petastorm reads row groups in file order).
    writer = (df.repartition(partitions, "split", "row_id")
              .sortWithinPartitions(F.xxhash64("row_id")).write.format("delta")
              .mode("overwrite"))
    if same:
        writer = (writer.option("txnAppId", f"lakeforge/features/deepar_{dataset}")
                  .option("txnVersion", silver_version))
    # By path: an overwrite by name would go through the catalog's REPLACE TABLE.
    writer.save(delta.table_location(spark, gold))
    return gold
