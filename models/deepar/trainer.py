"""Driver side of DeepAR training: pin the windows table, run the ranks, evaluate, register.

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
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.errors import ConfigError, TableNotFoundError
from lakehouse.features import silver_rows
from models.deepar.baselines import as_matrix, baselines
from models.deepar.evaluate import coverage, forecast_metrics, plot_fan
from models.deepar.network import network_config
from models.deepar.rank import train_rank
from models.deepar.windows import series_of, series_points, window_spec
from models.evaluate import plot_history
from models.rank import RankSpec
from models.runner import (
    TrainResult,
    default_run_id,
    pin_table,
    registered_run,
    run_ranks,
    snapshot_files,
    staging_dir,
)
from models.store import ModelStore

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


def train_deepar(spark: SparkSession, cfg: Config, dataset: str, version: int | None,
                 run_id: str | None, params: dict[str, Any], name: str | None) -> TrainResult:
    """Train DeepAR on ``gold_deepar_<dataset>`` (the family's ``trainer`` hook).

    Args:
        spark: the session.
        cfg: configuration (ranks, checkpoint and model folders).
        dataset: a series data set (catalog entry of kind ``series``).
        version: Delta version of the windows table (default: current).
        run_id: training run id (default derived); a re-run resumes its checkpoints.
        params: checked training parameters (:class:`models.deepar.params.DeepArParams`).
        name: model name (default ``<dataset>_deepar``).

    Returns:
        The registered model, per-epoch loss history and each rank's report.
    """
    start = time.monotonic()
    declared = series_of(cfg, dataset)
    db = cfg.catalog.database
    gold = window_spec(dataset).full_name(db)
    df, version = pin_table(spark, gold, version)
    delta.check_schema(df.schema, window_spec(dataset).schema, gold)
    shape = window_shape(df, f"{gold} v{version}")
    config = network_config(params, shape["n_series"], declared.season_length,
                            shape["context"], shape["prediction"], declared.freq)
    if max(config["lags"]) > shape["context"]:
        raise ConfigError(f"deepar: seasonal_lags {params['seasonal_lags']} reaches "
                          f"{max(config['lags'])} periods back, beyond {gold}'s context_length "
                          f"{shape['context']}; lower seasonal_lags or rebuild the windows with "
                          f"a longer --param context_length")
    name = name or f"{dataset}_deepar"
    run_id = run_id or default_run_id(name, "deepar", gold, version, params)
    done = registered_run(spark, cfg, name, run_id, start)
    if done is not None:
        return done
    staged = staging_dir(cfg, run_id)
    spec = RankSpec(family="deepar", params=params, files=snapshot_files(df),
                    rows=shape["rows"], n_features=shape["context"] + shape["prediction"],
                    n_classes=0, checkpoint_dir=str(cfg.checkpoint_dir / "train" / run_id),
                    artifact_dir=str(staged), seed=cfg.train.seed, extra={"network": config})
    log.info("training %s (deepar) on %s v%d: %s windows of %d series, %d+%d periods, "
             "%d ranks, run %s", name, gold, version, shape["rows"], shape["n_series"],
             shape["context"], shape["prediction"], cfg.train.num_proc, run_id)
    ranks = run_ranks(spec, cfg, train_rank)
    rank0 = next(r for r in ranks if r["rank"] == 0)
    train_seconds = time.monotonic() - start
    silver, _ = silver_rows(spark, cfg, cfg.datasets[dataset], shape["source_version"])
    log.info("fitting seasonal naive and ETS per series on the same horizon")
    peers = baselines(series_points(silver, declared), shape["prediction"],
                      declared.season_length)
    metrics = evaluate_run(rank0, peers, staged, name, shape["context"])
    metrics.update({"train_seconds": train_seconds, "test_series": float(shape["rows"]["test"])})
    record = ModelStore(spark, cfg).register(name, "deepar", staged, params, metrics, gold,
                                             version, run_id)
    log.info("registered %s v%d in %.0fs: %s", name, record.version, time.monotonic() - start,
             ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
    return TrainResult(record, rank0["history"], ranks, time.monotonic() - start)


def evaluate_run(rank0: dict[str, Any], peers, staged: Path, name: str,
                 context: int) -> dict[str, float]:
    """Metrics of DeepAR and its peers; writes the fan chart, curves and forecasts."""
    fc = rank0["forecast"]
    series = list(fc["series_id"])
    target = np.asarray(fc["target"], dtype=np.float64)
    history, actual = target[:, :context], target[:, context:]
    ours = {k: np.asarray(fc[k], dtype=np.float64) for k in ("mean", "q10", "q50", "q90")}
    peer_actual = as_matrix(peers, "actual", series)
    if not np.allclose(peer_actual, actual, rtol=1e-5, atol=1e-3):
        raise ConfigError(f"{name}: the windows' held-out horizon differs from silver's; "
                          f"rebuild the features")
    metrics = {"epochs": float(rank0["initial_epoch"] + rank0["epochs_run"]),
               "deepar_coverage_80": coverage(actual, ours)}
    metrics.update(forecast_metrics(actual, ours, "deepar"))
    for prefix, short in (("seasonal_naive", "sn"), ("ets", "ets")):
        theirs = {k: as_matrix(peers, f"{short}_{k}", series)
                  for k in ("mean", "q10", "q50", "q90")}
        metrics.update(forecast_metrics(actual, theirs, prefix))
    metrics["ets_fallbacks"] = float(peers.groupby("series_id")["ets_fallback"].first().sum())
    if rank0["history"].get("loss"):
        plot_history(rank0["history"], staged / "training_curves.png", f"{name}: training")
    plot_fan(staged / "forecast_fan.png", f"{name}: held-out horizon", series, history, actual,
             ours)
    np.savez_compressed(staged / FORECAST_FILE, series_id=np.array(series), actual=actual,
                        **ours)
    return metrics
