"""Driver side of DeepAR training: check the windows table, plan, evaluate against peers.

One global model is trained across all series of a panel on ``cfg.train.num_proc``
Horovod ranks (:func:`models.deepar.rank.train_rank`). Rank 0 forecasts every
series' held-out horizon; the driver then fits the peers (seasonal naive, ETS)
on Spark executors over the same silver version, and registers the model with
ND / NRMSE / wQL of all three, the 10-90% coverage and a fan chart.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.errors import ConfigError, TableNotFoundError
from lakehouse.featuresets.contract import silver_rows
from lakehouse.featuresets.series import dense_series, series_of, window_spec
from models.deepar.baselines import as_matrix, baselines
from models.deepar.evaluate import coverage, forecast_metrics, plot_fan
from models.deepar.network import network_config
from models.deepar.rank import covariate_columns, train_rank
from models.evaluate import plot_history
from models.family import FamilyTrainer, RunPaths, TrainPlan
from models.rank import RankSpec
from models.runner import snapshot_files

log = logging.getLogger(__name__)
FORECAST_FILE = "test_forecasts.npz"


def window_shape(df: DataFrame, name: str) -> dict[str, Any]:
    """Rows per split, series count, window lengths and source version of a windows table.

    Raises:
        TableNotFoundError: the table holds no training windows.
    """
    stats = df.groupBy("split").agg(
        F.count("*").alias("n"), F.max("series_idx").alias("top"),
        F.min("context_length").alias("c"), F.max("context_length").alias("c2"),
        F.min("prediction_length").alias("p"), F.max("source_version").alias("v")).collect()
    rows = {r["split"]: r["n"] for r in stats}
    if not rows.get("train"):
        raise TableNotFoundError(f"training table {name} has no train windows; series are "
                                 f"shorter than context + 2 x prediction length")
    first = stats[0]
    if any((r["c"], r["c2"], r["p"]) != (first["c"], first["c"], first["p"]) for r in stats):
        raise ConfigError(f"training table {name} mixes window lengths; rebuild its features")
    return {"rows": rows, "n_series": max(r["top"] for r in stats) + 1,
            "context": first["c"], "prediction": first["p"], "source_version": first["v"]}


def covariate_stats(df: DataFrame, window: int) -> tuple[tuple[int, ...],
                                                      tuple[tuple[float, float], ...]]:
    """The covariates a windows table holds, as the network is configured with them.

    Returns:
        The top index per static role, and (mean, std) per dynamic role over the
        ``train`` windows' observed values; both empty for a table without.
    """
    first = df.select(F.size("static_idx").alias("s"), F.size("dynamic").alias("d")) \
        .limit(1).first()
    n_static = max(0, first["s"] or 0) if first else 0
    n_dynamic = max(0, first["d"] or 0) // window if first else 0
    cards: tuple[int, ...] = ()
    if n_static:
        top = df.select(*[F.max(F.col("static_idx")[i]) for i in range(n_static)]).first()
        cards = tuple(int(v or 0) for v in top)
    stats: tuple[tuple[float, float], ...] = ()
    if n_dynamic:
        values = (df.filter(F.col("split") == "train")
                  .select(F.posexplode("dynamic").alias("i", "x")).filter(~F.isnan("x"))
                  .groupBy((F.col("i") % n_dynamic).alias("k"))
                  .agg(F.mean("x").alias("m"), F.stddev_pop("x").alias("sd")).collect())
        found = {r["k"]: (float(r["m"]), float(r["sd"] or 0.0)) for r in values}
        stats = tuple(found.get(k, (0.0, 1.0)) for k in range(n_dynamic))
    return cards, stats


def validation_windows(df: DataFrame, prediction: int, n_series: int, columns: list[str],
                       name: str) -> dict[str, Any]:
    """Each series' last training window, to validate on, and what is left to train on.

    The last window's prediction range is the last ``prediction`` periods before the
    held-out horizon. A training window that reaches into it is left out of training:
    its ``row_id`` (series index x stride + start) is above the series' entry in
    ``last_train_row`` (-1: the series keeps no training window).

    Raises:
        ConfigError: no training window is left.
    """
    train = df.filter(F.col("split") == "train")
    tops = train.groupBy("series_idx").agg(F.max("row_id").alias("last")).collect()
    last_row = np.full(n_series, -1, dtype=np.int64)
    for idx, top in tops:
        last_row[idx] = top - prediction
    last = df.sparkSession.createDataFrame([(int(i), int(t)) for i, t in tops],
                                           "series_idx INT, last LONG")
    marked = train.join(F.broadcast(last), "series_idx")
    left = marked.filter(F.col("row_id") <= F.col("last") - prediction).count()
    if not left:
        raise ConfigError(f"deepar: validation on {name} leaves no training window; the "
                          f"series are too short to hold out {prediction} periods more "
                          f"(--param validation=false)")
    rows = (marked.filter(F.col("row_id") == F.col("last"))
            .select("series_idx", "season", "target", *columns).orderBy("series_idx")
            .toPandas())
    windows = {"series_idx": rows["series_idx"].to_numpy(np.int32),
               "season": rows["season"].to_numpy(np.int32),
               "target": np.stack(rows["target"].to_numpy()).astype(np.float32)}
    if "static_idx" in columns:
        windows["static_idx"] = np.stack(rows["static_idx"].to_numpy()).astype(np.int32)
    if "dynamic" in columns:
        windows["dynamic"] = np.stack(rows["dynamic"].to_numpy()).astype(np.float32)
    log.info("validating on %d series' last %d training periods; %d training windows left",
             len(rows), prediction, left)
    return {"windows": windows, "last_train_row": last_row}


class DeepArTrainer(FamilyTrainer):
    """Trains DeepAR on ``gold_deepar_<dataset>``."""

    rank_fn = staticmethod(train_rank)

    def table(self, cfg: Config, dataset: str) -> str:
        """``gold_deepar_<dataset>``."""
        return window_spec(dataset).full_name(cfg.catalog.database)

    def plan(self, spark: SparkSession, cfg: Config, dataset: str, df: DataFrame, table: str,
             version: int, params: dict[str, Any]) -> TrainPlan:
        """Window lengths from the table; the network's seasonal lags must fit the context."""
        declared = series_of(cfg, dataset)
        delta.check_schema(df.schema, window_spec(dataset).schema, table)
        shape = window_shape(df, f"{table} v{version}")
        cards, stats = covariate_stats(df, shape["context"] + shape["prediction"])
        config = network_config(params, shape["n_series"], declared.season_length,
                                shape["context"], shape["prediction"], declared.freq,
                                cards, stats)
        if max(config["lags"]) > shape["context"]:
            raise ConfigError(f"deepar: seasonal_lags {params['seasonal_lags']} and recent_lags "
                              f"{params.get('recent_lags', 1)} reach "
                              f"{max(config['lags'])} periods back, beyond {table}'s "
                              f"context_length {shape['context']}; lower them or "
                              f"rebuild the windows with a longer --param context_length")
        covariates = "".join([f", {len(cards)} static" if cards else "",
                              f", {len(stats)} dynamic" if stats else ""])
        summary = (f"{shape['rows']} windows of {shape['n_series']} series, "
                   f"{shape['context']}+{shape['prediction']} periods of "
                   f"{declared.freq.name}{covariates}")
        held = (validation_windows(df, shape["prediction"], shape["n_series"],
                                   covariate_columns(config), f"{table} v{version}")
                if params.get("validation") else None)
        return TrainPlan(dict(params), summary, {
            "df": df, "shape": shape, "config": config, "declared": declared,
            "dataset": dataset, "start": time.monotonic(), "seed": cfg.train.seed,
            "validation": held})

    def example(self, spark: SparkSession, cfg: Config, plan: TrainPlan,
                staged: Path) -> pd.DataFrame | None:
        """Three series' latest windows (their history), as the pyfunc takes them."""
        return (plan.state["df"].filter(F.col("split") == "test").orderBy("series_idx")
                .drop("split").limit(3).toPandas())

    def pyfunc_options(self, plan: TrainPlan) -> dict[str, Any]:
        """The sampling's seed (``train.seed``, as scoring uses it)."""
        return {"seed": int(plan.state["seed"])}

    def rank_spec(self, cfg: Config, plan: TrainPlan, run: RunPaths) -> RankSpec:
        """The windows' files per split and the network's description."""
        shape = plan.state["shape"]
        return RankSpec(family="deepar", params=plan.params,
                        files=snapshot_files(plan.state["df"]), rows=shape["rows"],
                        n_features=shape["context"] + shape["prediction"], n_classes=0,
                        checkpoint_dir=run.checkpoints, artifact_dir=run.outputs,
                        lake=run.lake, seed=cfg.train.seed,
                        extra={"network": plan.state["config"],
                               **({"validation": plan.state["validation"]}
                                  if plan.state["validation"] else {})})

    def evaluate(self, spark: SparkSession, cfg: Config, plan: TrainPlan,
                 ranks: list[dict[str, Any]], staged: Path, name: str) -> dict[str, float]:
        """DeepAR against seasonal naive and ETS, fitted on the same silver rows."""
        state, shape = plan.state, plan.state["shape"]
        rank0 = next(r for r in ranks if r["rank"] == 0)
        train_seconds = time.monotonic() - state["start"]
        silver, _ = silver_rows(spark, cfg, cfg.datasets[state["dataset"]],
                                shape["source_version"])
        log.info("fitting seasonal naive and ETS per series on the same horizon")
        peers = baselines(dense_series(silver, state["declared"]), shape["prediction"],
                          state["declared"].season_length)
        metrics = evaluate_run(rank0, peers, staged, name, shape["context"])
        metrics.update({"train_seconds": train_seconds,
                        "test_series": float(shape["rows"]["test"])})
        return metrics


