"""Streaming RCF against AWS's ThresholdedRandomCutForest (TRCF 4.4.0), point by point.

Every detector sees the same points of each bundled labelled stream in time order,
with 50 trees, 256 samples per tree and shingles of 8 (``--trees``, ``--samples``,
``--shingle``), over ``--seeds`` seeds:

* **TRCF**: AWS's Java library (``randomcutforest-parkservices`` 4.4.0 from Maven
  Central, set-up fetches it; ``bench/java/TrcfPeer.java`` is compiled here with
  ``javac``), internal shingling, ``NORMALIZE`` transform, score then update each
  point; it first processes the fitting part (kdd's train file, clean mitdb for the
  spiked one; nothing for mitdb, whose fitting part is the stream itself) and is
  judged on the evaluation part. Its RCF score is the ranked score.
* **lakeforge, updates off**: the family's forest built on the fitting part (what
  ``train rcf`` builds, ``level_diff`` transform), scoring the evaluation part: what
  ``stream score rcf`` computes, equal to batch scoring.
* **lakeforge, updates on**: the same forest that keeps learning
  (:mod:`models.rcf.learn`: time-decayed samples, decay ``--decay``, trees rebuilt
  every ``--block`` points), starting from the fitting part's samples.

For each: ROC-AUC and PR-AUC of the shingle score against the shingles' labels (a
shingle is anomalous when it holds a labelled point, as ``train rcf`` judges), and of
lakeforge's point score against the points' own labels; points per second of the
evaluation part on one thread (scoring, learning and, for TRCF, its thresholding).

    make bench-stream
    .venv/bin/python bench/bench_stream.py --seeds 1 --block 64
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_alerts import fitted, streams
from sklearn.metrics import average_precision_score, roc_auc_score

from lakehouse.config import load_config
from lakehouse.featuresets.stream import window_labels
from lakehouse.jvm import pinned_jars
from lakehouse.render import format_table
from models.rcf.alerts import point_scores
from models.rcf.forest import attribution
from models.rcf.learn import Learner, LearnSpec

JAVA = Path(__file__).parent / "java" / "TrcfPeer.java"


def compile_peer(folder: Path) -> str:
    """Compile the TRCF peer; its class path."""
    jars = pinned_jars(load_config([]), "rcf-peer")
    missing = [str(j) for j in jars if not j.exists()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run `make setup`")
    classpath = ":".join([str(folder), *map(str, jars)])
    subprocess.run(["javac", "-d", str(folder), "-cp", classpath, str(JAVA)], check=True)
    return classpath


def trcf(classpath: str, fit: np.ndarray, values: np.ndarray, args, seed: int,
         warm: bool) -> tuple[np.ndarray, float]:
    """TRCF's RCF score of each evaluation point, and its points/s."""
    feed = np.concatenate([fit, values]) if warm else values
    run = subprocess.run(
        ["java", "-cp", classpath, "TrcfPeer", str(args.trees), str(args.samples),
         str(args.shingle), str(seed), str(len(fit) if warm else 0)],
        input="\n".join(map(repr, feed.tolist())), capture_output=True, text=True, check=True)
    lines = run.stdout.strip().splitlines()
    seconds = float(lines[-1].split()[-1])
    scores = np.asarray([float(line.split(",")[0]) for line in lines[:-1]])
    return scores, len(values) / seconds


def ours(fit: np.ndarray, values: np.ndarray, args, seed: int, learn: bool
         ) -> tuple[np.ndarray, np.ndarray, float]:
    """lakeforge's shingle and point scores of each evaluation shingle, and points/s."""
    _, x, scaling, samples, forest = fitted(fit, values, args, seed)
    start = time.perf_counter()
    if learn:
        spec = LearnSpec(args.decay or 1 / (10 * args.samples), args.block, 0, seed)
        attributed = Learner.start(spec, "bench", forest, samples).attribute(scaling.apply(x))
    else:
        attributed = attribution(forest, scaling.apply(x))
    seconds = time.perf_counter() - start
    return attributed.sum(axis=1), point_scores(attributed, scaling, args.shingle)[0], \
        len(values) / seconds


def judge(score: np.ndarray, labels: np.ndarray, size: int, point: bool) -> tuple[float, float]:
    """ROC-AUC and PR-AUC; ``score`` is per shingle (ending at each point from ``size - 1``)."""
    own = labels[size - 1:]
    truth = own if point else window_labels(np.arange(len(labels)), labels, size)[size - 1:]
    return roc_auc_score(truth, score), average_precision_score(truth, score)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trees", type=int, default=50)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--shingle", type=int, default=8)
    parser.add_argument("--block", type=int, default=128, help="points between rebuilds")
    parser.add_argument("--decay", type=float, default=0,
                        help="time decay per point (0: 1 / (10 x samples), as TRCF)")
    args = parser.parse_args()
    size = args.shingle
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        classpath = compile_peer(Path(folder))
        for name, (fit, values, labels) in streams(np.random.default_rng(7)).items():
            if name == "seasonal":
                continue                     # unlabelled in TRCF's figures; see bench_alerts
            warm = fit is not values
            results: dict[str, list] = {"TRCF 4.4.0": [], "lakeforge, updates off": [],
                                        "lakeforge, updates on": []}
            for seed in range(args.seeds):
                scores, speed = trcf(classpath, fit, values, args, seed, warm)
                # TRCF scores from the first point; its shingles fill after size - 1.
                results["TRCF 4.4.0"].append((*judge(scores[size - 1:], labels, size, False),
                                              np.nan, np.nan, speed))
                for learn, key in ((False, "lakeforge, updates off"),
                                   (True, "lakeforge, updates on")):
                    score, point, speed = ours(fit, values, args, seed, learn)
                    results[key].append((*judge(score, labels, size, False),
                                         *judge(point, labels, size, True), speed))
            for key, runs in results.items():
                mean = np.nanmean(np.asarray(runs, dtype=float), axis=0) \
                    if key.startswith("lake") else np.asarray(runs, dtype=float).mean(axis=0)
                rows.append([name, key, *(f"{v:.3f}" if not np.isnan(v) else "" for v in
                                          mean[:4]), f"{mean[4]:,.0f}"])
    print(f"{args.trees} trees x {args.samples} samples, shingle {size}, updates on: block "
          f"{args.block}, decay {args.decay or 1 / (10 * args.samples):.2g}; mean of "
          f"{args.seeds} seeds; one thread")
    print(format_table(["stream", "detector", "ROC-AUC", "PR-AUC", "point ROC-AUC",
                        "point PR-AUC", "points/s"], rows))


if __name__ == "__main__":
    main()
