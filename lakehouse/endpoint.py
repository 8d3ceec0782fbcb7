"""A running SQL endpoint on the lake: ``lakeforge sql`` and ``tables`` answer through it.

``lakeforge sql-server`` runs Spark's Thrift server (HiveServer2's protocol) and writes
``HOME/sql-server.json`` (host, port, pid) while it runs. A command that finds that
file, its process alive and its port answering sends its statements there through a
HiveServer2 client (PyHive, over Thrift with SASL PLAIN, as Spark's server expects
with authentication ``NONE``) instead of starting a JVM of its own: the answer comes
in about a second instead of a JVM and metastore start. No Spark is imported here.

Who may log in: with ``sql_server.auth: none`` anyone who reaches the port, so the
server binds to loopback only. ``auth: password`` turns on HiveServer2's CUSTOM
authentication with :data:`AUTH_CLASS` (``lakehouse/java/``), which checks each login
against the users file (``user:pbkdf2_sha256:iterations:salt:digest`` lines, written by
:func:`set_user`); only then may the server bind to another interface. Clients log in
with ``sql_server.user`` and ``sql_server.password``.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lakehouse import javac
from lakehouse.config import Config
from lakehouse.errors import ConfigError, LakeforgeError
from lakehouse.jvm import spark_jars
from lakehouse.render import check_format, render

log = logging.getLogger(__name__)

AUTH_CLASS = "lakeforge.sql.PasswordFileAuthenticator"
AUTH_SOURCE = "java/lakeforge/sql/PasswordFileAuthenticator.java"   # in the lakehouse package
USERS_FILE_PROPERTY = "lakeforge.sql.users_file"
PBKDF2_ITERATIONS = 200_000
USER_NAME = re.compile(r"[A-Za-z0-9._@-]+")


class QueryError(LakeforgeError):
    """The SQL endpoint refused or failed a statement (its message names why)."""


@dataclass(frozen=True)
class Endpoint:
    """Where a running SQL endpoint of this home listens."""

    host: str
    port: int
    pid: int
    auth: str = "none"

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
    path.write_text(json.dumps({"host": host, "port": port, "pid": pid,
                                "auth": cfg.sql_server.auth}))


def withdraw(cfg: Config) -> None:
    """Forget the endpoint (it stopped)."""
    state_file(cfg).unlink(missing_ok=True)


def running(cfg: Config) -> Endpoint | None:
    """The endpoint of this home if its process is alive and its port answers, else None."""
    try:
        state = json.loads(state_file(cfg).read_text())
        found = Endpoint("127.0.0.1" if state["host"] in ("0.0.0.0", "") else state["host"],
                         int(state["port"]), int(state["pid"]), state.get("auth", "none"))
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

    login: dict[str, str] = {"auth": "NONE", "username": getpass.getuser()}
    if endpoint.auth == "password":
        if not (cfg.sql_server.user and cfg.sql_server.password):
            raise QueryError(f"the SQL endpoint at {endpoint.url} asks for a password: set "
                             "sql_server.user and sql_server.password (LAKEFORGE_SQL_SERVER__"
                             "USER, LAKEFORGE_SQL_SERVER__PASSWORD)")
        login = {"auth": "CUSTOM", "username": cfg.sql_server.user,
                 "password": cfg.sql_server.password}
    from thrift.transport.TTransport import TTransportException

    try:
        connection = hive.connect(host=endpoint.host, port=endpoint.port,
                                  database=cfg.catalog.database, **login)
    except exc.DatabaseError as error:
        raise _refused(error) from None
    except TTransportException as error:       # SASL: the server refused the login
        # thrift-sasl says "Bad status: 3 (b'Error validating the login')".
        quoted = re.search(r"'([^']+)'", str(error))
        raise QueryError(f"the SQL endpoint at {endpoint.url} refused the login of "
                         f"{login['username']!r}: {quoted[1] if quoted else error}") from None
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
        names = {r[1] for r in cur.fetchall() if not r[2]}      # (namespace, name, temporary)
        execute(cur, f"SHOW VIEWS IN {db}")      # the *_latest views: no history to ask for
        names -= {r[1] for r in cur.fetchall()}
        for name in sorted(names):
            try:
                cur.execute(f"DESCRIBE HISTORY {db}.{name} LIMIT 1")
                history = cur.fetchall()
            except Exception:  # noqa: BLE001 - a table that is not Delta
                continue
            execute(cur, f"SELECT count(*) FROM {db}.{name}")
            out.append((f"{db}.{name}", int(cur.fetchone()[0]), int(history[0][0])))
    return out


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or name (only this machine reaches it)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_serving(cfg: Config, host: str) -> None:
    """Refuse to serve where anyone could log in.

    Raises:
        ConfigError: ``host`` is not loopback and ``sql_server.auth`` is not
            ``password``, or authentication is on and the users file names nobody.
    """
    auth = cfg.sql_server.auth
    if auth == "none" and not is_loopback(host):
        raise ConfigError(f"the SQL endpoint would serve {host} with sql_server.auth=none: "
                          "anyone who reaches it could read and change the lake. Set "
                          "sql_server.auth=password and add users (`lakeforge sql-server "
                          "user NAME`), or serve on 127.0.0.1")
    if auth == "password" and not users(cfg):
        raise ConfigError(f"sql_server.auth=password but {cfg.sql_users_file} names no user: "
                          "add one with `lakeforge sql-server user NAME`")


def password_line(user: str, password: str, iterations: int = PBKDF2_ITERATIONS,
                  salt: bytes | None = None) -> str:
    """A users-file line: the user and a PBKDF2-HMAC-SHA256 digest of the password."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{user}:pbkdf2_sha256:{iterations}:{salt.hex()}:{digest.hex()}"


