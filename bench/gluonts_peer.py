"""GluonTS's DeepAR (PyTorch backend) on a panel: the DeepAR benchmark's peer.

Runs in the benchmark's own virtualenv (``scripts/setup-gluonts.sh`` makes
``.venv-gluonts``), never in the project's: ``bench/bench_deepar.py`` writes each
panel's series as a Parquet file and starts this script on it.

Input Parquet columns: ``series_id``, ``start`` (the first value's period, ISO
date), ``values`` (the series on its calendar, NaN where missing, the held-out
horizon included). The script trains on every series without its last
``--prediction-length`` values (GluonTS masks a missing target out of the loss
and imputes it on the inputs), forecasts that horizon with ``--samples`` paths,
and writes ``series_id``, ``mean``, ``q10``, ``q50``, ``q90`` (lists) to
``--out``. It prints one JSON line: fit and forecast seconds, epochs, batches.

    .venv-gluonts/bin/python bench/gluonts_peer.py series.parquet --freq M \\
        --prediction-length 24 --context-length 36 --out forecasts.parquet
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("series", help="Parquet file of series_id, start, values")
    parser.add_argument("--freq", required=True, help="pandas frequency (M, Q, Y, W, D, h)")
    parser.add_argument("--prediction-length", type=int, required=True)
    parser.add_argument("--context-length", type=int, required=True)
    parser.add_argument("--epochs", type=int, default=100, help="GluonTS default: 100")
    parser.add_argument("--batches", type=int, default=50,
                        help="batches per epoch (GluonTS default: 50)")
    parser.add_argument("--batch-size", type=int, default=32, help="GluonTS default: 32")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True, help="Parquet file of the forecasts")
    args = parser.parse_args()

    import lightning.pytorch as pl
    import torch
    from gluonts.dataset.common import ListDataset
    from gluonts.torch.model.deepar import DeepAREstimator

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, workers=True)
    frame = pd.read_parquet(args.series)
    horizon = args.prediction_length
    names = frame["series_id"].astype(str).tolist()
    series = [np.asarray(v, dtype=np.float32) for v in frame["values"]]
    starts = [pd.Period(s, freq=args.freq) for s in frame["start"]]
    train = ListDataset(
        [{"start": s, "target": v[:-horizon], "item_id": n, "feat_static_cat": [i]}
         for i, (n, s, v) in enumerate(zip(names, starts, series, strict=True))],
        freq=args.freq)
    with tempfile.TemporaryDirectory() as root:
        estimator = DeepAREstimator(
            freq=args.freq, prediction_length=horizon, context_length=args.context_length,
            num_feat_static_cat=1, cardinality=[len(names)], batch_size=args.batch_size,
            num_batches_per_epoch=args.batches,
            trainer_kwargs={"max_epochs": args.epochs, "accelerator": "cpu",
                            "enable_progress_bar": False, "enable_model_summary": False,
                            "logger": False, "default_root_dir": root})
        start = time.perf_counter()
        predictor = estimator.train(train, cache_data=True)
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        forecasts = list(predictor.predict(train, num_samples=args.samples))
        forecast_seconds = time.perf_counter() - start
    out = pd.DataFrame({
        "series_id": names,
        "mean": [f.mean.tolist() for f in forecasts],
        "q10": [f.quantile(0.1).tolist() for f in forecasts],
        "q50": [f.quantile(0.5).tolist() for f in forecasts],
        "q90": [f.quantile(0.9).tolist() for f in forecasts]})
    out.to_parquet(args.out)
    print(json.dumps({"fit_seconds": fit_seconds, "forecast_seconds": forecast_seconds,
                      "epochs": args.epochs, "batches_per_epoch": args.batches,
                      "batch_size": args.batch_size, "series": len(names)}))


if __name__ == "__main__":
    main()
