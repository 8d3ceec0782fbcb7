"""bench-commands: where the time of a user's short commands goes, step by step.

A fresh home declares a CSV landing folder of its own (``sales``: 32,000 rows a day, a
few malformed lines) and has a first day ingested and curated. Then a day's commands
run as a user runs them, each as a whole process: ``catalog check``, ``ingest`` and
``curate`` of the next day's file, ``sql`` and ``tables``. Each runs under Python's
profiler and with Spark's event log on, and two views of its wall time are printed:

- **lakeforge's steps**: the call tree of lakeforge's own functions, each with the
  seconds spent in it (the JVM work it waits for included), down to steps of
  ``--min-seconds``; what is left of the wall time is the Python start and imports.
- **Spark's jobs**, grouped by what they ran for (Delta names its snapshot
  computations and file filtering, lakeforge's writes carry the call site), against
  the driver's time between jobs (metastore calls, planning, Delta log reads, Python).

    make bench-commands
    .venv/bin/python bench/bench_commands.py --rows 32000 --min-seconds 0.3
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pstats
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lakehouse.config import PROJECT_ROOT
from lakehouse.render import format_table

SCHEMA = ("order_id BIGINT NOT NULL, day DATE, store STRING, item STRING, qty INT, "
          "price DOUBLE")
ENTRY = {"kind": "tabular", "roles": {"id": "order_id"},
         "source": {"format": "csv", "options": {"header": True}, "schema": SCHEMA},
         "silver": {"keys": ["order_id"],
                    "rules": [{"name": "positive_qty", "expr": "qty > 0",
                               "on_fail": "quarantine"}]}}


def write_day(folder: Path, day: int, rows: int, seed: int) -> None:
    """One day's CSV file: ``rows`` orders, one in 4,000 malformed."""
    rng = random.Random(seed)
    lines = ["order_id,day,store,item,qty,price"]
    for i in range(rows):
        oid = day * 10_000_000 + i
        if i % 4000 == 3999:
            lines.append(f"{oid},2026-12-{day:02d},broken")
            continue
        lines.append(f"{oid},2026-12-{day:02d},s{rng.randrange(40)},i{rng.randrange(900)},"
                     f"{rng.randrange(-1, 9)},{rng.uniform(1, 300):.2f}")
    (folder / f"sales-{day:02d}.csv").write_text("\n".join(lines) + "\n")


