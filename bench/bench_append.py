"""Where a small Delta append's time goes: the exactly-once token and the catalog.

Every write lakeforge makes to bronze, quarantine, quality and its other ops tables is
an append with Delta's idempotent-write token (``txnAppId``/``txnVersion``,
:func:`lakehouse.delta.append_once`), through the catalog (``saveAsTable``). On small
batches such fixed costs decide how fast ingest is. This times the same 100-row append
four ways on one warm session, in a database of its own under ``LAKEFORGE_HOME``:
through the catalog or by path, with or without the token. The first append of each
way warms it up and is left out of the median.

    .venv/bin/python bench/bench_append.py                # 8 appends each way
    .venv/bin/python bench/bench_append.py --appends 20 --set spark.shuffle_partitions=2
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import uuid

from common import session, timed

from lakehouse.render import format_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", type=int, default=8, help="appends per way (default 8)")
    parser.add_argument("--rows", type=int, default=100, help="rows per append (default 100)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as for lakeforge")
    args = parser.parse_args()
    cfg, spark = session(args.set)
    db = f"bench_append_{uuid.uuid4().hex[:8]}"
    spark.sql(f"CREATE DATABASE {db}")
    table = f"{db}.t"
    spark.sql(f"CREATE TABLE {table} (a BIGINT, b STRING) USING delta")
    location = spark.sql(f"DESCRIBE DETAIL {table}").first()["location"]
    rows = spark.range(args.rows).selectExpr("id AS a", "cast(id AS string) AS b")
    tokens = itertools.count()

    def append(by_name: bool, token: bool) -> None:
        writer = rows.write.format("delta").mode("append")
        if token:
            writer = writer.option("txnAppId", f"bench-{next(tokens)}").option("txnVersion", 0)
        if by_name:
            writer.saveAsTable(table)
        else:
            writer.save(location)

    ways = [("catalog, token (lakeforge's append_once)", True, True),
            ("path, token", False, True), ("catalog, no token", True, False),
            ("path, no token", False, False)]
    medians = {}
    try:
        for name, by_name, token in ways:
            seconds = [timed(lambda b=by_name, t=token: append(b, t))
                       for _ in range(args.appends + 1)]
            medians[name] = statistics.median(seconds[1:])
    finally:
        spark.sql(f"DROP DATABASE {db} CASCADE")
    fastest = min(medians.values())
    print(f"\n{args.rows}-row Delta appends, median of {args.appends} after one warm-up "
          f"(master {cfg.spark.master}, shuffle partitions {cfg.spark.shuffle_partitions})\n")
    print(format_table(["append", "median s", "vs fastest"],
                       [(name, round(s, 3), round(s / fastest, 2))
                        for name, s in medians.items()]))


if __name__ == "__main__":
    main()
