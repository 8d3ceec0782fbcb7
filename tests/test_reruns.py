"""One in-process run of a pipeline (wine plus a landing folder of orders), and what
running it again must leave as it is: a re-run from a later step, maintenance followed
by re-runs, and a run killed with SIGKILL at a random point in every job. After the
kills, the run again leaves the tables the clean run left: same rows (counts and a
content hash per table), nothing doubled, no staging folder or partial model version.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from pyspark.sql import functions as F
from pyspark.sql.types import TimestampType

from jobs.pipeline import run_pipeline
from lakehouse import delta
from lakehouse.maintain import lakehouse_tables, maintain
from pipelines.definitions import STEP_NAMES, get_pipeline
from tests.helpers import AMOUNT_POSITIVE, in_database, orders_entry, table_state, with_datasets

# Columns that differ between two correct runs: when and where things happened (the two
# runs use different databases and homes), and what a training that resumed from a
# checkpoint learnt (its predictions, not their rows).
VOLATILE = {"artifact", "metrics", "probability", "probabilities", "predicted",
            "prediction", "prediction_label", "target_table", "input_table", "training_table",
            "run_id", "mlflow_run_id"}


def _orders(landing: Path) -> dict:
    return {"orders": orders_entry(landing, rules=[AMOUNT_POSITIVE])}


def _fingerprint(spark, location: str) -> tuple[int, int]:
    df = spark.read.format("delta").load(location)
    stable = [f.name for f in df.schema.fields
              if f.name not in VOLATILE and not isinstance(f.dataType, TimestampType)]
    digest = df.select(F.sum(F.xxhash64(*stable).cast("decimal(38,0)"))).first()[0]
    return df.count(), int(digest or 0)


def _start(env: dict[str, str], job: str, args: tuple[str, ...],
           log: Path) -> subprocess.Popen:
    with log.open("wb") as out:   # a file, not a pipe: a full pipe would stall the job
        return subprocess.Popen([sys.executable, "-m", "jobs.cli", job, *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_when(proc: subprocess.Popen, ready, delay: float, limit: float = 600) -> str:
    """SIGKILL the job's process group ``delay`` seconds after ``ready()`` holds."""
    deadline = time.monotonic() + limit
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(delay)
    state = "finished before the kill" if proc.poll() is not None else "killed"
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return state


ORDERS = 300
EPOCHS = 25
QUARANTINED = 1 + sum(1 for i in range(ORDERS) if (i % 7) - 1 <= 0)   # 'x' and amount <= 0


@pytest.fixture(scope="module")
def clean(spark, base_cfg, tmp_path_factory):
    """The pipeline run once in-process on a database of its own: its config, steps'
    results, definitions, landing folder and each table's fingerprint right after."""
    root = tmp_path_factory.mktemp("rerun")
    landing = root / "landing"
    landing.mkdir()
    rows = "".join(f"{i},,{(i % 7) - 1},NEW\n" for i in range(ORDERS)) + "x,,1,NEW\n"
    (landing / "day1.csv").write_text("order_id,placed_at,amount,status\n" + rows)
    definitions = root / "pipelines.yml"
    # Batches of 4 make an epoch about 15 steps per rank: 25 epochs leave the kill test's
    # training many seconds after its first checkpoint to be killed in (it is killed at
    # most 3 s after it), and no early stop cuts them short.
    definitions.write_text(yaml.safe_dump({"defaults": {}, "pipelines": {"wine_mlp": {
        "sources": ["wine", "orders"], "features": "wine", "family": "mlp",
        "params": {"epochs": EPOCHS, "batch_size": 4, "hidden": [8], "patience": 50}}}}))
    db = f"t_{uuid.uuid4().hex[:10]}"
    spark.sql(f"CREATE DATABASE {db}")
    cfg = with_datasets(in_database(base_cfg, db),
                        _orders(landing))
    results = run_pipeline(spark, cfg, "wine_mlp", "b1", definitions)
    expected = {name.split(".")[1]: _fingerprint(spark, delta.table_location(spark, name))
                for name in lakehouse_tables(spark, cfg)}
    yield SimpleNamespace(cfg=cfg, results=results, definitions=definitions, landing=landing,
                          expected=expected)
    spark.sql(f"DROP DATABASE {db} CASCADE")


@pytest.mark.slow
def test_run_pipeline_in_process_end_to_end(spark, clean):
    cfg, db = clean.cfg, clean.cfg.catalog.database
    assert [r.name for r in clean.results] == list(STEP_NAMES)
    gold = spark.table(f"{db}.gold_wine")
    predictions = spark.table(f"{db}.predictions_mlp")
    assert predictions.count() == gold.count() == 178
    assert predictions.join(gold, "row_id").count() == 178
    lineage = predictions.groupBy("model_name", "model_version", "input_table").count().collect()
    assert [tuple(r) for r in lineage] == [("wine_mlp", 1, f"{db}.gold_wine", 178)]
    models = spark.table(f"{db}.models").filter(F.col("name") == "wine_mlp").collect()
    assert [(m["version"], m["training_table"]) for m in models] == [(1, f"{db}.gold_wine")]
    batches = spark.table(f"{db}.bronze_wine").select("_ingest_batch").distinct().collect()
    assert [b[0] for b in batches] == ["b1"]
    again = run_pipeline(spark, cfg, "wine_mlp", "b1", clean.definitions, start_at="train")
    assert [r.name for r in again] == ["train", "score"]          # ingest .. features skipped
    assert spark.table(f"{db}.predictions_mlp").count() == 178    # and nothing added


