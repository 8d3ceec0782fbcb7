"""``lakeforge demo``: the pipeline end to end on the real data and embedded defaults."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.report import write_report
from lakehouse import kafka
from lakehouse.catalog import create_views, list_tables, run_sql
from lakehouse.config import Config
from lakehouse.curate import curate
from lakehouse.dataset_check import plan_dataset
from lakehouse.datasets import parse_datasets
from lakehouse.featuresets import build_features
from lakehouse.ingest import ingest
from lakehouse.kafka import KafkaError
from lakehouse.render import format_table
from lakehouse.stream import ingest_query, replay, run_queries
from models.rcf.stream import score_query
from models.tracking import safe_uri, tracking_uri

log = logging.getLogger(__name__)

# (family, feature set, parameter overrides): short runs that still learn something.
DEMO_MODELS: tuple[tuple[str, str, dict], ...] = (
    ("mlp", "breast_cancer", {"epochs": 15, "batch_size": 32}),
    ("mlp", "flights", {"epochs": 3, "batch_size": 512, "hidden": [64, 32]}),
    ("mlp", "diamonds", {"epochs": 8, "batch_size": 256, "hidden": [64, 32]}),
    ("cnn", "fashion_mnist", {"epochs": 2}),
    ("word2vec", "corpus", {}),
    ("deepar", "us_employment", {"epochs": 10}),
    ("rcf", "mitdb", {}),
    ("rcf", "kdd_tsad_135", {}),
)
# Metrics shown per family in the demo's model table.
HEADLINE = {
    "mlp": ("accuracy", "roc_auc", "rmse", "r2"), "cnn": ("accuracy", "roc_auc"),
    "word2vec": ("wordsim353_spearman", "analogy_accuracy"),
    "deepar": ("deepar_nd", "deepar_wql"), "rcf": ("roc_auc", "pr_auc", "point_pr_auc"),
}


DEMO_QUERIES = (
    # Which quality rules caught most records, over every stage and batch.
    "SELECT dataset, stage, rule, sum(checked) AS checked, sum(quarantined) AS quarantined"
    " FROM ops_quality WHERE quarantined + warned + failed > 0 GROUP BY 1, 2, 3"
    " ORDER BY quarantined DESC LIMIT 10",
    "SELECT model_name, model_version, count(*) AS rows, round(avg(probability), 3) AS confidence"
    " FROM predictions_mlp_latest GROUP BY 1, 2 ORDER BY 1",
    "SELECT f.origin, count(*) AS flights, round(avg(p.probabilities[1]), 3) AS p_delayed,"
    " round(avg(CAST(f.arr_delay > 15 AS INT)), 3) AS delayed FROM predictions_mlp_latest p"
    " JOIN silver_flights f ON p.row_id = f.row_id WHERE p.model_name = 'flights_mlp'"
    " GROUP BY 1 ORDER BY 1",
    # The regression's predicted prices against the real ones, per cut.
    "SELECT d.cut, count(*) AS stones, round(avg(d.price)) AS price,"
    " round(avg(p.value)) AS predicted, round(avg(abs(p.value - d.price))) AS abs_error"
    " FROM predictions_mlp_latest p JOIN silver_diamonds d ON p.row_id = d.row_id"
    " WHERE p.model_name = 'diamonds_mlp' GROUP BY 1 ORDER BY 2 DESC",
    "SELECT name, version, family, training_table, training_version,"
    " get_json_object(metrics, '$.accuracy') AS accuracy FROM models_latest ORDER BY name",
    # Today's anomalies: the alerts of the newest RCF models in runs scored today.
    "SELECT model_name, stream_id, t, round(point_score, 1) AS point_score,"
    " round(alert_threshold, 1) AS alert_threshold FROM predictions_rcf_latest"
    " WHERE alert AND to_date(scored_at) = current_date() ORDER BY point_score DESC LIMIT 10",
    # The latest forecasts: next three months per series with the 10-90 % band.
    "SELECT series_id, period, round(q10) AS q10, round(q50) AS median, round(q90) AS q90,"
    " round(get_json_object(model_metrics, '$.deepar_nd'), 3) AS model_nd"
    " FROM predictions_deepar_latest WHERE step <= 3 ORDER BY series_id, step LIMIT 12",
    "SELECT word, slice(neighbours, 1, 5) AS nearest FROM predictions_word2vec_latest"
    " WHERE word IN ('king', 'water', 'god', 'paris', 'war') ORDER BY word",
)


# The live part: mitdb replayed through the local Kafka broker as a stream of its own,
# ingested and scored as it arrives by the demo's mitdb model, then a spike sent.
LIVE_MODEL = "mitdb_rcf"
LIVE_ENTRY = {"ecg_live": {
    "description": "the demo's live ECG: mitdb replayed through Kafka",
    "kind": "stream", "roles": {"stream_id": "stream_id", "order": "t", "values": ["value"]},
    "source": {"kafka": {"topic": "lakeforge-demo-ecg"}, "format": "json",
               "schema": "stream_id STRING NOT NULL, split STRING, t BIGINT NOT NULL, "
                         "value DOUBLE, label INT"},
    "silver": {"keys": ["stream_id", "t"]}}}
LIVE_QUERY = ("SELECT stream_id, t, round(score, 1) AS point_score, round(threshold, 1) AS "
              "threshold, alerted_at FROM ops_alerts WHERE dataset = 'ecg_live' "
              "ORDER BY t DESC LIMIT 5")


class _Steps:
    """The demo's numbered steps, each logged as it starts and ends and timed for the end."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.times: list[tuple[str, float]] = []

    def run(self, what: str, fn: Callable[[], object]) -> object:
        n = len(self.times) + 1
        start = time.monotonic()
        log.info("[%d/%d] %s ...", n, self.total, what)
        out = fn()
        seconds = time.monotonic() - start
        log.info("[%d/%d] %s done in %.0f s", n, self.total, what, seconds)
        self.times.append((what, seconds))
        return out

    def table(self, elapsed: float) -> str:
        """Each step's seconds and share of the whole demo (the rest: start, tables, queries)."""
        rest = elapsed - sum(s for _, s in self.times)
        rows = [(f"{i}. {what}", f"{s:.1f}", f"{s / elapsed:.0%}")
                for i, (what, s) in enumerate([*self.times, ("tables, SQL queries, report",
                                                              rest)], start=1)]
        return format_table(["step", "seconds", "share"], rows)


