"""RCF benchmark: lakeforge's forest against rrcf and scikit-learn IsolationForest on the
labelled real streams (mitdb, KDD-TSAD 135) and on real background streams with
injected spikes and level shifts, all with the same trees, sample size and shingles.

Every detector fits on a stream's training part (the whole stream when it has none)
and scores its evaluation part. All three see the same shingles in each
representation (the family's default ``level_diff``: last value and first
differences, standardised on the fitting part; and raw shingles); lakeforge's row in
``--transform`` is held against the best peer row on any representation. A shingle
counts as anomalous when it holds a labelled point (a spike at ``t`` lies in the
shingles ending at ``t .. t + shingle - 1``), for every detector.

rrcf scores a point the way lakeforge does (insert into each tree, CoDisp, forget),
which costs ~10 ms per point with 50 trees; ``--stride N`` compares all detectors
on every N-th point only (lakeforge and IsolationForest always score every point).
The real streams are also trained through the full path (Spark shingles, 2 Horovod
ranks, model store) as fresh runs, registered as ``bench_<stream>_rcf`` so the
models ``lakeforge score`` uses stay as they were.

    make bench-rcf                            # needs the demo's silver tables
    .venv/bin/python bench/bench_rcf.py --trees 50 --samples 256 --shingle 8 --stride 3
    .venv/bin/python bench/bench_rcf.py --transform none --max-depth 6   # density-like scores
    .venv/bin/python bench/bench_rcf.py --seeds 4 --stride 4             # means over 4 seeds
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import rrcf
from common import session
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score

from lakehouse.featuresets import build_features
from lakehouse.featuresets.stream import window_labels
from lakehouse.render import format_table
from models.rcf import FAMILY
from models.rcf.forest import build_forest, codisp, reservoir_samples
from models.rcf.transform import TRANSFORMS, Moments, fit_scaling, shape_features
from models.runner import train


def _real(spark, cfg, stream: str, shingle: int) -> dict[str, np.ndarray]:
    built = build_features(spark, cfg, stream, params={"shingle_size": shingle})
    pdf = spark.table(built.table).select("split", "t", "shingle", "label").toPandas()
    pdf = pdf.sort_values(["split", "t"])
    parts = {s: g for s, g in pdf.groupby("split")}
    fit = parts.get("train", parts["test"])
    ev = parts["test"]
    return {"fit": np.stack(fit.shingle.to_numpy()), "x": np.stack(ev.shingle.to_numpy()),
            "y": window_labels(ev.t.to_numpy(), ev.label.to_numpy(), shingle),
            "table": built.table}


def _injected(values: np.ndarray, shingle: int, seed: int) -> dict[str, np.ndarray]:
    """Spikes (single points, +6 sd) and level shifts (60 points, +3 sd) in a real stream."""
    rng = np.random.default_rng(seed)
    v, y = values.copy(), np.zeros(len(values), dtype=int)
    sd = values.std()
    half = len(v) // 2      # the first half stays clean for fitting
    for t in rng.choice(np.arange(half + 50, len(v) - 50), 8, replace=False):
        v[t] += 6 * sd
        y[t] = 1
    for t in rng.choice(np.arange(half + 100, len(v) - 100, 200), 3, replace=False):
        v[t:t + 60] += 3 * sd
        y[t:t + 60] = 1
    x = np.lib.stride_tricks.sliding_window_view(v, shingle)
    held = np.lib.stride_tricks.sliding_window_view(y, shingle).max(axis=1)
    return {"fit": x[:half], "x": x[half:], "y": held[half:]}


def _represent(data, kind: str) -> dict[str, np.ndarray]:
    """The stream's shingles in representation ``kind``, scaled on its fitting part."""
    scaling = fit_scaling(kind, Moments.of(shape_features(data["fit"], kind)))
    return {**data, "fit": scaling.apply(data["fit"]), "x": scaling.apply(data["x"])}


def _ours(data, trees: int, samples: int, seed: int,
          max_depth: int = 0) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(seed)
    forest = build_forest(reservoir_samples(np.array_split(data["fit"], 8), trees, samples,
                                            rng), rng, max_depth)
    start = time.perf_counter()
    scores = codisp(forest, data["x"])
    return scores, len(scores) / (time.perf_counter() - start)


def _rrcf(data, trees: int, samples: int, stride: int, seed: int) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(seed)
    fit = data["fit"]
    forest = [rrcf.RCTree(fit[rng.choice(len(fit), min(samples, len(fit)), replace=False)],
                          random_state=int(rng.integers(2**31)))
              for _ in range(trees)]
    points = data["x"][::stride]
    start = time.perf_counter()
    scores = np.empty(len(points))
    for i, p in enumerate(points):
        total = 0.0
        for tree in forest:
            tree.insert_point(p, index="q")
            total += tree.codisp("q")
            tree.forget_point("q")
        scores[i] = total / trees
    return scores, len(points) / (time.perf_counter() - start)


def _iforest(data, trees: int, samples: int, seed: int) -> tuple[np.ndarray, float]:
    model = IsolationForest(n_estimators=trees, max_samples=min(samples, len(data["fit"])),
                            random_state=seed).fit(data["fit"])
    start = time.perf_counter()
    scores = -model.score_samples(data["x"])
    return scores, len(scores) / (time.perf_counter() - start)