@pytest.mark.slow
def test_maintain_then_rerun_writes_nothing_and_starts_no_training(spark, clean, monkeypatch):
    cfg, db = clean.cfg, clean.cfg.catalog.database
    assert spark.table(f"{db}.ops_quarantine").count() == QUARANTINED
    assert spark.table(f"{db}.predictions_mlp").count() == 178

    shown = {r["tableName"] for r in spark.sql(f"SHOW TABLES IN {db}").collect()
             if not r["isTemporary"] and not r["tableName"].endswith("_latest")}
    maintained = maintain(spark, cfg)
    assert {r.table.split(".")[1] for r in maintained} == shown   # every table, once
    gold = next(r for r in maintained if r.table.endswith("gold_wine"))
    assert not gold.optimized                                     # shards stay one per rank
    before = table_state(spark, cfg)

    def no_horovod(*args, **kwargs):
        raise AssertionError("a re-run started a Horovod job")

    monkeypatch.setattr("models.runner.run_ranks", no_horovod)
    for batch in ("b2", "b1"):
        run_pipeline(spark, cfg, "wine_mlp", batch, clean.definitions)
    assert table_state(spark, cfg) == before
    assert spark.table(f"{db}.models").count() == 1


@pytest.mark.slow
def test_every_job_killed_midway_then_rerun_equals_a_clean_run(clean, spark, tmp_path):
    seed = int(os.environ.get("KILL_TEST_SEED", random.randrange(10_000)))
    rng = random.Random(seed)
    print(f"kill seed {seed} (set KILL_TEST_SEED to repeat)")
    landing, definitions = clean.landing, clean.definitions
    home, entries = tmp_path / "home", tmp_path / "entries"
    entries.mkdir()
    (entries / "orders.yml").write_text(json.dumps({"datasets": _orders(landing)}))
    env = {**os.environ, "LAKEFORGE_HOME": str(home), "LAKEFORGE_SPARK__MASTER": "local[2]",
           "LAKEFORGE_SPARK__UI_ENABLED": "false", "LAKEFORGE_SPARK__SHUFFLE_PARTITIONS": "2",
           "LAKEFORGE_CATALOG__DATASET_DIRS": json.dumps([str(entries)])}
    tables = home / "warehouse" / "lakeforge.db"
    steps = get_pipeline("wine_mlp", definitions).steps("b1")
    run_dir = home / "checkpoints" / "train"
    started = {  # what must exist before the random delay starts counting
        "ingest": lambda: (tables / "ops_ingest_files").exists(),
        "curate": lambda: (tables / "silver_orders").exists(),
        "features": lambda: (tables / "gold_wine").exists(),
        "train": lambda: any(run_dir.glob("*/*")),              # a checkpoint: mid-training
        "score": lambda: (tables / "predictions_mlp").exists(),
    }
    # One `lakeforge run` per kill, starting at the step the previous kill interrupted
    # (which it finishes): each is killed at a random moment once its own step has
    # started. A last run of the whole pipeline finishes what the kills left, and its
    # steps before that are no-ops.
    command = ("wine_mlp", "--batch", "b1", "--definitions", str(definitions))
    outcome, resume = {}, steps[0].name
    for step in steps:
        proc = _start(env, "run", (*command, "--from", resume),
                      tmp_path / f"killed-in-{step.name}.log")
        outcome[step.name] = _kill_when(proc, started[step.name], rng.uniform(0, 3))
        resume = step.name
        if step.name == "train":                    # killed mid-training, not after it
            epochs_done = len(list(run_dir.glob("*/epoch-*.weights.h5")))
            assert epochs_done < EPOCHS, (outcome, epochs_done)
    final = _start(env, "run", command, tmp_path / "final.log")
    final.wait(timeout=900)
    out = (tmp_path / "final.log").read_text(errors="replace")
    assert final.returncode == 0, f"the run after the kills:\n{out[-3000:]}"
    print("kills:", outcome)

    got = {p.name: _fingerprint(spark, str(p)) for p in tables.iterdir()
           if (p / "_delta_log").is_dir()}
    assert got == clean.expected
    assert not [p for p in (home / "staging").iterdir() if p.is_dir()]
    models = home / "models" / "lakeforge" / "wine_mlp"
    assert len(list(models.iterdir())) == 1                   # one version, one folder
