"""Live streams end to end: event-to-score latency and sustained points/s, 1 and 100 streams.

A Kafka broker of its own (the project's, on free ports) and a lake in a temporary
home; a stream data set ``live`` on a topic (``sensor``, ``seq``, ``v``: noisy sines).
Two RCF models are trained on a first part of 100 streams (``--trees``, ``--samples``,
``--shingle``; one with ``updates=true``). Then, for 1 and 100 streams and each model:

* **live**: the ingest and scoring queries run in one session as ``lakeforge stream
  ingest live --score MODEL`` runs them (a micro-batch every ``--trigger`` seconds) while
  a producer sends ``--rate`` points a second for ``--seconds``. A point's latency is
  from its Kafka record's timestamp (set when the producer sent it) to the commit of
  the ``predictions_rcf_stream`` version that holds its score: when a SQL client can
  see it. Printed: p50, p99 and the two queries' mean micro-batch times.
* **backlog**: ``--backlog`` points sent at once, then ingested (``--available-now``)
  and scored (``--available-now``): the scoring query's points/s, beside the batch
  scorer's (``score rcf``) on the gold shingles of every point so far.

Everything shares this machine's cores (the producer, the broker, Spark's driver and its
Python workers).

    make bench-stream-live
    .venv/bin/python bench/bench_stream_live.py --seconds 30 --streams 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml
from common import free_port, session
from pyspark.sql import functions as F

from lakehouse import kafka
from lakehouse.featuresets import build_features
from lakehouse.render import format_table
from lakehouse.stream import ingest_query, run_queries
from models.rcf.stream import score_query
from models.runner import train
from models.scoring import score


def points(prefix: str, streams: int, start: int, count: int, seed: int
           ) -> list[tuple[bytes, str]]:
    """``count`` points of each of ``streams`` noisy sines, in time order, as Kafka records."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(start, start + count):
        for s in range(streams):
            value = np.sin(t / 9 + s) + rng.normal(0, 0.05) + (4 if t % 997 == 500 else 0)
            sensor = f"{prefix}{s:03d}"
            out.append((sensor.encode(), json.dumps({"sensor": sensor, "seq": t,
                                                     "v": round(float(value), 6)})))
    return out


def commit_times(table: Path) -> dict[str, float]:
    """The commit time (epoch seconds) of each data file of a Delta table, by file name."""
    times = {}
    for log in sorted((table / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in log.read_text().splitlines() if line]
        stamp = next(a["commitInfo"]["timestamp"] for a in actions if "commitInfo" in a)
        for action in actions:
            if "add" in action:
                times[Path(action["add"]["path"]).name] = stamp / 1000
    return times


def latencies(spark, cfg, table: Path, topic: str, prefix: str) -> np.ndarray:
    """Seconds from each point's Kafka timestamp to the commit holding its score."""
    db = cfg.catalog.database
    committed = commit_times(table)
    preds = (spark.read.format("delta").load(str(table))
             .filter(F.col("stream_id").startswith(prefix))
             .select("stream_id", "t", F.col("_metadata.file_name").alias("file")))
    bronze = spark.table(f"{db}.bronze_live").select(
        F.col("sensor").alias("stream_id"), F.col("seq").alias("t"),
        F.regexp_extract("_source_file", r"/(\d+)$", 1).cast("int").alias("partition"),
        F.col("_record").alias("offset"))
    sent = (spark.read.format("kafka").option("kafka.bootstrap.servers", cfg.stream.bootstrap)
            .option("subscribe", topic).load()
            .select("partition", "offset", F.col("timestamp").cast("double").alias("sent")))
    rows = preds.join(bronze, ["stream_id", "t"]).join(sent, ["partition", "offset"]).collect()
    return np.asarray([committed[r.file] - r.sent for r in rows])


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,100", help="stream counts to run")
    parser.add_argument("--rate", type=float, default=100, help="points a second, in all")
    parser.add_argument("--seconds", type=float, default=60, help="how long the producer sends")
    parser.add_argument("--trigger", type=float, default=1, help="seconds between micro-batches")
    parser.add_argument("--backlog", type=int, default=20_000, help="points of the backlog run")
    parser.add_argument("--trees", type=int, default=50)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--shingle", type=int, default=8)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lakeforge-live-"))
    topic = "live"
    (tmp / "catalog").mkdir()
    (tmp / "catalog" / "live.yml").write_text(yaml.safe_dump({"datasets": {"live": {
        "description": "noisy sines arriving on Kafka", "kind": "stream",
        "roles": {"stream_id": "sensor", "order": "seq", "values": ["v"]},
        "source": {"kafka": {"topic": topic}, "format": "json",
                   "schema": "sensor STRING NOT NULL, seq BIGINT NOT NULL, v DOUBLE"},
        "silver": {"keys": ["sensor", "seq"]},
        "features": {"shingle_size": args.shingle}}}}))
    cfg, spark = session([f"home={tmp / 'home'}", f"catalog.dataset_dirs={tmp / 'catalog'}",
                          f"stream.kafka_server.port={free_port()}",
                          f"stream.kafka_server.controller_port={free_port()}",
                          f"stream.trigger_seconds={args.trigger}", *args.set])
    kafka.start(cfg)
    try:
        rows = run(spark, cfg, args, topic)
    finally:
        kafka.stop(cfg)
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.trees} trees x {args.samples} samples, shingle {args.shingle}; live: "
          f"{args.rate:g} points/s for {args.seconds:g} s, a micro-batch every {args.trigger:g} "
          f"s; backlog: {args.backlog:,} points; {cfg.spark.master}")
    print(format_table(["streams", "model", "latency p50 s", "p99 s", "max s",
                        "ingest batch s", "score batch s", "scoring points/s",
                        "batch scorer points/s"], rows))


