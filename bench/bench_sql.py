"""bench-sql: `lakeforge sql` and `tables`, cold and through a running SQL endpoint.

A fresh home gets one data set's tables (`lakeforge ingest flights`: its bronze and
the bookkeeping tables). Each client answers the same work ``--runs`` times, wall
time of the whole command (the process start included, as a user waits for it):

* cold, no endpoint: `lakeforge sql QUERY` against Spark's own `spark-sql -e QUERY`,
  and `lakeforge tables` against `spark-sql -e` of the same listing (SHOW TABLES,
  then each table's DESCRIBE HISTORY ... LIMIT 1 and count(*)), both with the
  settings jobs run with (targets: >= 0.8x);
* with `lakeforge sql-server` running: the same two against `beeline -e` of the same
  statements on the same endpoint (targets: >= 1.0x, no slower than beeline).

Medians and ratios (peer / lakeforge: above 1, lakeforge is faster) are printed.
``--metastore postgres`` runs the same on a PostgreSQL metastore of the home's own
(started and stopped by the benchmark). ``--home H`` measures an existing home as it is
(no ingest; e.g. the demo's lake after `make demo`, with its embedded Derby metastore),
so `tables` lists every table there. Run with `make bench-sql`.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import free_port

from lakehouse.config import load_config
from lakehouse.render import format_table
from lakehouse.submit import beeline_command, spark_sql_command, submit_env

LAKEFORGE = [sys.executable, "-m", "jobs.cli"]


def _env(home: Path) -> dict[str, str]:
    """The environment both clients run in: ``home``, two local cores, no UI."""
    return {**os.environ, "LAKEFORGE_HOME": str(home), "LAKEFORGE_SPARK__MASTER": "local[2]",
            "LAKEFORGE_SPARK__UI_ENABLED": "false"}


def _run(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds of one run of ``command`` and its standard output."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{' '.join(command[:4])} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout


def _seconds(command: list[str], env: dict[str, str]) -> float:
    return _run(command, env)[0]


def _timings(command: list[str], env: dict[str, str], runs: int) -> list[float]:
    return [_seconds(command, env) for _ in range(runs)]


def main() -> None:
    """Ingest one table, serve it, time both clients; print the medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="flights", help="the table to query (flights)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each client (3)")
    parser.add_argument("--metastore", choices=("derby", "postgres"), default="derby",
                        help="the catalog's metastore (derby)")
    parser.add_argument("--home", type=Path,
                        help="measure this existing home as it is, without ingesting "
                             "(its own metastore settings apply)")
    args = parser.parse_args()
    query = f"SELECT count(*) AS n, max(_record) AS last FROM lakeforge.bronze_{args.dataset}"
    if args.home:
        if not args.home.is_dir():
            sys.exit(f"--home {args.home}: no such directory")
        home = args.home.resolve()
        _measure(args, query, home, _env(home), ingest=False)
        return
    with tempfile.TemporaryDirectory(prefix="bench-sql-") as work:
        home = Path(work) / "home"
        env = _env(home)
        if args.metastore == "postgres":
            env.update(LAKEFORGE_METASTORE__KIND="postgres",
                       LAKEFORGE_METASTORE__PORT=str(free_port()))
            os.chmod(work, 0o711)     # PostgreSQL's own user reaches its data in the home
        if args.metastore == "postgres":
            _seconds([*LAKEFORGE, "metastore", "start"], env)
        try:
            _measure(args, query, home, env)
        finally:
            if args.metastore == "postgres":
                subprocess.run([*LAKEFORGE, "metastore", "stop"], env=env, check=False,
                               capture_output=True)


def _measure(args: argparse.Namespace, query: str, home: Path, env: dict[str, str],
             ingest: bool = True) -> None:
    """Ingest (unless told not to), then both commands cold and through a running
    endpoint, with their peers."""
    if ingest:
        _seconds([*LAKEFORGE, "ingest", args.dataset, "--batch", "b1"], env)
    cfg = load_config([f"home={home}"], environ=env)
    spark_env = submit_env(cfg)
    db = cfg.catalog.database
    tables, views = (_names(_run(spark_sql_command(cfg, f"SHOW {kind} IN {db}"), spark_env)[1])
                     for kind in ("TABLES", "VIEWS"))
    names = sorted(tables - views)
    listing = "; ".join([f"SHOW TABLES IN {db}"] + [
        f"DESCRIBE HISTORY {db}.{n} LIMIT 1; SELECT count(*) FROM {db}.{n}" for n in names])
    rows = []

    def compare(what: str, peer_label: str, peer: list[float], ours: list[float],
                target: float) -> None:
        p, o = statistics.median(peer), statistics.median(ours)
        rows.append((what, peer_label, f"{p:.2f}", f"{o:.2f}", f"{p / o:.2f}",
                     f">= {target}", " ".join(f"{x:.2f}" for x in ours)))

    runs = args.runs
    compare("sql, cold", "spark-sql -e",
            _timings(spark_sql_command(cfg, query), spark_env, runs),
            _timings([*LAKEFORGE, "sql", query], env, runs), 0.8)
    compare(f"tables ({len(names)}), cold", "spark-sql -e",
            _timings(spark_sql_command(cfg, listing), spark_env, runs),
            _timings([*LAKEFORGE, "tables"], env, runs), 0.8)
    port = free_port()
    server = subprocess.Popen([*LAKEFORGE, "sql-server", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (home / "sql-server.json").exists() or _closed(port):
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit("the SQL endpoint did not start")
            time.sleep(0.5)
        compare("sql, endpoint", "beeline -e",
                _timings(beeline_command(port, query), spark_env, runs),
                _timings([*LAKEFORGE, "sql", query], env, runs), 1.0)
        compare(f"tables ({len(names)}), endpoint", "beeline -e",
                _timings(beeline_command(port, listing), spark_env, runs),
                _timings([*LAKEFORGE, "tables"], env, runs), 1.0)
    finally:
        # SIGTERM, as `kill` does (the command stops as on Ctrl-C): a benchmark started in
        # the background has SIGINT ignored, and so would its server.
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
    print(format_table(["command", "peer", "peer s", "lakeforge s", "peer / lakeforge",
                        "target", "lakeforge runs"], rows))
    where = f"home {home}" if not ingest else f"metastore {args.metastore}"
    print(f"\n{where}; medians of {runs} runs each, whole commands")


def _names(shown: str) -> set[str]:
    """The names spark-sql printed, one per line (the JVM's own warnings left out)."""
    return {line for line in shown.splitlines() if re.fullmatch(r"\w+", line)}


def _closed(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


if __name__ == "__main__":
    main()
