"""Peer forecasts on the same held-out horizon: seasonal naive and per-series ETS.

Both are fitted per series on Spark executors (``applyInPandas`` over the pinned
silver version the windows were cut from), on the history before the horizon,
capped to the last ``20 * season_length`` periods (older decades of the
employment panel follow other dynamics and only slow the fits).

* Seasonal naive repeats the last season; its 10/90% quantiles are normal, with
  the in-sample seasonal-difference RMS widened by sqrt(seasons ahead) (the
  textbook formula).
* ETS is statsmodels' ``ExponentialSmoothing`` with additive damped trend and
  additive seasonality (trend only when fewer than two seasons of history);
  quantiles come from 200 simulated paths. A fit that fails falls back to the
  seasonal naive forecast for that series and says so in ``ets_fallback``.

Both take the same values as the windows (each series on the frequency's
calendar, gaps filled as declared); neither method takes a missing value, so a
gap still open in the history is interpolated linearly for them (the first and
last observed values carry to the ends). A missing held-out value stays missing.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame

Z90 = 1.2815515655446004
HISTORY_SEASONS = 20
BASELINE_SCHEMA = (
    "series_id string, step int, actual double, sn_mean double, sn_q10 double, "
    "sn_q50 double, sn_q90 double, ets_mean double, ets_q10 double, ets_q50 double, "
    "ets_q90 double, ets_fallback boolean")


def seasonal_naive(history: np.ndarray, horizon: int, season: int) -> dict[str, np.ndarray]:
    """Repeat the last season; normal 10/90% quantiles from seasonal differences."""
    h = np.asarray(history, dtype=np.float64)
    s = min(season, len(h))
    steps = np.arange(horizon)
    point = h[len(h) - s + steps % s]
    resid = h[s:] - h[:-s] if len(h) > s else np.zeros(1)
    sigma = np.sqrt(np.mean(resid ** 2)) * np.sqrt(steps // s + 1)
    return {"mean": point, "q10": point - Z90 * sigma, "q50": point, "q90": point + Z90 * sigma}


def ets(history: np.ndarray, horizon: int, season: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Additive damped-trend (+ additive seasonal) ETS forecast with simulated quantiles."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    h = np.asarray(history, dtype=np.float64)
    seasonal = "add" if season > 1 and len(h) >= 2 * season + 2 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = ExponentialSmoothing(h, trend="add", damped_trend=True, seasonal=seasonal,
                                   seasonal_periods=season if seasonal else None,
                                   initialization_method="estimated").fit()
        point = np.asarray(fit.forecast(horizon))
        sims = np.asarray(fit.simulate(horizon, repetitions=200, error="add", anchor="end",
                                       random_state=seed)).reshape(horizon, -1)
    q = np.quantile(sims, [0.1, 0.9], axis=1)
    if not np.all(np.isfinite(point)) or not np.all(np.isfinite(q)):
        raise ValueError("ETS forecast is not finite")
    return {"mean": point, "q10": np.minimum(q[0], point), "q50": point,
            "q90": np.maximum(q[1], point)}


def complete_history(values: np.ndarray) -> np.ndarray:
    """``values`` with every missing value (NaN) interpolated linearly."""
    v = np.asarray(values, dtype=np.float64)
    seen = np.flatnonzero(np.isfinite(v))
    if len(seen) == len(v) or not len(seen):
        return v
    return np.interp(np.arange(len(v)), seen, v[seen])


def baseline_frame(series_id: str, values: np.ndarray, horizon: int,
                   season: int) -> pd.DataFrame:
    """Both baselines for one series' values on the calendar (NaN: missing)."""
    values = np.asarray(values, dtype=np.float64)
    history = complete_history(values[:-horizon])[-HISTORY_SEASONS * season:]
    actual = values[-horizon:]
    sn = seasonal_naive(history, horizon, season)
    fallback = False
    try:
        et = ets(history, horizon, season)
    except (ValueError, np.linalg.LinAlgError):
        et, fallback = sn, True
    out = {"series_id": series_id, "step": np.arange(1, horizon + 1),
           "actual": actual, "ets_fallback": fallback}
    out.update({f"sn_{k}": v for k, v in sn.items()})
    out.update({f"ets_{k}": v for k, v in et.items()})
    return pd.DataFrame(out)


def _baseline_batches(batches, horizon: int, season: int):
    for pdf in batches:
        for sid, values in zip(pdf["series_id"], pdf["values"], strict=True):
            yield baseline_frame(sid, values, horizon, season)


def baselines(series: DataFrame, horizon: int, season: int) -> pd.DataFrame:
    """Seasonal naive and ETS forecasts of every series' last ``horizon`` periods.

    Args:
        series: ``series_id`` and ``values`` (:func:`lakehouse.featuresets.series.dense_series`
            at the silver version the windows were cut from).
        horizon: held-out periods (the windows' ``prediction_length``).
        season: periods per season.

    Returns:
        One row per series and future step (``BASELINE_SCHEMA``), a small frame.
    """
    fn = functools.partial(_baseline_batches, horizon=horizon, season=season)
    rows = series.select("series_id", "values").mapInPandas(fn, BASELINE_SCHEMA)
    return rows.toPandas().sort_values(["series_id", "step"]).reset_index(drop=True)


def as_matrix(frame: pd.DataFrame, column: str, series: list[str]) -> np.ndarray:
    """(series, horizon) matrix of one column, rows in the order of ``series``."""
    wide = frame.pivot(index="series_id", columns="step", values=column)
    return wide.loc[series].to_numpy(dtype=np.float64)