def users(cfg: Config) -> list[str]:
    """The user names in the users file (none when it does not exist)."""
    try:
        lines = cfg.sql_users_file.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [line.split(":", 1)[0] for line in lines if line.strip()]


def set_user(cfg: Config, user: str, password: str | None) -> bool:
    """Add or replace a user's password, or remove the user (``password`` None).

    The file is rewritten whole, readable by its owner only; a running server reads it
    at each login.

    Returns:
        Whether the user was in the file before.

    Raises:
        ConfigError: the name is not letters, digits, ``.``, ``_``, ``-`` and ``@``, or
            the password is empty.
    """
    if not USER_NAME.fullmatch(user):
        raise ConfigError(f"SQL user name {user!r}: use letters, digits, '.', '_', '-' or '@'")
    if password is not None and not password:
        raise ConfigError(f"SQL user {user!r}: the password is empty")
    path = cfg.sql_users_file
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        lines = []
    kept = [ln for ln in lines if ln.split(":", 1)[0] != user]
    existed = len(kept) < len(lines)
    if password is not None:
        kept.append(password_line(user, password))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("".join(f"{ln}\n" for ln in kept))
    partial.replace(path)
    return existed


def server_settings(cfg: Config) -> tuple[list[str], dict[str, str]]:
    """What the Thrift server needs for ``sql_server.auth``: jars, and ``--hiveconf`` values.

    With ``password`` the authenticator is compiled (once; a few seconds) against the
    Thrift server's jar and named to HiveServer2 as its CUSTOM authentication class.
    """
    if cfg.sql_server.auth != "password":
        return [], {}
    thrift = sorted(spark_jars().glob("spark-hive-thriftserver_*.jar"))
    jar = javac.compile_jar("lakeforge-sqlauth", AUTH_SOURCE, thrift,
                            thrift[0].name if thrift else "", "the SQL endpoint's authenticator")
    return [str(jar)], {"hive.server2.authentication": "CUSTOM",
                        "hive.server2.custom.authentication.class": AUTH_CLASS,
                        USERS_FILE_PROPERTY: str(cfg.sql_users_file)}