def run_demo(spark: SparkSession, cfg: Config, batch: str = "demo", train: bool = True) -> None:
    """Ingest and curate every real source, build features, train the models, report.

    Args:
        spark: the session.
        cfg: configuration.
        batch: batch id; re-running with the same id changes no table.
        train: whether to build features and train (``--no-train`` skips it).
    """
    from models.runner import train as train_model
    from models.scoring import score

    start = time.monotonic()
    names = list(cfg.datasets)
    feature_sets = sorted({d for _, d, _ in DEMO_MODELS})
    steps = _Steps(2 + (3 + len(DEMO_MODELS) if train else 0))
    steps.run(f"ingest {len(names)} sources (batch {batch})",
              lambda: [ingest(spark, cfg, [n], batch) for n in names])
    steps.run(f"curate {len(names)} sources",
              lambda: [curate(spark, cfg, [n], batch) for n in names])
    results = []
    if train:
        log.info("feature sets: %s", ", ".join(feature_sets))
        steps.run(f"build {len(feature_sets)} feature sets",
                  lambda: [build_features(spark, cfg, f) for f in feature_sets])
        for family, dataset, params in DEMO_MODELS:
            results.append(steps.run(f"train {family} on {dataset}",
                                     lambda f=family, d=dataset, p=params:
                                     train_model(spark, cfg, f, d, params=p)))
    if results:
        steps.run("score the gold tables with every model",
                  lambda: [score(spark, cfg, r.model.family, r.model.name) for r in results])
        create_views(spark, cfg)
        live = steps.run(f"a live stream: mitdb through Kafka, scored by {LIVE_MODEL}",
                         lambda: live_stream(spark, cfg))
    infos = list_tables(spark, cfg)
    print()
    print(format_table(["table", "rows", "version"], [(t.name, t.rows, t.version) for t in infos]))
    if results:
        print()
        print(format_table(
            ["model", "version", "family", "trained on", "metrics", "artifact"],
            [(m.name, m.version, m.family, f"{m.training_table} v{m.training_version}",
              ", ".join(f"{k} {m.metrics[k]:.3f}" for k in HEADLINE.get(m.family, ())
                        if k in m.metrics), m.artifact) for m in (r.model for r in results)]))
    queries = [(q, run_sql(spark, cfg, q)) for q in DEMO_QUERIES] if results else []
    for sql, result in queries:
        print(f"\n{sql}\n{result}")
    if results and live:
        print(f"\n{live}\n{LIVE_QUERY}\n{run_sql(spark, cfg, LIVE_QUERY)}")
    if results:
        page = write_report(cfg, [r.model for r in results], queries)
        print(f"\nreport:    {page}")
    print(f"\nwarehouse: {cfg.warehouse_dir}")
    print(f"models:    {cfg.model_dir}")
    if cfg.tracking.enabled:
        print(f"runs:      {safe_uri(tracking_uri(cfg))} (MLflow; `make mlflow-ui` serves its "
              f"UI on http://{cfg.tracking.ui_host}:{cfg.tracking.ui_port}/)")
    elapsed = time.monotonic() - start
    print(f"\n{steps.table(elapsed)}")
    print(f"demo finished in {elapsed:.0f} s (a second run with nothing new skips each "
          "step's work: every job finds its input unchanged)")


