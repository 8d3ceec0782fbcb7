"""Landing folders: which files a data set's source names, and which of them are new.

Files are listed through Hadoop's FileSystem, so local paths, ``file:``, ``hdfs:``
and object-store URIs behave alike. Names starting with ``_`` or ``.`` are skipped
(Spark's convention for markers and files still being written): writers should land
a file under such a name and rename it when complete.

Every file a data set ingests is named, with its size and modification time, by its
batch's bronze commit and then recorded in ``ops_ingest_files``; a file is new when
no batch holds its path. A file whose size or modification time changed since is
reported, never ingested a second time.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from importlib import metadata

from pyspark.sql import SparkSession

from lakehouse.config import project_path
from lakehouse.datasets import Dataset
from lakehouse.errors import SourceError
from lakehouse.lakefs import local_path


@dataclass(frozen=True)
class FileInfo:
    """One landed file (or, for a table source, one table version)."""

    path: str
    size: int
    modified_at: dt.datetime | None


def source_patterns(entry: Dataset) -> list[str]:
    """The entry's files as absolute paths or URIs (package files located).

    Raises:
        SourceError: when the entry's package is not installed.
    """
    spec = entry.source
    if spec.package:
        try:
            dist = metadata.distribution(spec.package)
        except metadata.PackageNotFoundError:
            raise SourceError(f"data set {entry.name!r}: source.package {spec.package!r} is not "
                              "installed; run `make setup`") from None
        return [str(dist.locate_file(f)) for f in spec.files]
    return [f if "://" in f or f.startswith("file:") else str(project_path(f))
            for f in spec.files]


def list_files(spark: SparkSession, entry: Dataset) -> list[FileInfo]:
    """Every file the entry's paths, globs and directories name, recursively, sorted.

    Raises:
        SourceError: when a path matches nothing, naming the data set and the path.
    """
    jvm = spark.sparkContext._jvm
    hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()
    found: dict[str, FileInfo] = {}
    for pattern in source_patterns(entry):
        path = jvm.org.apache.hadoop.fs.Path(pattern)
        fs = path.getFileSystem(hadoop_conf)
        statuses = fs.globStatus(path)
        if not statuses:
            raise SourceError(f"data set {entry.name!r}: source.files {pattern!r} matches no "
                              "file; fix the path or land the files first")
        for status in statuses:
            for info in _walk(fs, status):
                found[info.path] = info
    return [found[p] for p in sorted(found)]


def _walk(fs, status) -> list[FileInfo]:
    name = status.getPath().getName()
    if name.startswith(("_", ".")):
        return []
    if not status.isDirectory():
        modified = dt.datetime.fromtimestamp(status.getModificationTime() / 1000, dt.UTC)
        return [FileInfo(local_path(status.getPath().toString()), status.getLen(),
                         modified.replace(tzinfo=None))]
    out: list[FileInfo] = []
    for child in fs.listStatus(status.getPath()):
        out.extend(_walk(fs, child))
    return out


def parser_path(path: str) -> str:
    """A landing file as parser plug-ins get it: an absolute path, or a remote file's URI.

    A remote file (``s3a://...``) is copied to the executor first
    (:meth:`lakehouse.lakefs.LakeFS.local_file`); the plug-in reads a local file.
    """
    return path if "://" in path else os.path.abspath(path)
