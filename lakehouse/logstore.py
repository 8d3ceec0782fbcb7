"""Delta commits on S3 that stay atomic across drivers: a conditional-write log store.

Delta writes version N of a table as ``_delta_log/N.json`` and relies on the store to
refuse a second creation of that file. Delta's own S3 log store can only promise that
inside one driver (no released ``delta-storage`` carries a conditional-write store for
S3), and lakeforge runs many drivers on one lake. ``S3ConditionalLogStore``
(``lakehouse/java/``, about 80 lines of Java) creates commit files with a conditional
``PutObject`` (``If-None-Match: *``), which S3 and S3-compatible servers refuse with 412
when the file exists; Delta then re-reads the log and retries the commit. It is compiled
once per source and versions into ``~/.cache/lakeforge/jars`` (set-up does it; a session
that finds it missing does it too, in a few seconds) and configured for ``s3a://``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from lakehouse.config import Config, load_config
from lakehouse.errors import ConfigError
from lakehouse.jvm import delta_jars, java_binary, s3_jars, spark_jars

CLASS_NAME = "lakeforge.delta.S3ConditionalLogStore"
SOURCE = "java/lakeforge/delta/S3ConditionalLogStore.java"   # in the lakehouse package


def source() -> bytes:
    """The log store's Java source (read as package data: a driver may import from a zip)."""
    return importlib.resources.files("lakehouse").joinpath(SOURCE).read_bytes()


def classpath(cfg: Config) -> list[Path]:
    """What the log store compiles against: delta-storage, Hadoop's client API, the SDK."""
    hadoop = sorted(spark_jars().glob("hadoop-client-api-*.jar"))
    return [*delta_jars(cfg.spark)[1:], *hadoop, *s3_jars(cfg)[1:]]


def jar_path(cfg: Config) -> Path:
    """The compiled jar: its name carries a digest of the source and the versions it uses."""
    digest = hashlib.sha256(source())
    digest.update(f"{cfg.spark.delta_version} {cfg.lake.s3.aws_sdk_version}".encode())
    cache = Path(os.environ.get("LAKEFORGE_CACHE") or "~/.cache/lakeforge").expanduser()
    return cache / "jars" / f"lakeforge-logstore-{digest.hexdigest()[:12]}.jar"


def build(cfg: Config) -> Path:
    """Compile the log store unless its jar exists.

    Raises:
        ConfigError: no ``javac`` next to the JVM, a jar to compile against is missing,
            or the compiler failed (its output is named).
    """
    target = jar_path(cfg)
    if target.is_file():
        return target
    java = java_binary()
    javac = java.parent / "javac" if java is not None else None
    if javac is None or not javac.is_file():
        raise ConfigError("compiling the S3 log store needs a JDK's javac next to "
                          f"{java or 'java'}; install a JDK (Debian: default-jdk-headless)")
    jars = classpath(cfg)
    missing = [str(j) for j in jars if not j.is_file()]
    if missing or len(jars) < 3:
        raise ConfigError(f"compiling the S3 log store needs {', '.join(missing) or 'jars'}; "
                          "run `make setup`")
    with tempfile.TemporaryDirectory() as work:
        java_file = Path(work) / "src" / Path(SOURCE).name
        java_file.parent.mkdir()
        java_file.write_bytes(source())
        classes = Path(work) / "classes"
        out = subprocess.run([str(javac), "--release", "17", "-nowarn",
                              "-cp", os.pathsep.join(map(str, jars)), "-d", str(classes),
                              str(java_file)], capture_output=True, text=True, check=False)
        if out.returncode:
            raise ConfigError(f"compiling {java_file.name} failed: {out.stderr.strip()[:2000]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.part")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
            for path in sorted(classes.rglob("*.class")):
                archive.write(path, path.relative_to(classes).as_posix())
        partial.replace(target)
    return target


if __name__ == "__main__":
    print(build(load_config(sys.argv[1:])))
