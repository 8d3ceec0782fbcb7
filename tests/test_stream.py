"""Streams from a real Kafka broker (started once for this file) into bronze and silver.

Structured Streaming reads the topic through Spark's Kafka connector; each micro-batch
is parsed, quarantined, appended to bronze and curated into silver. The tests check
what the tables hold against the records sent, across re-runs and a kill -9.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from pyspark.sql import functions as F

from lakehouse import kafka
from lakehouse.catalog import create_views
from lakehouse.config import Config, load_config
from lakehouse.curate import curate
from lakehouse.datasets import parse_datasets
from lakehouse.errors import ConfigError, SourceError
from lakehouse.featuresets import build_features
from lakehouse.ingest import ingest
from lakehouse.stream import StreamQuery, ingest_sources, replay, run_queries, stream_ingest
from models.rcf.stream import score_query, stream_score_rcf
from models.runner import train
from models.scoring import score
from models.store import ModelNotFoundError
from tests.helpers import free_port, lakeforge, small_job_env, succeeded, with_datasets

SCHEMA = "pump STRING NOT NULL, ts TIMESTAMP, value DOUBLE"
RULES = [{"name": "value_positive", "expr": "value > 0", "on_fail": "quarantine"}]


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> str:
    """A Kafka broker of this module's own (free ports, its own home); its bootstrap."""
    home = tmp_path_factory.mktemp("kafka-home")
    cfg = load_config([f"home={home}", f"stream.kafka_server.port={free_port()}",
                       f"stream.kafka_server.controller_port={free_port()}"], environ={})
    address = kafka.start(cfg)
    yield address
    kafka.stop(cfg)


def entry(topic: str, bootstrap: str, fmt: str = "json", **source) -> dict:
    return {"source": {"kafka": {"topic": topic, "bootstrap": bootstrap}, "format": fmt,
                       "schema": SCHEMA, **source},
            "silver": {"keys": ["pump", "ts"], "rules": RULES}}


def readings(start: int, count: int) -> list[dict]:
    """Pump readings: three pumps, one a minute each, values start * 10 + i."""
    return [{"pump": f"p{i % 3}", "ts": f"2026-12-06 {10 + i // 60 % 10}:{i % 60:02d}:00",
             "value": float(i)} for i in range(start, start + count)]


def send(tmp_path: Path, bootstrap: str, topic: str, lines: list[str]) -> None:
    path = tmp_path / f"{topic}-{time.monotonic_ns()}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert kafka.send(bootstrap, topic, [path]) == len(lines)


def counts(spark, cfg: Config, name: str) -> dict[str, int]:
    db = cfg.catalog.database
    bronze = spark.table(f"{db}.bronze_{name}")
    return {
        "bronze": bronze.count(),
        "distinct offsets": bronze.select("_source_file", "_record").distinct().count(),
        "silver": spark.table(f"{db}.silver_{name}").count(),
        "quarantined": spark.table(f"{db}.ops_quarantine")
        .filter(f"source = '{name}' AND stage = 'ingest'").count(),
    }


def test_stream_ingest_quarantines_with_reasons_curates_and_reruns_add_nothing(
        spark, cfg, broker, tmp_path):
    topic = f"pumps_{cfg.catalog.database}"
    cfg = with_datasets(cfg, {"pumps": entry(topic, broker)})
    good = readings(0, 40)
    bad = ["not json", json.dumps({"ts": "2026-12-06 10:00:00", "value": 1.0}),
           json.dumps({"pump": "p1", "ts": "2026-12-06 10:00:00", "value": "abc"})]
    send(tmp_path, broker, topic, [json.dumps(r) for r in good[:20]] + bad
         + [json.dumps(r) for r in good[20:]])

    first = stream_ingest(spark, cfg, "pumps", available_now=True)
    assert (first.read, first.bronze, first.quarantined) == (43, 40, 3)
    # value 0.0 breaks the rule; one row per (pump, ts), every reading has its own.
    assert counts(spark, cfg, "pumps") == {"bronze": 40, "distinct offsets": 40,
                                           "silver": 39, "quarantined": 3}
    db = cfg.catalog.database
    reasons = {r.record: (r.reason, r.raw, r.source_file) for r in spark.table(
        f"{db}.ops_quarantine").filter("stage = 'ingest'").collect()}
    assert reasons[20][0].startswith("not valid JSON") and reasons[20][1] == "not json"
    assert reasons[21][0] == "column 'pump': value is missing"
    assert reasons[22][0] == "column 'value': \"abc\" is not a valid double"
    assert reasons[22][1] == bad[2] and reasons[22][2] == f"kafka://{topic}/0"
    quality = spark.table(f"{db}.ops_quality").filter("dataset = 'pumps'")
    ingested = quality.filter("stage = 'ingest'").collect()
    assert [(r.batch, r.checked, r.passed, r.quarantined) for r in ingested] == \
        [(first.batches[0], 43, 40, 3)]
    rule = quality.filter("stage = 'curate' AND rule = 'value_positive'").collect()
    assert [(r.checked, r.quarantined) for r in rule] == [(40, 1)]

    again = stream_ingest(spark, cfg, "pumps", available_now=True)
    assert again.batches == [] and counts(spark, cfg, "pumps")["bronze"] == 40

    later = readings(40, 10) + [{**readings(5, 1)[0], "value": 99.0}]   # one update
    send(tmp_path, broker, topic, [json.dumps(r) for r in later])
    third = stream_ingest(spark, cfg, "pumps", available_now=True)
    assert (third.read, third.silver_new, third.silver_updated) == (11, 10, 1)
    assert counts(spark, cfg, "pumps") == {"bronze": 51, "distinct offsets": 51,
                                           "silver": 49, "quarantined": 3}
    updated = spark.table(f"{db}.silver_pumps").filter("pump = 'p2' AND value = 99.0")
    assert updated.count() == 1


