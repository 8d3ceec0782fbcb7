"""bench-sql: `lakeforge sql` through a running SQL endpoint vs beeline on the same one.

A fresh home gets one table (flights' bronze, by `lakeforge ingest`); `lakeforge
sql-server` then serves it, and the same query is answered three times by each client,
wall time of the whole command (the process start included, as a user waits for it).
The median of each and the ratio beeline / lakeforge are printed (target >= 1.0: no
slower than beeline). Without the endpoint, `lakeforge sql` starts a JVM of its own;
one such run is shown for scale. ``--metastore postgres`` runs the same on a
PostgreSQL metastore of the home's own (started and stopped by the benchmark). Run
with `make bench-sql`.
"""

from __future__ import annotations

import argparse
import os
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
from lakehouse.submit import beeline_command, submit_env


def _seconds(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{' '.join(command[:4])} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    """Ingest one table, serve it, time both clients; print the medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="flights", help="the table to query (flights)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each client (3)")
    parser.add_argument("--metastore", choices=("derby", "postgres"), default="derby",
                        help="the catalog's metastore (derby)")
    args = parser.parse_args()
    query = f"SELECT count(*) AS n, max(_record) AS last FROM lakeforge.bronze_{args.dataset}"
    with tempfile.TemporaryDirectory(prefix="bench-sql-") as work:
        home = Path(work) / "home"
        env = {**os.environ, "LAKEFORGE_HOME": str(home), "LAKEFORGE_SPARK__MASTER": "local[2]",
               "LAKEFORGE_SPARK__UI_ENABLED": "false"}
        if args.metastore == "postgres":
            env.update(LAKEFORGE_METASTORE__KIND="postgres",
                       LAKEFORGE_METASTORE__PORT=str(free_port()))
            os.chmod(work, 0o711)     # PostgreSQL's own user reaches its data in the home
        lakeforge = [sys.executable, "-m", "jobs.cli"]
        if args.metastore == "postgres":
            _seconds([*lakeforge, "metastore", "start"], env)
        try:
            _measure(args, query, home, env, lakeforge)
        finally:
            if args.metastore == "postgres":
                subprocess.run([*lakeforge, "metastore", "stop"], env=env, check=False,
                               capture_output=True)


def _measure(args: argparse.Namespace, query: str, home: Path, env: dict[str, str],
             lakeforge: list[str]) -> None:
    """Ingest, one cold query, then both clients through a running endpoint."""
    _seconds([*lakeforge, "ingest", args.dataset, "--batch", "b1"], env)
    cold = _seconds([*lakeforge, "sql", query], env)
    port = free_port()
    cfg = load_config([f"home={home}"], environ=env)
    server = subprocess.Popen([*lakeforge, "sql-server", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (home / "sql-server.json").exists() or _closed(port):
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit("the SQL endpoint did not start")
            time.sleep(0.5)
        beeline = [_seconds(beeline_command(port, query), submit_env(cfg))
                   for _ in range(args.runs)]
        ours = [_seconds([*lakeforge, "sql", query], env) for _ in range(args.runs)]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    b, o = statistics.median(beeline), statistics.median(ours)
    print(format_table(["client", "median s", "runs"], [
        ("beeline -e (endpoint)", f"{b:.2f}", " ".join(f"{s:.2f}" for s in beeline)),
        ("lakeforge sql (endpoint)", f"{o:.2f}", " ".join(f"{s:.2f}" for s in ours)),
        ("lakeforge sql (no endpoint)", f"{cold:.2f}", "1")]))
    print(f"\nmetastore {args.metastore}; beeline / lakeforge sql through the endpoint: "
          f"{b / o:.2f}x (target >= 1.0)")


def _closed(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


if __name__ == "__main__":
    main()
