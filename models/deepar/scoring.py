"""DeepAR batch scoring: forecasts beyond the end of every series, on executors.

The input is the model's windows table (``gold_deepar_<dataset>``, the default
input of ``lakeforge score``): its ``test`` window of each series ends with the
series' last observed period, so its last ``context_length`` values are the
latest context. Each executor loads the network once per Python process and
samples ``num_samples`` paths for a whole Arrow batch of series at once
(``mapInPandas``); rows are the mean and 10/50/90% quantiles per series and
future step, with the calendar period of the step (``period``, its date, and
``period_time``, its start). A model with dynamic covariates needs their values for
the forecast periods (the windows' ``future``); a series without them stops the
scoring on the driver, named.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, FloatType, IntegerType, StringType, TimestampType

from lakehouse.config import Config
from lakehouse.errors import LakeforgeError, SchemaMismatchError
from lakehouse.featuresets.series import WINDOW_FIELDS
from lakehouse.lakefs import LakeFS
from lakehouse.tables import _f
from models.deepar.network import (
    WEIGHTS_FILE,
    covariate_sizes,
    load,
    load_config,
    sample_paths,
    summarise,
)
from models.scoring import load_once

PREDICTION_FIELDS = (
    _f("series_id", StringType(), False), _f("step", IntegerType(), False),
    _f("period", DateType()), _f("mean", FloatType()), _f("q10", FloatType()),
    _f("q50", FloatType()), _f("q90", FloatType()),
)
# Added after the first release: existing prediction tables gain it.
LATE_FIELDS = (_f("period_time", TimestampType()),)
OUTPUT_SCHEMA = ("series_id string, step int, period date, mean float, q10 float, q50 float, "
                 "q90 float, period_time timestamp")
INPUT_COLUMNS = ("split", "series_id", "series_idx", "start", "season", "target")
COVARIATE_COLUMNS = ("start_time", "static_idx", "dynamic", "future")


class MissingCovariatesError(LakeforgeError):
    """The forecast periods' dynamic covariates are not in the windows table."""


class UnknownSeriesError(LakeforgeError):
    """The input holds series the model has no embedding for (added after its training)."""


