"""Which class-data-sharing archive a driver JVM maps, so that every job starts sooner.

A Spark driver with Hive and Delta loads and verifies thousands of classes before its
first query, about a third of a short job's start. HotSpot's class data sharing (CDS) maps
them from one archive file instead: :mod:`lakehouse.class_archive` builds that archive
once, and this module hands every driver the option that maps it. On a two-core machine
a session with its first query starts in about 7 s with the archive and 11 s without.

The archive belongs to one JVM and one class path. Its file name carries a digest of
both (the path, size and modification time of the ``java`` binary, of Spark's jars and
of the driver's extra class path), so a new JDK, Spark or virtualenv gets a new archive
and never one the JVM would refuse: until set-up (or ``python -m
lakehouse.class_archive``) builds it, drivers simply start without. A driver whose
class path differs (the Thrift server puts Delta's jars on it) maps nothing and starts
as it would anyway; the JVM checks the archive itself and falls back silently.
``spark.class_archive: false`` turns the archive off.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import shutil
from pathlib import Path

from lakehouse.config import Config, SparkConfig


def java_binary() -> Path | None:
    """The ``java`` a PySpark driver runs: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = Path(home) / "bin" / "java" if home else shutil.which("java")
    return Path(os.path.realpath(found)) if found and Path(found).exists() else None


def delta_jars(spark_cfg: SparkConfig) -> list[Path]:
    """Delta's jars in the local Maven repository, or ``[]`` if any is missing.

    Args:
        spark_cfg: the Spark section of the config (Delta and Scala versions, repo).

    Returns:
        Paths of ``delta-spark`` and ``delta-storage`` jars when both exist.
    """
    repo = Path(os.path.expanduser(spark_cfg.maven_repo)) / "io" / "delta"
    version = spark_cfg.delta_version
    jars = [
        repo / f"delta-spark_{spark_cfg.scala_version}" / version
        / f"delta-spark_{spark_cfg.scala_version}-{version}.jar",
        repo / "delta-storage" / version / f"delta-storage-{version}.jar",
    ]
    return jars if all(j.is_file() for j in jars) else []


def s3_jars(cfg: Config) -> list[Path]:
    """``hadoop-aws`` and the AWS SDK bundle in the local Maven repository (set-up fetches them).

    Spark's own jars carry Hadoop's client without its S3 filesystem; these give it
    ``s3a://``.
    """
    repo = Path(os.path.expanduser(cfg.spark.maven_repo))
    s3 = cfg.lake.s3
    return [repo / "org" / "apache" / "hadoop" / "hadoop-aws" / s3.hadoop_aws_version
            / f"hadoop-aws-{s3.hadoop_aws_version}.jar",
            repo / "software" / "amazon" / "awssdk" / "bundle" / s3.aws_sdk_version
            / f"bundle-{s3.aws_sdk_version}.jar"]


def pinned_jars(cfg: Config, listing: str) -> list[Path]:
    """The jars a pinned list names (``lakehouse/jars/<listing>.txt``), in the Maven repository.

    Args:
        cfg: configuration (``spark.maven_repo``).
        listing: ``kafka-broker`` (a local Kafka broker's runtime), ``kafka-connector``
            (Spark's Kafka source and what it needs beside Spark's own jars) or
            ``rcf-peer`` (AWS's Random Cut Forest library, a benchmark's peer).
    """
    repo = Path(os.path.expanduser(cfg.spark.maven_repo))
    # Package data: a driver may import lakehouse from a zip (spark-submit --py-files).
    text = importlib.resources.files("lakehouse").joinpath(f"jars/{listing}.txt").read_text()
    out = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            group, artifact, version = line.split()
            out.append(repo.joinpath(*group.split("."), artifact, version,
                                     f"{artifact}-{version}.jar"))
    return out


def spark_jars() -> Path:
    """The folder of Spark's own jars (inside the pyspark install)."""
    from pyspark.find_spark_home import _find_spark_home

    return Path(_find_spark_home()) / "jars"


def archive_path(cfg: Config, extra_classpath: str = "") -> Path | None:
    """Where the archive for this JVM and class path is (or would be) kept.

    Args:
        cfg: configuration (``spark.class_archive`` and ``spark.class_archive_dir``).
        extra_classpath: the driver's ``spark.driver.extraClassPath``.

    Returns:
        The archive's path, or None when archives are off or no JVM is found.
    """
    java = java_binary()
    if not cfg.spark.class_archive or java is None:
        return None
    # The JVM maps an archive only for the class path it was dumped with, file by file
    # (path, size and modification time), so the digest covers exactly that: a checkout
    # or virtualenv in another place, or jars installed again, get an archive of their own.
    digest = hashlib.sha256()
    entries = [java, *sorted(spark_jars().glob("*.jar")),
               *(Path(entry) for entry in extra_classpath.split(os.pathsep) if entry)]
    for entry in entries:
        stat = entry.stat() if entry.exists() else None
        digest.update(f"{entry}|{stat and stat.st_size}|{stat and stat.st_mtime_ns}\n".encode())
    folder = Path(os.path.expanduser(cfg.spark.class_archive_dir))
    return folder / f"spark-driver-{digest.hexdigest()[:16]}.jsa"


def archive_options(cfg: Config, extra_classpath: str = "") -> list[str]:
    """The driver JVM options that map the archive, when it has been built."""
    path = archive_path(cfg, extra_classpath)
    return [f"-XX:SharedArchiveFile={path}"] if path is not None and path.is_file() else []