def _auc(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    if 0 < y.sum() < len(y):
        return roc_auc_score(y, s), average_precision_score(y, s)
    return float("nan"), float("nan")


def compare(name: str, data, args) -> list[tuple]:
    """One table block: the three detectors on one stream, in every representation.

    Each detector runs with seeds ``args.seed .. args.seed + args.seeds - 1``; a row
    holds the mean over them (and the ROC-AUC's standard deviation). ``args.transform``
    comes first; its rrcf runs set the points/s every row is compared with.
    """
    y, sub = data["y"], slice(None, None, args.stride)
    kinds = list(dict.fromkeys((args.transform, *TRANSFORMS)))
    shown_as = {kind: _represent(data, kind) for kind in kinds}
    found: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    for seed in range(args.seed, args.seed + args.seeds):
        for kind, shown in shown_as.items():
            runs = [("lakeforge RCF", _ours(shown, args.trees, args.samples, seed,
                                            args.max_depth)),
                    ("rrcf", _rrcf(shown, args.trees, args.samples, args.stride, seed)),
                    ("IsolationForest", _iforest(shown, args.trees, args.samples, seed))]
            for method, (scores, pps) in runs:
                every = method != "rrcf" or args.stride == 1   # every point, or every n-th
                roc, pr = _auc(y[sub], scores[sub] if every else scores)
                full = _auc(y, scores)[0] if every else float("nan")
                found.setdefault((method, kind), []).append((roc, pr, full, pps))
    rrcf_pps = np.mean([r[3] for r in found[("rrcf", args.transform)]])
    rows = []
    for (method, kind), runs in found.items():
        roc, pr, full, pps = np.mean(runs, axis=0)
        rows.append((name, method, kind, len(y[sub]), int(y[sub].sum()), round(roc, 3),
                     round(float(np.std([r[0] for r in runs])), 3), round(pr, 3),
                     round(full, 3), f"{pps:,.0f}", f"{pps / rrcf_pps:.1f}x"))
    order = {m: i for i, m in enumerate(("lakeforge RCF", "rrcf", "IsolationForest"))}
    return sorted(rows, key=lambda r: (kinds.index(r[2]), order[r[1]]))


def verdict(rows: list[tuple], transform: str) -> list[tuple]:
    """Per stream: lakeforge (``transform``) against the best peer row on any representation."""
    out = []
    for stream in dict.fromkeys(r[0] for r in rows):
        block = [r for r in rows if r[0] == stream]
        ours = next(r for r in block if r[1] == "lakeforge RCF" and r[2] == transform)
        best = max((r for r in block if r[1] != "lakeforge RCF"), key=lambda r: r[5])
        out.append((stream, ours[5], f"{best[1]} ({best[2]})", best[5],
                    "yes" if ours[5] >= best[5] else "no"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=50)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--shingle", type=int, default=8)
    parser.add_argument("--stride", type=int, default=1,
                        help="rrcf scores every n-th point (1: all; it takes ~1 s per 100)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--seeds", type=int, default=1,
                        help="run every detector with this many seeds from --seed; report means")
    parser.add_argument("--transform", choices=TRANSFORMS, default=FAMILY.defaults["transform"],
                        help="shingle representation every detector sees")
    parser.add_argument("--max-depth", type=int, default=FAMILY.defaults["max_depth"],
                        help="lakeforge's tree depth limit (0: none, full trees)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg, spark = session(args.overrides)
    streams = {s: _real(spark, cfg, s, args.shingle) for s in ("mitdb", "kdd_tsad_135")}
    silver = spark.table(f"{cfg.catalog.database}.silver_streams")
    background = {
        "mitdb + injected": silver.filter("stream_id = 'mitdb' AND t < 6000"),
        "kdd_tsad_135 + injected": silver.filter("stream_id = 'kdd_tsad_135' AND split = 'test'"
                                                 " AND t < 4100"),
    }
    for i, (name, df) in enumerate(background.items()):
        values = np.asarray([r[0] for r in df.orderBy("t").select("value").collect()])
        streams[name] = _injected(values, args.shingle, args.seed + i)

    rows = []
    for name, data in streams.items():
        print(f"scoring {name} ({len(data['x']):,} points) ...", flush=True)
        rows += compare(name, data, args)
    print(f"\n{args.trees} trees x {args.samples} samples, shingle {args.shingle}, lakeforge max "
          f"depth {args.max_depth or 'none'}; mean over {args.seeds} seed(s) from {args.seed}; "
          f"AUCs on every {args.stride}-th point (all detectors), 'ROC-AUC all' on every point")
    print(format_table(["stream", "detector", "shingles", "points", "anomalies", "ROC-AUC",
                        "ROC sd", "PR-AUC", "ROC-AUC all", "points/s", "vs rrcf"], rows))
    print(format_table(["stream", f"lakeforge ROC-AUC ({args.transform})", "best peer",
                        "peer ROC-AUC", "met"], verdict(rows, args.transform)))

    params = {"num_trees": args.trees, "num_samples_per_tree": args.samples,
              "shingle_size": args.shingle, "transform": args.transform,
              "max_depth": args.max_depth}
    full = []
    for stream in ("mitdb", "kdd_tsad_135"):
        result = train(spark, cfg, "rcf", stream, params=params, name=f"bench_{stream}_rcf",
                       run_id=f"bench-{stream}-{time.strftime('%Y%m%dT%H%M%S')}")
        m = result.model.metrics
        full.append((stream, result.model.version, f"{result.seconds:.1f}",
                     round(m.get("roc_auc", float("nan")), 3),
                     round(m.get("pr_auc", float("nan")), 3), f"{m['points_per_second']:,.0f}",
                     max(r["peak_rss_mb"] for r in result.ranks)))
    print("\nfull path (Spark shingles -> 2 Horovod ranks -> model store):")
    print(format_table(["stream", "model version", "train s", "ROC-AUC", "PR-AUC",
                        "rank-0 points/s", "peak rank RSS MiB"], full))
    print("targets: ROC-AUC >= the better of rrcf and IsolationForest on each stream; "
          ">= 10x rrcf's scoring points/s")


if __name__ == "__main__":
    main()
