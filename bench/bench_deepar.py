"""DeepAR against seasonal naive and per-series ETS on the real panels, in one run.

For each series data set of the catalog (bundled: us_employment, 148 monthly
series; visnights, 20 quarterly series) the windows table is built (a no-op when
it is current), lakeforge's DeepAR is trained with 2 Horovod ranks, and the model
record's held-out metrics (ND, NRMSE, mean wQL over 0.1/0.5/0.9, all on the last
``prediction_length`` periods of every series) are printed next to the peers',
which the trainer fits on the same horizon. Peer fit times are measured here by
refitting them in one plain process on the same histories.

The real peer is GluonTS's DeepAR on its PyTorch backend, run in a virtualenv of
its own (``scripts/setup-gluonts.sh``, ``.venv-gluonts``; ``make bench-deepar``
makes it) by ``bench/gluonts_peer.py`` on the same series, context and horizon:
trained on each series without its held-out horizon, scored here with the same
metric code as lakeforge's forecasts. It runs with GluonTS's defaults (Student-t
likelihood, its lags and time features for the frequency, 100 epochs of 50
batches of 32) on one process with 2 threads; ``--gluonts-epochs`` changes the
epochs, ``--no-gluonts`` leaves it out.

    make bench-deepar
    .venv/bin/python bench/bench_deepar.py --only us_employment --param epochs=10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from common import session
from pyspark.sql import functions as F

from lakehouse import delta
from lakehouse.featuresets import build_features
from lakehouse.featuresets.contract import silver_rows
from lakehouse.featuresets.series import Frequency, calendar_series, series_of
from lakehouse.render import format_table
from lakehouse.tables import layer_table
from models.deepar.baselines import HISTORY_SEASONS, complete_history, ets, seasonal_naive
from models.deepar.evaluate import coverage, forecast_metrics
from models.runner import train

METHODS = (("lakeforge DeepAR, Horovod 2 ranks", "deepar"), ("seasonal naive", "seasonal_naive"),
           ("ETS (statsmodels, damped additive)", "ets"))
GLUONTS = "GluonTS DeepAR (PyTorch, 1 process)"
ROOT = Path(__file__).resolve().parents[1]
GLUONTS_PYTHON = ROOT / ".venv-gluonts" / "bin" / "python"


def pandas_freq(freq: Frequency) -> str:
    """The pandas frequency alias of a lakeforge frequency (``M``, ``3M``, ``W``, ``h``)."""
    if freq.months:
        return {1: "M", 3: "Q", 12: "Y"}.get(freq.months, f"{freq.months}M")
    for unit, seconds in (("W", 7 * 86_400), ("D", 86_400), ("h", 3600), ("min", 60)):
        if freq.seconds % seconds == 0:
            n = freq.seconds // seconds
            return unit if n == 1 else f"{n}{unit}"
    return f"{freq.seconds}s"


def panel_series(spark, cfg, panel: str) -> pd.DataFrame:
    """The panel's series as the windows are cut from them, ordered by name.

    Columns ``series_id``, ``start`` (the first period) and ``values`` on the
    calendar (NaN: missing): what every peer is fitted on.
    """
    rows, _ = silver_rows(spark, cfg, cfg.datasets[panel])
    return (calendar_series(rows, series_of(cfg, panel))
            .select("series_id", F.col("p0").cast("string").alias("start"), "values")
            .toPandas().sort_values("series_id").reset_index(drop=True))


def gluonts_peer(pdf: pd.DataFrame, freq: Frequency, panel: str, horizon: int, context: int,
                 epochs: int) -> tuple[dict[str, float], float]:
    """GluonTS's DeepAR on the panel's series (:func:`panel_series`) in its own virtualenv.

    Returns:
        Its metrics (``gluonts_nd``, ``_nrmse``, ``_wql``, ``_coverage_80``) on the
        same held-out values as lakeforge's, and its fit seconds.
    """
    with tempfile.TemporaryDirectory(prefix="lakeforge-gluonts-") as tmp:
        src, out = os.path.join(tmp, "series.parquet"), os.path.join(tmp, "forecasts.parquet")
        pdf.to_parquet(src)
        proc = subprocess.run(
            [str(GLUONTS_PYTHON), str(ROOT / "bench" / "gluonts_peer.py"), src,
             "--freq", pandas_freq(freq), "--prediction-length", str(horizon),
             "--context-length", str(context), "--epochs", str(epochs), "--out", out],
            capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"the GluonTS peer failed on {panel}:\n{proc.stderr[-3000:]}")
        timing = json.loads(proc.stdout.strip().splitlines()[-1])
        fc = pd.read_parquet(out).set_index("series_id").loc[pdf["series_id"]]
    actual = np.stack([np.asarray(v, dtype=np.float64)[-horizon:] for v in pdf["values"]])
    forecast = {k: np.stack(fc[k].to_numpy()) for k in ("mean", "q10", "q50", "q90")}
    metrics = forecast_metrics(actual, forecast, "gluonts")
    metrics["gluonts_coverage_80"] = coverage(actual, forecast)
    return metrics, timing["fit_seconds"]


def peer_seconds(pdf: pd.DataFrame, horizon: int, season: int) -> dict[str, float]:
    """Seconds to fit both peers on every series (:func:`panel_series`), one plain process."""
    histories = [complete_history(np.asarray(v)[:-horizon])[-HISTORY_SEASONS * season:]
                 for v in pdf["values"]]
    out = {}
    for key, fn in (("seasonal_naive", seasonal_naive), ("ets", ets)):
        start = time.perf_counter()
        for h in histories:
            try:
                fn(h, horizon, season)
            except (ValueError, np.linalg.LinAlgError):
                pass
        out[key] = time.perf_counter() - start
    return out


def bench_panel(spark, cfg, panel: str, params: dict, gluonts_epochs: int | None) -> None:
    features = build_features(spark, cfg, panel)
    gold = spark.table(features.table)
    horizon = gold.select("prediction_length").first()[0]
    context = gold.select("context_length").first()[0]
    result = train(spark, cfg, "deepar", panel, params=params,
                   run_id=f"bench-{uuid.uuid4().hex[:8]}", name=f"bench_{panel}_deepar")
    m = result.model.metrics
    series, pdf = series_of(cfg, panel), panel_series(spark, cfg, panel)
    seconds = {"deepar": m["train_seconds"],
               **peer_seconds(pdf, horizon, series.season_length)}
    methods = list(METHODS)
    if gluonts_epochs:
        peer, seconds["gluonts"] = gluonts_peer(pdf, series.freq, panel, horizon, context,
                                                gluonts_epochs)
        m = {**m, **peer}
        methods.insert(1, (GLUONTS, "gluonts"))
    rows = []
    for label, key in methods:
        nd, nrmse, wql = m[f"{key}_nd"], m[f"{key}_nrmse"], m[f"{key}_wql"]
        rows.append((label, round(nd, 4), round(nrmse, 4), round(wql, 4),
                     round(m["deepar_nd"] / nd, 3), round(m["deepar_nrmse"] / nrmse, 3),
                     round(m["deepar_wql"] / wql, 3), round(seconds[key], 1)))
    fit = max(r["fit_seconds"] for r in result.ranks)
    silver_version = delta.current_version(spark, _silver(cfg, panel))
    print(f"\nDeepAR on {panel}: {int(m['test_series'])} series, context {context}, "
          f"horizon {horizon}, {features.rows - int(m['test_series']):,} train windows "
          f"(gold v{features.version}, silver v{silver_version}); "
          f"{int(m['epochs'])} epochs x {result.ranks[0]['steps_per_epoch']} steps, "
          f"rank fit {fit:.1f}s; 10-90% band covers {100 * m['deepar_coverage_80']:.1f}% of "
          f"held-out values"
          + (f" (GluonTS's: {100 * m['gluonts_coverage_80']:.1f}%)" if gluonts_epochs else "")
          + f"; ETS fell back to seasonal naive on {int(m['ets_fallbacks'])} "
          f"series\n")
    print(format_table(["method", "ND", "NRMSE", "mean wQL", "DeepAR/ND", "DeepAR/NRMSE",
                        "DeepAR/wQL", "train s"], rows))
    print(f"(ratios < 1: DeepAR is better; params {params})")


def _silver(cfg, panel: str) -> str:
    return layer_table(cfg.catalog.database, "silver", cfg.datasets[panel].table_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="one series data set of the catalog")
    parser.add_argument("--param", dest="params", action="append", default=[],
                        metavar="KEY=VALUE", help="DeepAR training parameter (repeatable)")
    parser.add_argument("--gluonts-epochs", type=int, default=100,
                        help="epochs of GluonTS's DeepAR (50 batches each; its default 100)")
    parser.add_argument("--no-gluonts", action="store_true",
                        help="leave the GluonTS peer out")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    gluonts_epochs = None if args.no_gluonts else args.gluonts_epochs
    if gluonts_epochs and not GLUONTS_PYTHON.exists():
        raise SystemExit(f"{GLUONTS_PYTHON} is missing: run `bash scripts/setup-gluonts.sh` "
                         f"(make bench-deepar does), or pass --no-gluonts")
    params = {k.strip(): yaml.safe_load(v) for k, v in (p.split("=", 1) for p in args.params)}
    cfg, spark = session(args.overrides)
    panels = [n for n, e in cfg.datasets.items() if e.kind == "series"]
    for panel in panels:
        if args.only in (None, panel):
            bench_panel(spark, cfg, panel, params, gluonts_epochs)
    spark.stop()


if __name__ == "__main__":
    main()
