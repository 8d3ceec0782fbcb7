"""A pipeline killed with SIGKILL at a random point in every job, then run again, leaves
the tables a clean run leaves: same rows (counts and a content hash per table), nothing
doubled, no staging folder or partial model version behind."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pyspark.sql import functions as F
from pyspark.sql.types import TimestampType

from jobs.pipeline import run_pipeline
from lakehouse import delta
from lakehouse.maintain import lakehouse_tables
from pipelines.definitions import get_pipeline
from tests.helpers import AMOUNT_POSITIVE, orders_entry, with_datasets

# Columns that differ between two correct runs: when and where things happened (the two
# runs use different databases and homes), and what a training that resumed from a
# checkpoint learnt (its predictions, not their rows).
VOLATILE = {"artifact", "metrics", "probability", "probabilities", "predicted",
            "prediction", "target_table", "input_table", "training_table", "run_id"}


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


@pytest.mark.slow
def test_every_job_killed_midway_then_rerun_equals_a_clean_run(spark, cfg, tmp_path):
    seed = int(os.environ.get("KILL_TEST_SEED", random.randrange(10_000)))
    rng = random.Random(seed)
    print(f"kill seed {seed} (set KILL_TEST_SEED to repeat)")
    landing = tmp_path / "landing"
    landing.mkdir()
    rows = "".join(f"{i},,{(i % 7) - 1},NEW\n" for i in range(300)) + "x,,1,NEW\n"
    (landing / "day1.csv").write_text("order_id,placed_at,amount,status\n" + rows)
    definitions = tmp_path / "pipelines.yml"
    definitions.write_text(yaml.safe_dump({"defaults": {}, "pipelines": {"wine_mlp": {
        "sources": ["wine", "orders"], "features": "wine", "family": "mlp",
        "params": {"epochs": 25, "batch_size": 4, "hidden": [8], "patience": 50}}}}))

    clean = with_datasets(cfg, _orders(landing))
    run_pipeline(spark, clean, "wine_mlp", "b1", definitions)
    expected = {name.split(".")[1]: _fingerprint(spark, delta.table_location(spark, name))
                for name in lakehouse_tables(spark, clean)}

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
    final = _start(env, "run", command, tmp_path / "final.log")
    final.wait(timeout=900)
    out = (tmp_path / "final.log").read_text(errors="replace")
    assert final.returncode == 0, f"the run after the kills:\n{out[-3000:]}"
    print("kills:", outcome)

    got = {p.name: _fingerprint(spark, str(p)) for p in tables.iterdir()
           if (p / "_delta_log").is_dir()}
    assert got == expected
    assert not [p for p in (home / "staging").iterdir() if p.is_dir()]
    models = home / "models" / "lakeforge" / "wine_mlp"
    assert len(list(models.iterdir())) == 1                   # one version, one folder
