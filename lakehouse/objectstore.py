"""A local S3-compatible server for the lake: S3Proxy, run by ``lakeforge lake-server``.

S3Proxy (Apache-2.0, one jar from Maven Central that set-up fetches) speaks the S3 API
over its filesystem backend, with its objects under ``home/s3/data``. It is there to
try and test a lake on object storage with the same code paths a lake on AWS S3 or
another S3-compatible store takes: ``lakeforge lake-server start`` runs it on
``lake.server.host:port``, creates the bucket, and prints the settings and
credentials a job needs. The credentials are made once per home (``home/s3/``) and
reach jobs through AWS's standard environment variables, never through ``conf/``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from lakehouse import daemon
from lakehouse.config import Config
from lakehouse.errors import LakeforgeError
from lakehouse.jvm import java_binary

log = logging.getLogger(__name__)
START_SECONDS = 60


class ObjectStoreError(LakeforgeError):
    """The local S3 server cannot be started or reached."""


def state_dir(cfg: Config) -> Path:
    """The server's folder: its objects (``data/``), properties, credentials, pid and log."""
    return cfg.home / "s3"


def log_file(cfg: Config) -> Path:
    """The server's log (its start-up and request errors)."""
    return state_dir(cfg) / "s3proxy.log"


def jar(cfg: Config) -> Path:
    """S3Proxy's jar in the local Maven repository (scripts/setup.sh fetches it)."""
    version = cfg.lake.server.s3proxy_version
    return (Path(os.path.expanduser(cfg.spark.maven_repo)) / "org" / "gaul" / "s3proxy"
            / version / f"s3proxy-{version}-jar-with-dependencies.jar")


def endpoint(cfg: Config) -> str:
    """The server's URL."""
    server = cfg.lake.server
    return f"http://{server.host}:{server.port}"


def credentials(cfg: Config) -> tuple[str, str]:
    """The server's access key and secret, made on first use and kept under the home."""
    path = state_dir(cfg) / "credentials.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        made = {"access_key": "lakeforge", "secret_key": secrets.token_hex(20)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(made, out)
    stored = json.loads(path.read_text())
    return stored["access_key"], stored["secret_key"]


def environment(cfg: Config, prefix: str = "lake") -> dict[str, str]:
    """The environment that puts a job's lake on this server, under ``s3a://bucket/prefix``."""
    access, secret = credentials(cfg)
    return {"LAKEFORGE_LAKE__ROOT": f"s3a://{cfg.lake.server.bucket}/{prefix}",
            "LAKEFORGE_LAKE__S3__ENDPOINT": endpoint(cfg),
            "LAKEFORGE_LAKE__S3__PATH_STYLE": "true",
            "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}


def running(cfg: Config) -> bool:
    """Whether this home's server runs and answers."""
    pid = daemon.read_pid(state_dir(cfg) / "s3proxy.pid")
    return pid is not None and daemon.alive(pid) and _listening(cfg)


def start(cfg: Config) -> str:
    """Start the server (unless it runs) and create the bucket.

    Returns:
        The server's URL.

    Raises:
        ObjectStoreError: no jar or no Java, the port is taken by something else, or
            the server did not answer within a minute (its log is named).
    """
    if running(cfg):
        _create_bucket(cfg)
        return endpoint(cfg)
    server = cfg.lake.server
    if _listening(cfg):
        raise ObjectStoreError(f"{server.host}:{server.port} is taken by another program; "
                               f"set lake.server.port")
    if not jar(cfg).is_file():
        raise ObjectStoreError(f"S3Proxy's jar is missing ({jar(cfg)}); run `make setup`")
    java = java_binary()
    if java is None:
        raise ObjectStoreError("no Java runtime found to run S3Proxy (JAVA_HOME or java)")
    folder = state_dir(cfg)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    access, secret = credentials(cfg)
    properties = folder / "s3proxy.conf"
    properties.write_text("\n".join([
        f"s3proxy.endpoint={endpoint(cfg)}",
        "s3proxy.authorization=aws-v2-or-v4",
        f"s3proxy.identity={access}",
        f"s3proxy.credential={secret}",
        "jclouds.provider=filesystem-nio2",
        f"jclouds.identity={access}",
        f"jclouds.credential={secret}",
        f"jclouds.filesystem.basedir={folder / 'data'}",
    ]) + "\n")
    properties.chmod(0o600)
    proc = daemon.spawn([str(java), "-Xmx256m", "-jar", str(jar(cfg)),
                         "--properties", str(properties)], log_file(cfg), folder / "s3proxy.pid")
    if not daemon.wait_until(lambda: _listening(cfg), proc, START_SECONDS):
        stop(cfg)
        raise ObjectStoreError(f"S3Proxy did not start on {endpoint(cfg)}; see {log_file(cfg)}")
    _create_bucket(cfg)
    log.info("S3Proxy on %s (objects in %s)", endpoint(cfg), folder / "data")
    return endpoint(cfg)


def stop(cfg: Config) -> bool:
    """Stop this home's server; False when none ran."""
    return daemon.stop(state_dir(cfg) / "s3proxy.pid")


def filesystem(cfg: Config) -> Any:
    """A ``pyarrow.fs.S3FileSystem`` on this server, with its credentials."""
    from pyarrow import fs

    access, secret = credentials(cfg)
    server = cfg.lake.server
    return fs.S3FileSystem(access_key=access, secret_key=secret, scheme="http",
                           endpoint_override=f"{server.host}:{server.port}",
                           region=cfg.lake.s3.region, allow_bucket_creation=True)


def _create_bucket(cfg: Config) -> None:
    from pyarrow import fs

    bucket = cfg.lake.server.bucket
    s3 = filesystem(cfg)
    if s3.get_file_info(bucket).type == fs.FileType.NotFound:
        s3.create_dir(bucket)


def _listening(cfg: Config) -> bool:
    return daemon.listening(cfg.lake.server.host, cfg.lake.server.port)
