"""RCF alerts: point scores and one alert per event, before and after, on labelled streams.

Every shingle that holds an anomalous point scores high, so ranked by shingle score a
spike's own point comes after the points that follow it, and a threshold on shingle
scores flags every shingle that holds the spike. This benchmark measures, per stream
and averaged over seeds, the same forest (``--trees``, ``--samples``, ``--shingle``,
the family's ``level_diff`` transform) judged two ways:

* **before**: each point ranked by the score of the shingle it ends; alerts as the
  first streaming scorer raised them (over mean + 3 sd of the fitting scores, at
  most one per shingle span), and ``is_anomaly`` (every point over it);
* **after**: each point ranked by its own share of that score (``point_score``) and
  alerts by :mod:`models.rcf.alerts` (an adaptive threshold on point scores, one
  alert per event).

Columns: point-level ROC-AUC and PR-AUC (a point is anomalous when it is labelled),
events (runs of labelled points), events alerted, alerts inside events per event
alerted, and false alerts (outside every event and the shingle span after it).

Streams: ``kdd_tsad_135`` and ``mitdb`` as bundled (the package files the catalog
reads); ``mitdb+spikes``: mitdb with 11 single-point spikes of 5 sd injected (fit on
the clean stream); ``seasonal``: 27,709 five-minute points of a daily and weekly
cycle with noise and 11 single-point spikes (fit on its first 5,000 points), the
shape of a sensor stream a user brings.

    .venv/bin/python bench/bench_alerts.py                 # 3 seeds, about a minute
    .venv/bin/python bench/bench_alerts.py --seeds 1 --sigma 3.5 --horizon 0
"""

from __future__ import annotations

import argparse
import csv
import sysconfig
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from lakehouse.render import format_table
from models.rcf.alerts import AlertRule, alerts, point_scores
from models.rcf.forest import attribution, build_forest, reservoir_samples
from models.rcf.train import event_metrics
from models.rcf.transform import Moments, fit_scaling, shape_features

SITE = Path(sysconfig.get_paths()["purelib"])


def _column(path: Path, name: str) -> np.ndarray:
    with path.open() as f:
        return np.asarray([float(row[name]) for row in csv.DictReader(f)])