def live_stream(spark: SparkSession, cfg: Config, wait: float = 300) -> str:
    """The mitdb stream replayed through Kafka, scored as it arrives, then a spike sent.

    Starts this home's Kafka broker unless it runs (and stops it after). The stream's
    ingest and scoring queries run as ``lakeforge stream ingest ecg_live --score
    mitdb_rcf`` runs them, a micro-batch a second, while mitdb is replayed into the topic;
    once it is scored, one more point far above the signal is sent, and the demo waits
    for its alert in ``ops_alerts``. A second demo finds the stream already there and
    runs the queries once over what the topic holds (nothing new).

    Returns:
        What happened, in a line (empty when there is no broker to run).
    """
    started = not kafka.running(cfg)
    if started:
        try:
            kafka.start(cfg)
        except KafkaError as exc:
            log.warning("the live stream is left out: %s", exc)
            return ""
    entries, problems = parse_datasets(LIVE_ENTRY)
    assert not problems, problems
    cfg = dataclasses.replace(
        cfg, datasets={**cfg.datasets, **entries},
        stream=dataclasses.replace(cfg.stream, trigger_seconds=1, curate_seconds=60))
    topic = LIVE_ENTRY["ecg_live"]["source"]["kafka"]["topic"]
    db = cfg.catalog.database
    try:
        ingesting = ingest_query(spark, cfg, "ecg_live")[0]
        scoring = score_query(spark, cfg, LIVE_MODEL, dataset="ecg_live")
        alerts = spark.table(f"{db}.ops_alerts").filter("dataset = 'ecg_live'")
        bronze = plan_dataset(spark, cfg.datasets["ecg_live"]).bronze.full_name(db)
        if spark.table(bronze).limit(1).count():
            run_queries([ingesting, scoring], cfg, available_now=True)
            return f"ecg_live: already streamed; {alerts.count():,} alert(s) so far"
        kafka.ensure_topic(cfg.stream.bootstrap, topic)
        stop, failed = threading.Event(), []

        def live() -> None:
            try:
                run_queries([ingesting, scoring], cfg, False, stop)
            except Exception as exc:                    # raised in the demo's own thread
                failed.append(exc)

        running = threading.Thread(target=live, daemon=True)
        running.start()
        try:
            happened = _spike_alerted(spark, cfg, topic, alerts, running, wait)
        finally:
            stop.set()
            running.join()
        if failed:
            raise failed[0]
        return happened
    finally:
        if started:
            kafka.stop(cfg)


def _spike_alerted(spark: SparkSession, cfg: Config, topic: str, alerts, running, wait: float
                   ) -> str:
    """Replay mitdb, wait for its scores, send a spike, wait for its alert; what happened."""
    db = cfg.catalog.database
    sent = replay(spark, cfg, "mitdb", topic, rate=2000)
    silver = plan_dataset(spark, cfg.datasets["mitdb"]).silver.full_name(db)
    last = spark.table(silver).filter("stream_id = 'mitdb'").orderBy(F.desc("t")).first()
    scored = spark.table(f"{db}.predictions_rcf_stream").filter(
        F.col("model_name") == LIVE_MODEL)
    deadline = time.monotonic() + wait
    while scored.filter(F.col("t") == last.t).count() == 0:
        if not running.is_alive() or time.monotonic() > deadline:
            return f"ecg_live: {sent:,} point(s) sent; not all scored within {wait:.0f} s"
        time.sleep(1)
    spike = {"stream_id": "mitdb", "split": last.split, "t": last.t + 1,
             "value": last.value + 5.0, "label": 1}
    before = alerts.filter(F.col("t") == spike["t"]).count()
    kafka.send_records(cfg.stream.bootstrap, topic, [(b"mitdb", json.dumps(spike))])
    start = time.monotonic()
    while alerts.filter(F.col("t") == spike["t"]).count() == before:
        if not running.is_alive() or time.monotonic() > deadline:
            return (f"ecg_live: {sent:,} point(s) scored live; the spike at t={spike['t']} "
                    f"raised no alert within {wait:.0f} s")
        time.sleep(0.5)
    return (f"ecg_live: {sent:,} point(s) replayed and scored live; a spike sent at "
            f"t={spike['t']} was in ops_alerts {time.monotonic() - start:.0f} s later")