def test_csv_values_and_a_wrong_source_kind_stop_with_a_named_error(
        spark, cfg, broker, tmp_path):
    topic = f"csv_{cfg.catalog.database}"
    cfg = with_datasets(cfg, {"pumps_csv": entry(topic, broker, fmt="csv"),
                              "pumps_files": {"source": {"files": str(tmp_path), "format": "csv",
                                                         "schema": SCHEMA}}})
    send(tmp_path, broker, topic, ["p1,2026-12-06 10:00:00,1.5", "p1,2026-12-06 10:01:00",
                                   "p2,2026-12-06 10:00:00,x"])
    result = stream_ingest(spark, cfg, "pumps_csv", available_now=True)
    assert (result.bronze, result.quarantined) == (1, 2)
    with pytest.raises(SourceError, match="stream ingest pumps_csv"):
        ingest(spark, cfg, ["pumps_csv"], "b1")
    nowhere = with_datasets(cfg, {"pumps_csv": entry(topic, f"127.0.0.1:{free_port()}", "csv")})
    with pytest.raises(SourceError, match="no Kafka broker answers at 127.0.0.1:"):
        stream_ingest(spark, nowhere, "pumps_csv", available_now=True)
    send(tmp_path, broker, topic, ["p3,2026-12-06 10:02:00,2.5"])
    (landing := tmp_path / "landing").mkdir()
    (landing / "a.csv").write_text("p9,2026-12-06 10:00:00,1.0\n")
    cfg = with_datasets(cfg, {"pumps_files": {"source": {"files": str(landing),
                                                         "format": "csv", "schema": SCHEMA}}})
    batches, streams = ingest_sources(spark, cfg, ["pumps_files", "pumps_csv"], "b1")
    assert [(r.source, r.batch, r.bronze) for r in batches] == [("pumps_files", "b1", 1)]
    assert [(r.dataset, r.bronze, r.silver_new) for r in streams] == [("pumps_csv", 1, 1)]
    tabled = with_datasets(cfg, {"pumps_table": {"source": {"table": f"{cfg.catalog.database}"
                                                                       ".bronze_pumps_files"}}})
    with pytest.raises(SourceError, match="not a Kafka topic or a landing folder: ingest it "
                                          "with `lakeforge ingest pumps_table`"):
        stream_ingest(spark, tabled, "pumps_table", available_now=True)
    _, problems = parse_datasets({"bad": {"source": {"kafka": {"topic": topic, "from": "x"},
                                                     "format": "parquet", "schema": SCHEMA}}})
    assert problems == ["datasets.bad.source.kafka.from: unknown key; known keys here: topic, "
                        "bootstrap, starting_offsets",
                        "datasets.bad.source.format: parquet: a kafka source's record values "
                        "are json or csv"]


