"""Delta commits on S3 that stay atomic across drivers: a conditional-write log store.

Delta writes version N of a table as ``_delta_log/N.json`` and relies on the store to
refuse a second creation of that file. Delta's own S3 log store can only promise that
inside one driver (no released ``delta-storage`` carries a conditional-write store for
S3), and lakeforge runs many drivers on one lake. ``S3ConditionalLogStore``
(``lakehouse/java/``, about 80 lines of Java) creates commit files with a conditional
``PutObject`` (``If-None-Match: *``), which S3 and S3-compatible servers refuse with 412
when the file exists; Delta then re-reads the log and retries the commit. It is compiled
by :mod:`lakehouse.javac` once per source and versions into ``~/.cache/lakeforge/jars``
(set-up does it; a session that finds it missing does it too, in a few seconds) and
configured for ``s3a://``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lakehouse import javac
from lakehouse.config import Config, load_config
from lakehouse.jvm import delta_jars, s3_jars, spark_jars

CLASS_NAME = "lakeforge.delta.S3ConditionalLogStore"
SOURCE = "java/lakeforge/delta/S3ConditionalLogStore.java"   # in the lakehouse package


def classpath(cfg: Config) -> list[Path]:
    """What the log store compiles against: delta-storage, Hadoop's client API, the SDK."""
    hadoop = sorted(spark_jars().glob("hadoop-client-api-*.jar"))
    return [*delta_jars(cfg.spark)[1:], *hadoop, *s3_jars(cfg)[1:]]


def _versions(cfg: Config) -> str:
    return f"{cfg.spark.delta_version} {cfg.lake.s3.aws_sdk_version}"


def jar_path(cfg: Config) -> Path:
    """The compiled jar: its name carries a digest of the source and the versions it uses."""
    return javac.jar_path("lakeforge-logstore", SOURCE, _versions(cfg))


def build(cfg: Config) -> Path:
    """Compile the log store unless its jar exists.

    Raises:
        ConfigError: no ``javac`` next to the JVM, a jar to compile against is missing,
            or the compiler failed (its output is named).
    """
    jars = classpath(cfg)
    return javac.compile_jar("lakeforge-logstore", SOURCE, jars if len(jars) >= 3 else [],
                             _versions(cfg), "the S3 log store")


if __name__ == "__main__":
    print(build(load_config(sys.argv[1:])))
