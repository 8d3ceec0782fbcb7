"""The lake's files from Python: model artifacts, checkpoints and the ranks' gold reads.

Tables go through Spark (Hadoop's FileSystem on the JVM). Everything else the Python
side keeps on the lake, on the driver, on executors and in Horovod ranks alike, goes
through :class:`LakeFS`: a small, picklable description of the lake's filesystem that
opens fsspec filesystems where it is used (``s3fs`` for ``s3a://`` and ``s3://``,
pyarrow's ``HadoopFileSystem`` for ``hdfs://``, the local one otherwise). A location
is a URI (``s3a://bucket/key``, ``hdfs://namenode/path``, ``file:/path``) or a local
path, so a local lake keeps plain paths.

Keras, NumPy and TensorFlow read and write local files only: code writes an artifact
into a local folder and :meth:`LakeFS.put` sends it to the lake; :meth:`LakeFS.fetch`
brings a lake folder to a local copy (kept per host, so an executor fetches a model
once). Credentials come from AWS's standard chain (environment variables, a profile,
the instance's role), as they do for Spark's ``s3a``. (pyarrow's own S3 client is not
used: it sends an ``=`` in a key unencoded but signs it encoded, which S3-compatible
servers that check the request as sent, such as S3Proxy, refuse; hive-style partition
folders such as ``split=train`` are full of them.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lakehouse.config import Config

REMOTE = ("s3a", "s3", "hdfs")


@dataclass(frozen=True)
class LakeFS:
    """How the Python side reaches the lake (plain values: it travels to executors).

    Attributes:
        endpoint: an S3-compatible store's URL (``http://127.0.0.1:9090``); empty: AWS.
        region: the region S3 requests are signed for.
    """

    endpoint: str = ""
    region: str = "us-east-1"

    @classmethod
    def of(cls, cfg: Config) -> LakeFS:
        """The lake of a configuration."""
        return cls(cfg.lake.s3.endpoint, cfg.lake.s3.region)

    def resolve(self, location: str) -> tuple[Any, str]:
        """The fsspec filesystem of a location, and the path within it."""
        import fsspec

        scheme = scheme_of(location)
        if scheme in ("s3a", "s3"):
            return _s3(self.endpoint, self.region), location.split("://", 1)[1]
        if scheme == "hdfs":
            store = fsspec.filesystem("hdfs", **_hdfs_options(location))
            return store, "/" + location.split("://", 1)[1].partition("/")[2]
        return fsspec.filesystem("file"), local_path(location)

    def exists(self, location: str) -> bool:
        """Whether a file or folder exists there."""
        store, path = self.resolve(location)
        return bool(store.exists(path))

    def names(self, location: str) -> list[str]:
        """The names of a folder's entries (empty when it does not exist)."""
        store, path = self.resolve(location)
        try:
            entries = store.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries
                      if e.rstrip("/") != path.rstrip("/"))

    def remove(self, location: str) -> None:
        """Delete a folder and everything in it, or a file (nothing if it is not there)."""
        store, path = self.resolve(location)
        if store.exists(path):
            store.rm(path, recursive=True)

    def read_text(self, location: str) -> str:
        """A small text file's contents."""
        store, path = self.resolve(location)
        return store.cat_file(path).decode()

    def write_text(self, location: str, text: str) -> None:
        """Write a small text file whole (replacing one that is there)."""
        with tempfile.TemporaryDirectory() as scratch:
            local = os.path.join(scratch, "text")
            with open(local, "w") as out:
                out.write(text)
            self.put(local, location)

    def put(self, local: str, location: str) -> None:
        """Copy a local file or folder to a lake location, each file whole or not at all.

        A file lands under a temporary name and is then renamed (local disks and HDFS),
        or is written by one upload (S3, where an object appears whole when its upload
        completes): a reader never sees half a file. A folder's files go one by one.
        """
        if os.path.isdir(local):
            for folder, _, files in os.walk(local):
                relative = os.path.relpath(folder, local)
                for name in files:
                    inner = name if relative == "." else f"{relative}/{name}"
                    self.put(os.path.join(folder, name), f"{location}/{inner}")
            return
        store, path = self.resolve(location)
        if scheme_of(location) in ("s3a", "s3"):
            store.put_file(local, path)
            return
        parent, name = path.rsplit("/", 1)
        store.makedirs(parent, exist_ok=True)
        partial = f"{parent}/.partial-{uuid.uuid4().hex[:8]}-{name}"
        store.put_file(local, partial)
        store.mv(partial, path)

    def get(self, location: str, local: str) -> str:
        """Copy a lake file or folder to a local path; returns the local path.

        Raises:
            FileNotFoundError: nothing is there.
        """
        store, path = self.resolve(location)
        if store.isfile(path):
            os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
            store.get_file(path, local)
            return local
        files = store.find(path)
        if not files and not store.isdir(path):
            raise FileNotFoundError(f"{location} does not exist")
        os.makedirs(local, exist_ok=True)
        root = store._strip_protocol(path).rstrip("/")
        for remote in files:
            target = os.path.join(local, remote[len(root):].lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            store.get_file(remote, target)
        return local

    def fetch(self, location: str) -> str:
        """A local copy of a lake folder or file, made once per host; a local one as is.

        Copies land in the system's temporary folder under a name derived from the
        location and its files' sizes and times (one listing), so a folder written again
        is fetched again, and arrive through a temporary name and a rename, so processes
        fetching at once never read half a copy.

        Raises:
            FileNotFoundError: nothing is there.
        """
        if not is_remote(location):
            return local_path(location)
        root = os.path.join(tempfile.gettempdir(), f"lakeforge-{os.getuid()}")
        key = hashlib.sha256(repr((location, self._stamp(location))).encode()).hexdigest()[:20]
        name = location.rstrip("/").rsplit("/", 1)[-1]   # kept: loaders read the suffix
        target = os.path.join(root, key)
        if not os.path.exists(target):
            os.makedirs(root, exist_ok=True)
            scratch = tempfile.mkdtemp(dir=root, prefix=".fetch-")
            try:
                self.get(location, os.path.join(scratch, name))
                try:
                    os.rename(scratch, target)
                except OSError:   # another process finished first: use its copy
                    pass
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return os.path.join(target, name)

    @contextmanager
    def local_file(self, location: str) -> Iterator[str]:
        """A local path of a file, for a block of code: a copy of a remote one, removed after."""
        if not is_remote(location):
            yield local_path(location)
            return
        with tempfile.TemporaryDirectory(prefix="lakeforge-file-") as scratch:
            yield self.get(location, os.path.join(scratch, location.rsplit("/", 1)[-1]))

    def _stamp(self, location: str) -> list[tuple[str, int, str]]:
        """Each file's path, size and modification time under a location."""
        store, path = self.resolve(location)
        found = {path: store.info(path)} if store.isfile(path) else store.find(path, detail=True)
        if not found:
            raise FileNotFoundError(f"{location} does not exist")
        return sorted((name, int(info.get("size") or 0),
                       str(info.get("LastModified") or info.get("mtime") or ""))
                      for name, info in found.items())

    def petastorm_filesystem(self, location: str) -> Any:
        """The filesystem Petastorm's readers take for files there (None: local files).

        Petastorm 0.13 hands it to pyarrow's legacy ``ParquetDataset``, which takes
        only a legacy ``pyarrow.filesystem`` object, so the fsspec filesystem is
        wrapped in one.
        """
        if not is_remote(location):
            return None
        store, _ = self.resolve(location)
        return _legacy(store)


def scheme_of(location: str) -> str:
    """A location's scheme (``file`` for a plain path)."""
    return location.split("://", 1)[0].lower() if "://" in location else "file"


def is_remote(location: str) -> bool:
    """Whether a location is on an object store or HDFS rather than a local disk."""
    return scheme_of(location) in REMOTE


def local_path(location: str) -> str:
    """The path of a local location (``file:/x``, ``file:///x`` or ``/x``)."""
    if location.startswith("file:"):
        return "/" + location[len("file:"):].lstrip("/")
    return location


def join(location: str, *parts: str) -> str:
    """A location inside another one."""
    return "/".join([location.rstrip("/"), *parts])


@cache
def _s3(endpoint: str, region: str) -> Any:
    import s3fs

    # No listings cache: other processes (ranks, other jobs) write the same folders.
    return s3fs.S3FileSystem(endpoint_url=endpoint or None, use_listings_cache=False,
                             client_kwargs={"region_name": region})


def _hdfs_options(location: str) -> dict[str, Any]:
    host = location.split("://", 1)[1].partition("/")[0]
    name, _, port = host.partition(":")
    return {"host": name or "default", "port": int(port) if port else 0}


def _legacy(store: Any) -> Any:
    """An fsspec filesystem behind pyarrow's legacy filesystem interface."""
    from pyarrow.filesystem import DaskFileSystem

    class LegacyLakeFS(DaskFileSystem):
        def isfile(self, path: str) -> bool:
            return self.fs.isfile(path)

        def isdir(self, path: str) -> bool:
            return self.fs.isdir(path)

    return LegacyLakeFS(store)