def test_a_landing_folder_streams_new_files_once_with_malformed_records_quarantined(
        spark, cfg, tmp_path):
    """Files landing in a folder, streamed: each file is ingested once (whether the stream
    or a batch `lakeforge ingest` claimed it), malformed lines are quarantined with the
    file, line and reason, and silver is curated per micro-batch."""
    landing = tmp_path / "landing"
    (landing / "2026-12-06").mkdir(parents=True)
    cfg = with_datasets(cfg, {"pumps_landing": {
        "source": {"files": str(landing), "format": "csv", "options": {"header": True},
                   "schema": SCHEMA},
        "silver": {"keys": ["pump", "ts"], "rules": RULES}}})
    header = "pump,ts,value"
    (landing / "2026-12-06" / "a.csv").write_text("\n".join([
        header, "p1,2026-12-06 10:00:00,1.5", "p1,2026-12-06 10:01:00,oops",
        ",2026-12-06 10:02:00,2.0", "p2,2026-12-06 10:00:00,-1.0"]) + "\n")
    first = stream_ingest(spark, cfg, "pumps_landing", available_now=True)
    assert (first.read, first.bronze, first.quarantined) == (4, 2, 2)
    assert (first.silver_new, first.rule_quarantined) == (1, 1)
    db = cfg.catalog.database
    reasons = {(Path(r.source_file).name, r.record): r.reason for r in spark.table(
        f"{db}.ops_quarantine").filter("source = 'pumps_landing' AND stage = 'ingest'").collect()}
    assert set(reasons) == {("a.csv", 1), ("a.csv", 2)}      # data rows, from 0, as batch
    assert "oops" in reasons[("a.csv", 1)] and "pump" in reasons[("a.csv", 2)]
    assert stream_ingest(spark, cfg, "pumps_landing", available_now=True).batches == []

    (landing / "b.csv").write_text(header + "\np3,2026-12-06 10:00:00,3.0\n")
    batch = ingest(spark, cfg, ["pumps_landing"], "manual")       # a batch run claims b.csv
    assert [r.bronze for r in batch] == [1]
    (landing / "2026-12-06" / "c.csv").write_text(header + "\np4,2026-12-06 10:00:00,4.0\n")
    second = stream_ingest(spark, cfg, "pumps_landing", available_now=True)
    assert (second.read, second.bronze) == (1, 1)                  # c.csv only
    claims = spark.table(f"{db}.ops_ingest_files").filter("dataset = 'pumps_landing'").collect()
    assert sorted(Path(r.path).name for r in claims) == ["a.csv", "b.csv", "c.csv"]
    assert spark.table(f"{db}.bronze_pumps_landing").count() == 4
    assert sorted(r.pump for r in spark.table(f"{db}.silver_pumps_landing").collect()) == [
        "p1", "p3", "p4"]


ECG = {"kind": "stream", "roles": {"stream_id": "sensor", "order": "seq", "values": ["v"]},
       "silver": {"keys": ["sensor", "seq"]}, "features": {"shingle_size": 4}}
# After a kill: the rest of the stream ingested and scored (the scorer last, so that it
# sees all of bronze), the gold shingles rebuilt and scored in batch by the same model.
RESUME = """
from lakehouse.config import load_config
from lakehouse.featuresets import build_features
from lakehouse.session import build_spark
from lakehouse.stream import ingest_query, run_queries
from models.rcf.stream import score_query
from models.scoring import score

cfg = load_config()
spark = build_spark(cfg)
ingesting, _ = ingest_query(spark, cfg, "ecg")
run_queries([ingesting, score_query(spark, cfg, "ecg_rcf", dataset="ecg")], cfg, True)
build_features(spark, cfg, "ecg")
print("batch run", score(spark, cfg, "rcf", "ecg_rcf").run_id)
"""


def _ecg(start: int, count: int, spike: int | None = None) -> list[str]:
    """Two sensors' readings (a noisy sine) as JSON records; sensor a spikes at ``spike``."""
    rng = np.random.default_rng(start)
    return [json.dumps({"sensor": sensor, "seq": t, "v": round(
        np.sin(t / 7) + rng.normal(0, 0.05) + (5 if (sensor, t) == ("a", spike) else 0), 6)})
        for t in range(start, start + count) for sensor in ("a", "b")]


