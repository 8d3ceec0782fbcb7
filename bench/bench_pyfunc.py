"""Scoring benchmark: lakeforge's scorer against MLflow's spark_udf of the same model.

``mlflow.pyfunc.spark_udf(spark, uri, env_manager="local")`` is how MLflow users score a
registered model on Spark. For each model (by default the demo's flights_mlp,
fashion_mnist_cnn and corpus_word2vec), the model's folder is saved as the pyfunc
training logs (``models.pyfunc.save``), and both score the same rows with the same
Spark settings: lakeforge's executor code through ``mapInArrow`` / ``mapInPandas`` as
``lakeforge score`` runs it, and the pyfunc through ``spark_udf`` with the scorer's
columns as its struct result. Both write to Spark's ``noop`` sink; each is the best of
``--repeats`` runs after a warm-up. The target: lakeforge at least 2x spark_udf's rows/s.

    make bench-pyfunc                         # needs `make demo`
    .venv/bin/python bench/bench_pyfunc.py --models flights_mlp --copies 2
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path

from common import best_of, session
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakehouse.lakefs import LakeFS
from lakehouse.render import format_table
from models import pyfunc
from models.classifier.scoring import _OUT, arrow_batch_rows, score_batches
from models.store import ModelStore
from models.word2vec.scoring import _OUT as WORD_OUT
from models.word2vec.scoring import neighbour_batches

CLASSIFIER = "prediction int, probability float, probabilities array<float>, value float"
WORDS = "word string, vector array<float>, neighbours array<string>, similarities array<float>"


def noop(df: DataFrame) -> None:
    df.write.format("noop").mode("overwrite").save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["flights_mlp", "fashion_mnist_cnn", "corpus_word2vec"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best counts")
    parser.add_argument("--copies", type=int, default=1,
                        help="score the input rows this many times over (a larger input)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg, spark = session(args.overrides)
    import mlflow.pyfunc

    lake, results = LakeFS.of(cfg), []
    scratch = Path(tempfile.mkdtemp(prefix="bench-pyfunc-"))
    for name in args.models:
        record = ModelStore(spark, cfg).get(name)
        folder = lake.fetch(record.artifact)
        options = {"k": int(record.params.get("neighbours", 10))} \
            if record.family == "word2vec" else {}
        saved = scratch / name
        pyfunc.save(saved, record.family, Path(folder), None, options)
        if record.family in ("mlp", "cnn"):
            rows = spark.table(record.training_table).select("row_id", "features")
            width = rows.select(F.size("features")).first()[0]
            spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch",
                           str(arrow_batch_rows(width)))
            ours_fn = functools.partial(score_batches, artifact=folder, loads=None)
            result = CLASSIFIER
        elif record.family == "word2vec":
            vocab = record.training_table.replace("_corpus", "_vocab")
            rows = spark.table(vocab).select("word")
            ours_fn = functools.partial(neighbour_batches, artifact=folder,
                                        k=options["k"], loads=None)
            result = WORDS
        else:
            print(f"{name}: {record.family} has no pyfunc yet; skipped")
            continue
        rows = functools.reduce(DataFrame.unionAll, [rows] * max(1, args.copies))
        rows = rows.repartition(spark.sparkContext.defaultParallelism).persist()
        n = rows.count()
        if record.family == "word2vec":
            ours_df, column = rows.mapInPandas(ours_fn, schema=WORD_OUT), "word"
        else:
            ours_df, column = rows.mapInArrow(ours_fn, schema=_OUT), "features"
        udf = mlflow.pyfunc.spark_udf(spark, str(saved), result_type=result,
                                      env_manager="local")
        peer_df = rows.select(udf(F.struct(column)).alias("p"))
        ours = best_of(functools.partial(noop, ours_df), args.repeats)
        peer = best_of(functools.partial(noop, peer_df), args.repeats)
        rows.unpersist()
        results.append((name, record.family, n, f"{n / ours:,.0f}", f"{n / peer:,.0f}",
                        f"{peer / ours:.2f}x"))
    print(format_table(["model", "family", "rows", "lakeforge rows/s", "spark_udf rows/s",
                        "lakeforge / spark_udf"], results))


if __name__ == "__main__":
    main()