def streams(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """name -> (fitting values, evaluation values, evaluation labels)."""
    kdd = SITE / "aeon/datasets/data/KDD-TSAD_135"
    train = kdd / "135_UCR_Anomaly_InternalBleeding16_TRAIN.csv"
    test = kdd / "135_UCR_Anomaly_InternalBleeding16_TEST.csv"
    mitdb = SITE / "sktime/datasets/data/mitdb/mitdb.csv"
    ecg, ecg_label = _column(mitdb, "data"), _column(mitdb, "label").astype(int)
    out = {"kdd_tsad_135": (_column(train, "value"), _column(test, "value"),
                            _column(test, "is_anomaly").astype(int)),
           "mitdb": (ecg, ecg, ecg_label)}
    spiked, label = ecg.copy(), np.zeros(len(ecg), dtype=int)
    at = rng.choice(np.arange(100, len(ecg) - 100), 11, replace=False)
    spiked[at] += rng.choice([-1, 1], 11) * 5 * ecg.std()
    label[at] = 1
    out["mitdb+spikes"] = (ecg, spiked, label)
    n = 27_709
    t = np.arange(n)
    cycle = (10 + 3 * np.sin(2 * np.pi * t / 288) + 0.5 * np.sin(2 * np.pi * t / 2016)
             + rng.normal(0, 0.3, n))
    label = np.zeros(n, dtype=int)
    at = rng.choice(np.arange(5_000, n - 100), 11, replace=False)
    cycle[at] += rng.choice([-1, 1], 11) * rng.uniform(2.5, 5, 11)
    label[at] = 1
    out["seasonal"] = (cycle[:5_000], cycle, label)
    return out


def _gap_alerts(flagged: np.ndarray, size: int) -> np.ndarray:
    """The first streaming scorer's rule: at most one alert per ``size`` points."""
    alert, last = np.zeros(len(flagged), dtype=bool), -size
    for i in np.flatnonzero(flagged):
        if i - last >= size:
            alert[i], last = True, i
    return alert


def fitted(fit: np.ndarray, values: np.ndarray, args, seed: int):
    """The family's forest on the fitting part (``level_diff``, ``args.trees`` x
    ``args.samples``, shingles of ``args.shingle``).

    Returns:
        The fitting and evaluation shingles, the scaling, the trees' samples (scaled)
        and the forest.
    """
    size, rng = args.shingle, np.random.default_rng(seed)
    shingle = np.lib.stride_tricks.sliding_window_view
    x_fit, x = shingle(fit, size).astype(float), shingle(values, size).astype(float)
    scaling = fit_scaling("level_diff", Moments.of(shape_features(x_fit, "level_diff")))
    samples = reservoir_samples([scaling.apply(x_fit)], args.trees, args.samples, rng)
    return x_fit, x, scaling, samples, build_forest(samples, rng)


def measure(fit: np.ndarray, values: np.ndarray, label: np.ndarray, args, seed: int
            ) -> dict[str, dict[str, float]]:
    """Both ways of judging one forest on one stream."""
    size = args.shingle
    x_fit, x, scaling, _, forest = fitted(fit, values, args, seed)
    on_fit = attribution(forest, scaling.apply(x_fit))
    fit_scores = on_fit.sum(axis=1)
    attributed = attribution(forest, scaling.apply(x))
    score = attributed.sum(axis=1)
    own, alone = point_scores(attributed, scaling, size)
    rule = AlertRule.fit(point_scores(on_fit, scaling, size)[0], args.sigma, args.horizon,
                         size - 1)
    flagged = score > fit_scores.mean() + 3 * fit_scores.std()
    label = label[size - 1:]                       # the point each shingle ends at
    stream = np.zeros(len(label), dtype=int)
    ways = {"before": (score, _gap_alerts(flagged, size)),
            "after": (own, alerts(own, alone, rule, rule.start())[0])}
    out = {}
    for way, (ranked, alert) in ways.items():
        out[way] = {"point_roc_auc": roc_auc_score(label, ranked),
                    "point_pr_auc": average_precision_score(label, ranked),
                    "alerts": float(alert.sum()),
                    **event_metrics(stream, label, alert, size)}
        if way == "before":
            out[way]["flagged"] = float(flagged.sum())
    return out


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--shingle", type=int, default=8)
    parser.add_argument("--sigma", type=float, default=4.0, help="alert_sigma")
    parser.add_argument("--horizon", type=int, default=1000, help="alert_horizon")
    args = parser.parse_args()
    rows = []
    for name, (fit, values, label) in streams(np.random.default_rng(7)).items():
        runs = [measure(fit, values, label, args, seed) for seed in range(args.seeds)]
        for way in ("before", "after"):
            mean = {k: float(np.mean([r[way][k] for r in runs])) for k in runs[0][way]}
            rows.append([name, way, f"{mean['point_roc_auc']:.3f}", f"{mean['point_pr_auc']:.3f}",
                         f"{mean['events']:.0f}", f"{mean['events_alerted']:.1f}",
                         f"{mean['alerts_per_event']:.2f}", f"{mean['false_alerts']:.1f}",
                         f"{mean['flagged']:.0f}" if "flagged" in mean else ""])
    print(f"{args.trees} trees x {args.samples} samples, shingle {args.shingle}, "
          f"alert_sigma {args.sigma}, alert_horizon {args.horizon}, mean of {args.seeds} seeds")
    print(format_table(["stream", "way", "point ROC-AUC", "point PR-AUC", "events",
                        "alerted", "alerts/event", "false alerts", "is_anomaly"], rows))


if __name__ == "__main__":
    main()