def test_a_live_stream_killed_midway_resumes_without_a_lost_or_doubled_point(
        spark, broker, tmp_path):
    """The newcomer's path on the embedded defaults: a pipeline ingests a Kafka stream and
    trains an RCF model; `lakeforge stream ingest --score` ingests and scores live
    (micro-batches of 100 records, one bronze file each) and is killed -9 midway through
    both; the resumed stream holds every record once in bronze and silver, every point
    scored once with its batch score, and the spike alerted once."""
    topic = f"ecg_{os.getpid()}_{time.monotonic_ns()}"
    entries = tmp_path / "entries"
    entries.mkdir()
    source = {"kafka": {"topic": topic, "bootstrap": broker}, "format": "json",
              "schema": "sensor STRING NOT NULL, seq BIGINT NOT NULL, v DOUBLE"}
    (entries / "ecg.yml").write_text(yaml.safe_dump({"datasets": {"ecg": {**ECG,
                                                                          "source": source}}}))
    pipelines = tmp_path / "pipelines.yml"
    pipelines.write_text(yaml.safe_dump({"pipelines": {"ecg_rcf": {
        "description": "live ECG", "sources": ["ecg"], "features": "ecg", "family": "rcf",
        "params": {"num_trees": 10, "num_samples_per_tree": 32, "shingle_size": 4}}}}))
    send(tmp_path, broker, topic, [*_ecg(0, 300), '{"sensor": "a", "seq": "x"}'])
    home = tmp_path / "home"
    env = small_job_env(home, entries)
    out = succeeded(lakeforge(env, "run", "ecg_rcf", "--definitions", str(pipelines),
                              "--batch", "d1"))
    assert "ecg_rcf" in out
    send(tmp_path, broker, topic, _ecg(300, 300, spike=450))

    live = {**env, "LAKEFORGE_STREAM__MAX_RECORDS_PER_BATCH": "100",
            "LAKEFORGE_STREAM__MAX_FILES_PER_BATCH": "1", "LAKEFORGE_STREAM__TRIGGER_SECONDS": "1"}
    # A session of its own, so that the kill takes the driver's JVM with it.
    running = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "stream", "ingest", "ecg", "--score", "ecg_rcf"],
        env=live, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    warehouse = home / "warehouse" / "lakeforge.db"
    deadline = time.monotonic() + 300
    while not list((warehouse / "predictions_rcf_stream" / "_delta_log").glob("*2.json")):
        assert running.poll() is None, running.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no two scoring micro-batches within 300 s"
        time.sleep(0.2)
    os.killpg(running.pid, signal.SIGKILL)
    running.communicate()
    bronze = spark.read.format("delta").load(str(warehouse / "bronze_ecg"))
    assert bronze.count() < 1200                            # killed midway through both
    resumed = subprocess.run([sys.executable, "-c", RESUME], env=env, capture_output=True,
                             text=True, timeout=900, check=False)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    batch_run = resumed.stdout.split("batch run ")[-1].strip()

    def read(name: str):
        return spark.read.format("delta").load(str(warehouse / name))

    bronze = read("bronze_ecg")
    assert bronze.count() == 1200
    assert bronze.select("_record").distinct().count() == 1200
    assert read("silver_ecg").count() == 1200
    quarantined = read("ops_quarantine").filter("source = 'ecg'").collect()
    assert [r.stage for r in quarantined] == ["ingest"]     # the malformed record, once
    ingested = read("ops_quality").filter("stage = 'ingest'")
    assert ingested.groupBy("batch").count().filter("count > 1").count() == 0
    assert sum(r.checked for r in ingested.collect()) == 1201

    streamed = read("predictions_rcf_stream").collect()
    points = {(r.stream_id, r.t): r for r in streamed}
    assert len(points) == len(streamed) == 2 * (600 - 3)     # each point scored once
    batch = {(r.stream_id, r.t): r for r in read("predictions_rcf")
             .filter(F.col("run_id") == batch_run).collect()}
    assert set(batch) == set(points)
    assert max(abs(points[k].score - batch[k].score) for k in batch) < 1e-9
    assert all(points[k].alert == batch[k].alert for k in batch)
    alerts = [(r.stream_id, r.t) for r in read("ops_alerts").collect()]
    assert len(alerts) == len(set(alerts))
    assert [k for k in alerts if k[0] == "a" and 440 <= k[1] <= 460] == [("a", 450)]


QUIET = [f"q{i:02d}" for i in range(98)]       # 98 more sensors: 100 streams in one query


def _sensor_file(path: Path, start: int, count: int, seed: int, quiet: range = range(0)
                 ) -> None:
    """Readings of two sensors (a noisy sine; sensor a has a spike at 300), and of the
    quiet sensors at times ``quiet``; points before 100 are the train split."""
    rng = np.random.default_rng(seed)
    lines = ["sensor,seq,v,part"]
    for t in range(start, start + count):
        for sensor in ("a", "b"):
            value = np.sin(t / 9) + rng.normal(0, 0.05) + (4 if (sensor, t) == ("a", 300) else 0)
            lines.append(f"{sensor},{t},{value:.6f},{'train' if t < 100 else 'test'}")
    lines += [f"{sensor},{t},{np.cos(t / 4) + rng.normal(0, 0.05):.6f},train"
              for sensor in QUIET for t in quiet]
    lines.insert(5, "a,oops,1.0,train")             # quarantined at ingest: not a number
    path.write_text("\n".join(lines) + "\n")


