"""DeepAR against seasonal naive and per-series ETS on the real panels, in one run.

For each series data set of the catalog (bundled: us_employment, 148 monthly
series; visnights, 20 quarterly series) the windows table is built (a no-op when
it is current), lakeforge's DeepAR is trained with 2 Horovod ranks, and the model
record's held-out metrics (ND, NRMSE, mean wQL over 0.1/0.5/0.9, all on the last
``prediction_length`` periods of every series) are printed next to the peers',
which the trainer fits on the same horizon. Peer fit times are measured here by
refitting them in one plain process on the same histories.

    make bench-deepar
    .venv/bin/python bench/bench_deepar.py --only us_employment --param epochs=10
"""

from __future__ import annotations

import argparse
import time
import uuid

import numpy as np
import yaml
from common import session

from lakehouse import delta
from lakehouse.featuresets import build_features
from lakehouse.featuresets.contract import silver_rows
from lakehouse.featuresets.series import dense_series, series_of
from lakehouse.render import format_table
from lakehouse.tables import layer_table
from models.deepar.baselines import HISTORY_SEASONS, complete_history, ets, seasonal_naive
from models.runner import train

METHODS = (("lakeforge DeepAR, Horovod 2 ranks", "deepar"), ("seasonal naive", "seasonal_naive"),
           ("ETS (statsmodels, damped additive)", "ets"))


def peer_seconds(spark, cfg, panel: str, horizon: int, season: int) -> dict[str, float]:
    """Seconds to fit both peers on every series of the panel, one plain process."""
    rows, _ = silver_rows(spark, cfg, cfg.datasets[panel])
    pdf = dense_series(rows, series_of(cfg, panel)).toPandas()
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


def bench_panel(spark, cfg, panel: str, params: dict) -> None:
    features = build_features(spark, cfg, panel)
    gold = spark.table(features.table)
    horizon = gold.select("prediction_length").first()[0]
    context = gold.select("context_length").first()[0]
    result = train(spark, cfg, "deepar", panel, params=params,
                   run_id=f"bench-{uuid.uuid4().hex[:8]}", name=f"bench_{panel}_deepar")
    m = result.model.metrics
    seconds = {"deepar": m["train_seconds"],
               **peer_seconds(spark, cfg, panel, horizon, series_of(cfg, panel).season_length)}
    rows = []
    for label, key in METHODS:
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
          f"held-out values; ETS fell back to seasonal naive on {int(m['ets_fallbacks'])} "
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
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    params = {k.strip(): yaml.safe_load(v) for k, v in (p.split("=", 1) for p in args.params)}
    cfg, spark = session(args.overrides)
    panels = [n for n, e in cfg.datasets.items() if e.kind == "series"]
    for panel in panels:
        if args.only in (None, panel):
            bench_panel(spark, cfg, panel, params)
    spark.stop()


if __name__ == "__main__":
    main()