def run(spark, cfg, args, topic: str) -> list[list]:
    """Train the two models, then the live and backlog runs of each (see the docstring)."""
    db = cfg.catalog.database
    kafka.send_records(cfg.stream.bootstrap, topic, points("w", 100, 0, 300, seed=0))
    run_queries([ingest_query(spark, cfg, "live")[0]], cfg, True)
    build_features(spark, cfg, "live")
    params = {"num_trees": args.trees, "num_samples_per_tree": args.samples,
              "shingle_size": args.shingle}
    models = {"updates off": train(spark, cfg, "rcf", "live", name="live_fixed",
                                   params=params).model.name,
              "updates on": train(spark, cfg, "rcf", "live", name="live_learning",
                                  params={**params, "updates": True}).model.name}
    table = Path(cfg.warehouse_dir) / f"{db}.db" / "predictions_rcf_stream"
    rows, seq = [], 300
    for count in (int(n) for n in args.streams.split(",")):
        for label, model in models.items():
            tag = f"{count}{model[5]}"                   # 1f, 1l, 100f, 100l
            prefix = f"s{tag}-"
            each = max(1, round(args.rate * args.seconds / count))
            stop = threading.Event()
            ingesting = ingest_query(spark, cfg, "live")[0]
            scoring = score_query(spark, cfg, model)
            runner = threading.Thread(target=run_queries, args=([ingesting, scoring], cfg,
                                                                False, stop))
            runner.start()
            time.sleep(10)                               # both queries started
            kafka.send_records(cfg.stream.bootstrap, topic,
                               points(prefix, count, seq, each, seed=count), args.rate)
            expected = count * (each - (args.shingle - 1))
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and spark.table(f"{db}.predictions_rcf_stream") \
                    .filter(F.col("stream_id").startswith(prefix)).count() < expected:
                time.sleep(1)
            progress = {q.name: q.recentProgress for q in spark.streams.active}
            stop.set()
            runner.join()
            lat = latencies(spark, cfg, table, topic, prefix)
            batch_s = {name: np.mean([p.batchDuration / 1000 for p in ps
                                      if p.numInputRows] or [np.nan])
                       for name, ps in progress.items()}
            for name, ps in progress.items():
                parts = [p.durationMs for p in ps if p.numInputRows]
                print(f"{name}: {len(parts)} micro-batches; mean ms " + ", ".join(
                    f"{k} {np.mean([d.get(k, 0) for d in parts]):.0f}"
                    for k in sorted({k for d in parts for k in d})), flush=True)
            # The backlog: sent at once, then ingested and scored, each until read.
            backlog = f"b{tag}-"
            kafka.send_records(cfg.stream.bootstrap, topic,
                               points(backlog, count, seq, max(args.shingle,
                                                               args.backlog // count), seed=1))
            run_queries([ingest_query(spark, cfg, "live")[0]], cfg, True)
            start = time.perf_counter()
            run_queries([score_query(spark, cfg, model)], cfg, True)
            scoring_s = time.perf_counter() - start
            scored = spark.table(f"{db}.predictions_rcf_stream").filter(
                F.col("stream_id").startswith(backlog)).count()
            build_features(spark, cfg, "live")
            start = time.perf_counter()
            result = score(spark, cfg, "rcf", model)
            batch_rate = result.rows / (time.perf_counter() - start)
            rows.append([count, label, f"{np.percentile(lat, 50):.2f}",
                         f"{np.percentile(lat, 99):.2f}", f"{lat.max():.2f}",
                         f"{batch_s.get('lakeforge_ingest_live', np.nan):.2f}",
                         f"{batch_s.get(f'lakeforge_score_{model}', np.nan):.2f}",
                         f"{scored / scoring_s:,.0f}", f"{batch_rate:,.0f}"])
            print(format_table(["streams", "model", "p50", "p99", "max", "ingest batch s",
                                "score batch s", "scoring points/s", "batch points/s"],
                               rows[-1:]), flush=True)
    return rows


if __name__ == "__main__":
    main()