def test_streaming_rcf_scores_equal_batch_scores_and_carry_state_across_runs(
        spark, cfg, tmp_path):
    """Each point's streaming score, point score, alert threshold and alert are its batch
    ones (`score rcf`) for the same model, to 1e-9, with 100 streams in one query, each
    split of a stream shingled and alerted on its own as batch scoring does; a second run
    scores only the new points, its shingles reaching back through the state into the
    first run's points. The same holds for a model whose forest learns as it scores."""
    landing = tmp_path / "landing"
    landing.mkdir()
    cfg = with_datasets(cfg, {"sensors": {
        "kind": "stream",
        "roles": {"stream_id": "sensor", "order": "seq", "values": ["v"], "split": "part"},
        "source": {"files": str(landing), "format": "csv", "options": {"header": True},
                   "schema": "sensor STRING NOT NULL, seq BIGINT NOT NULL, v DOUBLE, part STRING"},
        "silver": {"keys": ["sensor", "seq"],
                   "rules": [{"name": "small", "expr": "abs(v) < 100", "on_fail": "quarantine"}]},
        "features": {"shingle_size": 4}}})
    _sensor_file(landing / "day1.csv", 0, 400, seed=1, quiet=range(10))
    ingest(spark, cfg, ["sensors"], "d1")
    curate(spark, cfg, ["sensors"])
    build_features(spark, cfg, "sensors")
    params = {"num_trees": 20, "num_samples_per_tree": 64, "shingle_size": 4}
    model = train(spark, cfg, "rcf", "sensors", params=params).model
    learning = train(spark, cfg, "rcf", "sensors", name="sensors_learning", params={
        **params, "num_trees": 10, "updates": True, "update_block": 8}).model
    db = cfg.catalog.database

    def batch_scores(name: str) -> dict:
        run = score(spark, cfg, "rcf", name)
        rows = spark.table(run.table).filter(F.col("run_id") == run.run_id).collect()
        return {(r.stream_id, r.t): r for r in rows}

    def streamed(name: str) -> dict:
        rows = spark.table(f"{db}.predictions_rcf_stream").filter(
            F.col("model_name") == name).collect()
        assert len({(r.stream_id, r.t) for r in rows}) == len(rows)     # each point once
        return {(r.stream_id, r.t): r for r in rows}

    def gap(ours: dict, theirs: dict) -> float:
        """The largest difference of score, point score and alert threshold; alerts equal."""
        assert set(ours) == set(theirs)
        assert all(ours[k].alert == theirs[k].alert for k in theirs)
        return max(abs(ours[k][c] - theirs[k][c]) for k in theirs
                   for c in ("score", "point_score", "alert_threshold"))

    with pytest.raises(ModelNotFoundError, match="no model named 'sensors_nope'"):
        stream_score_rcf(spark, cfg, "sensors_nope", available_now=True)
    with pytest.raises(ConfigError, match="data set 'breast_cancer' is a tabular data set"):
        score_query(spark, cfg, model.name, dataset="breast_cancer")
    for name in (model.name, learning.name):
        stream_score_rcf(spark, cfg, name, available_now=True)
    first = streamed(model.name)
    assert len(first) == 2 * (100 - 3 + 300 - 3) + len(QUIET) * (10 - 3)   # per split
    assert {r.split for r in first.values()} == {"train", "test"}
    assert len({s for s, _ in first}) == 100
    assert gap(first, batch_scores(model.name)) < 1e-9
    assert gap(streamed(learning.name), batch_scores(learning.name)) < 1e-9
    views = create_views(spark, cfg)                   # beside a streaming scorer's table
    assert f"{db}.predictions_rcf_latest" in views
    assert f"{db}.predictions_rcf_stream_latest" not in views
    top = max(first, key=lambda k: first[k].score)
    assert top[0] == "a" and 300 <= top[1] <= 303                 # a shingle holding the spike
    assert max(first, key=lambda k: first[k].point_score) == ("a", 300)     # the spike itself

    preds = spark.table(f"{db}.predictions_rcf_stream").filter(F.col("model_name") == model.name)
    alerts = {(r.stream_id, r.t): r for r in spark.table(f"{db}.ops_alerts")
              .filter(F.col("model_name") == model.name).collect()}
    assert set(alerts) == {(r.stream_id, r.t) for r in preds.filter("alert").collect()}
    assert [t for s, t in alerts if s == "a" and 290 <= t <= 310] == [300]   # the spike, once
    assert all(r.score > r.threshold for r in alerts.values())
    assert len(alerts) < preds.filter("is_anomaly").count()

    _sensor_file(landing / "day2.csv", 400, 100, seed=2, quiet=range(10, 20))
    ingest(spark, cfg, ["sensors"], "d2")
    curate(spark, cfg, ["sensors"])
    build_features(spark, cfg, "sensors")
    for name in (model.name, learning.name):
        stream_score_rcf(spark, cfg, name, available_now=True)
    second = streamed(model.name)
    assert len(second) == len(first) + 2 * 100 + len(QUIET) * 10
    assert gap(second, batch_scores(model.name)) < 1e-9
    assert gap(streamed(learning.name), batch_scores(learning.name)) < 1e-9
    views = create_views(spark, cfg)                   # beside a streaming scorer's table
    assert f"{db}.predictions_rcf_latest" in views
    assert f"{db}.predictions_rcf_stream_latest" not in views