def run(command: list[str], env: dict[str, str], events: Path, profile: Path
        ) -> tuple[float, float, Path]:
    """Run one lakeforge command profiled, with its own event log.

    Returns:
        Its start (epoch seconds), its wall time and its event log.
    """
    events.mkdir(parents=True, exist_ok=True)
    before = set(events.iterdir())
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(profile), "-m",
                           "jobs.cli", *command], env=env, capture_output=True, text=True,
                          check=False)
    wall = time.time() - started
    if done.returncode:
        sys.exit(f"lakeforge {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    new = sorted(set(events.iterdir()) - before)
    return started, wall, new[-1] if new else Path()


def _name(func: tuple[str, int, str]) -> str | None:
    """``module.function`` of a profiled function of lakeforge's own, else None."""
    path = Path(func[0])
    try:
        relative = path.resolve().relative_to(PROJECT_ROOT)
    except ValueError:
        return None
    if relative.parts[0] not in ("jobs", "lakehouse", "models"):
        return None
    return ".".join([*relative.with_suffix("").parts[1:], func[2]])


def step_tree(profile: Path, wall: float, min_seconds: float, depth: int = 7
              ) -> list[tuple[str, float, int]]:
    """(indented step, seconds, calls) of lakeforge's own functions under ``cli.main``."""
    stats = pstats.Stats(str(profile)).stats          # func -> (cc, nc, tt, ct, callers)
    ours = {f: _name(f) for f in stats}
    ours = {f: n for f, n in ours.items() if n}
    children: collections.defaultdict = collections.defaultdict(list)
    for func in ours:
        for caller, (_, calls, _, cumulative) in stats[func][4].items():
            if caller in ours:
                children[caller].append((func, cumulative, calls))
    root = next(f for f, n in ours.items() if n == "cli.main")
    rows = [("Python start, imports, exit (outside cli.main)", wall - stats[root][3], 0),
            ("cli.main", stats[root][3], 1)]

    def walk(func: tuple, level: int, seen: frozenset) -> None:
        for child, seconds, calls in sorted(children[func], key=lambda c: -c[1]):
            if seconds < min_seconds or child in seen:
                continue
            if child[2].startswith("<"):          # a comprehension: its callees, in place
                walk(child, level, seen | {child})
                continue
            rows.append((f"{'  ' * level}{ours[child]}", seconds, calls))
            if level < depth:
                walk(child, level + 1, seen | {child})

    walk(root, 1, frozenset({root}))
    return rows


def label(event: dict) -> str:
    """What a Spark job ran for: its description (digits folded), else its call site."""
    props = event.get("Properties") or {}
    stages = event.get("Stage Infos") or [{}]
    text = (props.get("spark.job.description") or props.get("callSite.short")
            or stages[-1].get("Stage Name") or "a job")
    text = re.sub(r"\d+", "N", text.splitlines()[0].replace(str(PROJECT_ROOT) + "/", ""))
    return text[:70]


def breakdown(started: float, wall: float, log: Path) -> list[tuple[str, float, int]]:
    """(part, seconds, jobs) of one command's wall time, from its event log."""
    jobs: dict[int, tuple[float, str]] = {}
    spans: collections.defaultdict[str, list[float]] = collections.defaultdict(list)
    app_start = last = None
    files = sorted(log.glob("events_*")) if log.is_dir() else [log] if log.is_file() else []
    for line in (ln for f in files for ln in f.read_text().splitlines()):
        event = json.loads(line)
        kind = event["Event"]
        if kind == "SparkListenerApplicationStart":
            app_start = event["Timestamp"] / 1000
        elif kind == "SparkListenerJobStart":
            jobs[event["Job ID"]] = (event["Submission Time"] / 1000, label(event))
        elif kind == "SparkListenerJobEnd" and event["Job ID"] in jobs:
            begin, what = jobs.pop(event["Job ID"])
            end = event["Completion Time"] / 1000
            spans[what].append(end - begin)
            last = max(last or end, end)
    if app_start is None:                    # no Spark at all (an endpoint answered)
        return [("whole command, no Spark", wall, 0)]
    job_time = sum(sum(v) for v in spans.values())
    end_of_work = last or app_start
    parts = [("start: Python, imports, JVM, SparkContext", app_start - started, 0)]
    parts += sorted(((f"job: {k}", sum(v), len(v)) for k, v in spans.items()),
                    key=lambda p: -p[1])
    parts.append(("driver between jobs: metastore, planning, Delta log, Python",
                  end_of_work - app_start - job_time, 0))
    parts.append(("stop: after the last job", started + wall - end_of_work, 0))
    return parts


def main() -> None:
    """Set up the home, run the day's commands, print each breakdown and a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32_000, help="rows per day (32,000)")
    parser.add_argument("--top", type=int, default=8, help="job groups shown per command")
    parser.add_argument("--min-seconds", type=float, default=0.3,
                        help="the smallest lakeforge step shown (0.3)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each command's profile here (pstats files)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-commands-") as work:
        root = Path(work)
        landing, entries, events = root / "landing", root / "entries", root / "events"
        for folder in (landing, entries):
            folder.mkdir()
        (entries / "sales.yml").write_text(json.dumps(
            {"datasets": {"sales": {**ENTRY, "source": {**ENTRY["source"],
                                                        "files": str(landing)}}}}))
        env = {**os.environ, "LAKEFORGE_HOME": str(root / "home"),
               "LAKEFORGE_CATALOG__DATASET_DIRS": json.dumps([str(entries)]),
               "LAKEFORGE_SPARK__MASTER": "local[2]", "LAKEFORGE_SPARK__UI_ENABLED": "false"}
        logged = ["--set", "spark.conf={'spark.eventLog.enabled': 'true', "
                  "'spark.eventLog.compress': 'false', 'spark.eventLog.rolling.enabled': "
                  f"'false', 'spark.eventLog.dir': 'file://{events}'}}"]
        write_day(landing, 1, args.rows, 1)
        profile = root / "profile.out"
        for setup in (["ingest", "sales", "--batch", "d01"], ["curate", "sales"]):
            run([*setup, *logged], env, events, profile)
        write_day(landing, 2, args.rows, 2)
        day = [("catalog check", ["catalog", "check", "sales"]),
               ("ingest (next day)", ["ingest", "sales", "--batch", "d02"]),
               ("curate (next day)", ["curate", "sales"]),
               ("sql", ["sql", "SELECT store, count(*) AS n, round(sum(qty * price), 2) AS "
                               "revenue FROM silver_sales GROUP BY store ORDER BY n DESC"]),
               ("tables", ["tables"])]
        summary = []
        for name, command in day:
            started, wall, log = run([*command, *logged], env, events, profile)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                (args.keep / f"{name.split()[0]}.prof").write_bytes(profile.read_bytes())
            print(f"\nlakeforge {' '.join(command)[:90]}: {wall:.1f} s")
            print(format_table(["lakeforge step", "seconds", "calls"],
                               [(p, f"{s:.2f}", n or "") for p, s, n in
                                step_tree(profile, wall, args.min_seconds)]))
            parts = breakdown(started, wall, log)
            jobs = [p for p in parts if p[0].startswith("job: ")]
            shown = [p for p in parts if not p[0].startswith("job: ")][:1] + jobs[:args.top]
            rest = jobs[args.top:]
            if rest:
                shown.append((f"job: {len(rest)} other group(s)", sum(p[1] for p in rest),
                              sum(p[2] for p in rest)))
            shown += [p for p in parts if not p[0].startswith("job: ")][1:]
            print(format_table(["Spark", "seconds", "jobs", "share"],
                               [(p, f"{s:.2f}", n or "", f"{s / wall:.0%}")
                                for p, s, n in shown]))
            summary.append((name, f"{wall:.1f}", f"{parts[0][1]:.1f}",
                            f"{sum(p[1] for p in jobs):.1f}", sum(p[2] for p in jobs),
                            f"{sum(p[1] for p in parts[1:] if not p[0].startswith('job')):.1f}"))
        print("\n" + format_table(["command", "wall s", "start s", "Spark jobs s", "jobs",
                                   "driver + stop s"], summary))


if __name__ == "__main__":
    main()
