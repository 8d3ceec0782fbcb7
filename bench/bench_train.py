"""Training benchmarks, each against its peers on the same data in one run.

MLP on nycflights13 (arrival delay > 15 min): lakeforge's Horovod MLP (2 ranks)
against Spark MLlib's MultilayerPerceptronClassifier and scikit-learn's
MLPClassifier with the same hidden layers, on the same train/test split; accuracy,
ROC-AUC and training time. MLP regression on ggplot2 diamonds (price from carat, cut,
colour, clarity and size, a declared feature set with categorical columns): the
Horovod MLP against scikit-learn's MLPRegressor on the same features; RMSE, MAE, R²
and training time. CNN on Fashion-MNIST: test accuracy and images/s of 2
Horovod ranks against the same Keras model trained in one plain process. Memory:
peak RSS of the Python driver, the Spark JVM and each rank.

    make bench-train                       # all three
    .venv/bin/python bench/bench_train.py --only mlp-regression
    .venv/bin/python bench/bench_train.py --only mlp --mlp-epochs 3
"""

from __future__ import annotations

import argparse
import resource
import time
import uuid

import numpy as np
from common import session

from lakehouse.curate import curate
from lakehouse.featuresets import build_features
from lakehouse.ingest import ingest
from lakehouse.render import format_table
from models.evaluate import classification_metrics, regression_metrics
from models.runner import train

HIDDEN = [64, 32]


def peak_rss_mb(pid: int | None = None) -> float:
    """Peak resident memory (VmHWM) of a process, in MiB."""
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def jvm_pid() -> int | None:
    import psutil

    for child in psutil.Process().children(recursive=True):
        if "java" in child.name():
            return child.pid
    return None


def prepare(spark, cfg, source: str) -> None:
    """Ingest and curate unless the silver table exists (e.g. from `make demo`), then
    build the gold table (nothing to do when it is built from these rows already)."""
    if not spark.catalog.tableExists(f"{cfg.catalog.database}.silver_{source}"):
        ingest(spark, cfg, [source], "bench")
        curate(spark, cfg, [source])
    build_features(spark, cfg, source)