def test_replay_sends_a_stored_stream_in_event_time_order(spark, cfg, broker, tmp_path):
    """A stored stream data set replayed into a topic, read back by a Kafka data set:
    the same rows, each stream's records in time order in the topic."""
    landing = tmp_path / "landing"
    landing.mkdir()
    _sensor_file(landing / "day1.csv", 0, 60, seed=4)
    topic = f"replay_{cfg.catalog.database}"
    schema = "sensor STRING NOT NULL, seq BIGINT NOT NULL, v DOUBLE, part STRING"
    cfg = with_datasets(cfg, {
        "stored": {"kind": "stream", "roles": {"stream_id": "sensor", "order": "seq",
                                               "values": ["v"]},
                   "source": {"files": str(landing), "format": "csv",
                              "options": {"header": True}, "schema": schema},
                   "silver": {"keys": ["sensor", "seq"]}},
        "live": {"source": {"kafka": {"topic": topic, "bootstrap": broker}, "format": "json",
                            "schema": schema},
                 "silver": {"keys": ["sensor", "seq"]}}})
    ingest(spark, cfg, ["stored"], "d1")
    curate(spark, cfg, ["stored"])
    cfg = dataclasses.replace(cfg, stream=dataclasses.replace(cfg.stream, kafka_bootstrap=broker))
    assert replay(spark, cfg, "stored", topic) == 120
    stream_ingest(spark, cfg, "live", available_now=True)
    db = cfg.catalog.database
    stored = {tuple(r) for r in spark.table(f"{db}.silver_stored").select(
        "sensor", "seq", "v").collect()}
    live = spark.table(f"{db}.bronze_live")
    assert {tuple(r) for r in live.select("sensor", "seq", "v").collect()} == stored
    for sensor in ("a", "b"):
        rows = live.filter(F.col("sensor") == sensor).orderBy("_source_file", "_record")
        assert [r.seq for r in rows.collect()] == list(range(60))


def test_a_checkpoint_whose_state_no_longer_fits_is_named(spark, cfg, tmp_path):
    """A stateful query started on a checkpoint made by one of another state shape (an
    earlier lakeforge's) stops with a message naming the checkpoint and what to delete."""
    source = str(tmp_path / "points")
    spark.range(6).selectExpr("CAST(id % 2 AS STRING) AS k", "id AS v").write \
        .format("delta").save(source)
    checkpoint = str(tmp_path / "checkpoint")

    def query(*key: str) -> StreamQuery:
        counts = spark.readStream.format("delta").load(source).groupBy(*key).count()
        writer = (counts.writeStream.outputMode("update").foreachBatch(lambda df, epoch: None)
                  .option("checkpointLocation", checkpoint))
        return StreamQuery("counting", writer, "counting", checkpoint=checkpoint)

    run_queries([query("k")], cfg, available_now=True)
    spark.range(6, 8).selectExpr("CAST(id % 2 AS STRING) AS k", "id AS v").write \
        .format("delta").mode("append").save(source)
    with pytest.raises(ConfigError, match=f"counting: its checkpoint {checkpoint} holds "
                                          f"state an earlier lakeforge made"):
        run_queries([query("k", "v")], cfg, available_now=True)
