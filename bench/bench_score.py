"""Scoring benchmark: lakeforge's scorer against a per-row Python UDF and one-process
pandas predict, with the same model (flights_mlp from `make demo`) on its gold table.

The scorer and pandas score every row; the per-row UDF, at a few hundred rows/s, a
sample of the same rows (``--udf-rows``); ratios compare rows/s. The scorer and the
UDF write to Spark's `noop` sink, so their figures are the scoring pass; the
scorer's full run (Delta read and commit included) is shown too. The scorer and
pandas are both warmed up (model loaded, predict function traced) and timed as the
best of ``--repeats`` runs; pandas uses the fastest of a few ``predict`` batch sizes.

    make bench-score                      # needs `make demo` (or a trained flights_mlp)
    .venv/bin/python bench/bench_score.py --udf-rows 5000
"""

from __future__ import annotations

import argparse
import functools
import uuid

import numpy as np
from common import best_of, session, timed
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType

from lakehouse.render import format_table
from models.classifier.scoring import _OUT, arrow_batch_rows, cached_model, score_batches
from models.scoring import score
from models.store import ModelStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="flights_mlp")
    parser.add_argument("--udf-rows", type=int, default=5000, help="rows for the per-row UDF")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best counts")
    parser.add_argument("--copies", type=int, default=1,
                        help="score the gold rows this many times over (a larger table)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg, spark = session(args.overrides)
    keras_model, record = ModelStore(spark, cfg).load(args.model)
    gold = spark.table(record.training_table).select("row_id", "features")
    full = functools.reduce(lambda a, b: a.unionAll(b), [gold] * max(1, args.copies))
    full = full.repartition(spark.sparkContext.defaultParallelism).persist()
    n = full.count()
    sample = full.limit(args.udf_rows).repartition(2).persist()
    n_udf = sample.count()

    scorer = functools.partial(score_batches, artifact=record.artifact, loads=None)
    width = full.select(F.size("features")).first()[0]
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(arrow_batch_rows(width)))
    ours = best_of(lambda: full.mapInArrow(scorer, schema=_OUT)
                   .write.format("noop").mode("overwrite").save(), args.repeats)

    artifact = record.artifact

    @F.udf(IntegerType())
    def per_row(features):
        model = cached_model(artifact)
        return int(np.argmax(model.predict_on_batch(np.asarray([features], np.float32))[0]))

    udf_s = timed(lambda: sample.select(per_row("features")).write.format("noop")
                  .mode("overwrite").save())

    pdf = full.toPandas()
    x = np.stack(pdf.features.to_numpy()).astype(np.float32)
    pandas_s, pandas_batch = min(
        (best_of(lambda b=b: keras_model.predict(x, batch_size=b, verbose=0), args.repeats), b)
        for b in (20_000, 100_000, len(x)))

    total = gold.count()
    run = timed(lambda: score(spark, cfg, record.family, args.model,
                              run_id=f"bench-{uuid.uuid4().hex[:8]}"))
    rates = {"ours": n / ours, "udf": n_udf / udf_s, "pandas": n / pandas_s}
    print(f"\nscoring {args.model} v{record.version}: {n:,} rows ({n_udf:,} for the per-row "
          f"UDF); {spark.sparkContext.defaultParallelism} cores\n")
    print(format_table(
        ["scorer", "rows", "seconds", "rows/s", "vs per-row UDF", "vs pandas"],
        [("lakeforge mapInArrow, model cached per worker", n, round(ours, 3),
          int(rates["ours"]), round(rates["ours"] / rates["udf"], 1),
          round(rates["ours"] / rates["pandas"], 2)),
         ("per-row Python UDF", n_udf, round(udf_s, 2), int(rates["udf"]), 1.0,
          float(f"{rates['udf'] / rates['pandas']:.2g}")),
         (f"one-process pandas + Keras predict (batch {pandas_batch:,})", n,
          round(pandas_s, 3), int(rates["pandas"]), round(rates["pandas"] / rates["udf"], 1),
          1.0)]))
    print(f"\nfull run on all {total:,} rows of {record.training_table} "
          f"(read, score, Delta commit): {run:.1f} s, {int(total / run):,} rows/s")
    print("targets: >= 20x the per-row UDF, >= 0.5x one-process pandas")
    spark.stop()


if __name__ == "__main__":
    main()