def split_arrays(spark, table: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    pdf = spark.table(table).filter(f"split = '{split}'").select("features", "label").toPandas()
    return np.stack(pdf.features.to_numpy()).astype(np.float32), pdf.label.to_numpy()


def bench_mlp(spark, cfg, epochs: int) -> list[tuple]:
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import MultilayerPerceptronClassifier
    from pyspark.ml.feature import StandardScaler
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler as SkScaler

    prepare(spark, cfg, "flights")
    # Same network and updates as scikit-learn's: no dropout, global batch 512
    # (256 per rank on 2 ranks).
    params = {"epochs": epochs, "batch_size": 512 // cfg.train.num_proc, "hidden": HIDDEN,
              "patience": epochs, "dropout": 0.0}
    ours = train(spark, cfg, "mlp", "flights", params=params,
                 run_id=f"bench-{uuid.uuid4().hex[:8]}", name="bench_flights_mlp")
    table = ours.model.training_table
    rows = []
    m = ours.model.metrics
    rows.append(("lakeforge MLP, Horovod 2 ranks", m["accuracy"], m.get("roc_auc"), ours.seconds,
                 max(r["fit_seconds"] for r in ours.ranks)))

    x_train, y_train = split_arrays(spark, table, "train")
    x_test, y_test = split_arrays(spark, table, "test")
    base = float(max(y_test.mean(), 1 - y_test.mean()))
    start = time.perf_counter()
    scaler = SkScaler().fit(x_train)
    sk = MLPClassifier(hidden_layer_sizes=tuple(HIDDEN), batch_size=512, max_iter=epochs,
                       random_state=cfg.train.seed)
    sk.fit(scaler.transform(x_train), y_train)
    sk_seconds = time.perf_counter() - start
    sk_metrics = classification_metrics(sk.predict_proba(scaler.transform(x_test)), y_test)
    rows.append((f"scikit-learn MLPClassifier ({epochs} epochs)", sk_metrics["accuracy"],
                 sk_metrics.get("roc_auc"), sk_seconds, sk_seconds))

    gold = spark.table(table).withColumn("x", array_to_vector("features"))
    n_features = len(x_train[0])
    mllib = Pipeline(stages=[
        StandardScaler(inputCol="x", outputCol="scaled", withMean=True),
        MultilayerPerceptronClassifier(featuresCol="scaled", labelCol="label",
                                       layers=[n_features, *HIDDEN, 2], blockSize=512,
                                       maxIter=100, seed=cfg.train.seed)])
    start = time.perf_counter()
    fitted = mllib.fit(gold.filter("split = 'train'"))
    ml_seconds = time.perf_counter() - start
    pred = fitted.transform(gold.filter("split = 'test'")).select(
        vector_to_array("probability").alias("p"), "label").toPandas()
    ml_metrics = classification_metrics(np.stack(pred.p.to_numpy()), pred.label.to_numpy())
    rows.append(("Spark MLlib MLPC (l-bfgs, maxIter 100)", ml_metrics["accuracy"],
                 ml_metrics.get("roc_auc"), ml_seconds, ml_seconds))
    rows.append(("constant guess (majority class)", base, 0.5, 0.0, 0.0))
    print(f"\nMLP on nycflights13: {len(y_train):,} train / {len(y_test):,} test rows, "
          f"{n_features} features, {100 * y_test.mean():.1f}% delayed in test\n")
    print(format_table(["model", "accuracy", "roc_auc", "total s", "fit s"],
                       [(n, round(a, 4), round(r, 4) if r else None, round(t, 1), round(f, 1))
                        for n, a, r, t, f in rows]))
    print_fit_times(ours.ranks)
    return [("mlp", r["rank"], r["peak_rss_mb"]) for r in ours.ranks]


def bench_mlp_regression(spark, cfg, epochs: int) -> list[tuple]:
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler as SkScaler

    prepare(spark, cfg, "diamonds")
    # Same network and updates as scikit-learn's: no dropout, global batch 512.
    params = {"epochs": epochs, "batch_size": 512 // cfg.train.num_proc, "hidden": HIDDEN,
              "patience": epochs, "dropout": 0.0}
    ours = train(spark, cfg, "mlp", "diamonds", params=params,
                 run_id=f"bench-{uuid.uuid4().hex[:8]}", name="bench_diamonds_mlp")
    m = ours.model.metrics
    rows = [("lakeforge MLP, Horovod 2 ranks", m["rmse"], m["mae"], m.get("r2"), ours.seconds,
             max(r["fit_seconds"] for r in ours.ranks))]

    table = ours.model.training_table
    x_train, y_train = split_arrays(spark, table, "train")
    x_test, y_test = split_arrays(spark, table, "test")
    start = time.perf_counter()
    # Inputs and target standardised, as lakeforge's model does inside itself.
    sk = TransformedTargetRegressor(
        make_pipeline(SkScaler(), MLPRegressor(hidden_layer_sizes=tuple(HIDDEN), batch_size=512,
                                               max_iter=epochs, random_state=cfg.train.seed)),
        transformer=SkScaler())
    sk.fit(x_train, y_train)
    sk_seconds = time.perf_counter() - start
    sk_metrics = regression_metrics(sk.predict(x_test), y_test)
    rows.append((f"scikit-learn MLPRegressor ({epochs} epochs)", sk_metrics["rmse"],
                 sk_metrics["mae"], sk_metrics.get("r2"), sk_seconds, sk_seconds))
    mean = regression_metrics(np.full(len(y_test), y_train.mean()), y_test)
    rows.append(("constant guess (training mean)", mean["rmse"], mean["mae"], mean.get("r2"),
                 0.0, 0.0))
    print(f"\nMLP regression on diamonds: {len(y_train):,} train / {len(y_test):,} test rows, "
          f"{x_train.shape[1]} features, price {y_test.mean():,.0f} on average in test\n")
    print(format_table(["model", "rmse", "mae", "r2", "total s", "fit s"],
                       [(n, round(r, 1), round(a, 1), round(q, 4) if q is not None else None,
                         round(t, 1), round(f, 1)) for n, r, a, q, t, f in rows]))
    print_fit_times(ours.ranks)
    return [("mlp regression", r["rank"], r["peak_rss_mb"]) for r in ours.ranks]


def bench_cnn(spark, cfg, epochs: int) -> list[tuple]:
    import tensorflow as tf

    from models.cnn import FAMILY

    prepare(spark, cfg, "fashion_mnist")
    params = {**FAMILY.defaults, "epochs": epochs, "patience": epochs}
    ours = train(spark, cfg, "cnn", "fashion_mnist", params=params,
                 run_id=f"bench-{uuid.uuid4().hex[:8]}", name="bench_fashion_cnn")
    # Throughput over the epochs: a rank's fit can end later than its last epoch (tearing
    # down the input pipeline took up to a minute before the ranks stopped their readers
    # when training ends), which is not training; the table below shows both.
    fit_s = max(sum(r["epoch_seconds"]) for r in ours.ranks)
    hvd_ips = sum(r["train_samples"] for r in ours.ranks) / fit_s

    table = ours.model.training_table
    x_train, y_train = split_arrays(spark, table, "train")
    x_test, y_test = split_arrays(spark, table, "test")
    x_val, y_val = split_arrays(spark, table, "val")     # validated every epoch, like ours
    tf.keras.utils.set_random_seed(cfg.train.seed)
    model = FAMILY.trainer.build(dict(ours.model.params), x_train.shape[1], 10)
    model.compile(tf.keras.optimizers.Adam(params["learning_rate"]),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=params["batch_size"], epochs=epochs, verbose=0,
              validation_data=(x_val, y_val))
    plain_s = time.perf_counter() - start
    plain_ips = len(x_train) * epochs / plain_s
    plain_acc = float((model.predict(x_test, verbose=0).argmax(1) == y_test).mean())
    print(f"\nCNN on Fashion-MNIST: {len(y_train):,} train / {len(y_test):,} test images, "
          f"{epochs} epochs, batch {params['batch_size']}\n")
    print(format_table(["variant", "test accuracy", "epochs s", "images/s", "vs plain"],
                       [("lakeforge CNN, Horovod 2 ranks + Petastorm",
                         ours.model.metrics["accuracy"], round(fit_s, 1), int(hvd_ips),
                         round(hvd_ips / plain_ips, 3)),
                        ("same Keras model, one plain process", plain_acc, round(plain_s, 1),
                         int(plain_ips), 1.0)]))
    print_fit_times(ours.ranks)
    return [("cnn", r["rank"], r["peak_rss_mb"]) for r in ours.ranks]


def print_fit_times(ranks: list[dict]) -> None:
    """Where each Horovod rank's ``fit`` time went: before, during and after its epochs."""
    print("\nwhere each rank's fit time went (s)\n")
    print(format_table(["rank", "fit", "before epochs", "epochs", "after epochs", "each epoch"],
                       [(r["rank"], round(r["fit_seconds"], 1),
                         round(r["before_epochs_seconds"], 1), round(sum(r["epoch_seconds"]), 1),
                         round(r["after_epochs_seconds"], 1),
                         " ".join(f"{s:.1f}" for s in r["epoch_seconds"]))
                        for r in sorted(ranks, key=lambda r: r["rank"])]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["mlp", "mlp-regression", "cnn"], default=None)
    parser.add_argument("--mlp-epochs", type=int, default=5)
    parser.add_argument("--cnn-epochs", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg, spark = session(args.overrides)
    memory = []
    if args.only in (None, "mlp"):
        memory += bench_mlp(spark, cfg, args.mlp_epochs)
    if args.only in (None, "mlp-regression"):
        memory += bench_mlp_regression(spark, cfg, args.mlp_epochs)
    if args.only in (None, "cnn"):
        memory += bench_cnn(spark, cfg, args.cnn_epochs)
    pid = jvm_pid()
    print("\npeak resident memory (MiB)\n")
    print(format_table(["process", "peak RSS MiB"],
                       [("python driver (incl. plain-process peers)", round(peak_rss_mb(), 0)),
                        ("Spark JVM (driver + local executors)",
                         round(peak_rss_mb(pid), 0) if pid else None),
                        *[(f"{fam} rank {rank}", round(mb, 0)) for fam, rank, mb in memory]]))
    spark.stop()


if __name__ == "__main__":
    main()
