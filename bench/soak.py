"""Soak: pipeline runs day after day, maintenance between them, random SIGKILLs.

Each round lands a new file of orders (new rows, rows seen before, one malformed row)
and runs a pipeline (ingest wine and orders, curate, features, train, score) as its own
``lakeforge run`` process; with probability ``--kill-rate`` that process is killed with
SIGKILL at a random moment and started again. Then ``lakeforge maintain`` runs, and the
same pipeline run again, which must be a no-op. After every round the tables are
checked against what was landed. It stops by itself after ``--rounds`` rounds and
prints: jobs run, kills injected, table versions and rows added by runs that should
have been no-ops (must be 0), rows lost or doubled (must be 0), and, on the shared
PostgreSQL metastore, the wall time of one pipeline run alone and of four at once.

    make soak                                     # 3 rounds on PostgreSQL
    .venv/bin/python bench/soak.py --rounds 5 --kill-rate 0.5 --seed 7
    .venv/bin/python bench/soak.py --metastore derby --no-parallel
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import free_port, session
from pyspark.sql import functions as F

from lakehouse.render import format_table

ORDERS = "order_id BIGINT NOT NULL, placed_at TIMESTAMP, amount DOUBLE, status STRING"
PARALLEL = 4



def _orders(landing: Path) -> dict:
    return {"kind": "tabular", "roles": {"id": "order_id", "label": "status"},
            "source": {"files": str(landing), "format": "csv", "options": {"header": True},
                       "schema": ORDERS},
            "silver": {"keys": ["order_id"],
                       "rules": [{"name": "amount_positive", "expr": "amount > 0",
                                  "on_fail": "quarantine"}]}}


class Lake:
    """A lakehouse in a folder of its own, driven through the ``lakeforge`` CLI."""

    def __init__(self, root: Path, metastore: str) -> None:
        self.root, self.home = root, root / "home"
        entries = root / "entries"
        entries.mkdir(parents=True)
        self.landings = [root / "landing" / f"orders_{i}" for i in range(PARALLEL)]
        datasets = {}
        for i, landing in enumerate(self.landings):
            landing.mkdir(parents=True)
            datasets[f"orders_{i}"] = _orders(landing)
        (entries / "orders.yml").write_text(json.dumps({"datasets": datasets}))
        pipelines = {f"soak_{i}": {
            "sources": ["wine", f"orders_{i}"], "features": "wine", "family": "mlp",
            "model": f"soak_{i}", "params": {"epochs": 8, "batch_size": 16, "hidden": [8]}}
            for i in range(PARALLEL)}
        self.definitions = root / "pipelines.yml"
        self.definitions.write_text(yaml.safe_dump({"defaults": {}, "pipelines": pipelines}))
        self.env = {**os.environ, "LAKEFORGE_HOME": str(self.home),
                    "LAKEFORGE_SPARK__MASTER": "local[2]", "LAKEFORGE_SPARK__UI_ENABLED": "false",
                    "LAKEFORGE_SPARK__SHUFFLE_PARTITIONS": "2",
                    "LAKEFORGE_SPARK__DRIVER_MEMORY": "1g",
                    "LAKEFORGE_CATALOG__DATASET_DIRS": json.dumps([str(entries)]),
                    "LAKEFORGE_METASTORE__KIND": metastore,
                    "LAKEFORGE_METASTORE__PORT": str(free_port())}
        self.jobs = 0

    def start(self, *args: str) -> subprocess.Popen:
        self.jobs += 1
        return subprocess.Popen([sys.executable, "-m", "jobs.cli", *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    def run(self, *args: str) -> str:
        proc = self.start(*args)
        out = proc.communicate()[0]
        if proc.returncode:
            raise SystemExit(f"lakeforge {' '.join(args)} failed:\n{out[-4000:]}")
        return out

    def pipeline(self, name: str, batch: str) -> subprocess.Popen:
        return self.start("run", name, "--batch", batch, "--definitions", str(self.definitions))

    def tables(self) -> Path:
        return self.home / "warehouse" / "lakeforge.db"


def land(lake: Lake, landing: Path, day: int, rng: random.Random) -> set[int]:
    """A new file: 40 new orders, 10 seen before (changed amounts), one malformed row."""
    ids = list(range(day * 40, day * 40 + 40)) + rng.sample(range(max(day * 40, 1)),
                                                             min(10, day * 40))
    rows = "".join(f"{i},,{rng.randint(-2, 50)},NEW\n" for i in ids) + "oops,,1,NEW\n"
    (landing / f"day{day:03d}.csv").write_text("order_id,placed_at,amount,status\n" + rows)
    return set(ids)


def versions(lake: Lake) -> dict[str, int]:
    """Latest commit of every table, from the Delta logs."""
    out = {}
    for table in lake.tables().iterdir():
        commits = [int(p.stem) for p in (table / "_delta_log").glob("*.json")]
        if commits:
            out[table.name] = max(commits)
    return out


def counts(spark, lake: Lake) -> dict[str, int]:
    return {name: spark.read.format("delta").load(str(lake.tables() / name)).count()
            for name in versions(lake)}


def check(spark, lake: Lake, landed: list[int]) -> tuple[int, int]:
    """Rows lost and rows doubled in orders_0's tables, against what was landed."""
    def load(name: str):
        return spark.read.format("delta").load(str(lake.tables() / name))

    lost = doubled = 0

    def compare(have: int, want: int) -> None:
        nonlocal lost, doubled
        lost += max(0, want - have)
        doubled += max(0, have - want)

    bronze = load("bronze_orders_0")
    compare(bronze.count(), sum(landed))                 # every well-formed row, once
    quarantine = load("ops_quarantine").filter(F.col("source") == "orders_0")
    compare(quarantine.filter("stage = 'ingest'").count(), len(landed))   # one bad row a day
    keyed = [("ops_quarantine", quarantine, ["stage", "batch", "source_file", "record"]),
             ("predictions_mlp", load("predictions_mlp"), ["run_id", "row_id"]),
             ("models", load("models"), ["name", "version"])]
    for _, df, keys in keyed:
        doubled += df.count() - df.select(*keys).distinct().count()
    return lost, doubled


