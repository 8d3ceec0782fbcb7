"""A running SQL endpoint on the lake: ``lakeforge sql`` and ``tables`` answer through it.

``lakeforge sql-server`` runs Spark's Thrift server (HiveServer2's protocol) and writes
``HOME/sql-server.json`` (host, port, pid) while it runs. A command that finds that
file, its process alive and its port answering sends its statements there through a
HiveServer2 client (PyHive, over Thrift with SASL PLAIN, as Spark's server expects
with authentication ``NONE``) instead of starting a JVM of its own: the answer comes
in about a second instead of a JVM and metastore start. No Spark is imported here.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lakehouse.config import Config
from lakehouse.errors import LakeforgeError
from lakehouse.render import check_format, render

log = logging.getLogger(__name__)


class QueryError(LakeforgeError):
    """The SQL endpoint refused or failed a statement (its message names why)."""


@dataclass(frozen=True)
class Endpoint:
    """Where a running SQL endpoint of this home listens."""

    host: str
    port: int
    pid: int

    @property
    def url(self) -> str:
        """Its JDBC URL (what beeline and BI tools take)."""
        return f"jdbc:hive2://{self.host}:{self.port}/"


def state_file(cfg: Config) -> Path:
    """The file a running endpoint keeps in the home."""
    return cfg.home / "sql-server.json"


def announce(cfg: Config, host: str, port: int, pid: int) -> None:
    """Record the endpoint this process runs (``pid``: the server's process)."""
    path = state_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "port": port, "pid": pid}))


def withdraw(cfg: Config) -> None:
    """Forget the endpoint (it stopped)."""
    state_file(cfg).unlink(missing_ok=True)


def running(cfg: Config) -> Endpoint | None:
    """The endpoint of this home if its process is alive and its port answers, else None."""
    try:
        state = json.loads(state_file(cfg).read_text())
        found = Endpoint("127.0.0.1" if state["host"] in ("0.0.0.0", "") else state["host"],
                         int(state["port"]), int(state["pid"]))
    except (OSError, ValueError, KeyError):
        return None
    try:
        os.kill(found.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        with socket.create_connection((found.host, found.port), timeout=0.5):
            return found
    except OSError:
        return None


@contextlib.contextmanager
def cursor(cfg: Config, endpoint: Endpoint) -> Iterator[Any]:
    """A HiveServer2 cursor on the endpoint, in the project's database.

    Raises:
        QueryError: the server refused the session (e.g. the database does not exist yet).
    """
    from pyhive import exc, hive

    try:
        connection = hive.connect(host=endpoint.host, port=endpoint.port, auth="NONE",
                                  username=getpass.getuser(), database=cfg.catalog.database)
    except exc.DatabaseError as error:
        raise _refused(error) from None
    try:
        cur = connection.cursor()
        try:
            yield cur
        finally:
            cur.close()
    finally:
        connection.close()


def rows(cur: Any, batch: int = 1000) -> Iterator[tuple]:
    """A cursor's rows, fetched ``batch`` at a time."""
    while True:
        chunk = cur.fetchmany(batch)
        if not chunk:
            return
        yield from chunk


def stream_sql(cfg: Config, endpoint: Endpoint, query: str, limit: int = 50,
               fmt: str = "table") -> Iterator[str]:
    """``lakeforge sql`` through the endpoint: the same text a session would print."""
    check_format(fmt)
    log.info("answered by the SQL endpoint at %s (pid %d)", endpoint.url, endpoint.pid)
    with cursor(cfg, endpoint) as cur:
        execute(cur, query)
        columns = [d[0] for d in cur.description or []]
        yield from render(columns, rows(cur) if columns else iter(()), fmt, limit)


def execute(cur: Any, query: str) -> None:
    """Run a statement; the server's own first line of error when it fails.

    Raises:
        QueryError: the statement failed on the server (bad SQL, a missing table, ...).
    """
    from pyhive import exc

    try:
        cur.execute(query)
    except exc.DatabaseError as error:
        raise _refused(error) from None


def _refused(error: Exception) -> QueryError:
    """The server's own first line of a failure (not the Java stack it sends along)."""
    response = error.args[0] if error.args else None
    message = getattr(getattr(response, "status", None), "errorMessage", None) or str(error)
    return QueryError(f"the SQL endpoint: {message.strip().splitlines()[0]}")


def list_tables(cfg: Config, endpoint: Endpoint) -> list[tuple[str, int, int]]:
    """``lakeforge tables`` through the endpoint: (name, rows, Delta version) of each table."""
    db = cfg.catalog.database
    out = []
    with cursor(cfg, endpoint) as cur:
        execute(cur, f"SHOW TABLES IN {db}")
        names = [r[1] for r in cur.fetchall() if not r[2]]      # (namespace, name, temporary)
        for name in sorted(names):
            try:
                cur.execute(f"DESCRIBE HISTORY {db}.{name} LIMIT 1")
                history = cur.fetchall()
            except Exception:  # noqa: BLE001 - a view or a table that is not Delta
                continue
            execute(cur, f"SELECT count(*) FROM {db}.{name}")
            out.append((f"{db}.{name}", int(cur.fetchone()[0]), int(history[0][0])))
    return out