def evaluate_run(rank0: dict[str, Any], peers, staged: Path, name: str,
                 context: int) -> dict[str, float]:
    """Metrics of DeepAR and its peers; writes the fan chart, curves and forecasts."""
    fc = rank0["forecast"]
    series = list(fc["series_id"])
    target = np.asarray(fc["target"], dtype=np.float64)
    history, actual = target[:, :context], target[:, context:]
    ours = {k: np.asarray(fc[k], dtype=np.float64) for k in ("mean", "q10", "q50", "q90")}
    peer_actual = as_matrix(peers, "actual", series)
    if not np.allclose(peer_actual, actual, rtol=1e-5, atol=1e-3, equal_nan=True):
        raise ConfigError(f"{name}: the windows' held-out horizon differs from silver's; "
                          f"rebuild the features")
    metrics = {"epochs": float(rank0["initial_epoch"] + rank0["epochs_run"]),
               "deepar_coverage_80": coverage(actual, ours)}
    curves = rank0["history"]
    if rank0.get("best_epoch"):
        best = rank0["best_epoch"] - rank0["initial_epoch"] - 1
        metrics.update({"best_epoch": float(rank0["best_epoch"]),
                        "validation_nd": curves["val_nd"][best],
                        "validation_wql": curves["val_wql"][best]})
    metrics.update(forecast_metrics(actual, ours, "deepar"))
    for prefix, short in (("seasonal_naive", "sn"), ("ets", "ets")):
        theirs = {k: as_matrix(peers, f"{short}_{k}", series)
                  for k in ("mean", "q10", "q50", "q90")}
        metrics.update(forecast_metrics(actual, theirs, prefix))
    metrics["ets_fallbacks"] = float(peers.groupby("series_id")["ets_fallback"].first().sum())
    if curves.get("loss"):
        plot_history(curves, staged / "training_curves.png", f"{name}: training")
    plot_fan(staged / "forecast_fan.png", f"{name}: held-out horizon", series, history, actual,
             ours)
    np.savez_compressed(staged / FORECAST_FILE, series_id=np.array(series), actual=actual,
                        **ours)
    return metrics
