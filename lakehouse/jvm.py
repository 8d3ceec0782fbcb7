"""A class-data-sharing archive for the driver JVM, so that every job starts sooner.

A Spark driver with Hive and Delta loads and verifies thousands of classes before its
first query, about a third of a short job's start. HotSpot's class data sharing (CDS) maps
them from one archive file instead. This module builds that archive once, from a small
run of the work jobs do (a Hive database, a Delta table written, merged, read and its
history, a CSV read, a pandas UDF), and then hands every driver the option that maps it.
On a two-core machine a session with its first query starts in about 7 s with the
archive and 11 s without.

The archive belongs to one JVM and one class path. Its file name carries a digest of
both (the path, size and modification time of the ``java`` binary, of Spark's jars and
of the driver's extra class path), so a new JDK, Spark or virtualenv gets a new archive
and never one the JVM would refuse: until set-up (or
``python -m lakehouse.jvm``) builds it, drivers simply start without. A driver whose
class path differs (the Thrift server puts Delta's jars on it) maps nothing and starts
as it would anyway; the JVM checks the archive itself and falls back silently.
``spark.class_archive: false`` turns the archive off.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lakehouse.config import Config, load_config

log = logging.getLogger(__name__)

KEEP_ARCHIVES = 3
"""Archives kept in ``spark.class_archive_dir``: one per JVM and class path in use."""


def java_binary() -> Path | None:
    """The ``java`` a PySpark driver runs: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = Path(home) / "bin" / "java" if home else shutil.which("java")
    return Path(os.path.realpath(found)) if found and Path(found).exists() else None


def _spark_jars() -> Path:
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
    entries = [java, *sorted(_spark_jars().glob("*.jar")),
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


def driver_archive(cfg: Config) -> Path | None:
    """:func:`archive_path` of the driver that :func:`lakehouse.session.spark_conf` sets up."""
    from lakehouse.session import spark_conf

    return archive_path(cfg, spark_conf(cfg).get("spark.driver.extraClassPath", ""))


def build_archive(cfg: Config, force: bool = False, timeout: float = 900) -> Path | None:
    """Build the archive for ``cfg``'s driver if it is missing (or ``force``).

    The run happens in a child process with a lakehouse of its own in a temporary
    folder; its JVM writes the archive when it exits, to a temporary name that is then
    renamed, so that a driver never maps a half-written file and two set-ups at once
    do no harm.

    Args:
        cfg: configuration.
        force: rebuild even when the archive exists.
        timeout: seconds the run may take.

    Returns:
        The archive's path, or None when archives are off.

    Raises:
        RuntimeError: the run failed or wrote no archive.
    """
    path = driver_archive(cfg)
    if path is None or (path.is_file() and not force):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lakeforge-jvm-") as tmp:
        partial = path.parent / f".{path.name}.{os.getpid()}.partial"
        env = {**os.environ, "LAKEFORGE_HOME": str(Path(tmp) / "home"),
               "LAKEFORGE_SPARK__MASTER": "local[1]", "LAKEFORGE_SPARK__UI_ENABLED": "false",
               "LAKEFORGE_SPARK__CLASS_ARCHIVE": "false",
               "LAKEFORGE_SPARK__JAVA_OPTIONS":
                   f"-XX:ArchiveClassesAtExit={partial} -Xlog:cds=error"}
        run = subprocess.run([sys.executable, "-m", "lakehouse.jvm", "--workload", tmp],
                             env=env, capture_output=True, text=True, timeout=timeout,
                             check=False)
        if run.returncode != 0 or not partial.is_file():
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"building the JVM class archive failed (exit {run.returncode}):"
                               f"\n{run.stdout[-2000:]}{run.stderr[-3000:]}")
        os.replace(partial, path)
    _prune(path.parent, keep=KEEP_ARCHIVES)
    log.info("JVM class archive %s (%.0f MB) built in %.0f s", path,
             path.stat().st_size / 2**20, time.monotonic() - started)
    return path


def _prune(folder: Path, keep: int) -> None:
    """Delete old archives and the partial files that killed builds left.

    The ``keep`` newest archives stay (each is about 200 MB); a partial file stays
    while the process building it is alive.
    """
    archives = sorted(folder.glob("spark-driver-*.jsa"), key=lambda p: p.stat().st_mtime,
                      reverse=True)
    for old in archives[keep:]:
        log.info("removing the older JVM class archive %s", old.name)
        old.unlink(missing_ok=True)
    for partial in folder.glob(".spark-driver-*.partial"):
        pid = partial.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or not _alive(int(pid)):
            log.info("removing %s, left by a build that did not finish", partial.name)
            partial.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # another user's live process
        return True
    return True


def _workload(folder: Path) -> None:
    """What jobs do at start and on small tables, so that their classes are archived."""
    from delta.tables import DeltaTable
    from pyspark import SparkContext

    from lakehouse.session import build_spark

    cfg = load_config()
    spark = build_spark(cfg)
    db = cfg.catalog.database
    csv = folder / "rows.csv"
    csv.write_text("id,v\n" + "".join(f"{i},{i * 0.5}\n" for i in range(100)))
    rows = spark.read.schema("id BIGINT, v DOUBLE").option("header", "true").csv(str(csv))
    rows.write.format("delta").saveAsTable(f"{db}.archive_rows")
    table = DeltaTable.forName(spark, f"{db}.archive_rows")
    (table.alias("t").merge(rows.alias("s"), "t.id = s.id").whenMatchedUpdateAll()
     .whenNotMatchedInsertAll().execute())
    table.history(1).collect()
    spark.sql(f"SELECT id % 3 AS k, count(*) FROM {db}.archive_rows GROUP BY k").collect()
    spark.table(f"{db}.archive_rows").mapInPandas(lambda it: it, rows.schema).count()
    spark.sql(f"SHOW TABLES IN {db}").collect()
    gateway = SparkContext._gateway
    spark.stop()
    # The gateway JVM exits when its stdin closes; it writes the archive as it exits.
    gateway.proc.stdin.close()
    gateway.proc.wait(timeout=600)


def main(argv: list[str] | None = None) -> int:
    """``python -m lakehouse.jvm``: build the archive of this configuration's driver."""
    parser = argparse.ArgumentParser(prog="python -m lakehouse.jvm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rebuild an existing archive")
    parser.add_argument("--workload", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[setup] %(message)s")
    if args.workload:
        _workload(args.workload)
        return 0
    cfg = load_config()
    path = driver_archive(cfg)
    if path is None:
        print("[setup] JVM class archive off (spark.class_archive: false, or no java found)")
    elif path.is_file() and not args.force:
        print(f"[setup] JVM class archive up to date ({path.name})")
    else:
        build_archive(cfg, force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
