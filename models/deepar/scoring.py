"""DeepAR batch scoring: forecasts beyond the end of every series, on executors.

The input is the model's windows table (``gold_deepar_<dataset>``, the default
input of ``lakeforge score``): its ``test`` window of each series ends with the
series' last observed period, so its last ``context_length`` values are the
latest context. Each executor loads the network once per Python process and
samples ``num_samples`` paths for a whole Arrow batch of series at once
(``mapInPandas``); rows are the mean and 10/50/90% quantiles per series and
future step, with the calendar period of the step.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, FloatType, IntegerType, StringType

from lakehouse.config import Config
from lakehouse.errors import SchemaMismatchError
from lakehouse.tables import _f
from models.deepar.network import WEIGHTS_FILE, load, sample_paths, summarise
from models.scoring import load_once

PREDICTION_FIELDS = (
    _f("series_id", StringType(), False), _f("step", IntegerType(), False),
    _f("period", DateType()), _f("mean", FloatType()), _f("q10", FloatType()),
    _f("q50", FloatType()), _f("q90", FloatType()),
)
OUTPUT_SCHEMA = ("series_id string, step int, period date, mean float, q10 float, q50 float, "
                 "q90 float")
INPUT_COLUMNS = ("split", "series_id", "series_idx", "start", "season", "target")


def cached_network(artifact: str, loads=None):
    """The network of ``artifact``, loaded at most once in this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return load_once(artifact, WEIGHTS_FILE, load, loads)


def future_periods(start: pd.Series, last: np.ndarray, steps: int, freq_months: int,
                   freq_days: int = 0) -> np.ndarray:
    """(rows, steps) dates ``last + k`` periods after ``start`` (k = 1..steps).

    Args:
        start: first period of each row's window.
        last: (rows,) index of each window's last period (its length - 1).
        steps: future periods.
        freq_months: months per period (month, quarter, year).
        freq_days: days per period (day, week); used when given.
    """
    s = pd.to_datetime(start)
    if freq_days:
        ahead = (np.asarray(last)[:, None] + np.arange(1, steps + 1)[None, :]) * freq_days
        days = s.to_numpy().astype("datetime64[D]")[:, None] + ahead.astype("timedelta64[D]")
        return pd.to_datetime(days.ravel()).date.reshape(days.shape)
    months = ((s.dt.year * 12 + s.dt.month - 1).to_numpy()[:, None]
              + (np.asarray(last)[:, None] + np.arange(1, steps + 1)[None, :]) * freq_months)
    dates = pd.to_datetime({"year": (months // 12).ravel(), "month": (months % 12 + 1).ravel(),
                            "day": np.ones(months.size, dtype=int)})
    return dates.dt.date.to_numpy().reshape(months.shape)


def forecast_batches(batches: Iterator[pd.DataFrame], artifact: str, loads,
                     seed: int) -> Iterator[pd.DataFrame]:
    """Executor side: mean and quantiles of the next ``prediction_length`` periods."""
    net, config = cached_network(artifact, loads)
    c, p, s = config["context_length"], config["prediction_length"], config["season_length"]
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
        paths = sample_paths(net, config, context, season0, pdf["series_idx"].to_numpy(),
                             config["num_samples"], seed)
        stats = summarise(paths)
        periods = future_periods(pdf["start"], lengths - 1, p, config["freq_months"],
                                 config.get("freq_days", 0))
        yield pd.DataFrame({
            "series_id": np.repeat(pdf["series_id"].to_numpy(), p),
            "step": np.tile(np.arange(1, p + 1, dtype=np.int32), len(pdf)),
            "period": periods.ravel(),
            **{k: v.astype(np.float32).ravel() for k, v in stats.items()}})


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
        ``series_id, step, period, mean, q10, q50, q90`` (not yet written).

    Raises:
        SchemaMismatchError: the input is not a windows table.
    """
    missing = [c for c in INPUT_COLUMNS if c not in df.columns]
    if missing:
        raise SchemaMismatchError(
            f"deepar scoring input: column(s) {', '.join(missing)} missing; score a "
            f"gold_deepar_<dataset> windows table (model {record.name} v{record.version})")
    fn = functools.partial(forecast_batches, artifact=record.artifact, loads=loads,
                           seed=cfg.train.seed)
    latest = (df.filter(F.col("split") == "test").select(*INPUT_COLUMNS[1:])
              .repartition(max(1, cfg.train.num_proc), "series_id"))
    return latest.mapInPandas(fn, OUTPUT_SCHEMA)