def soak(lake: Lake, spark, rounds: int, kill_rate: float, rng: random.Random) -> dict:
    stats = {"rounds": rounds, "kills": 0, "noop_versions": 0, "noop_rows": 0, "lost": 0,
             "doubled": 0}
    landed: list[int] = []
    for day in range(1, rounds + 1):
        ids = land(lake, lake.landings[0], day, rng)
        landed.append(len(ids))
        batch = f"day{day:03d}"
        proc = lake.pipeline("soak_0", batch)
        if rng.random() < kill_rate:
            time.sleep(rng.uniform(5, 40))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                stats["kills"] += 1
                proc.wait()
                proc = lake.pipeline("soak_0", batch)
        out = proc.communicate()[0]
        if proc.returncode:
            raise SystemExit(f"round {day}: pipeline failed:\n{out[-4000:]}")
        lake.run("maintain")
        before_v, before_n = versions(lake), counts(spark, lake)
        lake.run("run", "soak_0", "--batch", batch, "--definitions", str(lake.definitions))
        after_v, after_n = versions(lake), counts(spark, lake)
        stats["noop_versions"] += sum(after_v[t] - before_v.get(t, -1) for t in after_v)
        stats["noop_rows"] += sum(after_n[t] - before_n.get(t, 0) for t in after_n)
        lost, doubled = check(spark, lake, landed)
        stats["lost"] = lost
        stats["doubled"] = doubled
        print(f"round {day}/{rounds}: {stats}", flush=True)
    return stats


def parallel_times(lake: Lake) -> tuple[float, float]:
    """Wall seconds of one pipeline run alone, and of four different ones at once."""
    for i, landing in enumerate(lake.landings[1:], start=1):
        land(lake, landing, 1, random.Random(i))
    start = time.monotonic()
    lake.run("run", "soak_1", "--batch", "p1", "--definitions", str(lake.definitions))
    alone = time.monotonic() - start
    for i in range(1, PARALLEL):
        land(lake, lake.landings[i], 2, random.Random(i))
    land(lake, lake.landings[0], 999, random.Random(0))
    start = time.monotonic()
    procs = [lake.pipeline(f"soak_{i}", "p2") for i in range(PARALLEL)]
    for proc in procs:
        out = proc.communicate()[0]
        if proc.returncode:
            raise SystemExit(f"parallel pipeline failed:\n{out[-4000:]}")
    return alone, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="pipeline rounds (default 3)")
    parser.add_argument("--kill-rate", type=float, default=0.5,
                        help="chance that a round's run is killed once (default 0.5)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--metastore", choices=["postgres", "derby"], default="postgres")
    parser.add_argument("--no-parallel", action="store_true",
                        help="skip the 1 vs 4 parallel pipelines timing")
    parser.add_argument("--keep", action="store_true", help="keep the soak's folder")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(100_000)
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="lakeforge-soak-"))
    root.chmod(0o755)   # a PostgreSQL run as its own user must reach its data folder
    lake = Lake(root, args.metastore)
    print(f"soak in {root} (seed {seed}, metastore {args.metastore})", flush=True)
    _, spark = session([f"home={root / 'reader'}"])
    try:
        if args.metastore == "postgres":
            lake.run("metastore", "start")
        stats = soak(lake, spark, args.rounds, args.kill_rate, rng)
        alone = together = None
        if args.metastore == "postgres" and not args.no_parallel:
            alone, together = parallel_times(lake)
    finally:
        if args.metastore == "postgres":
            lake.start("metastore", "stop").communicate()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    rows = [("rounds", stats["rounds"], ""), ("jobs run", lake.jobs, "lakeforge processes"),
            ("kills injected", stats["kills"], "SIGKILL of a running pipeline"),
            ("versions added by no-op runs", stats["noop_versions"], "must be 0"),
            ("rows added by no-op runs", stats["noop_rows"], "must be 0"),
            ("rows lost", stats["lost"], "must be 0"),
            ("rows doubled", stats["doubled"], "must be 0")]
    if alone is not None:
        rows += [("pipeline run alone (s)", round(alone, 1), ""),
                 (f"{PARALLEL} pipelines at once (s)", round(together, 1),
                  f"{PARALLEL * alone / together:.2f}x the throughput of one at a time")]
    print(format_table(["measure", "value", "note"], rows))
    bad = stats["noop_versions"] or stats["noop_rows"] or stats["lost"] or stats["doubled"]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