def cached_network(artifact: str, loads=None, lake: LakeFS | None = None):
    """The network of ``artifact``, loaded at most once in this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return load_once(artifact, WEIGHTS_FILE, load, loads, lake)


def future_periods(start: pd.Series, last: np.ndarray, steps: int, freq_months: int,
                   freq_seconds: int = 0) -> np.ndarray:
    """(rows, steps) period starts ``last + k`` periods after ``start`` (k = 1..steps).

    Args:
        start: first period of each row's window (dates or timestamps).
        last: (rows,) index of each window's last period (its length - 1).
        steps: future periods.
        freq_months: months per period (month, quarter, year).
        freq_seconds: seconds per period (minute .. week); used when given.

    Returns:
        numpy ``datetime64[s]`` values.
    """
    s = pd.to_datetime(start).to_numpy().astype("datetime64[s]")
    ahead = np.asarray(last)[:, None] + np.arange(1, steps + 1)[None, :]
    if freq_seconds:
        return s[:, None] + (ahead * freq_seconds).astype("timedelta64[s]")
    first = pd.to_datetime(start)
    months = (first.dt.year * 12 + first.dt.month - 1).to_numpy()[:, None] + ahead * freq_months
    dates = pd.to_datetime({"year": (months // 12).ravel(), "month": (months % 12 + 1).ravel(),
                            "day": np.ones(months.size, dtype=int)})
    return dates.to_numpy().astype("datetime64[s]").reshape(months.shape)


def _seconds_per_period(config: dict[str, Any]) -> int:
    return int(config.get("freq_seconds") or 86_400 * config.get("freq_days", 0))


def forecast_batches(batches: Iterator[pd.DataFrame], artifact: str, loads, seed: int,
                     lake: LakeFS | None = None) -> Iterator[pd.DataFrame]:
    """Executor side: mean and quantiles of the next ``prediction_length`` periods."""
    net, config = cached_network(artifact, loads, lake)
    c, p, s = config["context_length"], config["prediction_length"], config["season_length"]
    cards, n_dynamic = covariate_sizes(config)
    for pdf in batches:
        if pdf.empty:
            continue
        lengths = pdf["target"].map(len).to_numpy()
        if (lengths < c).any():
            bad = pdf["series_id"].iloc[int(np.flatnonzero(lengths < c)[0])]
            raise ValueError(f"series {bad}: window has {lengths.min()} values, the model "
                             f"needs a context of {c}")
        context = np.stack([np.asarray(t, dtype=np.float32)[-c:] for t in pdf["target"]])
        season0 = (pdf["season"].to_numpy() + lengths - c) % s
        static = np.stack(pdf["static_idx"].to_numpy()) if cards else None
        dynamic = None
        if n_dynamic:   # the context's covariates, then the forecast periods'
            dynamic = np.stack([np.concatenate([
                np.asarray(d, dtype=np.float32).reshape(-1, n_dynamic)[-c:],
                np.asarray(f, dtype=np.float32).reshape(p, n_dynamic)])
                for d, f in zip(pdf["dynamic"], pdf["future"], strict=True)])
        paths = sample_paths(net, config, context, season0, pdf["series_idx"].to_numpy(),
                             config["num_samples"], seed, static, dynamic)
        stats = summarise(paths)
        begin = pdf["start_time"].where(pdf["start_time"].notna(),
                                        pd.to_datetime(pdf["start"]))
        periods = future_periods(begin, lengths - 1, p, config["freq_months"],
                                 _seconds_per_period(config))
        yield pd.DataFrame({
            "series_id": np.repeat(pdf["series_id"].to_numpy(), p),
            "step": np.tile(np.arange(1, p + 1, dtype=np.int32), len(pdf)),
            "period": pd.to_datetime(periods.ravel()).date,
            **{k: v.astype(np.float32).ravel() for k, v in stats.items()},
            "period_time": pd.to_datetime(periods.ravel())})


def score_deepar(spark: SparkSession, cfg: Config, record: Any, df: DataFrame,
                 loads) -> DataFrame:
    """Forecasts beyond each series' end (the family's ``scorer`` hook).

    Args:
        spark: the session.
        cfg: configuration (``train.num_proc`` partitions, ``train.seed``).
        record: the model's store record.
        df: the pinned input, a DeepAR windows table; its ``test`` windows are used.
        loads: accumulator, +1 per network load on an executor.

    Returns:
        ``series_id, step, period, mean, q10, q50, q90, period_time`` (not yet written).

    Raises:
        SchemaMismatchError: the input is not a windows table.
        MissingCovariatesError: the model takes dynamic covariates and some series'
            forecast periods have none in the input.
        UnknownSeriesError: the input holds series added after the model's training.
    """
    missing = [c for c in INPUT_COLUMNS if c not in df.columns]
    if missing:
        raise SchemaMismatchError(
            f"deepar scoring input: column(s) {', '.join(missing)} missing; score a "
            f"gold_deepar_<dataset> windows table (model {record.name} v{record.version})")
    types = {f.name: f.dataType for f in WINDOW_FIELDS}
    for column in COVARIATE_COLUMNS:   # tables written before covariates existed
        if column not in df.columns:
            df = df.withColumn(column, F.lit(None).cast(types[column]))
    latest = df.filter(F.col("split") == "test")
    lake = LakeFS.of(cfg)
    _check_inputs(latest, record, lake)
    fn = functools.partial(forecast_batches, artifact=record.artifact, loads=loads,
                           seed=cfg.train.seed, lake=lake)
    latest = (latest.select(*INPUT_COLUMNS[1:], *COVARIATE_COLUMNS)
              .repartition(max(1, cfg.train.num_proc), "series_id"))
    return latest.mapInPandas(fn, OUTPUT_SCHEMA)


def _check_inputs(latest: DataFrame, record: Any, lake: LakeFS) -> None:
    """Stop on series the model never saw, or covariates its inputs lack."""
    config = load_config(lake.fetch(record.artifact))
    cards, n_dynamic = covariate_sizes(config)
    p = config["prediction_length"]
    lacking = F.col("static_idx").isNull() | (F.size("static_idx") != len(cards))
    if cards and latest.filter(lacking).limit(1).count():
        raise MissingCovariatesError(
            f"deepar model {record.name} v{record.version} takes {len(cards)} static "
            f"covariate(s); the input's windows have none: rebuild its features")
    unseen = _series_where(latest, F.col("series_idx") >= config["n_series"])
    if unseen:
        raise UnknownSeriesError(
            f"deepar model {record.name} v{record.version} was trained on "
            f"{config['n_series']} series; {unseen} came after it. Train a new version on "
            f"the current features (lakeforge train deepar), or score an input it knows "
            f"(--input-version)")
    if not n_dynamic:
        return
    missing = _series_where(latest, F.col("future").isNull()
                            | (F.size("future") != p * n_dynamic))
    if missing:
        raise MissingCovariatesError(
            f"deepar model {record.name} v{record.version} forecasts {p} periods from "
            f"{n_dynamic} dynamic covariate(s); series {missing} lack their values for the "
            f"periods after their last observed one. Add those periods to silver with the "
            f"target empty and the covariates filled, then rebuild the features")


def _series_where(rows: DataFrame, condition: Column) -> str:
    """The first ten series ids of rows where ``condition`` holds ("" when none)."""
    found = [r["series_id"] for r in rows.filter(condition).select("series_id")
             .orderBy("series_id").limit(11).collect()]
    return ", ".join(found[:10]) + (" and more" if len(found) > 10 else "")


def predict_deepar(folder: str, rows: pd.DataFrame, seed: int = 7) -> pd.DataFrame:
    """Forecasts after each window's end, as ``lakeforge score`` makes them, without Spark.

    Args:
        folder: the model's local artifact folder.
        rows: windows shaped like the model's ``gold_deepar_<dataset>`` rows (``series_id``,
            ``series_idx``, ``start``, ``season``, ``target`` and, for a model with
            covariates, ``static_idx``, ``dynamic``, ``future``): each series' history.
            With a ``split`` column only its ``test`` windows (the latest) are used.
        seed: the sampling's seed (``train.seed``; each series samples on its own, so
            its forecast does not depend on the other rows).

    Returns:
        ``series_id``, ``step``, ``period``, ``mean``, ``q10``, ``q50``, ``q90`` and
        ``period_time``, one row per series and forecast step.

    Raises:
        SchemaMismatchError: a window column is missing.
    """
    missing = [c for c in INPUT_COLUMNS[1:] if c not in rows.columns]
    if missing:
        raise SchemaMismatchError(f"input windows have no column(s) {', '.join(missing)}; "
                                  f"give rows shaped like the model's gold_deepar_* table")
    frame = rows[rows["split"] == "test"] if "split" in rows.columns else rows
    frame = frame.assign(**{c: None for c in COVARIATE_COLUMNS if c not in frame.columns})
    forecasts = list(forecast_batches(iter([frame.reset_index(drop=True)]), folder, None, seed))
    return pd.concat(forecasts, ignore_index=True) if forecasts else pd.DataFrame(
        columns=[c.split()[0] for c in OUTPUT_SCHEMA.split(", ")])
